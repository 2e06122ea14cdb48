//! GitLab webhooks: `X-Gitlab-Token` and Standard Webhooks signature
//! verification, the delivery's dedup key, and the Deployment Hook payload.
//!
//! # Acceptance rule
//!
//! A delivery may carry two credentials: the plain `X-Gitlab-Token` (the
//! webhook's "secret token") and a Standard Webhooks signature
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`, made with the
//! webhook's "signing token"). [`verify`] accepts a delivery when
//!
//! 1. at least one credential that portcullis is configured to check is
//!    present (`X-Gitlab-Token` with `gitlab.webhook_token`,
//!    `webhook-signature` with `gitlab.signing_token`), else
//!    [`WebhookError::MissingSignature`]; and
//! 2. every such credential that is present verifies: the token equals
//!    `webhook_token` (constant time), and the signature header holds a
//!    `v1,<base64>` entry equal to HMAC-SHA256 of `"{id}.{timestamp}.{body}"`
//!    under the `whsec_` key, with `webhook-timestamp` within
//!    `signature_tolerance` of now. A wrong one refuses the delivery even
//!    when the other is right.
//!
//! A credential that portcullis is not configured for is ignored: signature
//! headers without a `signing_token`, or a token without a `webhook_token`.

use serde::Deserialize;
use time::OffsetDateTime;

use super::{WebhookError, parse_error};
use crate::config::GitlabConfig;
use crate::crypto::standard_webhooks_key;
use crate::crypto::{hmac_sha256_verify, secrets_equal, sha256_hex};
use crate::domain::{DeploymentRequest, Platform, Reason, ReasonCode, RequestStatus, RunAttempt, Target, deadline};

/// Header names, lower-case: the header lookup is expected to be
/// case-insensitive (actix's `HeaderMap` is).
const TOKEN_HEADER: &str = "x-gitlab-token";
const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A dedup key longer than this, or with characters other than visible
/// ASCII, is replaced by its SHA-256, so a header cannot bloat state keys.
const MAX_DEDUP_KEY_CHARS: usize = 128;

/// Checks a delivery's credentials by the acceptance rule in the module
/// docs. `headers` looks a header up by its lower-case name; `now` is the
/// clock for the timestamp check.
pub fn verify(
    config: &GitlabConfig,
    headers: &impl Fn(&str) -> Option<String>,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), WebhookError> {
    let mut checked = false;
    if let Some(signing) = &config.signing_token
        && let Some(signature) = headers(SIGNATURE_HEADER)
    {
        let id = headers(ID_HEADER).ok_or(WebhookError::MissingHeader(ID_HEADER))?;
        let timestamp = headers(TIMESTAMP_HEADER).ok_or(WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
        verify_signature(
            signing.expose(),
            &id,
            &timestamp,
            &signature,
            body,
            now,
            config.signature_tolerance,
        )?;
        checked = true;
    }
    if let Some(expected) = &config.webhook_token
        && let Some(token) = headers(TOKEN_HEADER)
    {
        // Hashing first hides the expected token's length from timing.
        let given = sha256_hex(token.as_bytes());
        let wanted = sha256_hex(expected.expose().as_bytes());
        if !secrets_equal(given.as_bytes(), wanted.as_bytes()) {
            return Err(WebhookError::BadSignature);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(WebhookError::MissingSignature)
    }
}

/// Verifies one Standard Webhooks signature header. The signature is
/// checked before the timestamp, so [`WebhookError::StaleTimestamp`] is
/// only ever said of a delivery that GitLab really signed (a late or
/// replayed one).
fn verify_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    header: &str,
    body: &[u8],
    now: OffsetDateTime,
    tolerance: std::time::Duration,
) -> Result<(), WebhookError> {
    use base64::Engine;
    let key = standard_webhooks_key(secret).ok_or(WebhookError::BadSignature)?;
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    let matches = header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .any(|sig| hmac_sha256_verify(&key, &signed, &sig));
    if !matches {
        return Err(WebhookError::BadSignature);
    }
    let sent: i64 = timestamp.trim().parse().map_err(|_| WebhookError::BadSignature)?;
    let skew = now.unix_timestamp().abs_diff(sent);
    if skew > tolerance.as_secs() {
        return Err(WebhookError::StaleTimestamp);
    }
    Ok(())
}

/// The key that identifies a delivery across GitLab's resends:
/// `Idempotency-Key`, else `webhook-id`. An odd value (too long, or not
/// visible ASCII) is replaced by `sha256:<hex>` of itself.
pub fn dedup_key(headers: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let raw = headers(IDEMPOTENCY_HEADER)
        .filter(|v| !v.trim().is_empty())
        .or_else(|| headers(ID_HEADER).filter(|v| !v.trim().is_empty()))?;
    let key = raw.trim();
    let plain = key.len() <= MAX_DEDUP_KEY_CHARS && key.bytes().all(|b| b.is_ascii_graphic());
    Some(if plain {
        key.to_owned()
    } else {
        format!("sha256:{}", sha256_hex(key.as_bytes()))
    })
}

/// A deployment's status as a Deployment Hook reports it. `Approved` and
/// `Rejected` report an approval action (newer GitLab, Premium), not a
/// deployment state: the deployment itself may still be blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentStatus {
    Created,
    Blocked,
    Approved,
    Rejected,
    Running,
    Success,
    Failed,
    Canceled,
    Skipped,
    /// A status this version does not know; the gate ignores it.
    Other(String),
}

impl DeploymentStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "blocked" => Self::Blocked,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "running" => Self::Running,
            "success" => Self::Success,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "skipped" => Self::Skipped,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::Blocked => "blocked",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
            Self::Other(s) => s,
        }
    }
}

/// A GitLab user as hooks describe one (`User#hook_attrs`). `email` is
/// left out: GitLab redacts it, and the audit does not need it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookUser {
    #[serde(default)]
    pub id: Option<u64>,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The protected environment's approval rule an approval counted for
