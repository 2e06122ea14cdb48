//! GitHub webhooks: `X-Hub-Signature-256` verification and the
//! `deployment_protection_rule` payload.

use serde::Deserialize;
use url::Url;

use super::{WebhookError, parse_error};
use crate::config::Secret;
use crate::crypto::hmac_sha256_verify;
use crate::domain::{DeploymentRequest, Platform, Reason, ReasonCode, RequestStatus, Target, deadline};
use time::OffsetDateTime;

/// Checks `X-Hub-Signature-256: sha256=<hex>` over the raw body against every
/// configured secret (several, for rotation), each in constant time.
pub fn verify_signature(secrets: &[Secret], header: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_sig = header.strip_prefix("sha256=").ok_or(WebhookError::BadSignature)?;
    let sig = hex::decode(hex_sig).map_err(|_| WebhookError::BadSignature)?;
    if secrets
        .iter()
        .any(|s| hmac_sha256_verify(s.expose().as_bytes(), &[body], &sig))
    {
        Ok(())
    } else {
        Err(WebhookError::BadSignature)
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    action: String,
    environment: Option<String>,
    event: Option<String>,
    deployment_callback_url: Option<String>,
    deployment: Option<PayloadDeployment>,
    repository: PayloadRepository,
    installation: Option<PayloadInstallation>,
    sender: Option<PayloadUser>,
}

#[derive(Debug, Deserialize)]
struct PayloadDeployment {
    id: Option<u64>,
    sha: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PayloadRepository {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct PayloadInstallation {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct PayloadUser {
    login: String,
}

/// The fields of a `deployment_protection_rule` delivery the gate uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectionRuleRequest {
    pub repository: String,
    pub owner: String,
    pub repo: String,
    pub run_id: u64,
    pub environment: String,
    pub sha: String,
    pub git_ref: Option<String>,
    pub deployment_id: Option<u64>,
    pub event: Option<String>,
    pub installation_id: Option<u64>,
    pub sender: Option<String>,
    pub callback_url: String,
    /// Problems that make the request unanswerable in good faith: a callback
    /// on a host other than `api_url`'s, or one naming another repository.
    /// The gate rejects such a request and never calls its callback URL.
    pub problems: Vec<Reason>,
}

impl ProtectionRuleRequest {
    /// May the gate call the callback URL at all?
    pub fn callback_trusted(&self) -> bool {
        !self.problems.iter().any(|p| p.code == ReasonCode::CallbackHostMismatch)
    }
}

/// What a GitHub delivery is.
#[derive(Debug, Clone, PartialEq)]
pub enum GithubEvent {
    Ping,
    ProtectionRule(Box<ProtectionRuleRequest>),
    /// Another event or action: answered 202 and ignored.
    Ignored(String),
}

/// Parses a verified delivery. `api_url` is the configured GitHub API base,
/// whose host the callback URL must share.
pub fn parse(event: &str, body: &[u8], api_url: &Url) -> Result<GithubEvent, WebhookError> {
    match event {
        "ping" => Ok(GithubEvent::Ping),
        "deployment_protection_rule" => {
            let p: Payload = serde_json::from_slice(body).map_err(|e| parse_error(&e))?;
            if p.action != "requested" {
                return Ok(GithubEvent::Ignored(format!("deployment_protection_rule.{}", p.action)));
            }
            protection_rule(p, api_url).map(|r| GithubEvent::ProtectionRule(Box::new(r)))
        }
        other => Ok(GithubEvent::Ignored(other.to_string())),
    }
}

fn protection_rule(p: Payload, api_url: &Url) -> Result<ProtectionRuleRequest, WebhookError> {
    let environment = p
        .environment
        .filter(|e| !e.is_empty())
        .ok_or_else(|| WebhookError::Malformed("missing field `environment`".into()))?;
    let callback_url = p
        .deployment_callback_url
        .ok_or_else(|| WebhookError::Malformed("missing field `deployment_callback_url`".into()))?;
    let deployment = p
        .deployment
        .ok_or_else(|| WebhookError::Malformed("missing field `deployment`".into()))?;
    crate::domain::CommitSha::parse(&deployment.sha)
        .map_err(|e| WebhookError::Malformed(format!("deployment.sha: {e}")))?;
    let (owner, repo) = p
        .repository
        .full_name
        .split_once('/')
        .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| WebhookError::Malformed("repository.full_name is not owner/name".into()))?;

    let mut problems = Vec::new();
    let parsed = Url::parse(&callback_url)
        .map_err(|_| WebhookError::Malformed("deployment_callback_url is not a URL".into()))?;
    let run_id = run_id_from_callback(&parsed, api_url)
        .ok_or_else(|| WebhookError::Malformed("deployment_callback_url does not name a workflow run".into()))?;
    if parsed.scheme() != api_url.scheme()
        || parsed.host_str() != api_url.host_str()
        || parsed.port_or_known_default() != api_url.port_or_known_default()
    {
        problems.push(Reason::new(
            ReasonCode::CallbackHostMismatch,
            format!(
                "the callback URL's host `{}` is not the configured API host `{}`; it will not be called",
                parsed.host_str().unwrap_or(""),
                api_url.host_str().unwrap_or("")
            ),
        ));
    } else if let Some((cb_owner, cb_repo)) = repo_from_callback(&parsed, api_url)
        && !(cb_owner.eq_ignore_ascii_case(owner) && cb_repo.eq_ignore_ascii_case(repo))
    {
        problems.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!("the callback URL names {cb_owner}/{cb_repo}, the payload {owner}/{repo}"),
        ));
    }

    Ok(ProtectionRuleRequest {
        repository: p.repository.full_name.clone(),
        owner: owner.to_string(),
        repo: repo.to_string(),
        run_id,
        environment,
        sha: deployment.sha.to_ascii_lowercase(),
        git_ref: deployment.git_ref,
        deployment_id: deployment.id,
        event: p.event,
        installation_id: p.installation.map(|i| i.id),
        sender: p.sender.map(|s| s.login),
        callback_url,
        problems,
    })
}

