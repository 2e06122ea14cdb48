//! The gate: turns inputs (deployment requests, attestations, verdicts,
//! reviews, the clock) into decisions, and decisions into platform answers,
//! exactly once per request and never before the decision is durably audited.
//!
//! Every input re-evaluates the requests it may unblock. A final decision is
//! acted on by the holder of the request's lease only: it writes `Deciding`
//! (compare-and-set), appends the `decision` record (durable), calls the
//! platform, appends `platform_result`, writes `Done`. A replica that dies
//! anywhere in between leaves `Deciding` behind with an expiring lease; the
//! sweeper of any replica re-drives it, reusing the recorded decision, and the
//! platform's "already reviewed" answer makes a repeated call harmless.
//!
//! - [`inputs`]: requests, attestations, verdicts and reviews coming in;
//! - [`decide`]: evaluation under the lease, the audit-then-answer sequence;
//! - [`events`]: the one place that builds the gate's audit records;
//! - [`gitlab`]: GitLab status hooks and the blocked-deployment poller;
//! - [`break_glass`]: emergency grants: asked, confirmed, used, expired,
//!   reviewed afterwards, overdue reviews reminded;
//! - [`metrics`]: the counters behind `/metrics`;
//! - `status`: GitHub status reports while a request waits.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::domain::{ErrorCode, Platform, RequestStatus};
use crate::identity::{TokenError, Verifier};
use crate::platform::PlatformClient;
use crate::state::{Cas, SharedStore, StateError};

mod break_glass;
mod decide;
mod events;
mod gitlab;
mod inputs;
mod metrics;
mod status;

pub use crate::domain::VerdictBody;
pub use break_glass::{GrantAsk, GrantStep};
pub use inputs::ReviewOutcome;
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics, Scraped};
pub use status::claim_status_slot;

/// How often the sweeper looks for timed-out and abandoned requests.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How soon an evaluation that failed on the store or the audit trail runs again.
const EVALUATE_RETRY: Duration = Duration::from_secs(2);
/// Evaluations running at once. A burst waits as tasks holding an id, not as
/// evaluations holding clones of their requests, attestations and verdicts
/// while they wait for the audit fsync and the platform.
const EVALUATIONS_IN_FLIGHT: usize = 256;
/// How long delivery ids are remembered for dedup.
pub const DELIVERY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The platform clients the gate answers through.
#[derive(Clone, Default)]
pub struct Platforms {
    pub github: Option<Arc<dyn PlatformClient>>,
    pub gitlab: Option<Arc<dyn PlatformClient>>,
    /// GitHub's read API (workflow runs: a re-run's attempt and starter);
    /// present whenever the App has credentials, dry run or not.
    pub github_api: Option<Arc<crate::platform::github::GithubClient>>,
    /// GitLab's read API (deployment lookups, the blocked-deployment poller);
    /// present whenever a GitLab token is configured, dry run or not.
    pub gitlab_api: Option<Arc<crate::platform::gitlab::GitlabClient>>,
}

/// Told whenever a request changes (received, pending with other reasons,
/// decided, answered, reviewed), to mirror it elsewhere (Slack). Called in
/// the background: a slow or failing notifier never delays or changes a
/// decision. Implementations re-read the request, so calls may coalesce.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn request_changed(&self, gate: Arc<Gate>, request_id: String);
    /// A break-glass grant took `step` (the alert channel is told). Called
    /// in the background, like [`Notifier::request_changed`].
    async fn grant_changed(&self, _gate: Arc<Gate>, _grant_id: String, _step: GrantStep) {}
}

/// Why the gate could not take an input. Each maps to an HTTP answer by its
/// [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("the audit trail is unavailable: {0}")]
    Audit(String),
    /// The input was refused (a bad body, an untrusted poster, an unknown
    /// request) or a dependency could not answer (an OPA server); the code
    /// says which.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

