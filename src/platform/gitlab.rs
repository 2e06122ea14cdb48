//! GitLab API client: reading deployments, and approving or rejecting a
//! blocked one.
//!
//! portcullis answers as its bot user (a personal, project or group access
//! token, sent as `PRIVATE-TOKEN`) with
//! `POST {url}/api/v4/projects/:id/deployments/:deployment_id/approval`
//! and, with `play_after_approval`, starts the deploy job with
//! `POST {url}/api/v4/projects/:id/jobs/:job_id/play`: on an environment
//! with approval rules GitLab leaves the approved job manual.
//!
//! # Why reqwest and not the `gitlab` crate
//!
//! The issue suggested the `gitlab` crate (0.1905) with our own
//! `gitlab::api::Endpoint` for the approval call. Its `api` module,
//! `Endpoint` and `AsyncClient` exist only behind the crate's `client_api`
//! feature, so `default-features = false` leaves nothing to build on.
//! `client_api` does share our reqwest 0.13 (no second HTTP stack), but it
//! turns on reqwest's `blocking` client and brings about thirty crates
//! (`graphql_client` and its code generator on syn 1, `derive_builder`,
//! `chrono`, `cron`, `backtrace`, ...), for two endpoints it has (get a
//! deployment, play a job): the approval endpoint is missing, and retries,
//! timeouts and the reading of GitLab's error messages would be ours
//! anyway. Four plain requests over the existing reqwest client are
//! smaller.
//!
//! Failures of [`PlatformClient::answer`] never become errors for the
//! caller: it returns a [`CallResult`] whose `detail` is short, names the
//! likely cause, and carries no secret (no token, no upstream body beyond
//! GitLab's `message`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::github::{RetryPolicy, join_api_path};
use super::{CallResult, PlatformClient};
use crate::config::{GitlabConfig, Secret};
use crate::domain::{CommitSha, DeploymentRequest, Target};

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
/// GitLab refuses an approval comment longer than this
/// (`Deployments::Approval` validates `comment, length: { maximum: 255 }`).
pub const MAX_COMMENT_CHARS: usize = 255;
/// How much of GitLab's `message` a detail may quote.
const MAX_MESSAGE_CHARS: usize = 200;
/// Upper bounds on response bodies read into memory.
const MAX_BODY: usize = 256 * 1024;
const MAX_PAGE_BODY: usize = 8 * 1024 * 1024;
/// GitLab's largest page, and how many pages the blocked list reads at
/// most: a project with more blocked deployments than this has bigger
/// problems, and the poller sees the rest once these are answered.
const PER_PAGE: u32 = 100;
const MAX_PAGES: u32 = 10;

/// Why a [`GitlabClient`] could not be built. Each message names the
/// configuration key to fix.
#[derive(Debug, thiserror::Error)]
pub enum GitlabClientError {
    #[error("gitlab.token is required to call GitLab")]
    MissingToken,
    #[error("gitlab.url `{0}` cannot have paths joined to it")]
    InvalidUrl(String),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// Why a GitLab read failed. Messages are short and secret-free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitlabApiError {
    /// GitLab answered with a status other than success.
    #[error("GitLab answered {status}{}{}", tries(*attempts), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: u16,
        message: Option<String>,
        attempts: u32,
    },
    /// No answer: timeout or connection failure, after every attempt.
    #[error("{cause}{}", tries(*attempts))]
    Transport { cause: &'static str, attempts: u32 },
    /// GitLab answered 2xx with a body we could not use.
    #[error("GitLab answered {status} with {what}")]
    Malformed { status: u16, what: String },
    /// We refused to make the call.
    #[error("{0}")]
    Refused(String),
}

impl GitlabApiError {
    /// The HTTP status of the last answer, if one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitlabApiError::Status { status, .. } | GitlabApiError::Malformed { status, .. } => Some(*status),
            GitlabApiError::Transport { .. } | GitlabApiError::Refused(_) => None,
        }
    }
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

/// What the deployments API says of one deployment: what the Deployment
/// Hook lacks (the full sha, the pipeline) and the state to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentInfo {
    pub id: u64,
    pub iid: Option<u64>,
    pub project_id: u64,
    /// `group/project`: from the project lookup for the blocked list; for a
    /// single deployment, read from its pipeline's `web_url` when that is
    /// under `gitlab.url` (else `None`: the hook carries the path).
    pub project_path: Option<String>,
    /// `created`, `blocked`, `running`, `success`, `failed`, `canceled`, `skipped`.
    pub status: String,
    pub sha: CommitSha,
    pub git_ref: String,
    pub environment: String,
    /// The deploy job (`deployable.id`); none for API-made deployments.
    pub job_id: Option<u64>,
    pub job_status: Option<String>,
    /// `deployable.pipeline.id`: the run an attestation must come from.
    pub pipeline_id: Option<u64>,
    /// Who triggered the deployment.
    pub user: Option<String>,
    pub created_at: Option<String>,
}

