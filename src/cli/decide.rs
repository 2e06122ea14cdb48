//! `portcullis decide`: the offline dry run. One webhook (GitHub
//! `deployment_protection_rule` or a GitLab Deployment Hook), an optional
//! CI token, an optional verdict or evidence file: the decision and its
//! reasons, printed; no platform is called. Evidence is evaluated in every
//! verdict mode, as the service would: the environment's evidence schema,
//! then its Rego policy in process, or its OPA server.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;
use time::OffsetDateTime;

use super::read_file;
use crate::config::Config;
use crate::decision::{self, Inputs, Outcome};
use crate::domain::{Attestation, DeploymentRequest, Producer, Verdict, VerdictBody};

/// The files and overrides `decide` was given.
pub(super) struct DecideFiles<'a> {
    pub webhook: &'a Path,
    pub token: Option<&'a Path>,
    pub verdict: Option<&'a Path>,
    pub evidence: Option<&'a Path>,
    /// GitLab: the deployment's full sha.
    pub sha: Option<&'a str>,
    /// GitLab: the deployment's pipeline.
    pub pipeline: Option<u64>,
}

pub(super) async fn decide(config: Config, files: DecideFiles<'_>) -> Result<ExitCode, String> {
    let now = OffsetDateTime::now_utc();
    let body = read_file(files.webhook, "webhook")?;
    let attestation = match files.token {
        None => None,
        Some(path) => Some(verify_token(&config, path, now).await?),
    };
    let request = request_of(&config, &body, files.webhook, attestation.as_ref(), &files, now)?;

    let mut policy = config.environment(&request.environment).cloned();
    // A verdict file (`allow` or `evidence`) or a bare evidence bundle.
    let posted: Option<(VerdictBody, String)> = match (files.verdict, files.evidence) {
        (Some(path), _) => {
            let body: VerdictBody = serde_json::from_slice(&read_file(path, "verdict")?)
                .map_err(|e| format!("verdict {}: {e}", path.display()))?;
            Some((body, path.display().to_string()))
        }
        (None, Some(path)) => {
            let bundle: Value = serde_json::from_slice(&read_file(path, "evidence")?)
                .map_err(|e| format!("evidence {}: {e}", path.display()))?;
            let body = VerdictBody {
                environment: request.environment.clone(),
                sha: request.sha.clone(),
                policy: None,
                allow: None,
                evidence: Some(bundle),
                evidence_digest: None,
                reasons: Vec::new(),
            };
            Some((body, path.display().to_string()))
        }
        (None, None) => None,
    };
    let verdict = match posted {
        None => None,
        Some((body, source)) => {
            // The file stands for a trusted producer's post: accept any producer.
            if let Some(p) = policy.as_mut() {
                p.verdict.producers = vec![Default::default()];
            }
            let producer = Producer {
                issuer_name: request.issuer.clone(),
                issuer: "file".into(),
                subject: source,
                actor: String::new(),
                claims: Default::default(),
                token_sha256: String::new(),
            };
            let mut v = body.verdict(
                request.platform,
                request.repository.clone(),
                body.sha.to_ascii_lowercase(),
                producer,
                now,
            );
            match (&body.evidence, body.allow) {
                (Some(bundle), None) => {
                    evaluate_offline(&config, policy.as_ref(), &mut v, bundle, attestation.as_ref(), now).await?
                }
                (None, Some(_)) => {}
                _ => return Err("the verdict file needs exactly one of `allow` or `evidence`".into()),
            }
            Some(v)
        }
    };
    let decision = decision::evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &request,
        attestation: attestation.as_ref(),
        verdict: verdict.as_ref(),
        reviews: &[],
        break_glass: &[],
        now,
    });
    let mut out = serde_json::json!({
        "request": request.id,
        "platform": request.platform,
        "repository": request.repository,
        "run": request.run,
        "environment": request.environment,
        "sha": request.sha,
        "decision": decision.outcome,
        "reasons": decision.reasons,
    });
    if let Some(v) = &verdict {
        out["verdict"] = serde_json::json!({
            "allow": v.allow,
            "source": v.source,
            "policy": v.policy,
            "policy_revision": v.policy_revision,
            "reasons": v.reasons,
        });
    }
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(match decision.outcome {
        Outcome::Approved => ExitCode::SUCCESS,
        Outcome::Rejected => ExitCode::from(2),
        Outcome::Pending => ExitCode::from(3),
    })
}

async fn verify_token(config: &Config, path: &Path, now: OffsetDateTime) -> Result<Attestation, String> {
    let text = String::from_utf8(read_file(path, "token")?).map_err(|_| "the token file is not text".to_string())?;
    let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let verifier = crate::identity::Verifier::new(config.issuers.clone(), http);
    let v = verifier
        .verify(text.trim(), now)
        .await
        .map_err(|e| format!("token refused ({}): {e}", e.code()))?;
    Ok(v.into_attestation(now))
}

/// The deployment request the webhook asks for: a GitHub protection rule,
/// or a GitLab Deployment Hook (told apart by GitLab's `object_kind`).
fn request_of(
    config: &Config,
    body: &[u8],
    path: &Path,
    attestation: Option<&Attestation>,
    files: &DecideFiles<'_>,
    now: OffsetDateTime,
) -> Result<DeploymentRequest, String> {
    let kind = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("object_kind").and_then(Value::as_str).map(str::to_owned));
    if kind.is_some() {
        return gitlab_request(config, body, path, attestation, files, now);
    }
    let api_url = config
        .github
        .as_ref()
        .map(|g| g.api_url.clone())
        .unwrap_or_else(|| url::Url::parse("https://api.github.com").expect("static URL"));
    let parsed = match crate::webhook::github::parse("deployment_protection_rule", body, &api_url) {
        Ok(crate::webhook::github::GithubEvent::ProtectionRule(p)) => p,
        Ok(_) => return Err("the webhook is not a requested deployment_protection_rule".into()),
        Err(e) => return Err(format!("webhook {}: {e}", path.display())),
    };
    let timeout = config
        .environment(&parsed.environment)
        .map(|e| e.pending_timeout)
        .unwrap_or_default();
    Ok(crate::webhook::github::deployment_request(
        config.github.as_ref().map_or("", |g| g.issuer.as_str()),
        timeout,
        "offline",
        &parsed,
        now,
    ))
}

