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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::audit::{AuditEvent, AuditLog, EventKind};
use crate::config::{Config, rule_matches};
use crate::decision::{self, Decision, Inputs, Outcome};
use crate::domain::{
    Attestation, DeploymentRequest, Platform, PlatformOutcome, Producer, RequestStatus, Review, Target, Verdict,
    VerdictSource, verdict_key,
};
use crate::identity::{TokenError, VerifiedToken, Verifier};
use crate::platform::{CallResult, FailureKind, PlatformClient};
use crate::state::{Cas, Lease, SharedStore, StateError};

/// Transient platform failures are retried this many times (by re-driving).
const MAX_PLATFORM_ATTEMPTS: u32 = 5;
/// How often the sweeper looks for timed-out and abandoned requests.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long delivery ids are remembered for dedup.
pub const DELIVERY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The platform clients the gate answers through.
#[derive(Clone, Default)]
pub struct Platforms {
    pub github: Option<Arc<dyn PlatformClient>>,
    pub gitlab: Option<Arc<dyn PlatformClient>>,
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
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub webhooks_accepted: AtomicU64,
    pub webhooks_duplicate: AtomicU64,
    pub webhooks_rejected: AtomicU64,
    pub attestations_accepted: AtomicU64,
    pub attestations_rejected: AtomicU64,
    pub verdicts_recorded: AtomicU64,
    pub decisions_approved: AtomicU64,
    pub decisions_rejected: AtomicU64,
    pub platform_calls_ok: AtomicU64,
    pub platform_calls_failed: AtomicU64,
    pub internal_errors: AtomicU64,
}

/// Why the gate could not take an input. Each maps to an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("the audit trail is unavailable: {0}")]
    Audit(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A dependency (an OPA server) could not answer; retryable.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
}

