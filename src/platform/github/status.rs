//! Status reports: while portcullis waits for a request's inputs, it tells
//! the person waiting why, on GitHub's own page of the deployment. GitHub
//! takes a review body without `state` as a status report for the custom
//! protection rule (Markdown, at most 1024 characters, at most 10 per
//! deployment); the rule stays pending.

use reqwest::StatusCode;
use serde_json::json;

use super::{GithubClient, STEP_REVIEW, STEP_TOKEN};
use crate::domain::{DeploymentRequest, Platform};
use crate::platform::{CallResult, comment};

/// GitHub keeps at most this many status reports per deployment.
pub const MAX_STATUS_REPORTS: u32 = 10;

impl GithubClient {
    /// Posts `comment` as a status report on the request's run: the review
    /// call without `state`. Like [`crate::platform::PlatformClient::answer`]
    /// it never errs: a failure is a [`CallResult`]. GitHub's 422 (the run
    /// no longer waits) is reported as done.
    pub async fn status_report(&self, request: &DeploymentRequest, comment: &str) -> CallResult {
        let (url, installation) = match self.rule_endpoint(request).await {
            Ok(endpoint) => (endpoint.url, endpoint.installation),
            Err(refused) => return refused,
        };
        let body = json!({
            "environment_name": request.environment,
            "comment": comment::cap(Platform::Github, comment),
        });
        match self.review(installation, &url, &body).await {
            Ok(answer) => CallResult::done(Some(answer.status.as_u16()), "GitHub took the status report"),
            Err((STEP_REVIEW, f)) if f.status == Some(StatusCode::UNPROCESSABLE_ENTITY.as_u16()) => {
                CallResult::done(f.status, "GitHub answered 422: the run no longer waits")
            }
            Err((step, f)) => {
                let step = if step == STEP_TOKEN {
                    STEP_TOKEN
                } else {
                    "status report"
                };
                f.in_step(step).into()
            }
        }
    }
}
