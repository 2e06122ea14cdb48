//! Telling the person waiting: while a GitHub request is pending, a status
//! report on the deployment names what is missing and links the request;
//! a new one is posted whenever what is missing changes, at most
//! [`MAX_STATUS_REPORTS`] per deployment (GitHub's own limit).
//!
//! Reports go out in the background: a slow or failing GitHub never delays
//! or changes a decision. They share the App's API rate limit with the
//! reviews, so each replica posts at most `[github]
//! status_reports_per_minute` of them ([`Budget`]); one over the budget is
//! skipped (and counted), never queued: the next change is reported again. Each report first claims one of the request's ten
//! slots in the store (insert-if-absent), so replicas together never post
//! more than ten; the gate calls [`Gate::report_status`] only after its
//! compare-and-set recorded a changed pending decision, so each change is
//! reported once.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, warn};

use super::{DELIVERY_TTL, Gate};
use crate::decision::{Decision, Outcome};
use crate::domain::{DeploymentRequest, Platform};
use crate::platform::github::MAX_STATUS_REPORTS;
use crate::state::{StateError, Store};

/// A token bucket: up to `per_minute` at once, refilled at `per_minute` a
/// minute. Zero takes nothing.
pub(super) struct Budget {
    per_minute: u32,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub(super) fn new(per_minute: u32) -> Self {
        Budget {
            per_minute,
            state: Mutex::new((f64::from(per_minute), Instant::now())),
        }
    }

    /// Takes a token if one is left.
    pub(super) fn take(&self) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        let cap = f64::from(self.per_minute);
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * cap / 60.0).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Claims the next of a request's [`MAX_STATUS_REPORTS`] status report
/// slots (insert-if-absent, so replicas never share one): `Some(1..=10)`,
/// or `None` once all are taken.
pub async fn claim_status_slot(store: &dyn Store, request: &str) -> Result<Option<u32>, StateError> {
    for k in 1..=MAX_STATUS_REPORTS {
        if store
            .mark_delivery(&format!("status-report:{request}:{k}"), DELIVERY_TTL)
            .await?
        {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

impl Gate {
    /// Posts a status report for `req` (pending, as just recorded) in the
    /// background, if it is a GitHub request answered for real (not in dry
    /// run), what is missing differs from `before` (by reason code), and a
    /// slot is left.
    pub(super) fn report_status(self: &Arc<Self>, before: Option<&Decision>, req: &DeploymentRequest) {
        let (Some(api), Some(decision)) = (self.platforms.github_api.clone(), req.decision.as_ref()) else {
            return;
        };
        if req.platform != Platform::Github || self.config.server.dry_run || decision.outcome != Outcome::Pending {
            return;
        }
        let codes = |d: &Decision| d.reasons.iter().map(|r| r.code).collect::<Vec<_>>();
        if before.is_some_and(|b| b.outcome == Outcome::Pending && codes(b) == codes(decision)) {
            return;
        }
        if !self.status_budget.take() {
            self.metrics.status_reports_skipped.inc();
            debug!(request = %req.id, "status report skipped: github.status_reports_per_minute is spent");
            return;
        }
        let gate = Arc::clone(self);
        let comment = self.status_comment(req, decision);
        let req = req.clone();
        self.tasks.spawn_on(
            async move {
                let slot = match claim_status_slot(gate.store.as_ref(), &req.id).await {
                    Ok(Some(slot)) => slot,
                    Ok(None) => {
                        debug!(request = %req.id, "{MAX_STATUS_REPORTS} status reports posted already; GitHub takes no more");
                        return;
                    }
                    Err(e) => {
                        warn!(request = %req.id, error = %e, "cannot claim a status report slot; none is posted");
                        return;
                    }
                };
                let result = api.status_report(&req, &comment).await;
                if result.ok() {
                    gate.metrics.status_reports_ok.inc();
                    debug!(request = %req.id, slot, "status report posted");
                } else {
                    gate.metrics.status_reports_failed.inc();
                    warn!(request = %req.id, slot, status = ?result.status, detail = %result.detail, "status report not taken");
                }
            },
            &self.runtime,
        );
    }

    /// The report: Markdown naming each missing input and linking the
    /// request, within GitHub's 1024 characters.
    fn status_comment(&self, req: &DeploymentRequest, decision: &Decision) -> String {
        let base = self.config.server.public_url.as_str().trim_end_matches('/');
        let link = format!("{base}/v1/requests/{}", req.id);
        let short: String = req.sha.chars().take(12).collect();
        let head = format!(
            "**portcullis is waiting** before the deployment of `{short}` to **{}**. Missing:\n",
            req.environment
        );
        let tail = format!("\nRequest: {link}");
        let mut body = String::new();
        for reason in &decision.reasons {
            let line = format!("- `{}`: {}\n", reason.code.as_str(), reason.message);
            if head.chars().count() + body.chars().count() + line.chars().count() + tail.chars().count() > 1024 {
                body.push_str("- …\n");
                break;
            }
            body.push_str(&line);
        }
        format!("{head}{body}{tail}")
    }
}