/// The body of `POST /v1/verdicts`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    pub environment: String,
    pub sha: String,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub allow: Option<bool>,
    #[serde(default)]
    pub evidence: Option<serde_json::Value>,
    #[serde(default)]
    pub evidence_digest: Option<String>,
    #[serde(default)]
    pub reasons: Vec<String>,
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
    /// Compiled Rego policies, for environments with `verdict.mode = "evaluated"`.
    policies: Option<Arc<crate::verdict::PolicyEngine>>,
    opa: crate::verdict::OpaClient,
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
        Arc::new(Gate {
            config,
            store,
            audit,
            verifier,
            platforms,
            holder: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            tasks: TaskTracker::new(),
            runtime,
            metrics: Metrics::default(),
            notifier: std::sync::OnceLock::new(),
            policies: None,
            opa: crate::verdict::OpaClient::new(reqwest::Client::new()),
        })
    }

    /// A gate that evaluates evidence with `policies` (in process) and `opa`
    /// (OPA servers).
    #[allow(clippy::too_many_arguments)]
    pub fn with_policies(
        config: Arc<Config>,
        store: SharedStore,
        audit: Arc<dyn AuditLog>,
        verifier: Arc<Verifier>,
        platforms: Platforms,
        runtime: tokio::runtime::Handle,
        policies: Option<Arc<crate::verdict::PolicyEngine>>,
        opa: crate::verdict::OpaClient,
    ) -> Arc<Gate> {
        let gate = Gate::new(config, store, audit, verifier, platforms, runtime);
        match Arc::try_unwrap(gate) {
            Ok(mut g) => {
                g.policies = policies;
                g.opa = opa;
                Arc::new(g)
            }
            Err(shared) => shared,
        }
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
                if let Err(e) = gate.evaluate(&id, OffsetDateTime::now_utc()).await {
                    gate.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(request = %id, error = %e, "could not decide; the request stays open and is retried");
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
    /// abandoned `Deciding` request. Public so tests drive it step by step.
    pub async fn sweep(self: &Arc<Self>, now: OffsetDateTime) -> Result<usize, GateError> {
        let due = self.store.due_requests(now, 256).await?;
        let n = due.len();
        for id in due {
            if let Err(e) = self.evaluate(&id, now).await {
                warn!(request = %id, error = %e, "sweep: could not decide");
            }
        }
        Ok(n)
    }

    // ----- inputs -----------------------------------------------------------

    /// Stores a new deployment request (idempotent on its id) and schedules
    /// its evaluation. Returns the request id and whether it was new.
    pub async fn receive_request(self: &Arc<Self>, req: DeploymentRequest) -> Result<(String, bool), GateError> {
        let created = self.store.insert_request(&req).await?;
        if created {
            let mut ev = AuditEvent::new(EventKind::RequestReceived);
            ev.request = Some(req.id.clone());
            ev.platform = Some(req.platform);
            ev.repository = Some(req.repository.clone());
            ev.environment = Some(req.environment.clone());
            ev.sha = Some(req.sha.clone());
            ev.run = Some(req.run.clone());
            ev.reasons = (!req.intake_problems.is_empty()).then(|| req.intake_problems.clone());
            ev.detail = Some(json!({ "delivery": req.delivery, "target": req.target }));
            self.audit.append_nowait(ev);
            info!(request = %req.id, environment = %req.environment, repository = %req.repository, run = %req.run, "deployment request received");
            self.notify(&req.id);
        }
        self.spawn_evaluate(req.id.clone());
        Ok((req.id, created))
    }

    /// Verifies a CI job's token and keeps its claims as the attestation of
    /// its run; re-evaluates that run's pending requests.
    pub async fn attest(self: &Arc<Self>, token: &str) -> Result<Attestation, GateError> {
        let now = OffsetDateTime::now_utc();
        let verified = match self.verifier.verify(token, now).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.attestations_rejected.fetch_add(1, Ordering::Relaxed);
                self.audit_token_rejected(token, &e, "attestation");
                return Err(e.into());
            }
        };
        let att = verified.into_attestation(now);
        let run_key = att.run_ref().key();
        self.store
            .put_attestation(&run_key, &att, self.config.state.attestation_ttl)
            .await?;
        let mut ev = AuditEvent::new(EventKind::AttestationAccepted);
        ev.platform = Some(att.platform);
        ev.repository = Some(att.repository.clone());
        ev.run = Some(att.run.clone());
        ev.sha = att.sha.clone();
        ev.actor = Some(att.actor.clone());
        ev.claims = Some(att.claims.clone());
        ev.token_sha256 = Some(att.token_sha256.clone());
        ev.detail = Some(json!({ "attestation_id": att.id, "issuer": att.issuer, "subject": att.subject }));
        self.audit.append_nowait(ev);
        self.metrics.attestations_accepted.fetch_add(1, Ordering::Relaxed);
        info!(repository = %att.repository, run = %att.run, actor = %att.actor, "attestation accepted");
        for id in self.store.requests_for_run(&run_key).await? {
            self.spawn_evaluate(id);
        }
        Ok(att)
    }

    /// Records a verdict posted by a policy-gate job, after checking the
    /// poster against the environment's producers.
    pub async fn record_verdict(self: &Arc<Self>, token: &str, body: VerdictBody) -> Result<Verdict, GateError> {
        let now = OffsetDateTime::now_utc();
        let verified = match self.verifier.verify(token, now).await {
            Ok(v) => v,
            Err(e) => {
                self.audit_token_rejected(token, &e, "verdict");
                return Err(e.into());
            }
        };
        let invalid = |code: &'static str, message: String| GateError::Invalid { code, message };
        let policy = self.config.environment(&body.environment).ok_or_else(|| {
            invalid(
                "environment_not_configured",
                format!("environment `{}` is not configured", body.environment),
            )
        })?;
        let sha =
            crate::domain::CommitSha::parse(&body.sha).map_err(|m| invalid("invalid_sha", format!("sha: {m}")))?;
        if let Some(d) = &body.evidence_digest
            && !is_sha256_digest(d)
        {
            return Err(invalid(
                "invalid_evidence_digest",
                "evidence_digest must be `sha256:` followed by 64 hex digits".into(),
            ));
        }
        let mode = policy.verdict.mode;
        match (body.allow, &body.evidence, mode) {
            (Some(_), None, crate::config::VerdictMode::Asserted) => {}
            (None, Some(_), crate::config::VerdictMode::Evaluated | crate::config::VerdictMode::Opa) => {}
            (Some(_), None, _) => {
                return Err(invalid(
                    "evidence_required",
                    format!(
                        "environment `{}` evaluates evidence itself: post `evidence`, not `allow`",
                        body.environment
                    ),
                ));
            }
            (None, Some(_), _) => {
                return Err(invalid(
                    "evidence_not_supported",
                    format!(
                        "environment `{}` takes asserted verdicts (`allow`), not evidence",
                        body.environment
                    ),
                ));
            }
            _ => {
                return Err(invalid(
                    "invalid_verdict",
                    "exactly one of `allow` or `evidence` is required".into(),
                ));
            }
        }
        if !policy
            .verdict
            .producers
            .iter()
            .any(|rule| rule_matches(rule, &verified.claims))
        {
            self.audit_producer_refused(&verified, &body);
            return Err(GateError::Forbidden {
                code: "producer_not_trusted",
                message: format!(
                    "{} is not a trusted verdict producer for {}",
                    verified.subject, body.environment
                ),
            });
        }
        let mut verdict = Verdict {
            platform: verified.platform,
            repository: verified.repository.clone(),
            sha: sha.to_string(),
            environment: body.environment.clone(),
            allow: body.allow.unwrap_or(false),
            source: VerdictSource::Asserted,
            policy: body.policy.clone(),
            evidence_digest: body.evidence_digest.clone(),
            policy_revision: None,
            reasons: body.reasons.clone(),
            producer: producer_of(&verified),
            recorded_at: now,
        };
        if let Some(evidence) = &body.evidence {
            self.evaluate_evidence(
                &mut verdict,
                policy,
                evidence,
                &verified,
                body.evidence_digest.as_deref(),
                now,
            )
            .await?;
        }
        self.store_verdict(verdict).await
    }

    /// Evaluates posted evidence with the environment's policy (in process or
    /// on an OPA server) into `verdict`: allow, reasons, the evidence digest
    /// and the policy's revision. A policy that fails to evaluate records a
    /// denying verdict that says so; an OPA server that cannot answer is a
    /// 503 for the poster to retry. Neither is ever an allow.
    pub async fn evaluate_evidence(
        &self,
        verdict: &mut Verdict,
        policy: &crate::config::EnvironmentPolicy,
        evidence: &serde_json::Value,
        poster: &VerifiedToken,
        claimed_digest: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), GateError> {
        let invalid = |code: &'static str, message: String| GateError::Invalid { code, message };
        crate::verdict::validate_evidence(evidence).map_err(|e| invalid("invalid_evidence", format!("evidence{e}")))?;
        let digest = crate::verdict::evidence_digest(evidence);
        if let Some(claimed) = claimed_digest
            && !claimed.eq_ignore_ascii_case(&digest)
        {
            return Err(invalid(
                "evidence_digest_mismatch",
                format!("evidence_digest {claimed} is not the digest of the posted evidence ({digest})"),
            ));
        }
        let query = policy.verdict.policy.clone().unwrap_or_default();
        let input = crate::verdict::build_input(
            evidence,
            &policy.name,
            &verdict.sha,
            &poster.repository,
            &poster.actor,
            &poster.claims,
            &json!([]),
            now,
        );
        let unavailable = |message: &str| GateError::Unavailable {
            code: "policy_unavailable",
            message: message.into(),
        };
        let (evaluation, revision) = if policy.verdict.mode == crate::config::VerdictMode::Opa {
            let url = policy
                .verdict
                .opa_url
                .clone()
                .ok_or_else(|| unavailable("no opa_url is configured"))?;
            match self.opa.evaluate(&url, &query, &input).await {
                Ok(e) => (e, format!("opa:{}", url.as_str().trim_end_matches('/'))),
                Err(e) => {
                    warn!(error = %e, environment = %policy.name, "OPA evaluation failed");
                    return Err(unavailable("the OPA server did not answer; try again"));
                }
            }
        } else {
            let engine = self
                .policies
                .as_ref()
                .ok_or_else(|| unavailable("no Rego policies are loaded"))?;
            let revision = engine.revision().to_string();
            match engine.evaluate(&query, &input, now) {
                Ok(e) => (e, revision),
                Err(e) => {
                    warn!(error = %e, environment = %policy.name, "policy evaluation failed; recording a denying verdict");
                    let reasons = vec![format!("policy evaluation failed: {e}")];
                    (crate::verdict::Evaluation { allow: false, reasons }, revision)
                }
            }
        };
        verdict.allow = evaluation.allow;
        verdict.reasons = evaluation.reasons;
        verdict.source = match policy.verdict.mode {
            crate::config::VerdictMode::Opa => VerdictSource::Opa,
            _ => VerdictSource::Evaluated,
        };
        verdict.policy = Some(query);
        verdict.evidence_digest = Some(digest);
        verdict.policy_revision = Some(revision);
        Ok(())
    }

    /// Stores a verdict as the latest for its key, audits it and re-evaluates
    /// the requests waiting on it.
    pub async fn store_verdict(self: &Arc<Self>, verdict: Verdict) -> Result<Verdict, GateError> {
        let key = verdict_key(
            verdict.platform,
            &verdict.repository,
            &verdict.sha,
            &verdict.environment,
        );
        self.store
            .put_verdict(&key, &verdict, self.config.state.verdict_ttl)
            .await?;
        let mut ev = AuditEvent::new(EventKind::VerdictRecorded);
        ev.platform = Some(verdict.platform);
        ev.repository = Some(verdict.repository.clone());
        ev.environment = Some(verdict.environment.clone());
        ev.sha = Some(verdict.sha.clone());
        ev.actor = Some(verdict.producer.actor.clone());
        ev.token_sha256 = Some(verdict.producer.token_sha256.clone());
        ev.verdict = Some(verdict_summary(&verdict));
        self.audit.append_nowait(ev);
        self.metrics.verdicts_recorded.fetch_add(1, Ordering::Relaxed);
        info!(repository = %verdict.repository, sha = %verdict.sha, environment = %verdict.environment, allow = verdict.allow, "verdict recorded");
        for id in self.store.requests_for_verdict(&key).await? {
            self.spawn_evaluate(id);
        }
        Ok(verdict)
    }

    /// Adds a human review to a request and re-evaluates it. Returns `false`
    /// when the request was already decided (the review changes nothing).
    pub async fn add_review(self: &Arc<Self>, id: &str, review: Review) -> Result<bool, GateError> {
        for _ in 0..8 {
            let Some(mut req) = self.store.get_request(id).await? else {
                return Err(GateError::Invalid {
                    code: "request_not_found",
                    message: format!("no request `{id}`"),
                });
            };
            if req.status != RequestStatus::Pending {
                return Ok(false);
            }
            req.reviews
                .retain(|r| !r.reviewer.eq_ignore_ascii_case(&review.reviewer));
            req.reviews.push(review.clone());
            if let Cas::Written(_) = self.store.update_request(&req).await? {
                let mut ev = AuditEvent::new(EventKind::ReviewRecorded);
                ev.request = Some(req.id.clone());
                ev.platform = Some(req.platform);
                ev.repository = Some(req.repository.clone());
                ev.environment = Some(req.environment.clone());
                ev.sha = Some(req.sha.clone());
                ev.run = Some(req.run.clone());
                ev.reviews =
                    Some(json!([{ "reviewer": review.reviewer, "approve": review.approve, "via": review.via }]));
                ev.slack = req.slack.clone();
                self.audit
                    .append(ev)
                    .await
                    .map_err(|e| GateError::Audit(e.to_string()))?;
                self.notify(id);
                self.evaluate(id, OffsetDateTime::now_utc()).await?;
                return Ok(true);
            }
        }
        Err(GateError::State(StateError(
            "the request kept changing; try again".into(),
        )))
    }

    /// Records a GitLab deployment's later status (approved or rejected by
    /// someone, running, finished). It never approves anything: a request
    /// still pending whose deployment went ahead, failed or was canceled is
    /// closed as superseded; an approval or rejection by a person is recorded
    /// as such, and portcullis still gives its own answer.
    pub async fn gitlab_status(
        self: &Arc<Self>,
        hook: &crate::webhook::gitlab::DeploymentHook,
    ) -> Result<(), GateError> {
        use crate::webhook::gitlab::DeploymentStatus as S;
        let id = gitlab_request_id(hook.project_id, hook.deployment_id, &hook.environment);
        let mut ev = AuditEvent::new(EventKind::PlatformResult);
        ev.request = Some(id.clone());
        ev.platform = Some(Platform::Gitlab);
        ev.repository = Some(hook.project_path.clone());
        ev.environment = Some(hook.environment.clone());
        ev.actor = hook.approver_username().map(str::to_string);
        ev.detail = Some(json!({
            "source": "gitlab_deployment_hook",
            "status": hook.status.as_str(),
            "deployment_id": hook.deployment_id,
            "approver": hook.approver.as_ref().map(|u| &u.username),
            "approval": hook.approval.as_ref().map(|a| json!({
                "status": a.status, "comment": a.comment, "created_at": a.created_at,
                "rule": a.approval_rule.as_ref().map(|r| json!({"id": r.id, "required_approvals": r.required_approvals})),
            })),
        }));
        let closes = matches!(
            hook.status,
            S::Running | S::Success | S::Failed | S::Canceled | S::Skipped
        );
        for _ in 0..8 {
            let Some(mut req) = self.store.get_request(&id).await? else {
                break;
            };
            ev.sha = Some(req.sha.clone());
            ev.run = Some(req.run.clone());
            ev.slack = req.slack.clone();
            if !(closes && req.status == RequestStatus::Pending) {
                break;
            }
            req.status = RequestStatus::Superseded;
            if let Cas::Written(_) = self.store.update_request(&req).await? {
                info!(request = %id, status = hook.status.as_str(), "closed: the deployment moved on without portcullis");
                self.notify(&id);
                break;
            }
        }
        self.audit
            .append(ev)
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;
        Ok(())
    }

    /// Polls one GitLab project for blocked deployments (older GitLab sends
    /// no `blocked` hook) every `poll.interval` until `stop`. One replica
    /// polls a project at a time (a lease per project).
    pub async fn run_gitlab_poller(self: Arc<Self>, poll: crate::config::GitlabPoll, stop: CancellationToken) {
        let mut tick = tokio::time::interval(poll.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.poll_gitlab_once(&poll.project, poll.interval).await {
                Ok(n) if n > 0 => info!(project = %poll.project, new = n, "poller found blocked deployments"),
                Ok(_) => {}
                Err(e) => warn!(project = %poll.project, error = %e, "poll failed; retrying at the next interval"),
            }
        }
    }

    /// One poll: feeds every blocked deployment of `project` into the same
    /// path as a `blocked` hook. Returns how many requests were new.
    pub async fn poll_gitlab_once(self: &Arc<Self>, project: &str, interval: Duration) -> Result<usize, GateError> {
        let Some(api) = self.gitlab_api().cloned() else {
            return Ok(0);
        };
        let Some(lease) = self
            .store
            .acquire_lease(&format!("poll:{project}"), &self.holder, interval)
            .await?
        else {
            return Ok(0);
        };
        let blocked = api.blocked_deployments(project).await.map_err(|e| GateError::Invalid {
            code: "platform_unavailable",
            message: format!("listing blocked deployments failed: {e}"),
        });
        let mut created = 0;
        for info in blocked.unwrap_or_default() {
            let Some(path) = info.project_path.clone() else {
                continue;
            };
            let hook = crate::webhook::gitlab::DeploymentHook {
                status: crate::webhook::gitlab::DeploymentStatus::Blocked,
                status_changed_at: None,
                deployment_id: info.id,
                job_id: info.job_id,
                job_url: None,
                environment: info.environment.clone(),
                project_id: info.project_id,
                project_path: path,
                project_url: None,
                short_sha: None,
                commit_url: None,
                git_ref: Some(info.git_ref.clone()),
                user: None,
                approver: None,
                approval: None,
            };
            let req = gitlab_request(
                &self.config,
                &format!("poll:{}", info.id),
                &hook,
                &info,
                OffsetDateTime::now_utc(),
            );
            if self.store.get_request(&req.id).await?.is_none() {
                let (_, new) = self.receive_request(req).await?;
                created += usize::from(new);
            }
        }
        let _ = lease; // held until its TTL: one poll per interval across replicas
        Ok(created)
    }

    // ----- deciding -----------------------------------------------------------

    /// Evaluates one request at `now`. Pending stays pending (with what is
    /// missing written down); a final decision is acted on under the lease.
    pub async fn evaluate(self: &Arc<Self>, id: &str, now: OffsetDateTime) -> Result<(), GateError> {
        // Every log line of a decision carries the request, its environment
        // and the delivery that created it.
        let span = info_span!(
            "evaluate",
            request = %id,
            environment = tracing::field::Empty,
            delivery = tracing::field::Empty
        );
        async move {
            for _ in 0..8 {
                let Some(req) = self.store.get_request(id).await? else {
                    return Ok(());
                };
                let current = tracing::Span::current();
                current.record("environment", req.environment.as_str());
                current.record("delivery", req.delivery.as_str());
                match req.status {
                    RequestStatus::Done | RequestStatus::Superseded => return Ok(()),
                    RequestStatus::Deciding => return self.redrive(req).await,
                    RequestStatus::Pending => {}
                }
                let decision = self.decide(&req, now).await?;
                if !decision.is_final() {
                    if req.decision.as_ref() != Some(&decision) {
                        let mut next = req.clone();
                        next.decision = Some(decision);
                        if let Cas::Conflict(_) = self.store.update_request(&next).await? {
                            continue;
                        }
                        self.notify(id);
                    }
                    return Ok(());
                }
                let Some(lease) = self
                    .store
                    .acquire_lease(id, &self.holder, self.config.state.lease_ttl)
                    .await?
                else {
                    // Another replica is acting on it.
                    return Ok(());
                };
                let mut next = req.clone();
                next.status = RequestStatus::Deciding;
                next.decision = Some(decision);
                match self.store.update_request(&next).await? {
                    Cas::Written(v) => {
                        next.version = v;
                        let result = self.act(next, &lease).await;
                        self.store.release_lease(&lease).await?;
                        return result;
                    }
                    Cas::Conflict(_) => {
                        self.store.release_lease(&lease).await?;
                        continue;
                    }
                }
            }
            Err(GateError::State(StateError(
                "the request kept changing while being decided".into(),
            )))
        }
        .instrument(span)
        .await
    }

    /// Reads the inputs of a request and runs the pure engine.
    pub async fn decide(&self, req: &DeploymentRequest, now: OffsetDateTime) -> Result<Decision, GateError> {
        let policy = self.config.environment(&req.environment);
        let attestation = self.store.get_attestation(&req.run_ref().key()).await?;
        let verdict = match policy {
            Some(p) if p.verdict.required => self.store.get_verdict(&req.verdict_key()).await?,
            _ => None,
        };
        Ok(decision::evaluate(&Inputs {
            policy,
            request: req,
            attestation: attestation.as_ref(),
            verdict: verdict.as_ref(),
            reviews: &req.reviews,
            now,
        }))
    }

    /// Takes over a `Deciding` request whose lease lapsed (its replica died
    /// or its platform call failed transiently).
    async fn redrive(self: &Arc<Self>, req: DeploymentRequest) -> Result<(), GateError> {
        let Some(lease) = self
            .store
            .acquire_lease(&req.id, &self.holder, self.config.state.lease_ttl)
            .await?
        else {
            return Ok(());
        };
        // Re-read under the lease: the previous holder may have finished.
        let result = match self.store.get_request(&req.id).await? {
            Some(fresh) if fresh.status == RequestStatus::Deciding => {
                info!(request = %fresh.id, "re-driving a decision left in flight");
                self.act(fresh, &lease).await
            }
            _ => Ok(()),
        };
        self.store.release_lease(&lease).await?;
        result
    }

    /// Audits the decision durably, answers the platform, audits the result
    /// and closes the request. Fenced: every step after a write checks the
    /// lease is still ours.
    async fn act(self: &Arc<Self>, mut req: DeploymentRequest, lease: &Lease) -> Result<(), GateError> {
        let Some(decision) = req.decision.clone() else {
            return Err(GateError::State(StateError(
                "a deciding request has no decision".into(),
            )));
        };
        let approve = decision.outcome == Outcome::Approved;

        if req.decision_record.is_none() {
            if !self.store.lease_valid(lease).await? {
                return Ok(());
            }
            let record = self.audit_decision(&req, &decision).await?;
            req.decision_record = Some(record);
            match self.store.update_request(&req).await? {
                Cas::Written(v) => req.version = v,
                Cas::Conflict(_) => return Ok(()),
            }
            match decision.outcome {
                Outcome::Approved => self.metrics.decisions_approved.fetch_add(1, Ordering::Relaxed),
                _ => self.metrics.decisions_rejected.fetch_add(1, Ordering::Relaxed),
            };
            info!(request = %req.id, environment = %req.environment, outcome = decision.outcome.as_str(),
                  reasons = %decision.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>().join(","), "decided");
        }
        let record_id = req.decision_record.clone().unwrap_or_default();
        let comment = self.comment(&req, &decision, &record_id);

        let dry_run = self.config.server.dry_run;
        let callback_trusted = !req
            .intake_problems
            .iter()
            .any(|p| p.code == decision::ReasonCode::CallbackHostMismatch);
        let call = if dry_run {
            CallResult::done(None, "dry run: the platform was not called")
        } else if !callback_trusted {
            CallResult::done(None, "not called: the callback URL is not on the configured API host")
        } else {
            match self.platform_for(req.platform) {
                Some(client) => client.answer(&req, approve, &comment).await,
                None => CallResult::failed(
                    FailureKind::Definite,
                    None,
                    format!("{} is not configured", req.platform),
                ),
            }
        };
        req.platform_attempts += 1;
        let transient = call.retryable();
        if call.ok() {
            self.metrics.platform_calls_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.platform_calls_failed.fetch_add(1, Ordering::Relaxed);
        }

        if !self.store.lease_valid(lease).await? {
            warn!(request = %req.id, "lost the lease during the platform call; the new holder finishes");
            return Ok(());
        }
        let give_up = transient && req.platform_attempts >= MAX_PLATFORM_ATTEMPTS;
        let outcome = PlatformOutcome {
            ok: call.ok(),
            status: call.status,
            detail: call.detail.clone(),
            dry_run,
            at: OffsetDateTime::now_utc(),
        };
        let mut ev = self.request_event(EventKind::PlatformResult, &req);
        ev.decision = Some(decision.outcome.as_str().to_string());
        ev.detail = Some(json!({
            "ok": call.ok(), "status": call.status, "detail": call.detail, "dry_run": dry_run,
            "attempt": req.platform_attempts, "retrying": transient && !give_up, "decision_record": record_id,
        }));
        self.audit
            .append(ev)
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;

        req.platform_result = Some(outcome);
        if !transient || give_up {
            req.status = RequestStatus::Done;
        }
        if let Cas::Conflict(_) = self.store.update_request(&req).await? {
            warn!(request = %req.id, "the request changed while answering the platform");
        }
        self.notify(&req.id);
        if call.ok() {
            info!(request = %req.id, status = ?call.status, "platform answered");
        } else {
            warn!(request = %req.id, status = ?call.status, detail = %call.detail, retrying = transient && !give_up, "platform call failed");
        }
        Ok(())
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

    /// The comment posted with the answer: outcome, reasons, audit link,
    /// within the platform's limit with the link whole.
    fn comment(&self, req: &DeploymentRequest, decision: &Decision, record_id: &str) -> String {
        crate::platform::answer_comment(
            req.platform,
            decision.outcome.as_str(),
            &req.sha,
            &req.environment,
            &decision.reasons,
            &self.audit_link(record_id),
        )
    }

    pub fn audit_link(&self, record_id: &str) -> String {
        let base = self.config.server.public_url.as_str().trim_end_matches('/');
        format!("{base}/v1/audit/{record_id}")
    }

    async fn audit_decision(&self, req: &DeploymentRequest, decision: &Decision) -> Result<String, GateError> {
        let attestation = self.store.get_attestation(&req.run_ref().key()).await?;
        let verdict = self.store.get_verdict(&req.verdict_key()).await?;
        let mut ev = self.request_event(EventKind::Decision, req);
        ev.decision = Some(decision.outcome.as_str().to_string());
        ev.reasons = Some(decision.reasons.clone());
        if let Some(a) = &attestation {
            ev.actor = Some(a.actor.clone());
            ev.claims = Some(a.claims.clone());
            ev.token_sha256 = Some(a.token_sha256.clone());
        }
        ev.verdict = verdict.as_ref().map(verdict_summary);
        if !req.reviews.is_empty() {
            ev.reviews = Some(json!(
                req.reviews
                    .iter()
                    .map(|r| json!({"reviewer": r.reviewer, "approve": r.approve, "via": r.via}))
                    .collect::<Vec<_>>()
            ));
        }
        let record = self
            .audit
            .append(ev)
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;
        Ok(record.id)
    }

    fn request_event(&self, kind: EventKind, req: &DeploymentRequest) -> AuditEvent {
        let mut ev = AuditEvent::new(kind);
        ev.request = Some(req.id.clone());
        ev.platform = Some(req.platform);
        ev.repository = Some(req.repository.clone());
        ev.environment = Some(req.environment.clone());
        ev.sha = Some(req.sha.clone());
        ev.run = Some(req.run.clone());
        ev.slack = req.slack.clone();
        ev
    }

    fn audit_token_rejected(&self, token: &str, err: &TokenError, purpose: &str) {
        let mut ev = AuditEvent::new(EventKind::AttestationRejected);
        ev.token_sha256 = Some(crate::crypto::sha256_hex(token.as_bytes()));
        ev.reasons = Some(vec![decision::Reason::new(
            decision::ReasonCode::IdentityMismatch,
            err.to_string(),
        )]);
        ev.detail = Some(json!({ "code": err.code(), "purpose": purpose }));
        self.audit.append_nowait(ev);
        info!(code = err.code(), purpose, "token refused");
    }

    fn audit_producer_refused(&self, v: &VerifiedToken, body: &VerdictBody) {
        let mut ev = AuditEvent::new(EventKind::AttestationRejected);
        ev.repository = Some(v.repository.clone());
        ev.environment = Some(body.environment.clone());
        ev.sha = Some(body.sha.clone());
        ev.actor = Some(v.actor.clone());
        ev.claims = Some(v.claims.clone());
        ev.token_sha256 = Some(v.token_sha256.clone());
        ev.detail = Some(json!({ "code": "producer_not_trusted", "purpose": "verdict", "subject": v.subject }));
        self.audit.append_nowait(ev);
        info!(subject = %v.subject, environment = %body.environment, "verdict refused: producer not trusted");
    }
}

