//! The decision engine: pure and synchronous. Inputs in (the environment's
//! policy, the request, the attestation, the verdict, the reviews, and the
//! time), decision and reasons out. No I/O and no clock reads, so every rule
//! is a table test.
//!
//! A denial is data ([`Outcome::Rejected`] with reasons), never an `Err`.
//! Definite violations reject at once; what may still arrive leaves the
//! request [`Outcome::Pending`], naming what is missing; at the deadline a
//! pending request is rejected with `pending_timeout` and the missing items.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{EnvironmentPolicy, rule_matches};
use crate::domain::{Attestation, DeploymentRequest, Review, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Approved,
    Rejected,
    Pending,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Pending => "pending",
        }
    }
}

/// Stable reason codes. Each rule of the contract has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    // Rejections.
    EnvironmentNotConfigured,
    CallbackHostMismatch,
    IdentityMismatch,
    ClaimNotSatisfied,
    ActorNotApprover,
    VerdictDenied,
    ReviewRejected,
    PendingTimeout,
    // Missing inputs (pending).
    AttestationMissing,
    VerdictMissing,
    VerdictStale,
    VerdictProducerUntrusted,
    ReviewsMissing,
    // Satisfied rules, listed on approvals.
    AttestationVerified,
    ClaimsSatisfied,
    ActorApproved,
    VerdictAllowed,
    VerdictNotRequired,
    ReviewsSatisfied,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::EnvironmentNotConfigured => "environment_not_configured",
            ReasonCode::CallbackHostMismatch => "callback_host_mismatch",
            ReasonCode::IdentityMismatch => "identity_mismatch",
            ReasonCode::ClaimNotSatisfied => "claim_not_satisfied",
            ReasonCode::ActorNotApprover => "actor_not_approver",
            ReasonCode::VerdictDenied => "verdict_denied",
            ReasonCode::ReviewRejected => "review_rejected",
            ReasonCode::PendingTimeout => "pending_timeout",
            ReasonCode::AttestationMissing => "attestation_missing",
            ReasonCode::VerdictMissing => "verdict_missing",
            ReasonCode::VerdictStale => "verdict_stale",
            ReasonCode::VerdictProducerUntrusted => "verdict_producer_untrusted",
            ReasonCode::ReviewsMissing => "reviews_missing",
            ReasonCode::AttestationVerified => "attestation_verified",
            ReasonCode::ClaimsSatisfied => "claims_satisfied",
            ReasonCode::ActorApproved => "actor_approved",
            ReasonCode::VerdictAllowed => "verdict_allowed",
            ReasonCode::VerdictNotRequired => "verdict_not_required",
            ReasonCode::ReviewsSatisfied => "reviews_satisfied",
        }
    }
}

/// One reason: a stable code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
}

impl Reason {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Reason {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn is_final(&self) -> bool {
        self.outcome != Outcome::Pending
    }
    pub fn codes(&self) -> Vec<ReasonCode> {
        self.reasons.iter().map(|r| r.code).collect()
    }
}

/// Everything the engine looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The environment's policy; `None` when the environment is not configured.
    pub policy: Option<&'a EnvironmentPolicy>,
    pub request: &'a DeploymentRequest,
    pub attestation: Option<&'a Attestation>,
    pub verdict: Option<&'a Verdict>,
    pub reviews: &'a [Review],
    pub now: OffsetDateTime,
}

