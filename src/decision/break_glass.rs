//! Break glass: who may ask for, confirm and review a grant (one function,
//! [`break_glass_eligibility`], asked by the Slack buttons and the SSO pages
//! alike), and the waiver itself ([`active_grant`]): while a confirmed grant
//! for exactly the request's (repository, sha, environment) is within its
//! window, rules 6 (verdict) and 7 (reviews) step aside. Rules 1 to 5 are
//! never waived.

use time::OffsetDateTime;

use crate::config::{BreakGlassPolicy, EnvironmentPolicy, ReviewVia};
use crate::domain::break_glass::{MAX_JUSTIFICATION, MIN_JUSTIFICATION};
use crate::domain::{DeploymentRequest, ErrorCode, Grant, GrantState, Reason, ReasonCode};

/// What a person wants to do with break glass.
#[derive(Debug, Clone, Copy)]
pub enum Act<'g> {
    /// Ask for a grant.
    Request,
    /// Confirm this grant.
    Confirm(&'g Grant),
    /// Review this (used) grant afterwards.
    Review(&'g Grant),
}

/// Why a break-glass step cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakGlassRefusal {
    #[error("{0} is not configured in portcullis")]
    EnvironmentNotConfigured(String),
    #[error("{0} has no break glass")]
    NotEnabled(String),
    /// The environment's break glass goes through the other channel.
    #[error("break glass for {environment} goes through {}", via_name(*.via))]
    OtherChannel { environment: String, via: ReviewVia },
    #[error("{person} may not ask for break glass on {environment}")]
    NotARequester { person: String, environment: String },
    #[error("{person} is not a break-glass confirmer of {environment}")]
    NotAConfirmer { person: String, environment: String },
    #[error("{person} asked for this grant and cannot confirm or review it")]
    SelfConfirmation { person: String },
    #[error("{person} already confirmed this grant")]
    AlreadyConfirmed { person: String },
    #[error("a justification of at least {MIN_JUSTIFICATION} characters is required (this one has {0})")]
    JustificationTooShort(usize),
    #[error("{0}")]
    GrantClosed(String),
}

fn via_name(via: ReviewVia) -> &'static str {
    match via {
        ReviewVia::Slack => "Slack",
        ReviewVia::Sso => "the sign-in pages",
    }
}

impl BreakGlassRefusal {
    /// The API's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            BreakGlassRefusal::EnvironmentNotConfigured(_) => ErrorCode::EnvironmentNotConfigured,
            BreakGlassRefusal::NotEnabled(_) | BreakGlassRefusal::OtherChannel { .. } => {
                ErrorCode::BreakGlassNotEnabled
            }
            BreakGlassRefusal::NotARequester { .. } => ErrorCode::NotABreakGlassRequester,
            BreakGlassRefusal::NotAConfirmer { .. } => ErrorCode::NotABreakGlassConfirmer,
            BreakGlassRefusal::SelfConfirmation { .. } => ErrorCode::SelfConfirmation,
            BreakGlassRefusal::AlreadyConfirmed { .. } | BreakGlassRefusal::GrantClosed(_) => ErrorCode::GrantClosed,
            BreakGlassRefusal::JustificationTooShort(_) => ErrorCode::JustificationTooShort,
        }
    }
}

fn listed(list: &[String], person: &str) -> bool {
    list.iter().any(|p| p.eq_ignore_ascii_case(person))
}