/// Builds the GitLab deployment request from a `blocked` Deployment Hook and
/// what the deployments API says of it (the full sha and the pipeline).
pub fn gitlab_request(
    config: &Config,
    delivery: &str,
    hook: &crate::webhook::gitlab::DeploymentHook,
    info: &crate::platform::gitlab::DeploymentInfo,
    now: OffsetDateTime,
) -> DeploymentRequest {
    let timeout = config
        .environment(&hook.environment)
        .map(|e| e.pending_timeout)
        .unwrap_or(Duration::from_secs(0));
    let mut intake_problems = Vec::new();
    if info.environment != hook.environment {
        intake_problems.push(decision::Reason::new(
            decision::ReasonCode::IdentityMismatch,
            format!(
                "the hook names environment `{}`, the deployment `{}`",
                hook.environment, info.environment
            ),
        ));
    }
    let run = match info.pipeline_id {
        Some(p) => p.to_string(),
        None => {
            intake_problems.push(decision::Reason::new(
                decision::ReasonCode::IdentityMismatch,
                "the deployment has no pipeline, so no CI identity can be attested for it",
            ));
            String::new()
        }
    };
    DeploymentRequest {
        id: gitlab_request_id(hook.project_id, hook.deployment_id, &hook.environment),
        platform: Platform::Gitlab,
        repository: hook.project_path.clone(),
        run,
        environment: hook.environment.clone(),
        sha: info.sha.to_string(),
        target: Target::Gitlab {
            project_id: hook.project_id,
            deployment_id: hook.deployment_id,
            job_id: info.job_id.or(hook.job_id),
        },
        delivery: delivery.to_string(),
        received_at: now,
        deadline: now + time::Duration::try_from(timeout).unwrap_or(time::Duration::ZERO),
        intake_problems,
        reviews: Vec::new(),
        status: RequestStatus::Pending,
        decision: None,
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
pub fn gitlab_request_id(project_id: u64, deployment_id: u64, environment: &str) -> String {
    DeploymentRequest::derive_id(
        Platform::Gitlab,
        &project_id.to_string(),
        &deployment_id.to_string(),
        environment,
    )
}

/// Builds the GitHub deployment request from a verified, parsed delivery.
pub fn github_request(
    config: &Config,
    delivery: &str,
    p: &crate::webhook::github::ProtectionRuleRequest,
    now: OffsetDateTime,
) -> DeploymentRequest {
    let run = p.run_id.to_string();
    let timeout = config
        .environment(&p.environment)
        .map(|e| e.pending_timeout)
        .unwrap_or(Duration::from_secs(0));
    DeploymentRequest {
        id: DeploymentRequest::derive_id(Platform::Github, &p.repository, &run, &p.environment),
        platform: Platform::Github,
        repository: p.repository.clone(),
        run,
        environment: p.environment.clone(),
        sha: p.sha.clone(),
        target: Target::Github {
            owner: p.owner.clone(),
            repo: p.repo.clone(),
            run_id: p.run_id,
            installation_id: p.installation_id,
            callback_url: p.callback_url.clone(),
        },
        delivery: delivery.to_string(),
        received_at: now,
        deadline: now + time::Duration::try_from(timeout).unwrap_or(time::Duration::ZERO),
        intake_problems: p.problems.clone(),
        reviews: Vec::new(),
        status: RequestStatus::Pending,
        decision: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

fn producer_of(v: &VerifiedToken) -> Producer {
    Producer {
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        actor: v.actor.clone(),
        claims: v.claims.clone(),
        token_sha256: v.token_sha256.clone(),
    }
}

fn verdict_summary(v: &Verdict) -> serde_json::Value {
    json!({
        "allow": v.allow,
        "source": v.source,
        "policy": v.policy,
        "policy_revision": v.policy_revision,
        "evidence_digest": v.evidence_digest,
        "reasons": v.reasons,
        "producer": v.producer.subject,
        "recorded_at": crate::time_fmt::rfc3339(v.recorded_at),
    })
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}
