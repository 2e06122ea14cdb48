//! The one place that builds the gate's audit records. Each function returns
//! the event for one kind of step; the caller appends it (durably where a
//! decision depends on it).

use serde_json::json;

use crate::audit::{AuditEvent, EventKind};
use crate::domain::{
    Attestation, Decision, DeploymentRequest, ErrorCode, Grant, Platform, Reason, ReasonCode, Review, Verdict,
    VerdictBody,
};
use crate::identity::{TokenError, VerifiedToken};
use crate::webhook::gitlab::DeploymentHook;

/// An event about one request, with the request's own fields filled in.
pub(super) fn for_request(kind: EventKind, req: &DeploymentRequest) -> AuditEvent {
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

pub(super) fn request_received(req: &DeploymentRequest) -> AuditEvent {
    let mut ev = for_request(EventKind::RequestReceived, req);
    ev.slack = None;
    ev.reasons = (!req.intake_problems.is_empty()).then(|| req.intake_problems.clone());
    ev.detail = Some(json!({ "delivery": req.delivery, "target": req.target }));
    ev
}

pub(super) fn attestation_accepted(att: &Attestation) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::AttestationAccepted);
    ev.platform = Some(att.platform);
    ev.repository = Some(att.repository.clone());
    ev.run = Some(att.run.clone());
    ev.sha = att.sha.clone();
    ev.actor = Some(att.actor.clone());
    ev.claims = Some(att.claims.clone());
    ev.token_sha256 = Some(att.token_sha256.clone());
    ev.detail = Some(json!({ "attestation_id": att.id, "issuer": att.issuer, "subject": att.subject }));
    ev
}

/// A refused token: its hash (never the token) and why.
pub(super) fn token_rejected(token_sha256: String, err: &TokenError, purpose: &str) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::AttestationRejected);
    ev.token_sha256 = Some(token_sha256);
    ev.reasons = Some(vec![Reason::new(ReasonCode::IdentityMismatch, err.to_string())]);
    ev.detail = Some(json!({ "code": err.code(), "purpose": purpose }));
    ev
}

/// A verified poster's verdict refused: not a trusted producer, or for
/// another commit than the posting job's (`code` says which).
pub(super) fn verdict_refused(v: &VerifiedToken, body: &VerdictBody, code: ErrorCode) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::AttestationRejected);
    ev.repository = Some(v.repository.clone());
    ev.environment = Some(body.environment.clone());
    ev.sha = Some(body.sha.clone());
    ev.actor = Some(v.actor.clone());
    ev.claims = Some(v.claims.clone());
    ev.token_sha256 = Some(v.token_sha256.clone());
    ev.detail = Some(json!({ "code": code, "purpose": "verdict", "subject": v.subject, "token_sha": v.sha }));
    ev
}

pub(super) fn verdict_recorded(verdict: &Verdict) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::VerdictRecorded);
    ev.platform = Some(verdict.platform);
    ev.repository = Some(verdict.repository.clone());
    ev.environment = Some(verdict.environment.clone());
    ev.sha = Some(verdict.sha.clone());
    ev.actor = Some(verdict.producer.actor.clone());
    ev.token_sha256 = Some(verdict.producer.token_sha256.clone());
    ev.verdict = Some(verdict_summary(verdict));
    ev
}

pub(super) fn review_recorded(req: &DeploymentRequest, review: &Review) -> AuditEvent {
    let mut ev = for_request(EventKind::ReviewRecorded, req);
    ev.reviews = Some(json!([{ "reviewer": review.reviewer, "approve": review.approve, "via": review.via }]));
    ev
}