/// The path segments after the API base path (GitHub Enterprise serves the
/// API under `/api/v3`, github.com at the root).
fn segments_after_base<'a>(url: &'a Url, api_url: &Url) -> Option<Vec<&'a str>> {
    let base: Vec<&str> = api_url.path_segments()?.filter(|s| !s.is_empty()).collect();
    let all: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
    // A callback on another host may use another base; fall back to the
    // suffix, which is all the run id parse needs.
    let rest = if all.starts_with(&base) {
        all[base.len()..].to_vec()
    } else {
        all
    };
    Some(rest)
}

/// `.../repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`
fn run_id_from_callback(url: &Url, api_url: &Url) -> Option<u64> {
    let s = segments_after_base(url, api_url)?;
    let n = s.len();
    if n < 7
        || s[n - 1] != "deployment_protection_rule"
        || s[n - 3] != "runs"
        || s[n - 4] != "actions"
        || s[n - 7] != "repos"
    {
        return None;
    }
    s[n - 2].parse().ok().filter(|id| *id > 0)
}

fn repo_from_callback(url: &Url, api_url: &Url) -> Option<(String, String)> {
    let s = segments_after_base(url, api_url)?;
    let n = s.len();
    (n >= 7).then(|| (s[n - 6].to_string(), s[n - 5].to_string()))
}

/// The id of the request a delivery asks for. Each attempt of a run that
/// deploys gets its own deployment (a re-run is a new one), so the id names
/// the deployment as well as the run: a re-run is a new request with its own
/// answer, while every copy of one delivery, on any replica, lands on one.
pub fn request_id(repository: &str, run_id: u64, deployment_id: Option<u64>, environment: &str) -> String {
    let run = match deployment_id {
        Some(d) => format!("{run_id}/{d}"),
        None => run_id.to_string(),
    };
    DeploymentRequest::derive_id(Platform::Github, repository, &run, environment)
}

