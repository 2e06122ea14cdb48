//! Answering the platform: GitHub's deployment protection rule review and
//! GitLab's deployment approval. The gate calls [`PlatformClient::answer`]
//! only after the decision is durably audited, and only as lease holder.

pub mod github;
pub mod gitlab;
pub mod redeliver;

use std::time::Duration;

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

/// How many times a call is tried, and the first back-off delay (doubled
/// after each attempt, with ±20% jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let mut byte = [0u8; 1];
        // A failed RNG only loses the jitter, never the retry.
        let spread = match aws_lc_rs::rand::fill(&mut byte) {
            Ok(()) => f64::from(byte[0]) / 255.0,
            Err(_) => 0.5,
        };
        nominal.mul_f64(0.8 + 0.4 * spread)
    }
}

/// Reads a response body up to `max` bytes; past the cap the rest is not
/// read (a platform's error message is short, and an oversized answer then
/// fails to parse and counts as malformed).
pub(crate) async fn read_capped(response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > max {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
