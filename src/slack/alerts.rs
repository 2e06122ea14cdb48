//! Break glass is loud: the alert channel's message of each grant step
//! (asked for, each confirmation, used, expired, reviewed, a review
//! overdue), and the grant's line and button on a request's own message.
//! Pure functions of the grant, its environment's settings and the links,
//! like [`super::message`].

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::break_glass::{ACTION_BREAK_GLASS, ACTION_CONFIRM, ACTION_LINK, ACTION_REVIEW};
use super::message::{Rendered, esc};
use crate::config::{BreakGlassPolicy, ReviewVia};
use crate::domain::{DeploymentRequest, Grant, GrantState, RequestStatus};
use crate::gate::GrantStep;

/// Section texts are capped by Slack at 3000 characters.
const MAX_SECTION: usize = 2900;

pub(super) fn cap(s: &str) -> String {
    if s.chars().count() <= MAX_SECTION {
        return s.to_string();
    }
    s.chars().take(MAX_SECTION).collect::<String>() + "…"
}

/// The sign-in pages of break glass under `public_url`.
pub fn grant_page(public_url: &str, grant_id: &str) -> String {
    format!(
        "{}/reviews/break-glass/grants/{grant_id}",
        public_url.trim_end_matches('/')
    )
}

/// The page asking for a grant for a request's commit.
pub fn ask_page(public_url: &str, request_id: &str) -> String {
    format!(
        "{}/reviews/break-glass?request={request_id}",
        public_url.trim_end_matches('/')
    )
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn button(label: &str, action_id: &str, style: Option<&str>, value: Option<&str>, url: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "action_id": action_id,
        "text": { "type": "plain_text", "text": label, "emoji": true },
    });
    if let Some(s) = style {
        b["style"] = json!(s);
    }
    if let Some(v) = value {
        b["value"] = json!(v);
    }
    if let Some(u) = url {
        b["url"] = json!(u);
    }
    b
}

/// Where the grant stands, in one line.
pub fn grant_state(grant: &Grant, now: OffsetDateTime) -> String {
    let until = crate::time_fmt::rfc3339(grant.expires_at);
    let mut line = match grant.state {
        GrantState::Requested if now < grant.expires_at => format!(
            "asked for, {} of {} confirmation(s); lapses at {until}",
            grant.confirmations.len(),
            grant.required
        ),
        GrantState::Confirmed if now < grant.expires_at => format!("confirmed, active until {until}"),
        GrantState::Requested => "lapsed unconfirmed".to_string(),
        _ => format!("expired at {until}"),
    };
    if grant.used() {
        line.push_str(&format!("; used by {} deployment(s)", grant.uses.len()));
        match &grant.review {
            Some(r) => line.push_str(&format!("; reviewed by {}", r.reviewer.email)),
            None if grant.overdue(now) => line.push_str("; review OVERDUE"),
            None => {
                if let Some(due) = grant.review_due {
                    line.push_str(&format!("; review due by {}", crate::time_fmt::rfc3339(due)));
                }
            }
        }
    }
    line
}

/// The break-glass blocks of a request's living message: each grant for its
/// commit, and "Break glass…" while the request is pending and no grant is
/// open. `ask_url` is the sign-in page for `via = "sso"`.
pub fn request_blocks(
    req: &DeploymentRequest,
    bg: &BreakGlassPolicy,
    grants: &[Grant],
    ask_url: &str,
    now: OffsetDateTime,
) -> Vec<Value> {
    let mut blocks = Vec::new();
    let mut shown: Vec<&Grant> = grants.iter().collect();
    shown.sort_by_key(|g| g.requested_at);
    let lines: Vec<String> = shown
        .iter()
        .rev()
        .take(3)
        .map(|g| {
            format!(
                ":rotating_light: Break glass `{}` ({}): \"{}\"; {}",
                esc(&g.id),
                esc(&grant_state(g, now)),
                esc(&g.justification),
                esc(&g.people())
            )
        })
        .collect();
    if !lines.is_empty() {
        blocks.push(json!({
            "type": "context",
            "block_id": "break_glass",
            "elements": [{ "type": "mrkdwn", "text": cap(&lines.join("\n")) }],
        }));
    }
    let open = grants
        .iter()
        .any(|g| g.state != GrantState::Expired && now < g.expires_at);
    if req.status == RequestStatus::Pending && !open {
        let b = match bg.via {
            ReviewVia::Slack => button("Break glass…", ACTION_BREAK_GLASS, None, Some(&req.id), None),
            ReviewVia::Sso => button(
                "Break glass… (sign in)",
                ACTION_LINK,
                None,
                Some(&req.id),
                Some(ask_url),
            ),
        };
        blocks.push(json!({ "type": "actions", "block_id": "break_glass_actions", "elements": [b] }));
    }
    blocks
}