/// (`ProtectedEnvironments::ApprovalRule#hook_attrs`): set only where the
/// environment has multiple approval rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookApprovalRule {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub user_id: Option<u64>,
    #[serde(default)]
    pub group_id: Option<u64>,
    #[serde(default)]
    pub access_level: Option<u32>,
    #[serde(default)]
    pub access_level_description: Option<String>,
    #[serde(default)]
    pub required_approvals: Option<u32>,
}

/// The approval an `approved` or `rejected` hook reports
/// (`Deployments::Approval#hook_attrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookApproval {
    pub id: Option<u64>,
    /// `approved` or `rejected`.
    pub status: Option<String>,
    pub comment: Option<String>,
    pub user_id: Option<u64>,
    pub created_at: Option<String>,
    pub approval_rule: Option<HookApprovalRule>,
}

/// The fields of a Deployment Hook the gate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentHook {
    pub status: DeploymentStatus,
    pub status_changed_at: Option<String>,
    pub deployment_id: u64,
    /// The job that runs the deployment (`deployable_id`); none for
    /// deployments made through the API or by trigger jobs.
    pub job_id: Option<u64>,
    pub job_url: Option<String>,
    pub environment: String,
    pub project_id: u64,
    pub project_path: String,
    pub project_url: Option<String>,
    /// GitLab's short sha: the full one comes from the deployments API.
    pub short_sha: Option<String>,
    pub commit_url: Option<String>,
    pub git_ref: Option<String>,
    /// Who triggered the deployment.
    pub user: Option<HookUser>,
    /// Who approved or rejected, on `approved` and `rejected` hooks.
    pub approver: Option<HookUser>,
    pub approval: Option<HookApproval>,
}

impl DeploymentHook {
    /// The username of whoever approved or rejected: the hook's `approver`,
    /// else a `user` inside `approval`.
    pub fn approver_username(&self) -> Option<&str> {
        self.approver.as_ref().map(|u| u.username.as_str())
    }
}

/// What a GitLab delivery is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitlabEvent {
    Deployment(Box<DeploymentHook>),
    /// Another `object_kind`: answered 202 and ignored.
    Ignored(String),
}

#[derive(Deserialize)]
struct Kind {
    object_kind: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    status: String,
    status_changed_at: Option<String>,
    deployment_id: u64,
    deployable_id: Option<u64>,
    deployable_url: Option<String>,
    environment: String,
    project: PayloadProject,
    short_sha: Option<String>,
    commit_url: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    user: Option<HookUser>,
    approver: Option<HookUser>,
    approval: Option<PayloadApproval>,
    /// Accepted at the top level too, should GitLab place it there.
    approval_rule: Option<HookApprovalRule>,
}

