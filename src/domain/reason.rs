//! Decisions and their reasons: the outcome of evaluating a request, and
//! the stable reason code of every rule, with a sentence for humans.

use serde::{Deserialize, Serialize};

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
    RunAttemptUnknown,
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
    /// A confirmed break-glass grant waived rules 6 and 7.
    BreakGlass,
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
            ReasonCode::RunAttemptUnknown => "run_attempt_unknown",
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
            ReasonCode::BreakGlass => "break_glass",
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