#[derive(Deserialize)]
struct ApiDeployment {
    id: u64,
    iid: Option<u64>,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    status: String,
    created_at: Option<String>,
    user: Option<ApiUser>,
    environment: ApiEnvironment,
    deployable: Option<ApiJob>,
}

#[derive(Deserialize)]
struct ApiUser {
    username: String,
}

#[derive(Deserialize)]
struct ApiEnvironment {
    name: String,
}

#[derive(Deserialize)]
struct ApiJob {
    id: u64,
    status: Option<String>,
    pipeline: Option<ApiPipeline>,
}

#[derive(Deserialize)]
struct ApiPipeline {
    id: u64,
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct ApiProject {
    id: u64,
    path_with_namespace: String,
}

/// One answered HTTP exchange.
struct Answered {
    status: StatusCode,
    body: Vec<u8>,
    next_page: Option<u32>,
}

/// The GitLab client. Cheap to share behind an `Arc`.
pub struct GitlabClient {
    http: reqwest::Client,
    url: Url,
    api: Url,
    token: Secret,
    timeout: Duration,
    retry: RetryPolicy,
    represented_as: Option<String>,
    play_after_approval: bool,
}

impl std::fmt::Debug for GitlabClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabClient")
            .field("url", &self.url.as_str())
            .field("represented_as", &self.represented_as)
            .field("play_after_approval", &self.play_after_approval)
            .finish_non_exhaustive()
    }
}

