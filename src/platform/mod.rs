//! Answering the platform: GitHub's deployment protection rule review and
//! GitLab's deployment approval. The gate calls [`PlatformClient::answer`]
//! only after the decision is durably audited, and only as lease holder.
//!
//! - `http`: the one retrying send both clients use, and its typed
//!   failure ([`CallFailure`], [`FailureKind`]).
//! - `comment`: the answer comment and each platform's limit on it.
//! - [`github`], [`gitlab`]: the two clients.
//! - [`redeliver`]: asks GitHub again for webhook deliveries that failed.

pub(crate) mod comment;
pub mod github;
pub mod gitlab;
pub(crate) mod http;
pub mod redeliver;

use async_trait::async_trait;

pub(crate) use comment::answer_comment;
pub use http::{CallFailure, FailureKind, RetryPolicy};

use crate::domain::DeploymentRequest;

/// What one answer to a platform came to. Never an approval by itself: it is
/// recorded as `platform_result` in the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// `None`: the platform took the answer (or had already taken one:
    /// GitHub's 422 "already reviewed"). Otherwise why it did not, and
    /// whether answering again may help.
    pub failure: Option<FailureKind>,
    /// HTTP status of the last attempt, if a response came.
    pub status: Option<u16>,
    /// A short, secret-free account for logs and the audit record.
    pub detail: String,
}

impl CallResult {
    /// The platform took the answer.
    pub fn done(status: Option<u16>, detail: impl Into<String>) -> Self {
        CallResult {
            failure: None,
            status,
            detail: detail.into(),
        }
    }

    /// The answer was not taken, for a reason of kind `kind`.
    pub fn failed(kind: FailureKind, status: Option<u16>, detail: impl Into<String>) -> Self {
        CallResult {
            failure: Some(kind),
            status,
            detail: detail.into(),
        }
    }

    /// Did the platform take the answer?
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Failed in a way a later answer may get past (transient or
    /// rate-limited); a definite refusal is not retried.
    pub fn retryable(&self) -> bool {
        self.failure.is_some_and(FailureKind::retryable)
    }
}

impl From<CallFailure> for CallResult {
    fn from(f: CallFailure) -> Self {
        CallResult::failed(f.kind, f.status, f.detail)
    }
}

#[async_trait]
pub trait PlatformClient: Send + Sync + 'static {
    /// Approves or rejects the request on its platform, with `comment` (cut
    /// to the platform's limit). Retries transient failures itself; never
    /// panics; never errs: a failure is a `CallResult` with its
    /// [`FailureKind`].
    async fn answer(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult;
}