#[derive(Deserialize)]
struct PayloadProject {
    id: u64,
    path_with_namespace: String,
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct PayloadApproval {
    id: Option<u64>,
    status: Option<String>,
    comment: Option<String>,
    user_id: Option<u64>,
    user: Option<HookUser>,
    created_at: Option<String>,
    approval_rule: Option<HookApprovalRule>,
}

/// Parses a verified delivery. A Deployment Hook must name its status,
/// deployment, environment and project; any other `object_kind` is
/// [`GitlabEvent::Ignored`].
pub fn parse(body: &[u8]) -> Result<GitlabEvent, WebhookError> {
    let kind: Kind = serde_json::from_slice(body).map_err(|e| parse_error(&e))?;
    let kind = kind
        .object_kind
        .ok_or_else(|| WebhookError::Malformed("missing field `object_kind`".into()))?;
    if kind != "deployment" {
        return Ok(GitlabEvent::Ignored(kind));
    }
    let p: Payload = serde_json::from_slice(body).map_err(|e| parse_error(&e))?;
    if p.environment.trim().is_empty() {
        return Err(WebhookError::Malformed("`environment` is empty".into()));
    }
    if p.project.path_with_namespace.trim().is_empty() {
        return Err(WebhookError::Malformed("`project.path_with_namespace` is empty".into()));
    }
    let top_rule = p.approval_rule;
    let (approval, approval_user) = match p.approval {
        Some(a) => (
            Some(HookApproval {
                id: a.id,
                status: a.status,
                comment: a.comment,
                user_id: a.user_id,
                created_at: a.created_at,
                approval_rule: a.approval_rule.or(top_rule),
            }),
            a.user,
        ),
        None => (None, None),
    };
    Ok(GitlabEvent::Deployment(Box::new(DeploymentHook {
        status: DeploymentStatus::parse(&p.status),
        status_changed_at: p.status_changed_at,
        deployment_id: p.deployment_id,
        job_id: p.deployable_id,
        job_url: p.deployable_url,
        environment: p.environment,
        project_id: p.project.id,
        project_path: p.project.path_with_namespace,
        project_url: p.project.web_url,
        short_sha: p.short_sha,
        commit_url: p.commit_url,
        git_ref: p.git_ref,
        user: p.user,
        approver: p.approver.or(approval_user),
        approval,
    })))
}

/// A deployment waiting for approval, as a `blocked` hook or the poller's
/// listing names it.
#[derive(Debug, Clone, Copy)]
pub struct BlockedDeployment<'a> {
    pub project_id: u64,
    pub project_path: &'a str,
    pub deployment_id: u64,
    pub environment: &'a str,
    pub job_id: Option<u64>,
}

impl DeploymentHook {
    /// The deployment this hook is about.
    pub fn deployment(&self) -> BlockedDeployment<'_> {
        BlockedDeployment {
            project_id: self.project_id,
            project_path: &self.project_path,
            deployment_id: self.deployment_id,
            environment: &self.environment,
            job_id: self.job_id,
        }
    }
}

/// Builds the GitLab deployment request from a blocked deployment and what
/// the deployments API says of it (the full sha and the pipeline). A
/// disagreement between the two, or a deployment without a pipeline, is an
/// intake problem that rejects the request.
pub fn deployment_request(
    issuer: &str,
    pending_timeout: std::time::Duration,
    delivery: &str,
    blocked: BlockedDeployment<'_>,
    info: &crate::platform::gitlab::DeploymentInfo,
    now: OffsetDateTime,
) -> DeploymentRequest {
    let mut intake_problems = Vec::new();
    if let Some(api_path) = info.project_path.as_deref()
        && !api_path.eq_ignore_ascii_case(blocked.project_path)
    {
        intake_problems.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!(
                "the hook names project `{}`, GitLab's deployments API `{api_path}`",
                blocked.project_path
            ),
        ));
    }
    if info.environment != blocked.environment {
        intake_problems.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!(
                "the hook names environment `{}`, the deployment `{}`",
                blocked.environment, info.environment
            ),
        ));
    }
    let run = match info.pipeline_id {
        Some(p) => p.to_string(),
        None => {
            intake_problems.push(Reason::new(
                ReasonCode::IdentityMismatch,
                "the deployment has no pipeline, so no CI identity can be attested for it",
            ));
            String::new()
        }
    };
    DeploymentRequest {
        id: request_id(blocked.project_id, blocked.deployment_id, blocked.environment),
        platform: Platform::Gitlab,
        issuer: issuer.to_string(),
        repository: blocked.project_path.to_string(),
        run,
        environment: blocked.environment.to_string(),
        sha: info.sha.to_string(),
        target: Target::Gitlab {
            project_id: blocked.project_id,
            deployment_id: blocked.deployment_id,
            job_id: info.job_id.or(blocked.job_id),
        },
        delivery: delivery.to_string(),
        received_at: now,
        deadline: deadline(now, pending_timeout),
        intake_problems,
        reviews: Vec::new(),
        status: RequestStatus::Pending,
        decision: None,
        // GitLab has no attempts: a retried job is a new deployment, and its
        // user (who started it) is the identity checked.
        run_attempt: Some(RunAttempt {
            number: 0,
            actor: None,
            triggering_actor: info.user.clone(),
            read: true,
        }),
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

/// GitLab deployment ids are unique per instance, so the request id needs
/// neither the pipeline nor the project path (status hooks carry neither
/// reliably): every replica and every later hook derives the same id.
pub fn request_id(project_id: u64, deployment_id: u64, environment: &str) -> String {
    DeploymentRequest::derive_id(
        Platform::Gitlab,
        &project_id.to_string(),
        &deployment_id.to_string(),
        environment,
    )
}

#[cfg(test)]
mod tests;
