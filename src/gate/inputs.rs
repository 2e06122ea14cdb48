//! Inputs coming in: deployment requests, attestations, verdicts and
//! reviews. Each is checked, stored, audited, and re-evaluates the requests
//! it may unblock.

use std::sync::Arc;

use time::OffsetDateTime;
use tracing::info;

use super::{Gate, GateError, events};
use crate::decision;
use crate::domain::{
    Attestation, CommitSha, DeploymentRequest, ErrorCode, Producer, RequestStatus, Review, Verdict, VerdictBody,
    verdict_key,
};
use crate::identity::{Refusal, VerifiedToken};
use crate::state::{Cas, StateError};
use crate::verdict::{EvaluateError, Poster, evaluate_evidence};

/// What became of a review handed to [`Gate::add_review`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Recorded. `counts` is false for an approval by the deploying actor
    /// where the environment does not allow self-review (and for rejections).
    Recorded { counts: bool },
    /// The request was already decided: the review changes nothing.
    AlreadyDecided,
}

impl Gate {
    /// Stores a new deployment request (idempotent on its id) and schedules
    /// its evaluation. Returns the request id and whether it was new.
    ///
    /// A request whose run has no attestation yet can only wait: its pending
    /// decision is worked out here and stored with it, and no evaluation is
    /// scheduled (the attestation, when it comes, schedules one). The
    /// attestation is looked for again after the insert, so one that arrives
    /// in between is never missed: either its poster finds the stored
    /// request, or the second look finds the attestation.
    pub async fn receive_request(self: &Arc<Self>, mut req: DeploymentRequest) -> Result<(String, bool), GateError> {
        let run_key = req.run_ref().key();
        // Only a request whose run has no attestation is worked out here; one
        // that has its attestation is evaluated in the background as ever.
        let waits_for_attestation = if self.store.has_attestation(&run_key).await? {
            false
        } else {
            let (decision, _) = self.decide_with_inputs(&req, OffsetDateTime::now_utc()).await?;
            let pending = decision.outcome == decision::Outcome::Pending;
            if pending {
                req.decision = Some(decision);
            }
            pending
        };
        let created = self.store.insert_request(&req).await?;
        if created {
            self.audit_queued(events::request_received(&req)).await?;
            info!(request = %req.id, environment = %req.environment, repository = %req.repository, run = %req.run, "deployment request received");
            self.notify(&req.id);
        }
        if created && waits_for_attestation && !self.store.has_attestation(&run_key).await? {
            self.report_status(None, &req);
        } else {
            self.spawn_evaluate(req.id.clone());
        }
        Ok((req.id, created))
    }

