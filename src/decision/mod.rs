//! The decision engine: pure and synchronous. Inputs in (the environment's
//! policy, the request, the attestation, the verdict, the reviews, and the
//! time), decision and reasons out. No I/O and no clock reads, so every rule
//! is a table test.
//!
//! Each decision rule is one function in [`rules`] (rules 1–6) or
//! [`reviews`] (rule 7); [`break_glass`] holds who may ask for, confirm
//! and review an emergency grant, and the waiver of rules 6 and 7 it gives; the gate, the Slack buttons and the SSO review pages
//! ask those functions, never a copy of them.
//!
//! A denial is data ([`Outcome::Rejected`] with reasons), never an `Err`.
//! Definite violations reject at once; what may still arrive leaves the
//! request [`Outcome::Pending`], naming what is missing; at the deadline a
//! pending request is rejected with `pending_timeout` and the missing items.

use time::OffsetDateTime;

use crate::config::EnvironmentPolicy;
use crate::domain::{Attestation, DeploymentRequest, Grant, Review, Verdict};
pub use crate::domain::{Decision, Outcome, Reason, ReasonCode};

pub mod break_glass;
pub mod reviews;
pub mod rules;

pub use break_glass::{Act, BreakGlassRefusal, break_glass_eligibility};
pub use reviews::{ReviewRefusal, is_self_review, only_reviews_missing, review_eligibility};
pub use rules::producer_trusted;

/// Everything the engine looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The environment's policy; `None` when the environment is not configured.
    pub policy: Option<&'a EnvironmentPolicy>,
    pub request: &'a DeploymentRequest,
    pub attestation: Option<&'a Attestation>,
    pub verdict: Option<&'a Verdict>,
    pub reviews: &'a [Review],
    /// The break-glass grants held for the request's (repository, sha,
    /// environment); a confirmed one within its window waives rules 6 and 7.
    pub break_glass: &'a [Grant],
    pub now: OffsetDateTime,
}

/// What the rules found, in the order they found it.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Definite violations: any of them rejects.
    pub violations: Vec<Reason>,
    /// Inputs that may still arrive: the request stays pending.
    pub missing: Vec<Reason>,
    /// Rules that hold, listed on an approval.
    pub satisfied: Vec<Reason>,
}

/// Decides a request. Pure: the same inputs give the same decision.
pub fn evaluate(inputs: &Inputs<'_>) -> Decision {
    let request = inputs.request;
    let policy = match rules::environment_configured(inputs.policy, request) {
        Ok(p) => p,
        Err(reason) => {
            return Decision {
                outcome: Outcome::Rejected,
                reasons: vec![reason],
            };
        }
    };

    let mut f = Findings {
        violations: request.intake_problems.clone(),
        ..Findings::default()
    };
    let attempt = rules::run_attempt_known(request, inputs.attestation.is_some(), &mut f);
    if let Some(att) = rules::attestation_present(request, inputs.attestation, &mut f) {
        rules::attestation_matches(request, att, &mut f);
        rules::claims_satisfied(policy, att, &mut f);
        if let Some(attempt) = attempt {
            rules::actor_is_approver(policy, request, attempt, &att.actor, &mut f);
        }
    }
    match break_glass::active_grant(policy, request, inputs.break_glass, inputs.now) {
        // Rules 6 and 7 step aside for a confirmed grant within its window.
        Some(grant) => f.satisfied.push(break_glass::waiver_reason(grant)),
        None => {
            rules::verdict_allows(policy, request, inputs.verdict, inputs.now, &mut f);
            reviews::reviews_satisfied(
                policy,
                inputs.attestation.map(|a| a.actor.as_str()),
                inputs.reviews,
                &mut f,
            );
        }
    }

    let Findings {
        violations,
        missing,
        satisfied,
    } = f;
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

#[cfg(test)]
mod tests;
