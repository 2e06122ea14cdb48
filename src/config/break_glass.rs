//! `[environments.E.break_glass]`: who may ask for an emergency grant for a
//! commit, who confirms it, how many confirmations it needs, through which
//! channel, how long a confirmed grant lasts, where it is announced, and
//! how soon a used grant must be reviewed. Its raw shape, its validated
//! settings and their validation live here together.

use std::time::Duration;

use serde::Deserialize;

use super::types::ReviewVia;
use super::validate::Validator;

/// `[environments.E.break_glass]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreakGlass {
    #[serde(default)]
    pub requesters: Vec<String>,
    #[serde(default)]
    pub confirmers: Vec<String>,
    pub confirmations: Option<u32>,
    pub via: Option<String>,
    pub window: Option<String>,
    pub alert_channel: Option<String>,
    pub review_within: Option<String>,
}

/// The validated `[environments.E.break_glass]`.
#[derive(Debug, Clone)]
pub struct BreakGlassPolicy {
    /// Who may ask (verified emails, lower-cased).
    pub requesters: Vec<String>,
    /// Who may confirm and review (verified emails, lower-cased); never the
    /// grant's own requester.
    pub confirmers: Vec<String>,
    /// Distinct confirmers a grant needs (at least 1).
    pub confirmations: u32,
    /// Through which channel people ask, confirm and review.
    pub via: ReviewVia,
    /// How long a confirmed grant lasts (and an unconfirmed one waits).
    pub window: Duration,
    /// The Slack channel told of every step (needs `[slack]`).
    pub alert_channel: Option<String>,
    /// How soon after its first use a grant must be reviewed.
    pub review_within: Duration,
}

impl Validator<'_> {
    pub(super) fn break_glass(&mut self, key: &str, raw: RawBreakGlass) -> BreakGlassPolicy {
        let lower = |v: Vec<String>| -> Vec<String> { v.into_iter().map(|s| s.trim().to_ascii_lowercase()).collect() };
        let requesters = lower(raw.requesters);
        let confirmers = lower(raw.confirmers);
        if requesters.is_empty() {
            self.err(format!("{key}.requesters"), "at least one requester is required");
        }
        for (list, name) in [(&requesters, "requesters"), (&confirmers, "confirmers")] {
            if let Some(bad) = list.iter().find(|e| !e.contains('@')) {
                self.err(
                    format!("{key}.{name}"),
                    format!("`{bad}` is not an email address (people are matched by their verified email)"),
                );
            }
        }
        let confirmations = raw.confirmations.unwrap_or(1);
        if confirmations == 0 {
            self.err(
                format!("{key}.confirmations"),
                "must be at least 1: a grant is owned by two people",
            );
        }
        // Every requester must be able to get a grant confirmed by others.
        for r in &requesters {
            let others = confirmers.iter().filter(|c| *c != r).count();
            if others < confirmations as usize {
                self.err(
                    format!("{key}.confirmers"),
                    format!(
                        "{confirmations} confirmation(s) are required, but only {others} confirmer(s) other than the requester {r} are listed"
                    ),
                );
                break;
            }
        }
        let via = match raw.via.as_deref().unwrap_or("slack") {
            "slack" => ReviewVia::Slack,
            "sso" => ReviewVia::Sso,
            other => {
                self.err(
                    format!("{key}.via"),
                    format!("`{other}` is not one of \"slack\", \"sso\""),
                );
                ReviewVia::Slack
            }
        };
        let window = self.duration(
            &format!("{key}.window"),
            raw.window.as_deref(),
            Duration::from_secs(3600),
        );
        let review_within = self.duration(
            &format!("{key}.review_within"),
            raw.review_within.as_deref(),
            Duration::from_secs(72 * 3600),
        );
        let alert_channel = raw.alert_channel.filter(|c| !c.trim().is_empty());
        BreakGlassPolicy {
            requesters,
            confirmers,
            confirmations,
            via,
            window,
            alert_channel,
            review_within,
        }
    }
}

impl Validator<'_> {
    /// Break glass through Slack, or announced in a Slack channel, needs
    /// `[slack]`; through sign-in pages, `[sso]`.
    pub(super) fn break_glass_needs(
        &mut self,
        environments: &std::collections::BTreeMap<String, super::types::EnvironmentPolicy>,
        slack: bool,
        sso: bool,
    ) {
        for (name, e) in environments {
            let Some(b) = &e.break_glass else { continue };
            let key = format!("environments.{name}.break_glass");
            if b.via == ReviewVia::Slack && !slack {
                self.err(
                    format!("{key}.via"),
                    "break glass through Slack needs [slack] to be configured",
                );
            }
            if b.via == ReviewVia::Sso && !sso {
                self.err(
                    format!("{key}.via"),
                    "break glass through sign-in pages needs [sso] to be configured",
                );
            }
            if b.alert_channel.is_some() && !slack {
                self.err(
                    format!("{key}.alert_channel"),
                    "an alert channel is a Slack channel: [slack] must be configured",
                );
            }
        }
    }
}