    /// Verifies a CI job's token and keeps its claims as the attestation of
    /// its run; re-evaluates that run's pending requests.
    pub async fn attest(self: &Arc<Self>, token: &str) -> Result<Attestation, GateError> {
        let now = OffsetDateTime::now_utc();
        let verified = match self.verifier.verify_detailed(token, now).await {
            Ok(v) => v,
            Err(refusal) => {
                self.metrics.attestations_rejected.inc();
                self.token_rejected(token, &refusal, "attestation", now);
                return Err(refusal.error.into());
            }
        };
        let att = verified.into_attestation(now);
        let run_key = att.run_ref().key();
        self.store
            .put_attestation(&run_key, &att, self.config.state.attestation_ttl)
            .await?;
        self.audit_queued(events::attestation_accepted(&att)).await?;
        self.metrics.attestations_accepted.inc();
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
        let verified = match self.verifier.verify_detailed(token, now).await {
            Ok(v) => v,
            Err(refusal) => {
                self.token_rejected(token, &refusal, "verdict", now);
                return Err(refusal.error.into());
            }
        };
        let policy = self.config.environment(&body.environment).ok_or_else(|| {
            GateError::refused(
                ErrorCode::EnvironmentNotConfigured,
                format!("environment `{}` is not configured", body.environment),
            )
        })?;
        let sha =
            CommitSha::parse(&body.sha).map_err(|m| GateError::refused(ErrorCode::InvalidSha, format!("sha: {m}")))?;
        if let Some(d) = &body.evidence_digest
            && !is_sha256_digest(d)
        {
            return Err(GateError::refused(
                ErrorCode::InvalidEvidenceDigest,
                "evidence_digest must be `sha256:` followed by 64 hex digits",
            ));
        }
        let evaluates = policy.verdict.mode != crate::config::VerdictMode::Asserted;
        match (body.allow, &body.evidence) {
            (Some(_), None) if !evaluates => {}
            (None, Some(_)) if evaluates => {}
            (Some(_), None) => {
                return Err(GateError::refused(
                    ErrorCode::EvidenceRequired,
                    format!(
                        "environment `{}` evaluates evidence itself: post `evidence`, not `allow`",
                        body.environment
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(GateError::refused(
                    ErrorCode::EvidenceNotSupported,
                    format!(
                        "environment `{}` takes asserted verdicts (`allow`), not evidence",
                        body.environment
                    ),
                ));
            }
            _ => {
                return Err(GateError::refused(
                    ErrorCode::InvalidVerdict,
                    "exactly one of `allow` or `evidence` is required",
                ));
            }
        }
        if !decision::producer_trusted(policy, &verified.claims) {
            self.audit_queued(events::verdict_refused(&verified, &body, ErrorCode::ProducerNotTrusted))
                .await?;
            info!(subject = %verified.subject, environment = %body.environment, "verdict refused: producer not trusted");
            return Err(GateError::refused(
                ErrorCode::ProducerNotTrusted,
                format!(
                    "{} is not a trusted verdict producer for {}",
                    verified.subject, body.environment
                ),
            ));
        }
        // The verdict is for the commit the posting job ran on: a policy-gate
        // job cannot vouch for another commit.
        if !verified
            .sha
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(sha.as_str()))
        {
            self.audit_queued(events::verdict_refused(&verified, &body, ErrorCode::ShaMismatch))
                .await?;
            self.metrics.verdicts_sha_mismatch.inc();
            info!(subject = %verified.subject, environment = %body.environment, "verdict refused: not the posting job's commit");
            return Err(GateError::refused(
                ErrorCode::ShaMismatch,
                format!(
                    "the verdict is for {}, but the posting job's token is for {}",
                    sha,
                    verified.sha.as_deref().unwrap_or("no commit")
                ),
            ));
        }
        let mut verdict = body.verdict(
            verified.platform,
            verified.repository.clone(),
            sha.to_string(),
            producer_of(&verified),
            now,
        );
        if let Some(evidence) = &body.evidence {
            let poster = Poster {
                repository: &verified.repository,
                actor: &verified.actor,
                claims: &verified.claims,
            };
            let evaluated = evaluate_evidence(
                &self.policies,
                policy,
                evidence,
                &verdict.sha,
                poster,
                body.evidence_digest.as_deref(),
                now,
            )
            .await;
            let evaluated = match evaluated {
                Ok(e) => e,
                Err(EvaluateError::Invalid { code, message }) => return Err(GateError::refused(code, message)),
                Err(EvaluateError::Unavailable(message)) => {
                    // No evaluation, no verdict: and no earlier verdict for this
                    // commit stands in for it. The request waits for a new one.
                    let key = verdict_key(
                        &verdict.producer.issuer_name,
                        verdict.platform,
                        &verdict.repository,
                        &verdict.sha,
                        &verdict.environment,
                    );
                    self.store.delete_verdict(&key).await?;
                    info!(repository = %verdict.repository, sha = %verdict.sha, environment = %verdict.environment,
                          "evidence could not be evaluated; the previous verdict is withdrawn");
                    return Err(GateError::refused(ErrorCode::PolicyUnavailable, message));
                }
            };
            verdict.allow = evaluated.allow;
            verdict.reasons = evaluated.reasons;
            verdict.source = evaluated.source;
            verdict.policy = Some(evaluated.policy);
            verdict.evidence_digest = Some(evaluated.evidence_digest);
            verdict.policy_revision = Some(evaluated.policy_revision);
        }
        self.store_verdict(verdict).await
    }

    /// Stores a verdict as the latest for its key, audits it and re-evaluates
    /// the requests waiting on it.
    pub async fn store_verdict(self: &Arc<Self>, verdict: Verdict) -> Result<Verdict, GateError> {
        let key = verdict_key(
            &verdict.producer.issuer_name,
            verdict.platform,
            &verdict.repository,
            &verdict.sha,
            &verdict.environment,
        );
        self.store
            .put_verdict(&key, &verdict, self.config.state.verdict_ttl)
            .await?;
        self.audit_queued(events::verdict_recorded(&verdict)).await?;
        self.metrics.verdicts_recorded.inc();
        info!(repository = %verdict.repository, sha = %verdict.sha, environment = %verdict.environment, allow = verdict.allow, "verdict recorded");
        for id in self.store.requests_for_verdict(&key).await? {
            self.spawn_evaluate(id);
        }
        Ok(verdict)
    }

    /// Adds a human review to a request (durably audited) and re-evaluates
    /// it. The reviewer's eligibility was checked by the caller with
    /// [`decision::review_eligibility`]; whether an approval counts is the
    /// engine's rule, reported back for the reviewer.
    pub async fn add_review(self: &Arc<Self>, id: &str, review: Review) -> Result<ReviewOutcome, GateError> {
        for _ in 0..8 {
            let Some(mut req) = self.store.get_request(id).await? else {
                return Err(GateError::refused(
                    ErrorCode::RequestNotFound,
                    format!("no request `{id}`"),
                ));
            };
            if req.status != RequestStatus::Pending {
                return Ok(ReviewOutcome::AlreadyDecided);
            }
            req.reviews
                .retain(|r| !r.reviewer.eq_ignore_ascii_case(&review.reviewer));
            req.reviews.push(review.clone());
            if let Cas::Written(_) = self.store.update_request(&req).await? {
                self.audit
                    .append(events::review_recorded(&req, &review))
                    .await
                    .map_err(|e| GateError::Audit(e.to_string()))?;
                self.notify(id);
                let counts = match self.config.environment(&req.environment) {
                    Some(policy) => {
                        let attestation = self.store.get_attestation(&req.run_ref().key()).await?;
                        decision::reviews::counts(policy, &review, attestation.as_ref().map(|a| a.actor.as_str()))
                    }
                    None => false,
                };
                self.evaluate(id, OffsetDateTime::now_utc()).await?;
                return Ok(ReviewOutcome::Recorded { counts });
            }
        }
        Err(GateError::State(StateError(
            "the request kept changing; try again".into(),
        )))
    }

    /// Queues `event` for the audit trail without waiting for it to be
    /// durable. When the bounded queue is full, waits for room and for the
    /// record instead: the input has already taken effect, so its record is
    /// never dropped.
    async fn audit_queued(&self, event: crate::audit::AuditEvent) -> Result<(), GateError> {
        if let Err(crate::audit::QueueFull(event)) = self.audit.append_nowait(event) {
            self.audit
                .append(*event)
                .await
                .map_err(|e| GateError::Audit(e.to_string()))?;
        }
        Ok(())
    }

    /// A refused token. One whose signature verified against a trusted
    /// issuer is audited (its hash and why, never the token); anything else
    /// (garbage, unsigned, forged, an unknown issuer) is only counted, and
    /// logged at most once a second, so bad input cannot grow the trail.
    fn token_rejected(&self, token: &str, refusal: &Refusal, purpose: &str, now: OffsetDateTime) {
        let err = &refusal.error;
        if refusal.signed {
            let hash = crate::crypto::sha256_hex(token.as_bytes());
            // On a full audit queue this record is dropped (and logged): the
            // token is refused either way.
            let _ = self.audit.append_nowait(events::token_rejected(hash, err, purpose));
            info!(code = err.code(), purpose, "token refused");
            return;
        }
        self.metrics.tokens_refused_unverified.inc();
        if let Some(held_back) = self.metrics.token_log.admit(now.unix_timestamp().max(0) as u64) {
            info!(
                code = err.code(),
                purpose, held_back, "token refused before its signature verified (not audited)"
            );
        }
    }
}

fn producer_of(v: &VerifiedToken) -> Producer {
    Producer {
        issuer_name: v.issuer_name.clone(),
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        actor: v.actor.clone(),
        claims: v.claims.clone(),
        token_sha256: v.token_sha256.clone(),
    }
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}