/// The alert channel's message of `grant` taking `step`. The Confirm
/// button is on the ask while it waits; the Review button on the use and
/// the reminders while the review is due. `page` is the grant's sign-in
/// page (for `via = "sso"`).
pub fn alert(grant: &Grant, step: GrantStep, via: ReviewVia, page: &str, now: OffsetDateTime) -> Rendered {
    let headline = match step {
        GrantStep::Requested => ":rotating_light: *Break glass asked for*",
        GrantStep::Confirmed if grant.state == GrantState::Confirmed => ":rotating_light: *Break glass confirmed*",
        GrantStep::Confirmed => ":rotating_light: *Break glass confirmation*",
        GrantStep::Used => ":rotating_light: *Break glass used*",
        GrantStep::Expired => ":lock: *Break glass expired*",
        GrantStep::Reviewed => ":memo: *Break glass reviewed*",
        GrantStep::Overdue => ":alarm_clock: *Break glass review overdue*",
    };
    let text = format!(
        "Break glass {}: {} at {} to {}",
        step.as_str(),
        grant.repository,
        short(&grant.sha),
        grant.environment
    );
    let mut body = format!(
        "{headline} · grant `{}` · deployment of `{}` at `{}` to *{}*\n>{}\n{}.\nState: {}.",
        esc(&grant.id),
        esc(&grant.repository),
        esc(short(&grant.sha)),
        esc(&grant.environment),
        esc(&grant.justification),
        esc(&grant.people()),
        esc(&grant_state(grant, now)),
    );
    for u in &grant.uses {
        body.push_str(&format!("\nApproved request `{}`.", esc(&u.request)));
    }
    if let Some(r) = &grant.review {
        body.push_str(&format!(
            "\nReview by {} (via {}): {}",
            esc(&r.reviewer.email),
            esc(&r.reviewer.via),
            esc(&r.notes)
        ));
    }
    let mut blocks = vec![json!({
        "type": "section",
        "block_id": "grant",
        "text": { "type": "mrkdwn", "text": cap(&body) },
    })];
    let waiting = grant.state == GrantState::Requested && now < grant.expires_at;
    let action = match step {
        GrantStep::Requested | GrantStep::Confirmed if waiting => Some(match via {
            ReviewVia::Slack => button("Confirm", ACTION_CONFIRM, Some("danger"), Some(&grant.id), None),
            ReviewVia::Sso => button(
                "Confirm (sign in)",
                ACTION_LINK,
                Some("danger"),
                Some(&grant.id),
                Some(page),
            ),
        }),
        GrantStep::Used | GrantStep::Overdue if grant.awaiting_review() => Some(match via {
            ReviewVia::Slack => button("Review", ACTION_REVIEW, Some("primary"), Some(&grant.id), None),
            ReviewVia::Sso => button(
                "Review (sign in)",
                ACTION_LINK,
                Some("primary"),
                Some(&grant.id),
                Some(page),
            ),
        }),
        _ => None,
    };
    if let Some(b) = action {
        blocks.push(json!({ "type": "actions", "block_id": "grant_actions", "elements": [b] }));
    }
    Rendered {
        text,
        blocks: Value::Array(blocks),
    }
}
