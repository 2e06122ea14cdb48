//! Rule 7: human reviews. Who may review a request, when a review is the
//! deploying actor's own, and whether enough distinct reviewers approved.
//! The Slack buttons and the SSO review pages ask [`review_eligibility`]
//! before recording anything; the gate asks [`counts`] whether a recorded
//! review counts; the engine asks [`reviews_satisfied`].

use super::Findings;
use crate::config::{EnvironmentPolicy, ReviewVia};
use crate::domain::{Decision, Outcome, Reason, ReasonCode, Review};

/// Why a review cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewRefusal {
    #[error("{0} is not configured in portcullis")]
    EnvironmentNotConfigured(String),
    #[error("{0} takes no reviews")]
    NoReviews(String),
    /// The environment's reviews are made through the other channel.
    #[error("reviews for {environment} are made through {via:?}")]
    OtherChannel { environment: String, via: ReviewVia },
    #[error("{reviewer} is not a reviewer for {environment}")]
    NotAReviewer { reviewer: String, environment: String },
}

/// May a review of a request for this environment be taken through `via`,
/// and (once the reviewer's verified email is known) from `reviewer`?
/// Returns the environment's policy when it may.
pub fn review_eligibility<'p>(
    environment: &str,
    policy: Option<&'p EnvironmentPolicy>,
    via: ReviewVia,
    reviewer: Option<&str>,
) -> Result<&'p EnvironmentPolicy, ReviewRefusal> {
    let policy = policy.ok_or_else(|| ReviewRefusal::EnvironmentNotConfigured(environment.to_string()))?;
    if policy.reviews.required == 0 {
        return Err(ReviewRefusal::NoReviews(policy.name.clone()));
    }
    if policy.reviews.via != via {
        return Err(ReviewRefusal::OtherChannel {
            environment: policy.name.clone(),
            via: policy.reviews.via,
        });
    }
    if let Some(reviewer) = reviewer
        && !is_reviewer(policy, reviewer)
    {
        return Err(ReviewRefusal::NotAReviewer {
            reviewer: reviewer.to_string(),
            environment: policy.name.clone(),
        });
    }
    Ok(policy)
}

fn is_reviewer(policy: &EnvironmentPolicy, reviewer: &str) -> bool {
    policy
        .reviews
        .reviewers
        .iter()
        .any(|r| r.eq_ignore_ascii_case(reviewer))
}

/// Is this review the attested actor's own? Its email or any of its aliases
/// (the names the reviewer goes by) equals the actor, case-insensitively.
pub fn is_self_review(review: &Review, actor: &str) -> bool {
    review.reviewer.eq_ignore_ascii_case(actor) || review.aliases.iter().any(|a| a.eq_ignore_ascii_case(actor))
}

/// Does an approval count towards the required reviews? Not when it is the
/// actor's own and the environment does not allow self-review.
pub fn counts(policy: &EnvironmentPolicy, review: &Review, actor: Option<&str>) -> bool {
    review.approve && (policy.reviews.allow_self_review || !actor.is_some_and(|a| is_self_review(review, a)))
}

/// Rule 7: where the environment requires reviews, that many distinct
/// eligible reviewers approved (the actor's own approval does not count
/// unless `allow_self_review`), and no eligible reviewer rejected.
pub(crate) fn reviews_satisfied(policy: &EnvironmentPolicy, actor: Option<&str>, reviews: &[Review], f: &mut Findings) {
    let rules = &policy.reviews;
    if rules.required == 0 {
        return;
    }
    let eligible = |r: &&Review| is_reviewer(policy, &r.reviewer);
    for r in reviews.iter().filter(eligible).filter(|r| !r.approve) {
        f.violations.push(Reason::new(
            ReasonCode::ReviewRejected,
            format!("{} rejected the deployment", r.reviewer),
        ));
    }
    let mut approvers: Vec<String> = reviews
        .iter()
        .filter(eligible)
        .filter(|r| counts(policy, r, actor))
        .map(|r| r.reviewer.to_ascii_lowercase())
        .collect();
    approvers.sort();
    approvers.dedup();
    let have = approvers.len() as u32;
    if have >= rules.required {
        f.satisfied.push(Reason::new(
            ReasonCode::ReviewsSatisfied,
            format!("approved by {}", approvers.join(", ")),
        ));
    } else {
        f.missing.push(Reason::new(
            ReasonCode::ReviewsMissing,
            format!("{have} of {} required reviews", rules.required),
        ));
    }
}

/// Is the request waiting for reviews and nothing else? (The Slack message
/// offers its review buttons only then.)
pub fn only_reviews_missing(decision: Option<&Decision>) -> bool {
    match decision {
        Some(d) if d.outcome == Outcome::Pending && !d.reasons.is_empty() => {
            d.reasons.iter().all(|r| r.code == ReasonCode::ReviewsMissing)
        }
        _ => false,
    }
}