impl GitlabClient {
    /// Builds the client from `[gitlab]`. Fails when `token` is missing or
    /// `url` cannot take a path.
    pub fn new(config: &GitlabConfig) -> Result<Self, GitlabClientError> {
        let token = config.token.clone().ok_or(GitlabClientError::MissingToken)?;
        if config.url.cannot_be_a_base() {
            return Err(GitlabClientError::InvalidUrl(config.url.to_string()));
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.request_timeout)
            // PRIVATE-TOKEN must never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GitlabClientError::HttpClient(e.to_string()))?;
        Ok(GitlabClient {
            http,
            url: config.url.clone(),
            api: join_api_path(&config.url, &["api", "v4"]),
            token,
            timeout: config.request_timeout,
            retry: RetryPolicy::default(),
            represented_as: config.represented_as.clone().filter(|r| !r.trim().is_empty()),
            play_after_approval: config.play_after_approval,
        })
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            base_delay: retry.base_delay,
        };
        self
    }

    /// `{url}/api/v4/<segments...>`, each segment percent-encoded (a project
    /// path `group/project` becomes one segment, `group%2Fproject`).
    pub fn endpoint(&self, segments: &[&str]) -> Url {
        join_api_path(&self.api, segments)
    }

    /// `GET /api/v4/projects/:id/deployments/:deployment_id`: the full sha,
    /// ref, deploy job, pipeline and status of one deployment. A 2xx
    /// answer without a full sha, ref or environment is
    /// [`GitlabApiError::Malformed`].
    pub async fn deployment(&self, project_id: u64, deployment_id: u64) -> Result<DeploymentInfo, GitlabApiError> {
        let url = self.endpoint(&[
            "projects",
            &project_id.to_string(),
            "deployments",
            &deployment_id.to_string(),
        ]);
        let answered = self.call(Method::GET, url, None, MAX_BODY).await?;
        let status = answered.status.as_u16();
        let parsed: ApiDeployment = serde_json::from_slice(&answered.body).map_err(|_| GitlabApiError::Malformed {
            status,
            what: "no usable deployment".into(),
        })?;
        let info = self
            .deployment_info(parsed, project_id)
            .map_err(|what| GitlabApiError::Malformed { status, what })?;
        if info.id != deployment_id {
            return Err(GitlabApiError::Malformed {
                status,
                what: "another deployment than asked for".into(),
            });
        }
        Ok(info)
    }

    /// `GET /api/v4/projects/:id/deployments?status=blocked`, every page up
    /// to a bound (10 pages of 100), oldest first, for the poller of older
    /// GitLab that sends no `blocked` hook. `project` is a numeric id or a
    /// `group/project` path; it is looked up first (`GET /projects/:id`)
    /// so every entry carries both. Entries without a full sha are skipped
    /// with a warning: they cannot be decided, and stay blocked.
    pub async fn blocked_deployments(&self, project: &str) -> Result<Vec<DeploymentInfo>, GitlabApiError> {
        check_project(project).map_err(GitlabApiError::Refused)?;
        let answered = self
            .call(Method::GET, self.endpoint(&["projects", project]), None, MAX_BODY)
            .await?;
        let status = answered.status.as_u16();
        let found: ApiProject = serde_json::from_slice(&answered.body).map_err(|_| GitlabApiError::Malformed {
            status,
            what: "no usable project".into(),
        })?;
        let project_id = found.id.to_string();
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let mut url = self.endpoint(&["projects", &project_id, "deployments"]);
            url.query_pairs_mut()
                .append_pair("status", "blocked")
                .append_pair("order_by", "id")
                .append_pair("sort", "asc")
                .append_pair("per_page", &PER_PAGE.to_string())
                .append_pair("page", &page.to_string());
            let answered = self.call(Method::GET, url, None, MAX_PAGE_BODY).await?;
            let status = answered.status.as_u16();
            let entries: Vec<Value> =
                serde_json::from_slice(&answered.body).map_err(|_| GitlabApiError::Malformed {
                    status,
                    what: "no list of deployments".into(),
                })?;
            for entry in entries {
                let parsed =
                    serde_json::from_value::<ApiDeployment>(entry).map_err(|_| "an unreadable entry".to_owned());
                match parsed.and_then(|d| self.deployment_info(d, found.id)) {
                    Ok(mut info) => {
                        info.project_path = Some(found.path_with_namespace.clone());
                        out.push(info);
                    }
                    Err(why) => {
                        tracing::warn!(project = %found.path_with_namespace, why, "skipping a blocked deployment")
                    }
                }
            }
            match answered.next_page {
                Some(next) if next > page && page < MAX_PAGES => page = next,
                Some(_) => {
                    tracing::warn!(project = %found.path_with_namespace, pages = page, "blocked deployments beyond the page bound are left for the next poll");
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn deployment_info(&self, d: ApiDeployment, project_id: u64) -> Result<DeploymentInfo, String> {
        let sha = CommitSha::parse(&d.sha).map_err(|_| "no full commit sha".to_owned())?;
        if d.git_ref.is_empty() || d.environment.name.is_empty() {
            return Err("no ref or environment".into());
        }
        let pipeline = d.deployable.as_ref().and_then(|j| j.pipeline.as_ref());
        Ok(DeploymentInfo {
            id: d.id,
            iid: d.iid,
            project_id,
            project_path: pipeline
                .and_then(|p| p.web_url.as_deref())
                .and_then(|u| self.project_path_from(u)),
            status: d.status,
            sha,
            git_ref: d.git_ref,
            environment: d.environment.name,
            job_id: d.deployable.as_ref().map(|j| j.id),
            job_status: d.deployable.as_ref().and_then(|j| j.status.clone()),
            pipeline_id: pipeline.map(|p| p.id),
            user: d.user.map(|u| u.username),
            created_at: d.created_at,
        })
    }

    /// `group/project` from `{url}/group/project/-/pipelines/N`, when the
    /// URL is on `gitlab.url` (its host and any relative root).
    fn project_path_from(&self, web_url: &str) -> Option<String> {
        let u = Url::parse(web_url).ok()?;
        if u.host_str() != self.url.host_str() || u.port_or_known_default() != self.url.port_or_known_default() {
            return None;
        }
        let base: Vec<&str> = self.url.path_segments()?.filter(|s| !s.is_empty()).collect();
        let all: Vec<&str> = u.path_segments()?.filter(|s| !s.is_empty()).collect();
        let rest = all.strip_prefix(base.as_slice())?;
        let dash = rest.iter().position(|s| *s == "-")?;
        (dash > 0 && rest.get(dash + 1) == Some(&"pipelines")).then(|| rest[..dash].join("/"))
    }

    /// Sends one request, retrying timeouts, connection failures and 5xx
    /// answers with back-off. A non-2xx answer becomes
    /// [`GitlabApiError::Status`] with GitLab's message.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        max_body: usize,
    ) -> Result<Answered, GitlabApiError> {
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .header("PRIVATE-TOKEN", self.token.expose());
            if let Some(b) = body {
                request = request.json(b);
            }
            let outcome = tokio::time::timeout(self.timeout, async {
                let mut response = request.send().await?;
                let status = response.status();
                let next_page = response
                    .headers()
                    .get("x-next-page")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                let bytes = super::read_capped(&mut response, max_body).await?;
                Ok::<_, reqwest::Error>(Answered {
                    status,
                    body: bytes,
                    next_page,
                })
            })
            .await;
            let cause = match outcome {
                Ok(Ok(answered)) if answered.status.is_server_error() && attempt < attempts => {
                    tracing::warn!(
                        status = answered.status.as_u16(),
                        attempt,
                        path = url.path(),
                        "GitLab server error; retrying"
                    );
                    None
                }
                Ok(Ok(answered)) if answered.status.is_success() => return Ok(answered),
                Ok(Ok(answered)) => {
                    let status = answered.status;
                    return Err(GitlabApiError::Status {
                        status: status.as_u16(),
                        message: gitlab_message(&answered.body),
                        attempts: if status.is_server_error() { attempts } else { attempt },
                    });
                }
                Ok(Err(e)) => Some(if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                }),
                Err(_) => Some("timed out"),
            };
            if let Some(cause) = cause {
                tracing::warn!(cause, attempt, path = url.path(), "GitLab call failed");
                if attempt >= attempts {
                    return Err(GitlabApiError::Transport { cause, attempts });
                }
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    async fn answer_gitlab(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let Target::Gitlab {
            project_id,
            deployment_id,
            job_id,
        } = &request.target
        else {
            return CallResult {
                ok: false,
                status: None,
                detail: "not a GitLab request".into(),
            };
        };
        let (project, deployment) = (project_id.to_string(), deployment_id.to_string());
        let status = if approve { "approved" } else { "rejected" };
        let mut body = json!({ "status": status, "comment": truncate_comment(comment) });
        if let Some(r) = &self.represented_as {
            body["represented_as"] = json!(r);
        }
        let url = self.endpoint(&["projects", &project, "deployments", &deployment, "approval"]);
        let answered = match self.call(Method::POST, url, Some(&body), MAX_BODY).await {
            Ok(a) => a,
            Err(e) => {
                return CallResult {
                    ok: false,
                    status: e.status(),
                    detail: approval_failure(&e),
                };
            }
        };
        let approval_status = answered.status.as_u16();
        if !approve || !self.play_after_approval {
            return CallResult {
                ok: true,
                status: Some(approval_status),
                detail: format!("GitLab took the approval ({status})"),
            };
        }
        let Some(job_id) = job_id else {
            return CallResult {
                ok: true,
                status: Some(approval_status),
                detail: "GitLab took the approval (approved); the deployment has no job to play".into(),
            };
        };
        // The approval stands whatever happens to the play: a failure here
        // is reported, not retried through a second approval, which GitLab
        // would refuse as "not waiting for approvals".
        let url = self.endpoint(&["projects", &project, "jobs", &job_id.to_string(), "play"]);
        match self.call(Method::POST, url, Some(&json!({})), MAX_BODY).await {
            Ok(played) => CallResult {
                ok: true,
                status: Some(played.status.as_u16()),
                detail: format!("GitLab took the approval (approved) and started job {job_id}"),
            },
            Err(e) => {
                let why = match e.status() {
                    Some(400) => "it is not playable (GitLab started it itself, or it is no longer manual)",
                    Some(403) => "the bot user may not run it (it needs permission to deploy to the environment)",
                    _ => "start it by hand",
                };
                CallResult {
                    ok: true,
                    status: e.status().or(Some(approval_status)),
                    detail: format!("GitLab took the approval (approved); playing job {job_id} failed, {why}: {e}"),
                }
            }
        }
    }
}

#[async_trait]
impl PlatformClient for GitlabClient {
    async fn answer(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let result = self.answer_gitlab(request, approve, comment).await;
        tracing::info!(
            request = %request.id,
            ok = result.ok,
            status = result.status,
            detail = %result.detail,
            "answered GitLab"
        );
        result
    }
}

/// A failed approval call as an audit line: the status, the likely cause,
/// and GitLab's own message. GitLab's approval service answers 400 for
/// every refusal (not waiting, no permission, own deployment, unknown
/// `represented_as`), so the cause is read from its message.
fn approval_failure(e: &GitlabApiError) -> String {
    let cause = match e {
        GitlabApiError::Status {
            status: 400, message, ..
        } => {
            let m = message.as_deref().unwrap_or("").to_ascii_lowercase();
            if m.contains("not waiting") {
                "the deployment is not waiting for approval (already approved or rejected, or no longer blocked)"
            } else if m.contains("permission") {
                "the bot user is not an eligible approver for this protected environment"
            } else if m.contains("own deployment") {
                "the bot user triggered this deployment and may not approve its own"
            } else if m.contains("represent") {
                "gitlab.represented_as names no approval rule the bot user belongs to"
            } else if m.contains("not protected") || m.contains("not configured") {
                "the environment is not protected or has no deployment approvals configured"
            } else {
                "GitLab refused the approval"
            }
        }
        GitlabApiError::Status { status: 401, .. } => "gitlab.token is invalid, expired or revoked",
        GitlabApiError::Status { status: 403, .. } => {
            "the bot user may not approve here (not an eligible approver, or the token lacks the api scope)"
        }
        GitlabApiError::Status { status: 404, .. } => {
            "the project or deployment does not exist, or the bot user cannot see it"
        }
        GitlabApiError::Status { .. } | GitlabApiError::Transport { .. } => "GitLab did not take the approval",
        GitlabApiError::Malformed { .. } | GitlabApiError::Refused(_) => "the approval was not made",
    };
    format!("approval: {cause}: {e}")
}

/// GitLab's error text, on one line and at most 200 characters: `message`
/// as a string, a list, or a map of field to messages, else `error`. The
/// rest of an upstream body never leaves this module.
fn gitlab_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let text = match value.get("message").or_else(|| value.get("error"))? {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| match v {
                Value::Array(items) => {
                    format!(
                        "{k} {}",
                        items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
                    )
                }
                Value::String(s) => format!("{k} {s}"),
                _ => k.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => return None,
    };
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| truncate_chars(clean, MAX_MESSAGE_CHARS))
}

/// A project given as a numeric id or a `group/subgroup/project` path.
fn check_project(project: &str) -> Result<(), String> {
    let ok = !project.is_empty()
        && project.len() <= 255
        && project.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err("the project is not a GitLab project id or path".into())
    }
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let end = s.char_indices().nth(max.saturating_sub(1)).map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..end])
        }
    }
}

