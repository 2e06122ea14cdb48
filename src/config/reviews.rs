//! Validation of `[environments.E.reviews]`: human reviews (rule 7).

use super::raw::RawReviews;
use super::types::{ReviewPolicy, ReviewVia};
use super::validate::Validator;

impl Validator<'_> {
    pub(super) fn reviews(&mut self, key: &str, raw: Option<RawReviews>) -> ReviewPolicy {
        let Some(r) = raw else {
            return ReviewPolicy {
                required: 0,
                via: ReviewVia::Slack,
                reviewers: Vec::new(),
                allow_self_review: false,
            };
        };
        let rkey = format!("{key}.reviews");
        let via = match r.via.as_deref().unwrap_or("slack") {
            "slack" => ReviewVia::Slack,
            "sso" => ReviewVia::Sso,
            other => {
                self.err(
                    format!("{rkey}.via"),
                    format!("`{other}` is not one of \"slack\", \"sso\""),
                );
                ReviewVia::Slack
            }
        };
        let required = r.required.unwrap_or(0);
        if required as usize > r.reviewers.len() {
            self.err(
                format!("{rkey}.required"),
                format!(
                    "requires {required} reviews but lists {} reviewer(s)",
                    r.reviewers.len()
                ),
            );
        }
        ReviewPolicy {
            required,
            via,
            reviewers: r.reviewers.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
            allow_self_review: r.allow_self_review.unwrap_or(false),
        }
    }
}