/// Decides a request. Pure: the same inputs give the same decision.
pub fn evaluate(inputs: &Inputs<'_>) -> Decision {
    let request = inputs.request;
    let Some(policy) = inputs.policy else {
        return Decision {
            outcome: Outcome::Rejected,
            reasons: vec![Reason::new(
                ReasonCode::EnvironmentNotConfigured,
                format!("environment `{}` is not configured in portcullis", request.environment),
            )],
        };
    };

    let mut violations: Vec<Reason> = request.intake_problems.clone();
    let mut missing: Vec<Reason> = Vec::new();
    let mut satisfied: Vec<Reason> = Vec::new();

    // Rules 2 to 5: the triggering identity.
    match inputs.attestation {
        None => missing.push(Reason::new(
            ReasonCode::AttestationMissing,
            format!(
                "no verified OIDC token has been presented for run {} of {}",
                request.run, request.repository
            ),
        )),
        Some(att) => check_identity(policy, request, att, &mut violations, &mut satisfied),
    }

    // Rule 6: the policy verdict.
    if policy.verdict.required {
        check_verdict(
            policy,
            request,
            inputs.verdict,
            inputs.now,
            &mut violations,
            &mut missing,
            &mut satisfied,
        );
    } else {
        satisfied.push(Reason::new(
            ReasonCode::VerdictNotRequired,
            "this environment requires no policy verdict",
        ));
    }

    // Rule 7: human reviews.
    if policy.reviews.required > 0 {
        let actor = inputs.attestation.map(|a| a.actor.as_str());
        check_reviews(
            policy,
            actor,
            inputs.reviews,
            &mut violations,
            &mut missing,
            &mut satisfied,
        );
    }

    if !violations.is_empty() {
        return Decision {
            outcome: Outcome::Rejected,
            reasons: violations,
        };
    }
    if !missing.is_empty() {
        if inputs.now >= request.deadline {
            let mut reasons = vec![Reason::new(
                ReasonCode::PendingTimeout,
                format!(
                    "still missing at the deadline ({}): {}",
                    humantime::format_duration(policy.pending_timeout),
                    missing.iter().map(|r| r.code.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )];
            reasons.extend(missing);
            return Decision {
                outcome: Outcome::Rejected,
                reasons,
            };
        }
        return Decision {
            outcome: Outcome::Pending,
            reasons: missing,
        };
    }
    Decision {
        outcome: Outcome::Approved,
        reasons: satisfied,
    }
}

fn check_identity(
    policy: &EnvironmentPolicy,
    request: &DeploymentRequest,
    att: &Attestation,
    violations: &mut Vec<Reason>,
    satisfied: &mut Vec<Reason>,
) {
    let mut identity_ok = true;
    if att.platform != request.platform || !att.repository.eq_ignore_ascii_case(&request.repository) {
        identity_ok = false;
        violations.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!(
                "the token is for {} `{}`, the request for {} `{}`",
                att.platform, att.repository, request.platform, request.repository
            ),
        ));
    }
    if let Some(sha) = &att.sha
        && !sha.eq_ignore_ascii_case(&request.sha)
    {
        identity_ok = false;
        violations.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!("the token is for commit {sha}, the request deploys {}", request.sha),
        ));
    }
    if identity_ok {
        satisfied.push(Reason::new(
            ReasonCode::AttestationVerified,
            format!("{} attested by {} ({})", att.actor, att.issuer_name, att.subject),
        ));
    }

    let mut claims_ok = true;
    for (claim, matcher) in &policy.require_claims {
        match att.claims.get(claim) {
            Some(value) if matcher.matches(value) => {}
            Some(value) => {
                claims_ok = false;
                violations.push(Reason::new(
                    ReasonCode::ClaimNotSatisfied,
                    format!("claim `{claim}` is {value}, required {}", matcher.describe()),
                ));
            }
            None => {
                claims_ok = false;
                violations.push(Reason::new(
                    ReasonCode::ClaimNotSatisfied,
                    format!("claim `{claim}` is absent, required {}", matcher.describe()),
                ));
            }
        }
    }
    if claims_ok && !policy.require_claims.is_empty() {
        satisfied.push(Reason::new(
            ReasonCode::ClaimsSatisfied,
            format!(
                "claims {} satisfied",
                policy.require_claims.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }

    if policy.approvers.iter().any(|a| a.eq_ignore_ascii_case(&att.actor)) {
        satisfied.push(Reason::new(
            ReasonCode::ActorApproved,
            format!("{} may deploy to {}", att.actor, policy.name),
        ));
    } else {
        violations.push(Reason::new(
            ReasonCode::ActorNotApprover,
            format!("{} is not an approver of {}", att.actor, policy.name),
        ));
    }
}

fn check_verdict(
    policy: &EnvironmentPolicy,
    request: &DeploymentRequest,
    verdict: Option<&Verdict>,
    now: OffsetDateTime,
    violations: &mut Vec<Reason>,
    missing: &mut Vec<Reason>,
    satisfied: &mut Vec<Reason>,
) {
    let Some(v) = verdict else {
        missing.push(Reason::new(
            ReasonCode::VerdictMissing,
            format!("no policy verdict for {} at {}", request.repository, request.sha),
        ));
        return;
    };
    // A verdict for another commit, repository or environment is no verdict
    // for this request; the store keys make this impossible, the engine does
    // not rely on it.
    if !v.sha.eq_ignore_ascii_case(&request.sha)
        || !v.repository.eq_ignore_ascii_case(&request.repository)
        || v.environment != request.environment
    {
        missing.push(Reason::new(
            ReasonCode::VerdictMissing,
            "the verdict held is for another commit or environment",
        ));
        return;
    }
    if !policy
        .verdict
        .producers
        .iter()
        .any(|rule| rule_matches(rule, &v.producer.claims))
    {
        missing.push(Reason::new(
            ReasonCode::VerdictProducerUntrusted,
            format!(
                "the verdict was posted by {}, who is not a trusted producer",
                v.producer.subject
            ),
        ));
        return;
    }
    let max_age = time::Duration::try_from(policy.verdict.max_age).unwrap_or(time::Duration::MAX);
    if now - v.recorded_at > max_age {
        missing.push(Reason::new(
            ReasonCode::VerdictStale,
            format!(
                "the verdict is older than {} (recorded {})",
                humantime::format_duration(policy.verdict.max_age),
                crate::time_fmt::rfc3339(v.recorded_at)
            ),
        ));
        return;
    }
    let policy_name = v.policy.as_deref().unwrap_or("policy");
    if v.allow {
        satisfied.push(Reason::new(
            ReasonCode::VerdictAllowed,
            format!("{policy_name} allowed {}", request.sha),
        ));
    } else {
        let why = if v.reasons.is_empty() {
            "no reasons given".to_string()
        } else {
            v.reasons.join("; ")
        };
        violations.push(Reason::new(
            ReasonCode::VerdictDenied,
            format!("{policy_name} denied: {why}"),
        ));
    }
}

fn check_reviews(
    policy: &EnvironmentPolicy,
    actor: Option<&str>,
    reviews: &[Review],
    violations: &mut Vec<Reason>,
    missing: &mut Vec<Reason>,
    satisfied: &mut Vec<Reason>,
) {
    let rules = &policy.reviews;
    let eligible = |r: &&Review| rules.reviewers.iter().any(|x| x.eq_ignore_ascii_case(&r.reviewer));
    let is_self = |r: &Review| {
        actor.is_some_and(|a| r.reviewer.eq_ignore_ascii_case(a) || r.aliases.iter().any(|x| x.eq_ignore_ascii_case(a)))
    };
    for r in reviews.iter().filter(eligible).filter(|r| !r.approve) {
        violations.push(Reason::new(
            ReasonCode::ReviewRejected,
            format!("{} rejected the deployment", r.reviewer),
        ));
    }
    let mut approvers: Vec<String> = reviews
        .iter()
        .filter(eligible)
        .filter(|r| r.approve && (rules.allow_self_review || !is_self(r)))
        .map(|r| r.reviewer.to_ascii_lowercase())
        .collect();
    approvers.sort();
    approvers.dedup();
    let have = approvers.len() as u32;
    if have >= rules.required {
        satisfied.push(Reason::new(
            ReasonCode::ReviewsSatisfied,
            format!("approved by {}", approvers.join(", ")),
        ));
    } else {
        missing.push(Reason::new(
            ReasonCode::ReviewsMissing,
            format!("{have} of {} required reviews", rules.required),
        ));
    }
}

#[cfg(test)]
mod tests;