/// Builds the GitHub deployment request from a verified, parsed delivery.
/// The delivery's problems (a callback on a foreign host, say) come along as
/// intake problems, which reject the request without calling the callback.
pub fn deployment_request(
    issuer: &str,
    pending_timeout: std::time::Duration,
    delivery: &str,
    p: &ProtectionRuleRequest,
    now: OffsetDateTime,
) -> DeploymentRequest {
    let run = p.run_id.to_string();
    DeploymentRequest {
        id: request_id(&p.repository, p.run_id, p.deployment_id, &p.environment),
        platform: Platform::Github,
        issuer: issuer.to_string(),
        repository: p.repository.clone(),
        run,
        environment: p.environment.clone(),
        sha: p.sha.clone(),
        target: Target::Github {
            owner: p.owner.clone(),
            repo: p.repo.clone(),
            run_id: p.run_id,
            installation_id: p.installation_id,
            callback_url: p.callback_url.clone(),
        },
        delivery: delivery.to_string(),
        received_at: now,
        deadline: deadline(now, pending_timeout),
        intake_problems: p.problems.clone(),
        reviews: Vec::new(),
        status: RequestStatus::Pending,
        decision: None,
        run_attempt: None,
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Url {
        Url::parse("https://api.github.com").unwrap()
    }

    fn body(callback: &str) -> Vec<u8> {
        serde_json::json!({
            "action": "requested",
            "environment": "production",
            "event": "push",
            "deployment_callback_url": callback,
            "deployment": {"id": 1, "sha": "a".repeat(40), "ref": "main"},
            "repository": {"full_name": "octo-org/payments"},
            "installation": {"id": 42},
            "sender": {"login": "octocat"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn parses_the_run_id_from_the_callback() {
        let b = body("https://api.github.com/repos/octo-org/payments/actions/runs/987/deployment_protection_rule");
        let GithubEvent::ProtectionRule(r) = parse("deployment_protection_rule", &b, &api()).unwrap() else {
            panic!()
        };
        assert_eq!(r.run_id, 987);
        assert_eq!(r.installation_id, Some(42));
        assert!(r.problems.is_empty());
    }

    #[test]
    fn a_callback_on_another_host_is_a_problem_not_a_parse_error() {
        let b = body("https://evil.example/repos/octo-org/payments/actions/runs/987/deployment_protection_rule");
        let GithubEvent::ProtectionRule(r) = parse("deployment_protection_rule", &b, &api()).unwrap() else {
            panic!()
        };
        assert_eq!(r.problems[0].code, ReasonCode::CallbackHostMismatch);
        assert!(!r.callback_trusted());
    }

    #[test]
    fn a_callback_naming_another_repository_is_an_identity_mismatch() {
        let b = body("https://api.github.com/repos/octo-org/other/actions/runs/987/deployment_protection_rule");
        let GithubEvent::ProtectionRule(r) = parse("deployment_protection_rule", &b, &api()).unwrap() else {
            panic!()
        };
        assert_eq!(r.problems[0].code, ReasonCode::IdentityMismatch);
    }

    #[test]
    fn enterprise_api_base_paths_are_understood() {
        let ghe = Url::parse("https://ghe.example/api/v3").unwrap();
        let b = body("https://ghe.example/api/v3/repos/octo-org/payments/actions/runs/5/deployment_protection_rule");
        let GithubEvent::ProtectionRule(r) = parse("deployment_protection_rule", &b, &ghe).unwrap() else {
            panic!()
        };
        assert_eq!(r.run_id, 5);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn a_callback_without_a_run_is_malformed() {
        let b = body("https://api.github.com/repos/octo-org/payments/deployments");
        let err = parse("deployment_protection_rule", &b, &api()).unwrap_err();
        assert_eq!(err.code().as_str(), "payload_malformed");
    }

    #[test]
    fn malformed_json_names_the_position_and_never_echoes_the_body() {
        let err = parse(
            "deployment_protection_rule",
            b"{\"action\": \"requested\", \"secret-ish\": ",
            &api(),
        )
        .unwrap_err();
        let WebhookError::Malformed(msg) = &err else { panic!() };
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("secret-ish"), "{msg}");
    }

    #[test]
    fn other_events_and_actions_are_ignored() {
        assert_eq!(
            parse("push", b"{}", &api()).unwrap(),
            GithubEvent::Ignored("push".into())
        );
        let b = br#"{"action":"completed","repository":{"full_name":"a/b"}}"#;
        assert_eq!(
            parse("deployment_protection_rule", b, &api()).unwrap(),
            GithubEvent::Ignored("deployment_protection_rule.completed".into())
        );
        assert_eq!(parse("ping", b"not json", &api()).unwrap(), GithubEvent::Ping);
    }

    #[test]
    fn signatures_verify_against_any_configured_secret() {
        let secrets = vec![Secret::new("old"), Secret::new("new")];
        let sig = format!("sha256={}", hex::encode(crate::crypto::hmac_sha256(b"new", &[b"body"])));
        assert_eq!(verify_signature(&secrets, Some(&sig), b"body"), Ok(()));
        assert_eq!(
            verify_signature(&secrets, Some(&sig), b"body!"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(&secrets, None, b"body"),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify_signature(&secrets, Some("sha1=abc"), b"body"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(&secrets, Some("sha256=zz"), b"body"),
            Err(WebhookError::BadSignature)
        );
    }
}
