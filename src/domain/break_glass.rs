//! Break glass: an emergency grant for one commit to one environment,
//! asked for by one person with a justification, confirmed by others, that
//! waives the policy verdict (rule 6) and human reviews (rule 7) for that
//! commit while it is within its window, and that is reviewed afterwards.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::SlackRef;

/// The shortest justification a grant is asked for with.
pub const MIN_JUSTIFICATION: usize = 20;
/// The longest justification (and review notes) kept.
pub const MAX_JUSTIFICATION: usize = 2000;

/// The key of the grants for (repository, sha, environment). Repository
/// names and shas compare case-insensitively, so the key is lower-cased.
pub fn grant_key(repository: &str, sha: &str, environment: &str) -> String {
    format!(
        "{}:{}:{}",
        repository.to_ascii_lowercase(),
        sha.to_ascii_lowercase(),
        environment
    )
}

/// A person acting on a grant, identified as reviewers are: a verified
/// email, the names they go by, and how the identity was verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    /// The verified email address, lower-cased.
    pub email: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `slack` (a Slack user's email from `users.info`) or `sso` (the ID
    /// token's verified email claim).
    pub via: String,
    /// How the identity was verified, in words a reader of the audit can
    /// check: the Slack user id and workspace, or the provider and subject.
    pub verified: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Where a grant is in its life. `used` and `reviewed` are facts kept
/// beside the state ([`Grant::uses`], [`Grant::review`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Asked for; waiting for confirmations.
    Requested,
    /// Confirmed: waives rules 6 and 7 until `expires_at`.
    Confirmed,
    /// Past its window (confirmed or not): waives nothing.
    Expired,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Requested => "requested",
            GrantState::Confirmed => "confirmed",
            GrantState::Expired => "expired",
        }
    }
}

/// One deployment approved under a grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantUse {
    pub request: String,
    /// The id of the request's `decision` audit record.
    pub decision_record: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The review of a used grant, afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantReview {
    pub reviewer: Person,
    pub notes: String,
}

/// A break-glass grant for (repository, sha, environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub repository: String,
    pub sha: String,
    pub environment: String,
    pub justification: String,
    pub requester: Person,
    #[serde(default)]
    pub confirmations: Vec<Person>,
    /// How many confirmations the environment required when it was asked.
    pub required: u32,
    pub state: GrantState,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub confirmed_at: Option<OffsetDateTime>,
    /// When an unconfirmed grant lapses, then (once confirmed) when its
    /// window ends.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default)]
    pub uses: Vec<GrantUse>,
    /// When the review is due: the first use plus `review_within`.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub review_due: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<GrantReview>,
    /// When the last overdue reminder went to the alert channel.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub reminded_at: Option<OffsetDateTime>,
    /// The alert channel's message of the ask (its Confirm button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<SlackRef>,
    /// Bumped by every write; compare-and-set uses it.
    #[serde(default)]
    pub version: u64,
}

impl Grant {
    pub fn key(&self) -> String {
        grant_key(&self.repository, &self.sha, &self.environment)
    }

    pub fn used(&self) -> bool {
        !self.uses.is_empty()
    }

    /// Used and not yet reviewed.
    pub fn awaiting_review(&self) -> bool {
        self.used() && self.review.is_none()
    }

    /// Used, not reviewed, and past its review date.
    pub fn overdue(&self, now: OffsetDateTime) -> bool {
        self.awaiting_review() && self.review_due.is_some_and(|d| now >= d)
    }

    /// Nothing more will happen to it: expired, and reviewed if it was used.
    pub fn finished(&self) -> bool {
        self.state == GrantState::Expired && !self.awaiting_review()
    }

    /// Everyone in the grant, as one line: who asked, who confirmed.
    pub fn people(&self) -> String {
        let confirmed: Vec<String> = self
            .confirmations
            .iter()
            .map(|p| format!("{} (via {})", p.email, p.via))
            .collect();
        let mut out = format!("asked by {} (via {})", self.requester.email, self.requester.via);
        if !confirmed.is_empty() {
            out.push_str(&format!("; confirmed by {}", confirmed.join(", ")));
        }
        out
    }
}