/// May `act` be taken on `environment` through `via`, and (once the
/// person's verified email is known) by `person`, at `now`? Returns the
/// environment's break-glass policy when it may.
pub fn break_glass_eligibility<'p>(
    environment: &str,
    policy: Option<&'p EnvironmentPolicy>,
    via: ReviewVia,
    act: Act<'_>,
    person: Option<&str>,
    now: OffsetDateTime,
) -> Result<&'p BreakGlassPolicy, BreakGlassRefusal> {
    let env = policy.ok_or_else(|| BreakGlassRefusal::EnvironmentNotConfigured(environment.to_string()))?;
    let bg = env
        .break_glass
        .as_ref()
        .ok_or_else(|| BreakGlassRefusal::NotEnabled(env.name.clone()))?;
    if bg.via != via {
        return Err(BreakGlassRefusal::OtherChannel {
            environment: env.name.clone(),
            via: bg.via,
        });
    }
    match act {
        Act::Request => {}
        Act::Confirm(g) => {
            if g.state != GrantState::Requested || now >= g.expires_at {
                return Err(BreakGlassRefusal::GrantClosed(match g.state {
                    GrantState::Confirmed => format!("grant {} is already confirmed", g.id),
                    _ => format!("grant {} has expired", g.id),
                }));
            }
        }
        Act::Review(g) => {
            if !g.used() {
                return Err(BreakGlassRefusal::GrantClosed(format!(
                    "grant {} was not used: there is nothing to review",
                    g.id
                )));
            }
            if g.review.is_some() {
                return Err(BreakGlassRefusal::GrantClosed(format!(
                    "grant {} is already reviewed",
                    g.id
                )));
            }
        }
    }
    let Some(person) = person else { return Ok(bg) };
    match act {
        Act::Request if !listed(&bg.requesters, person) => Err(BreakGlassRefusal::NotARequester {
            person: person.to_string(),
            environment: env.name.clone(),
        }),
        Act::Confirm(g) | Act::Review(g) if g.requester.email.eq_ignore_ascii_case(person) => {
            Err(BreakGlassRefusal::SelfConfirmation {
                person: person.to_string(),
            })
        }
        Act::Confirm(_) | Act::Review(_) if !listed(&bg.confirmers, person) => Err(BreakGlassRefusal::NotAConfirmer {
            person: person.to_string(),
            environment: env.name.clone(),
        }),
        Act::Confirm(g) if g.confirmations.iter().any(|c| c.email.eq_ignore_ascii_case(person)) => {
            Err(BreakGlassRefusal::AlreadyConfirmed {
                person: person.to_string(),
            })
        }
        _ => Ok(bg),
    }
}

/// The justification, trimmed, when it is long enough (and cut to the
/// longest kept).
pub fn justification(text: &str) -> Result<String, BreakGlassRefusal> {
    let t = text.trim();
    let n = t.chars().count();
    if n < MIN_JUSTIFICATION {
        return Err(BreakGlassRefusal::JustificationTooShort(n));
    }
    Ok(t.chars().take(MAX_JUSTIFICATION).collect())
}

/// Is `grant` confirmed by enough distinct confirmers of `bg`, none of
/// them its requester, and asked by one of `bg`'s requesters?
fn confirmed_by_policy(bg: &BreakGlassPolicy, grant: &Grant) -> bool {
    if !listed(&bg.requesters, &grant.requester.email) {
        return false;
    }
    let mut who: Vec<String> = grant
        .confirmations
        .iter()
        .map(|c| c.email.to_ascii_lowercase())
        .filter(|c| listed(&bg.confirmers, c) && !c.eq_ignore_ascii_case(&grant.requester.email))
        .collect();
    who.sort();
    who.dedup();
    who.len() >= bg.confirmations.max(1) as usize
}

/// The grant that waives rules 6 and 7 for `request` at `now`, if any: one
/// for exactly its (repository, sha, environment), confirmed under the
/// environment's current break-glass settings, and within its window.
pub fn active_grant<'g>(
    policy: &EnvironmentPolicy,
    request: &DeploymentRequest,
    grants: &'g [Grant],
    now: OffsetDateTime,
) -> Option<&'g Grant> {
    let bg = policy.break_glass.as_ref()?;
    grants.iter().find(|g| {
        g.repository.eq_ignore_ascii_case(&request.repository)
            && g.sha.eq_ignore_ascii_case(&request.sha)
            && g.environment == request.environment
            && g.state == GrantState::Confirmed
            && g.confirmed_at.is_some_and(|at| at <= now)
            && now < g.expires_at
            && confirmed_by_policy(bg, g)
    })
}

/// The `break_glass` reason of an approval under `grant`: the grant, the
/// justification and every person in it.
pub fn waiver_reason(grant: &Grant) -> Reason {
    Reason::new(
        ReasonCode::BreakGlass,
        format!(
            "grant {} waived the verdict and reviews (\"{}\"); {}; until {}",
            grant.id,
            grant.justification,
            grant.people(),
            crate::time_fmt::rfc3339(grant.expires_at)
        ),
    )
}
