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

#[cfg(test)]
mod tests;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::http::{Answer, CallFailure, FailureKind, RetryPolicy, Sender, clean_message, join_api_path};
use super::{CallResult, PlatformClient, comment};
use crate::config::{GitlabConfig, Secret};
use crate::domain::{CommitSha, DeploymentRequest, Platform, Target};

/// The platform's name in details.
const PLATFORM: &str = "GitLab";
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
    HttpClient(#[source] reqwest::Error),
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

/// The GitLab client. Cheap to share behind an `Arc`.
pub struct GitlabClient {
    sender: Sender,
    url: Url,
    api: Url,
    token: Secret,
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
        // PRIVATE-TOKEN never follows a redirect elsewhere: the sender
        // follows none.
        let sender =
            Sender::new(PLATFORM, config.request_timeout, gitlab_message).map_err(GitlabClientError::HttpClient)?;
        Ok(GitlabClient {
            sender,
            url: config.url.clone(),
            api: join_api_path(&config.url, &["api", "v4"]),
            token,
            represented_as: config.represented_as.clone().filter(|r| !r.trim().is_empty()),
            play_after_approval: config.play_after_approval,
        })
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.sender.set_retry_policy(retry);
        self
    }

    /// `{url}/api/v4/<segments...>`, each segment percent-encoded (a project
    /// path `group/project` becomes one segment, `group%2Fproject`).
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Url {
        join_api_path(&self.api, segments)
    }

    /// `GET /api/v4/projects/:id/deployments/:deployment_id`: the full sha,
    /// ref, deploy job, pipeline and status of one deployment. A 2xx
    /// answer without a full sha, ref or environment is a definite
    /// failure with the answer's status.
    pub async fn deployment(&self, project_id: u64, deployment_id: u64) -> Result<DeploymentInfo, CallFailure> {
        let url = self.endpoint(&[
            "projects",
            &project_id.to_string(),
            "deployments",
            &deployment_id.to_string(),
        ]);
        let answer = self.call(Method::GET, url, None, MAX_BODY).await?;
        let status = answer.status.as_u16();
        let parsed: ApiDeployment = serde_json::from_slice(&answer.body)
            .map_err(|_| CallFailure::malformed(PLATFORM, status, "no usable deployment"))?;
        let mut info = self
            .deployment_info(parsed, project_id)
            .map_err(|what| CallFailure::malformed(PLATFORM, status, what))?;
        if info.project_path.is_none() {
            // The deployment does not say its project's path: ask, so that a
            // hook naming another project is caught.
            let answer = self
                .call(
                    Method::GET,
                    self.endpoint(&["projects", &project_id.to_string()]),
                    None,
                    MAX_BODY,
                )
                .await?;
            let found: ApiProject = serde_json::from_slice(&answer.body)
                .map_err(|_| CallFailure::malformed(PLATFORM, answer.status.as_u16(), "no usable project"))?;
            info.project_path = Some(found.path_with_namespace);
        }
        if info.id != deployment_id {
            return Err(CallFailure::malformed(
                PLATFORM,
                status,
                "another deployment than asked for",
            ));
        }
        Ok(info)
    }

    /// `GET /api/v4/projects/:id/deployments?status=blocked`, every page up
    /// to a bound (10 pages of 100), oldest first, for the poller of older
    /// GitLab that sends no `blocked` hook. `project` is a numeric id or a
    /// `group/project` path; it is looked up first (`GET /projects/:id`)
    /// so every entry carries both. Entries without a full sha are skipped
    /// with a warning: they cannot be decided, and stay blocked.
    pub async fn blocked_deployments(&self, project: &str) -> Result<Vec<DeploymentInfo>, CallFailure> {
        check_project(project)?;
        let answer = self
            .call(Method::GET, self.endpoint(&["projects", project]), None, MAX_BODY)
            .await?;
        let found: ApiProject = serde_json::from_slice(&answer.body)
            .map_err(|_| CallFailure::malformed(PLATFORM, answer.status.as_u16(), "no usable project"))?;
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
            let answer = self.call(Method::GET, url, None, MAX_PAGE_BODY).await?;
            let entries: Vec<Value> = serde_json::from_slice(&answer.body)
                .map_err(|_| CallFailure::malformed(PLATFORM, answer.status.as_u16(), "no list of deployments"))?;
            for entry in entries {
                let parsed = serde_json::from_value::<ApiDeployment>(entry).map_err(|_| "an unreadable entry");
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
            match next_page(&answer) {
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

    /// The deployment, or what it lacks.
    fn deployment_info(&self, d: ApiDeployment, project_id: u64) -> Result<DeploymentInfo, &'static str> {
        let sha = CommitSha::parse(&d.sha).map_err(|_| "no full commit sha")?;
        if d.git_ref.is_empty() || d.environment.name.is_empty() {
            return Err("no ref or environment");
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

    /// Sends one request with GitLab's headers and the bot's token,
    /// through the shared retrying send.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        max_body: usize,
    ) -> Result<Answer, CallFailure> {
        self.sender
            .send(method, &url, max_body, |request| {
                let request = request
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header("PRIVATE-TOKEN", self.token.expose());
                Ok(match body {
                    Some(b) => request.json(b),
                    None => request,
                })
            })
            .await
    }

    async fn answer_gitlab(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let Target::Gitlab {
            project_id,
            deployment_id,
            job_id,
        } = &request.target
        else {
            return CallFailure::refused("not a GitLab request").into();
        };
        let (project, deployment) = (project_id.to_string(), deployment_id.to_string());
        let status = if approve { "approved" } else { "rejected" };
        let mut body = json!({ "status": status, "comment": comment::cap(Platform::Gitlab, comment) });
        if let Some(r) = &self.represented_as {
            body["represented_as"] = json!(r);
        }
        let url = self.endpoint(&["projects", &project, "deployments", &deployment, "approval"]);
        let approval_status = match self.call(Method::POST, url, Some(&body), MAX_BODY).await {
            Ok(answer) => answer.status.as_u16(),
            Err(f) => return CallResult::failed(f.kind, f.status, approval_failure(&f)),
        };
        if !approve || !self.play_after_approval {
            return CallResult::done(Some(approval_status), format!("GitLab took the approval ({status})"));
        }
        let Some(job_id) = job_id else {
            return CallResult::done(
                Some(approval_status),
                "GitLab took the approval (approved); the deployment has no job to play",
            );
        };
        // The approval stands whatever happens to the play: a failure here
        // is reported, not retried through a second approval, which GitLab
        // would refuse as "not waiting for approvals".
        let url = self.endpoint(&["projects", &project, "jobs", &job_id.to_string(), "play"]);
        match self.call(Method::POST, url, Some(&json!({})), MAX_BODY).await {
            Ok(played) => CallResult::done(
                Some(played.status.as_u16()),
                format!("GitLab took the approval (approved) and started job {job_id}"),
            ),
            Err(f) => {
                let why = match f.status {
                    Some(400) => "it is not playable (GitLab started it itself, or it is no longer manual)",
                    Some(403) => "the bot user may not run it (it needs permission to deploy to the environment)",
                    _ => "start it by hand",
                };
                CallResult::done(
                    f.status.or(Some(approval_status)),
                    format!("GitLab took the approval (approved); playing job {job_id} failed, {why}: {f}"),
                )
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
            ok = result.ok(),
            failure = ?result.failure,
            status = result.status,
            detail = %result.detail,
            "answered GitLab"
        );
        result
    }
}

/// GitLab's `x-next-page` header: the next page of a list, if any.
fn next_page(answer: &Answer) -> Option<u32> {
    answer
        .headers
        .get("x-next-page")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A failed approval call as an audit line: the status, the likely cause,
/// and GitLab's own message. GitLab's approval service answers 400 for
/// every refusal (not waiting, no permission, own deployment, unknown
/// `represented_as`), so the cause is read from its message.
fn approval_failure(f: &CallFailure) -> String {
    let cause = match (f.kind, f.status) {
        (FailureKind::RateLimited { .. }, _) => "GitLab did not take the approval",
        (_, Some(400)) => {
            let m = f.message.as_deref().unwrap_or("").to_ascii_lowercase();
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
        (_, Some(401)) => "gitlab.token is invalid, expired or revoked",
        (_, Some(403)) => {
            "the bot user may not approve here (not an eligible approver, or the token lacks the api scope)"
        }
        (_, Some(404)) => "the project or deployment does not exist, or the bot user cannot see it",
        (FailureKind::Definite, None) => "the approval was not made",
        _ => "GitLab did not take the approval",
    };
    format!("approval: {cause}: {f}")
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
    clean_message(&text)
}

/// A project given as a numeric id or a `group/subgroup/project` path.
fn check_project(project: &str) -> Result<(), CallFailure> {
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
        Err(CallFailure::refused("the project is not a GitLab project id or path"))
    }
}
