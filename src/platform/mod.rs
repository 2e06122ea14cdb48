//! Answering the platform: GitHub's deployment protection rule review and
//! GitLab's deployment approval. The gate calls [`PlatformClient::answer`]
//! only after the decision is durably audited, and only as lease holder.

pub mod github;
pub mod gitlab;
pub mod redeliver;

use async_trait::async_trait;

use crate::domain::DeploymentRequest;

/// What one answer to a platform came to. Never an approval by itself: it is
/// recorded as `platform_result` in the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// The platform took the answer (or had already taken one: GitHub's 422
    /// "already reviewed").
    pub ok: bool,
    /// HTTP status of the last attempt, if a response came.
    pub status: Option<u16>,
    /// A short, secret-free account for logs and the audit record.
    pub detail: String,
}

#[async_trait]
pub trait PlatformClient: Send + Sync + 'static {
    /// Approves or rejects the request on its platform, with `comment`.
    /// Retries transient failures itself; never panics; never errs: a
    /// failure is a `CallResult` with `ok = false`.
    async fn answer(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult;
}