/// The approval comment, cut to GitLab's 255 characters.
pub fn truncate_comment(comment: &str) -> String {
    truncate_chars(comment, MAX_COMMENT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, token: Option<&str>) -> GitlabConfig {
        GitlabConfig {
            url: Url::parse(url).expect("test URL"),
            token: token.map(Secret::new),
            webhook_token: Some(Secret::new("w")),
            signing_token: None,
            represented_as: None,
            play_after_approval: false,
            signature_tolerance: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            poll: Vec::new(),
        }
    }

    fn client(url: &str) -> GitlabClient {
        GitlabClient::new(&config(url, Some("glpat-secret"))).expect("client")
    }

    #[test]
    fn new_needs_a_token_and_a_base_url() {
        let err = GitlabClient::new(&config("https://gitlab.example.com", None)).expect_err("no token");
        assert_eq!(err.to_string(), "gitlab.token is required to call GitLab");
        let err = GitlabClient::new(&config("mailto:ops@example.com", Some("t"))).expect_err("no base");
        assert!(err.to_string().contains("gitlab.url"), "{err}");
        let debug = format!("{:?}", client("https://gitlab.example.com"));
        assert!(!debug.contains("glpat-secret"), "{debug}");
    }

    #[test]
    fn endpoints_join_under_api_v4_with_any_relative_root() {
        let cases = [
            (
                "root",
                "https://gitlab.example.com",
                "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp",
            ),
            (
                "slash",
                "https://gitlab.example.com/",
                "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp",
            ),
            (
                "relative root",
                "https://example.com/gitlab",
                "https://example.com/gitlab/api/v4/projects/group%2Fsub%2Fapp",
            ),
            (
                "loopback",
                "http://127.0.0.1:8929/",
                "http://127.0.0.1:8929/api/v4/projects/group%2Fsub%2Fapp",
            ),
        ];
        for (name, base, expected) in cases {
            assert_eq!(
                client(base).endpoint(&["projects", "group/sub/app"]).as_str(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn project_path_comes_from_the_pipeline_url_on_the_same_instance() {
        let c = client("https://example.com/gitlab");
        let cases = [
            (
                "nested",
                "https://example.com/gitlab/group/sub/app/-/pipelines/53017",
                Some("group/sub/app"),
            ),
            (
                "other host",
                "https://gitlab.other.example/group/app/-/pipelines/1",
                None,
            ),
            ("outside the root", "https://example.com/group/app/-/pipelines/1", None),
            ("not a pipeline", "https://example.com/gitlab/group/app/-/jobs/1", None),
            ("no path", "https://example.com/gitlab/-/pipelines/1", None),
            ("not a URL", "pipelines", None),
        ];
        for (name, url, expected) in cases {
            assert_eq!(c.project_path_from(url).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn gitlab_messages_are_read_in_every_shape_and_capped() {
        let cases: [(&str, &[u8], Option<&str>); 7] = [
            (
                "string",
                br#"{"message":"This deployment is not waiting for approvals."}"#,
                Some("This deployment is not waiting for approvals."),
            ),
            (
                "list",
                br#"{"message":["Comment is too long (maximum is 255 characters)"]}"#,
                Some("Comment is too long (maximum is 255 characters)"),
            ),
            (
                "fields",
                br#"{"message":{"status":["is invalid"],"comment":["is too long"]}}"#,
                Some("comment is too long; status is invalid"),
            ),
            (
                "error",
                br#"{"error":"status does not have a valid value"}"#,
                Some("status does not have a valid value"),
            ),
            ("html", b"<html>502</html>", None),
            ("other json", br#"{"token":"glpat-x"}"#, None),
            (
                "control characters",
                b"{\"message\":\"403\\nForbidden\"}",
                Some("403 Forbidden"),
            ),
        ];
        for (name, body, expected) in cases {
            assert_eq!(gitlab_message(body).as_deref(), expected, "{name}");
        }
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        assert_eq!(
            gitlab_message(long.as_bytes()).expect("message").chars().count(),
            MAX_MESSAGE_CHARS
        );
    }

    #[test]
    fn approval_failures_name_the_likely_cause() {
        let status = |status: u16, message: &str| GitlabApiError::Status {
            status,
            message: Some(message.into()),
            attempts: 1,
        };
        let cases = [
            (
                status(400, "This deployment is not waiting for approvals."),
                "not waiting for approval",
            ),
            (
                status(
                    400,
                    "You don't have permission to approve this deployment. Contact the project or group owner for help.",
                ),
                "not an eligible approver",
            ),
            (
                status(400, "You cannot approve your own deployment."),
                "may not approve its own",
            ),
            (
                status(
                    400,
                    "There are no approval rules for the given `represent_as` parameter.",
                ),
                "represented_as",
            ),
            (
                status(400, "Deployment approvals is not configured for this environment."),
                "not protected",
            ),
            (status(400, "Comment is too long"), "GitLab refused the approval"),
            (status(401, "401 Unauthorized"), "gitlab.token is invalid"),
            (status(403, "403 Forbidden"), "not an eligible approver"),
            (status(404, "404 Not found"), "does not exist"),
            (
                GitlabApiError::Transport {
                    cause: "timed out",
                    attempts: 3,
                },
                "timed out after 3 attempts",
            ),
        ];
        for (e, expected) in cases {
            let detail = approval_failure(&e);
            assert!(detail.contains(expected), "{detail}");
            assert!(detail.starts_with("approval: "), "{detail}");
        }
        let detail = approval_failure(&status(400, "This deployment is not waiting for approvals."));
        assert!(
            detail.ends_with("GitLab answered 400: This deployment is not waiting for approvals."),
            "{detail}"
        );
    }

    #[test]
    fn comment_is_capped_at_255_chars() {
        assert_eq!(truncate_comment("ok"), "ok");
        assert_eq!(truncate_comment(&"a".repeat(255)), "a".repeat(255));
        assert_eq!(truncate_comment(&"a".repeat(256)), format!("{}…", "a".repeat(254)));
        assert_eq!(truncate_comment(&"é".repeat(300)).chars().count(), 255);
    }

    #[test]
    fn projects_are_ids_or_paths() {
        for good in ["4711", "platform/payments-api", "a/b/c.d_e"] {
            assert!(check_project(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            ".",
            "a b",
            "a?b",
            "a%2Fb",
            &"x".repeat(256),
        ] {
            assert!(check_project(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let policy = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
        };
        for _ in 0..50 {
            let first = policy.delay(1);
            let second = policy.delay(2);
            assert!(
                (Duration::from_millis(80)..=Duration::from_millis(120)).contains(&first),
                "{first:?}"
            );
            assert!(
                (Duration::from_millis(160)..=Duration::from_millis(240)).contains(&second),
                "{second:?}"
            );
        }
    }
}