/// The decision record: the outcome, its reasons and the inputs it weighed.
pub(super) fn decision(
    req: &DeploymentRequest,
    decision: &Decision,
    attestation: Option<&Attestation>,
    verdict: Option<&Verdict>,
) -> AuditEvent {
    let mut ev = for_request(EventKind::Decision, req);
    ev.decision = Some(decision.outcome.as_str().to_string());
    ev.reasons = Some(decision.reasons.clone());
    if let Some(a) = attestation {
        ev.actor = Some(a.actor.clone());
        ev.claims = Some(a.claims.clone());
        ev.token_sha256 = Some(a.token_sha256.clone());
    }
    ev.verdict = verdict.map(verdict_summary);
    // A re-run: the attested actor above started the run; this attempt's
    // starter is the identity the decision checked.
    ev.detail = req
        .run_attempt
        .as_ref()
        .filter(|a| a.read)
        .map(|a| json!({ "run_attempt": a.number, "triggering_actor": a.triggering_actor }));
    if !req.reviews.is_empty() {
        ev.reviews = Some(json!(
            req.reviews
                .iter()
                .map(|r| json!({"reviewer": r.reviewer, "approve": r.approve, "via": r.via}))
                .collect::<Vec<_>>()
        ));
    }
    ev
}

/// What the platform said to the answer (or why it was not called).
pub(super) fn platform_result(req: &DeploymentRequest, decision: &Decision, detail: serde_json::Value) -> AuditEvent {
    let mut ev = for_request(EventKind::PlatformResult, req);
    ev.decision = Some(decision.outcome.as_str().to_string());
    ev.detail = Some(detail);
    ev
}

/// A GitLab deployment's later status, as its hook reported it.
pub(super) fn gitlab_status(request_id: &str, hook: &DeploymentHook) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::PlatformResult);
    ev.request = Some(request_id.to_string());
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
    ev
}

/// A verdict as the audit records summarise it.
pub(super) fn verdict_summary(v: &Verdict) -> serde_json::Value {
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

/// A person in a break-glass grant, as its records name them: who, and how
/// the identity was verified.
fn person(p: &crate::domain::Person) -> serde_json::Value {
    json!({ "email": p.email, "via": p.via, "verified": p.verified, "at": crate::time_fmt::rfc3339(p.at) })
}

/// The grant's own facts, for every break-glass record.
fn grant_detail(g: &Grant) -> serde_json::Value {
    json!({
        "grant": g.id,
        "state": g.state.as_str(),
        "justification": g.justification,
        "requester": person(&g.requester),
        "confirmations": g.confirmations.iter().map(person).collect::<Vec<_>>(),
        "required": g.required,
        "requested_at": crate::time_fmt::rfc3339(g.requested_at),
        "confirmed_at": g.confirmed_at.map(crate::time_fmt::rfc3339),
        "expires_at": crate::time_fmt::rfc3339(g.expires_at),
        "uses": g.uses.iter().map(|u| json!({"request": u.request, "decision_record": u.decision_record})).collect::<Vec<_>>(),
        "review_due": g.review_due.map(crate::time_fmt::rfc3339),
    })
}

/// A break-glass record: `kind`, the grant's commit and environment, the
/// person who acted (`actor`) and everything the grant holds.
pub(super) fn break_glass(kind: EventKind, g: &Grant, who: Option<&crate::domain::Person>) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    ev.repository = Some(g.repository.clone());
    ev.environment = Some(g.environment.clone());
    ev.sha = Some(g.sha.clone());
    ev.actor = who.map(|p| p.email.clone());
    let mut detail = grant_detail(g);
    if let Some(p) = who {
        detail["by"] = person(p);
    }
    ev.detail = Some(detail);
    ev
}

/// A deployment approved under a grant: the request's fields and the grant.
pub(super) fn break_glass_used(req: &DeploymentRequest, g: &Grant, decision_record: &str) -> AuditEvent {
    let mut ev = for_request(EventKind::BreakGlassUsed, req);
    let mut detail = grant_detail(g);
    detail["decision_record"] = json!(decision_record);
    ev.detail = Some(detail);
    ev
}

/// A used grant's review, with its notes.
pub(super) fn break_glass_reviewed(g: &Grant, review: &crate::domain::break_glass::GrantReview) -> AuditEvent {
    let mut ev = break_glass(EventKind::BreakGlassReviewed, g, Some(&review.reviewer));
    if let Some(d) = ev.detail.as_mut() {
        d["notes"] = json!(review.notes);
    }
    ev
}
