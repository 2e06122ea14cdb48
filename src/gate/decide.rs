//! Deciding: evaluation of a request under its lease, and the sequence that
//! acts on a final decision — audit it durably, answer the platform, audit
//! the answer, close the request.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use tracing::{Instrument, info, info_span, warn};

use super::{Gate, GateError, events};
use crate::decision::{self, Decision, Inputs, Outcome};
use crate::domain::{DecidedOn, DeploymentRequest, PlatformOutcome, RequestStatus, RunAttempt, Target};
use crate::platform::{CallResult, FailureKind};
use crate::state::{Cas, Lease, StateError};

/// Transient platform failures are retried this many times (by re-driving).
const MAX_PLATFORM_ATTEMPTS: u32 = 5;

impl Gate {
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
                let req = match self.with_run_attempt(req).await? {
                    Some(req) => req,
                    None => continue,
                };
                let (decision, decided_on) = self.decide_with_inputs(&req, now).await?;
                if !decision.is_final() {
                    if req.decision.as_ref() != Some(&decision) {
                        let mut next = req.clone();
                        next.decision = Some(decision);
                        if let Cas::Conflict(_) = self.store.update_request(&next).await? {
                            continue;
                        }
                        self.notify(id);
                        self.report_status(req.decision.as_ref(), &next);
                    }
                    return Ok(());
                }
                // Fail closed: a decision whose record could not reach
                // write-once storage in time is not evidence. It waits.
                if let Some(tlog) = self.tlog()
                    && tlog.anchor_lagging()
                {
                    warn!(
                        lag_s = tlog.anchor_lag().as_secs(),
                        "anchoring is behind max_anchor_lag; the decision waits"
                    );
                    self.retry_later(id.to_string(), Duration::from_secs(2));
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
                next.decided_on = Some(Box::new(decided_on));
                let written = match self.store.update_request(&next).await {
                    Ok(written) => written,
                    Err(e) => {
                        // Redis failed (a failover, say): the request stays
                        // pending. The lease, if it cannot be released
                        // either, keeps the quick retries away until it
                        // lapses: look again then.
                        let _ = self.store.release_lease(&lease).await;
                        self.retry_later(id.to_string(), self.config.state.lease_ttl);
                        return Err(e.into());
                    }
                };
                match written {
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

    /// A GitHub request learns its run's attempt and who started it, once:
    /// read from the Actions API and stored on the request. Without GitHub
    /// App credentials (dry run) the run cannot be read, and the request is
    /// marked so. A failed read leaves the request waiting and is retried
    /// shortly; it is never approved without the read. `None`: the stored
    /// request changed meanwhile; read it again.
    async fn with_run_attempt(
        self: &Arc<Self>,
        mut req: DeploymentRequest,
    ) -> Result<Option<DeploymentRequest>, GateError> {
        let Target::Github {
            owner,
            repo,
            run_id,
            installation_id,
            ..
        } = &req.target
        else {
            return Ok(Some(req));
        };
        // Known already; or not needed: a request with intake problems (a
        // foreign callback host, say) is rejected whatever the run says, and
        // nothing is called for it.
        if req.run_attempt.is_some() || !req.intake_problems.is_empty() {
            return Ok(Some(req));
        }
        // Not needed yet: without an attestation the request can only wait
        // (or time out), whatever the run says. The run is read once an
        // attestation arrives, so no API quota goes on requests that may
        // never be deployed.
        if !self.store.has_attestation(&req.run_ref().key()).await? {
            return Ok(Some(req));
        }
        let attempt = match &self.platforms.github_api {
            // Nothing to read with: `decide` treats the run as unread.
            None => return Ok(Some(req)),
            Some(api) => match api.run_attempt(owner, repo, *run_id, *installation_id).await {
                Ok(attempt) => attempt,
                Err(e) => {
                    warn!(request = %req.id, error = %e, "cannot read the workflow run; the request waits and the read is retried");
                    self.retry_later(req.id.clone(), Duration::from_secs(2));
                    return Ok(Some(req));
                }
            },
        };
        if attempt.number > 1 {
            info!(request = %req.id, attempt = attempt.number, triggering_actor = ?attempt.triggering_actor,
                  actor = ?attempt.actor, "a re-run: its starter is the identity checked");
        }
        req.run_attempt = Some(attempt);
        match self.store.update_request(&req).await? {
            Cas::Written(v) => {
                req.version = v;
                Ok(Some(req))
            }
            Cas::Conflict(_) => Ok(None),
        }
    }

    /// Evaluates the request again after `delay` (tracked, so shutdown
    /// waits for it or cancels it with the rest).
    pub(super) fn retry_later(self: &Arc<Self>, id: String, delay: Duration) {
        let gate = Arc::clone(self);
        self.tasks.spawn_on(
            async move {
                tokio::time::sleep(delay).await;
                gate.spawn_evaluate(id);
            },
            &self.runtime,
        );
    }

    /// Reads the inputs of a request and runs the pure engine.
    pub async fn decide(&self, req: &DeploymentRequest, now: OffsetDateTime) -> Result<Decision, GateError> {
        Ok(self.decide_with_inputs(req, now).await?.0)
    }

    /// [`Gate::decide`], with the attestation and verdict it weighed.
    pub(super) async fn decide_with_inputs(
        &self,
        req: &DeploymentRequest,
        now: OffsetDateTime,
    ) -> Result<(Decision, DecidedOn), GateError> {
        // Without GitHub App credentials (dry run) a run cannot be read: it
        // is decided as unread, the token's actor checked as for attempt 1.
        let unread;
        let req = if req.run_attempt.is_none()
            && matches!(req.target, Target::Github { .. })
            && self.platforms.github_api.is_none()
        {
            let mut copy = req.clone();
            copy.run_attempt = Some(RunAttempt {
                number: 0,
                actor: None,
                triggering_actor: None,
                read: false,
            });
            unread = copy;
            &unread
        } else {
            req
        };
        let policy = self.config.environment(&req.environment);
        let attestation = self.store.get_attestation(&req.run_ref().key()).await?;
        let verdict = match policy {
            Some(p) if p.verdict.required => self.store.get_verdict(&req.verdict_key()).await?,
            _ => None,
        };
        let grants = match policy {
            Some(p) if p.break_glass.is_some() => self.grants_for_request(req).await?,
            _ => Vec::new(),
        };
        let decision = decision::evaluate(&Inputs {
            policy,
            request: req,
            attestation: attestation.as_ref(),
            verdict: verdict.as_ref(),
            reviews: &req.reviews,
            break_glass: &grants,
            now,
        });
        let grant = policy
            .and_then(|p| decision::break_glass::active_grant(p, req, &grants, now))
            .filter(|_| decision.outcome == Outcome::Approved)
            .cloned();
        Ok((
            decision,
            DecidedOn {
                attestation,
                verdict,
                grant,
            },
        ))
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
    ///
    /// Across a Redis failover (`state.min_replicas`): the last write before
    /// the call is acknowledged by replicas, and with it the lease and
    /// `Deciding` written earlier, so the promoted replica cannot hand the
    /// request out again without its decision record; after the call, the
    /// state steps are retried while the lease lasts, so the request is
    /// closed rather than left `Deciding` to be re-driven and called again.
    async fn act(self: &Arc<Self>, mut req: DeploymentRequest, lease: &Lease) -> Result<(), GateError> {
        // The lease was taken just before: it lasts about `lease_ttl` from here.
        let started = Instant::now();
        let Some(decision) = req.decision.clone() else {
            return Err(GateError::State(StateError(
                "a deciding request has no decision".into(),
            )));
        };
        let approve = decision.outcome == Outcome::Approved;
        // Set when this call made the decision (not when it re-drives one).
        let mut decided_at = None;

        let decided_now = req.decision_record.is_none();
        if decided_now {
            if !self.store.lease_valid(lease).await? {
                return Ok(());
            }
            let record = self.audit_decision(&req, &decision).await?;
            req.decision_record = Some(record);
        }
        // The last write before the call (on a re-drive, the request as it
        // is): replicated, see above.
        match self.store.update_request_replicated(&req).await? {
            Cas::Written(v) => req.version = v,
            Cas::Conflict(_) => return Ok(()),
        }
        if decided_now {
            let codes: Vec<&str> = decision.reasons.iter().map(|r| r.code.as_str()).collect();
            let waited = (OffsetDateTime::now_utc() - req.received_at).unsigned_abs();
            self.metrics
                .decided(req.platform.as_str(), decision.outcome.as_str(), &codes, waited);
            decided_at = Some(Instant::now());
            info!(request = %req.id, environment = %req.environment, outcome = decision.outcome.as_str(),
                  reasons = %decision.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>().join(","), "decided");
        }
        let record_id = req.decision_record.clone().unwrap_or_default();
        // An approval under break glass: its use is audited before acting.
        if approve && let Some(grant) = req.decided_on.as_ref().and_then(|d| d.grant.as_ref()) {
            self.grant_used(&req, &grant.id, &record_id).await?;
        }
        let comment = self.comment(&req, &decision, &record_id);

        let dry_run = self.config.server.dry_run;
        let callback_trusted = !req
            .intake_problems
            .iter()
            .any(|p| p.code == decision::ReasonCode::CallbackHostMismatch);
        let called_at = Instant::now();
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
        if dry_run {
            // Nothing was called: counted, not timed.
            self.metrics.platform_calls_ok.inc();
        } else {
            self.metrics.platform_called(
                req.platform.as_str(),
                decision.outcome.as_str(),
                decided_at.map(|d| called_at.duration_since(d)),
                called_at.elapsed(),
                call.ok(),
            );
        }

        if !self.while_leased(started, || self.store.lease_valid(lease)).await? {
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
        let ev = events::platform_result(
            &req,
            &decision,
            json!({
                "ok": call.ok(), "status": call.status, "detail": call.detail, "dry_run": dry_run,
                "attempt": req.platform_attempts, "retrying": transient && !give_up, "decision_record": record_id,
            }),
        );
        self.audit
            .append(ev)
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;

        req.platform_result = Some(outcome);
        if !transient || give_up {
            req.status = RequestStatus::Done;
        }
        let closed = self.while_leased(started, || self.store.update_request_replicated(&req));
        if let Cas::Conflict(_) = closed.await? {
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

    /// Runs a state step after the platform call, again after a failure
    /// while the lease taken about `started` lasts: a Redis failover or a
    /// short outage then delays closing the request instead of leaving it
    /// `Deciding`, to be re-driven and called a second time.
    async fn while_leased<T, F>(&self, started: Instant, mut step: impl FnMut() -> F) -> Result<T, StateError>
    where
        F: Future<Output = Result<T, StateError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() + delay < self.config.state.lease_ttl => {
                    failures += 1;
                    if failures == 1 {
                        warn!(error = %e, "the state store failed after the platform call; retrying while the lease lasts");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The comment posted with the answer: outcome, reasons, audit link,
    /// within the platform's cap.
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

    /// Appends the durable `decision` record, naming the inputs it weighed.
    /// A request decided by an earlier version has no `decided_on`; its
    /// record names the inputs held now, as that version did.
    async fn audit_decision(&self, req: &DeploymentRequest, decision: &Decision) -> Result<String, GateError> {
        let (attestation, verdict) = match &req.decided_on {
            Some(on) => (on.attestation.clone(), on.verdict.clone()),
            None => (
                self.store.get_attestation(&req.run_ref().key()).await?,
                self.store.get_verdict(&req.verdict_key()).await?,
            ),
        };
        let record = self
            .audit
            .append(events::decision(req, decision, attestation.as_ref(), verdict.as_ref()))
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;
        Ok(record.id)
    }
}