/// A full audit queue, for a caller that refuses its input rather than
/// wait: 503 `overloaded`.
impl From<crate::audit::QueueFull> for GateError {
    fn from(_: crate::audit::QueueFull) -> Self {
        GateError::refused(ErrorCode::Overloaded, "portcullis is overloaded; try again")
    }
}

impl GateError {
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        GateError::Refused {
            code,
            message: message.into(),
        }
    }
}

pub struct Gate {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub audit: Arc<dyn AuditLog>,
    pub verifier: Arc<Verifier>,
    platforms: Platforms,
    /// This replica's name in leases.
    holder: String,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
    pub metrics: Metrics,
    notifier: std::sync::OnceLock<Arc<dyn Notifier>>,
    /// Rego policies, evidence schemas and the OPA client, for posted evidence.
    policies: Arc<crate::verdict::PolicySet>,
    /// The trail's Merkle tree, checkpoints and anchoring (set once at start).
    tlog: std::sync::OnceLock<Arc<crate::audit::tlog::Tlog>>,
    /// GitHub status reports this replica may still post.
    status_budget: status::Budget,
    /// Permits for background evaluations ([`EVALUATIONS_IN_FLIGHT`]).
    evaluations: tokio::sync::Semaphore,
}

impl Gate {
    pub fn new(
        config: Arc<Config>,
        store: SharedStore,
        audit: Arc<dyn AuditLog>,
        verifier: Arc<Verifier>,
        platforms: Platforms,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Gate> {
        Self::with_policies(
            config,
            store,
            audit,
            verifier,
            platforms,
            runtime,
            Arc::new(crate::verdict::PolicySet::empty(crate::verdict::OpaClient::new(
                reqwest::Client::new(),
            ))),
        )
    }

    /// A gate that evaluates evidence with `policies` (in process, or on
    /// OPA servers).
    pub fn with_policies(
        config: Arc<Config>,
        store: SharedStore,
        audit: Arc<dyn AuditLog>,
        verifier: Arc<Verifier>,
        platforms: Platforms,
        runtime: tokio::runtime::Handle,
        policies: Arc<crate::verdict::PolicySet>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            store,
            audit,
            verifier,
            platforms,
            holder: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            tasks: TaskTracker::new(),
            runtime,
            metrics: Metrics::default(),
            notifier: std::sync::OnceLock::new(),
            policies,
            tlog: std::sync::OnceLock::new(),
            status_budget: status::Budget::new(config.github.as_ref().map_or(0, |g| g.status_reports_per_minute)),
            config,
            evaluations: tokio::sync::Semaphore::new(EVALUATIONS_IN_FLIGHT),
        })
    }

    /// The live policies (their status for `/readyz` and `/metrics`).
    pub fn policies(&self) -> &Arc<crate::verdict::PolicySet> {
        &self.policies
    }

    /// Installs the transparency log (once, at start).
    pub fn set_tlog(&self, tlog: Arc<crate::audit::tlog::Tlog>) {
        let _ = self.tlog.set(tlog);
    }

    pub fn tlog(&self) -> Option<&Arc<crate::audit::tlog::Tlog>> {
        self.tlog.get()
    }

    /// Installs the notifier (once, at start).
    pub fn set_notifier(&self, notifier: Arc<dyn Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// Tells the notifier, in the background, that a request changed.
    pub fn notify(self: &Arc<Self>, id: &str) {
        if let Some(n) = self.notifier.get() {
            let (n, gate, id) = (n.clone(), Arc::clone(self), id.to_string());
            self.tasks
                .spawn_on(async move { n.request_changed(gate, id).await }, &self.runtime);
        }
    }

    /// Records the Slack message mirroring a request (compare-and-set, retried).
    /// Returns `false`, writing nothing, while the request is `Deciding`: the
    /// decision's own writes must not meet a conflict; the notifier is told
    /// again when the request is answered and records it then.
    pub async fn set_slack_ref(&self, id: &str, slack: crate::domain::SlackRef) -> Result<bool, GateError> {
        for _ in 0..8 {
            let Some(mut req) = self.store.get_request(id).await? else {
                return Ok(false);
            };
            if req.slack.as_ref() == Some(&slack) {
                return Ok(true);
            }
            if req.status == RequestStatus::Deciding {
                return Ok(false);
            }
            req.slack = Some(slack.clone());
            if let Cas::Written(_) = self.store.update_request(&req).await? {
                return Ok(true);
            }
        }
        Err(GateError::State(StateError(
            "the request kept changing; the Slack reference was not recorded".into(),
        )))
    }

    /// Runs `evaluate(id)` in the background, tracked so that shutdown waits
    /// for decisions in flight.
    pub fn spawn_evaluate(self: &Arc<Self>, id: String) {
        let gate = Arc::clone(self);
        self.tasks.spawn_on(
            async move {
                // Never closed: waiting only ever ends with a permit.
                let Ok(_permit) = gate.evaluations.acquire().await else {
                    return;
                };
                if let Err(e) = gate.evaluate(&id, OffsetDateTime::now_utc()).await {
                    gate.metrics.internal_errors.inc();
                    warn!(request = %id, error = %e, "could not decide; the request stays open and is retried");
                    // The store or the audit trail failed (a Redis failover,
                    // say): a pending request may see no other input before
                    // its deadline, so it is evaluated again shortly. (A
                    // `Deciding` one is also re-driven by the sweeper.)
                    if matches!(e, GateError::State(_) | GateError::Audit(_)) {
                        gate.retry_later(id, EVALUATE_RETRY);
                    }
                }
            },
            &self.runtime,
        );
    }

    /// Stops taking background work and waits (bounded) for work in flight.
    pub async fn drain(&self, timeout: Duration) {
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait()).await.is_err() {
            warn!(
                "shutdown: decisions still in flight after {:?}; their leases will expire and another replica re-drives them",
                timeout
            );
        }
    }

    /// Re-drives due work every second until `stop` fires.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep(OffsetDateTime::now_utc()).await {
                warn!(error = %e, "sweep failed; retrying");
            }
        }
    }

    /// One sweep: evaluates every request past its deadline and every
    /// abandoned `Deciding` request; expires break-glass grants past their
    /// window and reminds overdue reviews. Public so tests drive it step by step.
    pub async fn sweep(self: &Arc<Self>, now: OffsetDateTime) -> Result<usize, GateError> {
        let due = self.store.due_requests(now, 256).await?;
        let n = due.len();
        for id in due {
            if let Err(e) = self.evaluate(&id, now).await {
                warn!(request = %id, error = %e, "sweep: could not decide");
            }
        }
        if let Err(e) = self.sweep_grants(now).await {
            warn!(error = %e, "sweep: break-glass grants could not be swept");
        }
        Ok(n)
    }
    pub fn gitlab_api(&self) -> Option<&Arc<crate::platform::gitlab::GitlabClient>> {
        self.platforms.gitlab_api.as_ref()
    }

    fn platform_for(&self, platform: Platform) -> Option<&Arc<dyn PlatformClient>> {
        match platform {
            Platform::Github => self.platforms.github.as_ref(),
            Platform::Gitlab => self.platforms.gitlab.as_ref(),
        }
    }

    /// The link to an audit record, as comments and Slack messages give it.
    pub fn audit_link(&self, record_id: &str) -> String {
        let base = self.config.server.public_url.as_str().trim_end_matches('/');
        format!("{base}/v1/audit/{record_id}")
    }
}

impl Gate {
    /// The environment's `pending_timeout` (zero for an unconfigured
    /// environment, whose request is rejected at once anyway).
    pub fn pending_timeout(&self, environment: &str) -> Duration {
        self.config
            .environment(environment)
            .map(|e| e.pending_timeout)
            .unwrap_or(Duration::ZERO)
    }
}