/// A GitLab `blocked` Deployment Hook as the service would take it. The
/// hook carries neither the full sha nor the pipeline (the service asks
/// GitLab's deployments API): `--sha` and `--pipeline` give them, else the
/// token's `sha` (when the hook's short sha is its prefix) and `pipeline_id`.
fn gitlab_request(
    config: &Config,
    body: &[u8],
    path: &Path,
    attestation: Option<&Attestation>,
    files: &DecideFiles<'_>,
    now: OffsetDateTime,
) -> Result<DeploymentRequest, String> {
    use crate::webhook::gitlab::{DeploymentStatus, GitlabEvent, parse};
    let hook = match parse(body) {
        Ok(GitlabEvent::Deployment(hook)) => hook,
        Ok(GitlabEvent::Ignored(kind)) => {
            return Err(format!("the webhook is a GitLab `{kind}` event, not a Deployment Hook"));
        }
        Err(e) => return Err(format!("webhook {}: {e}", path.display())),
    };
    if hook.status != DeploymentStatus::Blocked {
        return Err(format!(
            "the GitLab deployment is `{}`, not `blocked`: there is nothing to decide",
            hook.status.as_str()
        ));
    }
    let token_sha = attestation.and_then(|a| a.sha.clone());
    let sha = match (files.sha, token_sha) {
        (Some(sha), _) => sha.to_owned(),
        (None, Some(sha)) if hook.short_sha.as_deref().is_some_and(|s| sha.starts_with(s)) => sha,
        _ => {
            return Err(
                "a GitLab hook carries only the short sha: pass --sha (or a --token whose sha it begins)".into(),
            );
        }
    };
    let sha = crate::domain::CommitSha::parse(&sha).map_err(|e| format!("--sha: {e}"))?;
    let pipeline = files.pipeline.or_else(|| {
        attestation
            .and_then(|a| a.claims.get("pipeline_id"))
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()))
    });
    let info = crate::platform::gitlab::DeploymentInfo {
        id: hook.deployment_id,
        iid: None,
        project_id: hook.project_id,
        project_path: None,
        status: "blocked".into(),
        sha,
        git_ref: hook.git_ref.clone().unwrap_or_default(),
        environment: hook.environment.clone(),
        job_id: hook.job_id,
        job_status: None,
        pipeline_id: pipeline,
        user: hook.user.as_ref().map(|u| u.username.clone()),
        created_at: None,
    };
    let timeout = config
        .environment(&hook.environment)
        .map(|e| e.pending_timeout)
        .unwrap_or_default();
    let issuer = config.gitlab.as_ref().map_or("", |g| g.issuer.as_str());
    Ok(crate::webhook::gitlab::deployment_request(
        issuer,
        timeout,
        "offline",
        hook.deployment(),
        &info,
        now,
    ))
}

/// Evaluates an evidence bundle as the service does for `POST /v1/verdicts`
/// with `evidence`, in every verdict mode (the environment's evidence
/// schema, then the configured Rego policies in process, or the
/// environment's OPA server); the attested actor (if a token was given)
/// stands for the poster.
async fn evaluate_offline(
    config: &Config,
    policy: Option<&crate::config::EnvironmentPolicy>,
    verdict: &mut Verdict,
    bundle: &Value,
    attestation: Option<&Attestation>,
    now: OffsetDateTime,
) -> Result<(), String> {
    let policy = policy.ok_or_else(|| format!("environment `{}` is not configured", verdict.environment))?;
    let mut policy = policy.clone();
    if policy.verdict.policy.is_none() {
        policy.verdict.policy = verdict.policy.clone();
    }
    if policy.verdict.policy.is_none() {
        return Err(format!(
            "environments.{}.verdict.policy names no query to evaluate",
            policy.name
        ));
    }
    let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let policies = crate::server::load_policies(config, http)
        .await
        .map_err(|e| e.to_string())?;
    if policy.verdict.mode != crate::config::VerdictMode::Opa && policies.engine().is_none() {
        return Err("no [policies] paths or bundles are configured".into());
    }
    let (actor, claims) = attestation
        .map(|a| (a.actor.clone(), a.claims.clone()))
        .unwrap_or_default();
    let poster = crate::verdict::Poster {
        repository: &verdict.repository,
        actor: &actor,
        claims: &claims,
    };
    let evaluated = crate::verdict::evaluate_evidence(
        &policies,
        &policy,
        bundle,
        &verdict.sha,
        poster,
        verdict.evidence_digest.as_deref(),
        now,
    )
    .await
    .map_err(|e| match e {
        crate::verdict::EvaluateError::Invalid { message, .. } => format!("invalid evidence: {message}"),
        crate::verdict::EvaluateError::Unavailable(message) => message,
    })?;
    verdict.allow = evaluated.allow;
    verdict.reasons = evaluated.reasons;
    verdict.source = evaluated.source;
    verdict.policy = Some(evaluated.policy);
    verdict.evidence_digest = Some(evaluated.evidence_digest);
    verdict.policy_revision = Some(evaluated.policy_revision);
    Ok(())
}
