//! The Block Kit message mirroring one deployment request.
//!
//! A pure function of the request, its environment's policy and its links,
//! so every state is a table test. The message moves from *requested* to
//! *pending* (naming what is missing) to *approved* or *rejected* (with the
//! reasons), and always links to the run and to the audit: the request's
//! page before the decision, the `decision` audit record after it.
//!
//! Review buttons appear only when the environment requires reviews and
//! the reviews are all that is still missing: the identity, the claims and
//! the policy verdict have passed. A click then adds a review, which
//! satisfies nothing else (the reference pipeline's "the approval button
//! only appears once the policy passed").

use serde_json::{Value, json};

use crate::config::{Config, EnvironmentPolicy, ReviewVia};
use crate::decision::{Outcome, Reason};
use crate::domain::{DeploymentRequest, Platform, RequestStatus};

use super::{ACTION_APPROVE, ACTION_REJECT, ACTION_SSO};

/// Section texts are capped by Slack at 3000 characters.
const MAX_SECTION: usize = 2900;

/// The links a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The CI run or pipeline, when its web address is known.
    pub run: Option<String>,
    /// `{public_url}/v1/audit/{decision record}` once decided; before that,
    /// `{public_url}/v1/requests/{id}`.
    pub audit: String,
    /// The SSO review page, `{public_url}/reviews/{id}`.
    pub review: String,
}

impl Links {
    /// The links of `req` under `config`. `audit_link` turns a record id
    /// into its URL (the gate's [`crate::gate::Gate::audit_link`]).
    pub fn of(config: &Config, req: &DeploymentRequest, audit_link: impl Fn(&str) -> String) -> Links {
        let base = config.server.public_url.as_str().trim_end_matches('/');
        Links {
            run: run_url(config, req),
            audit: match &req.decision_record {
                Some(record) => audit_link(record),
                None => format!("{base}/v1/requests/{}", req.id),
            },
            review: format!("{base}/reviews/{}", req.id),
        }
    }
}

/// The web address of the request's run: GitHub `{web}/{repo}/actions/runs/{run}`
/// (github.com for api.github.com, the server for GitHub Enterprise's
/// `/api/v3`), GitLab `{url}/{project}/-/pipelines/{pipeline}`.
pub fn run_url(config: &Config, req: &DeploymentRequest) -> Option<String> {
    match req.platform {
        Platform::Github => {
            let web = match config.github.as_ref().map(|g| &g.api_url) {
                Some(api) if api.host_str() != Some("api.github.com") => {
                    let s = api.as_str().trim_end_matches('/');
                    s.strip_suffix("/api/v3").unwrap_or(s).to_string()
                }
                _ => "https://github.com".to_string(),
            };
            Some(format!("{web}/{}/actions/runs/{}", req.repository, req.run))
        }
        Platform::Gitlab => config.gitlab.as_ref().map(|g| {
            format!(
                "{}/{}/-/pipelines/{}",
                g.url.as_str().trim_end_matches('/'),
                req.repository,
                req.run
            )
        }),
    }
}

/// Whether the message offers review buttons: the environment requires
/// reviews, the request is still open, and every missing item is a review.
pub fn buttons_allowed(req: &DeploymentRequest, policy: Option<&EnvironmentPolicy>) -> bool {
    let Some(policy) = policy else { return false };
    if policy.reviews.required == 0 || req.status != RequestStatus::Pending {
        return false;
    }
    crate::decision::only_reviews_missing(req.decision.as_ref())
}

/// Where the request is, as the message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Requested,
    Pending,
    Approved,
    Rejected,
    /// A human decided on the platform itself.
    Superseded,
}

impl Stage {
    pub fn of(req: &DeploymentRequest) -> Stage {
        if req.status == RequestStatus::Superseded {
            return Stage::Superseded;
        }
        match req.decision.as_ref().map(|d| d.outcome) {
            None => Stage::Requested,
            Some(Outcome::Pending) => Stage::Pending,
            Some(Outcome::Approved) => Stage::Approved,
            Some(Outcome::Rejected) => Stage::Rejected,
        }
    }

    fn headline(self) -> &'static str {
        match self {
            Stage::Requested => ":inbox_tray: *Requested*",
            Stage::Pending => ":hourglass_flowing_sand: *Pending*",
            Stage::Approved => ":white_check_mark: *Approved*",
            Stage::Rejected => ":no_entry: *Rejected*",
            Stage::Superseded => ":leftwards_arrow_with_hook: *Decided on the platform*",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Requested => "requested",
            Stage::Pending => "pending",
            Stage::Approved => "approved",
            Stage::Rejected => "rejected",
            Stage::Superseded => "decided on the platform",
        }
    }
}

/// A rendered message: the notification fallback and the blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub blocks: Value,
}

/// Renders the message of `req`.
pub fn render(req: &DeploymentRequest, policy: Option<&EnvironmentPolicy>, links: &Links) -> Rendered {
    render_with(req, policy, links, &[], time::OffsetDateTime::now_utc())
}

/// Renders the message of `req` with the break-glass grants of its commit
/// (their state, and "Break glass…" while it is pending), as at `now`.
pub fn render_with(
    req: &DeploymentRequest,
    policy: Option<&EnvironmentPolicy>,
    links: &Links,
    grants: &[crate::domain::Grant],
    now: time::OffsetDateTime,
) -> Rendered {
    let stage = Stage::of(req);
    let sha = &req.sha[..req.sha.len().min(12)];
    let platform = match req.platform {
        Platform::Github => "GitHub run",
        Platform::Gitlab => "GitLab pipeline",
    };
    let text = format!(
        "Deployment of {} {} to {}: {}",
        req.repository,
        sha,
        req.environment,
        stage.as_str()
    );
    let mut blocks = vec![json!({
        "type": "section",
        "block_id": "summary",
        "text": { "type": "mrkdwn", "text": format!(
            "{} · deployment to *{}*\n`{}` at `{}` · {} {}",
            stage.headline(), esc(&req.environment), esc(&req.repository), esc(sha), platform, esc(&req.run)
        )},
    })];

    let reasons = req.decision.as_ref().map(|d| d.reasons.as_slice()).unwrap_or(&[]);
    let title = match stage {
        Stage::Requested => None,
        Stage::Pending => Some("*Still missing:*"),
        Stage::Approved => Some("*Why it was approved:*"),
        Stage::Rejected => Some("*Why it was rejected:*"),
        Stage::Superseded => (!reasons.is_empty()).then_some("*Last evaluation:*"),
    };
    if let Some(title) = title
        && !reasons.is_empty()
    {
        blocks.push(json!({
            "type": "section",
            "block_id": "reasons",
            "text": { "type": "mrkdwn", "text": cap(&format!("{title}\n{}", bullets(reasons))) },
        }));
    }

    if let Some(policy) = policy.filter(|p| p.reviews.required > 0) {
        let done: Vec<String> = req
            .reviews
            .iter()
            .map(|r| {
                let mark = if r.approve { ":heavy_check_mark:" } else { ":x:" };
                format!("{mark} {} (via {})", esc(&r.reviewer), esc(&r.via))
            })
            .collect();
        let line = if done.is_empty() {
            format!("Reviews: none yet of {} required", policy.reviews.required)
        } else {
            format!("Reviews ({} required): {}", policy.reviews.required, done.join(" · "))
        };
        blocks.push(json!({
            "type": "context",
            "block_id": "reviews",
            "elements": [{ "type": "mrkdwn", "text": cap(&line) }],
        }));
        if buttons_allowed(req, Some(policy)) {
            let elements = match policy.reviews.via {
                ReviewVia::Slack => json!([
                    button("Approve", ACTION_APPROVE, Some("primary"), Some(&req.id), None),
                    button("Reject", ACTION_REJECT, Some("danger"), Some(&req.id), None),
                ]),
                ReviewVia::Sso => json!([button(
                    "Review (sign in)",
                    ACTION_SSO,
                    Some("primary"),
                    Some(&req.id),
                    Some(&links.review)
                )]),
            };
            blocks.push(json!({ "type": "actions", "block_id": "review_actions", "elements": elements }));
        }
    }

    if let Some(bg) = policy.and_then(|p| p.break_glass.as_ref()) {
        let ask = super::alerts::ask_page(links.review.split("/reviews/").next().unwrap_or(""), &req.id);
        blocks.extend(super::alerts::request_blocks(req, bg, grants, &ask, now));
    }

    let mut footer: Vec<String> = Vec::new();
    if let Some(run) = &links.run {
        footer.push(format!("<{}|{} {}>", link_url(run), platform, esc(&req.run)));
    }
    let audit_label = if req.decision_record.is_some() {
        "Audit record"
    } else {
        "Request"
    };
    footer.push(format!("<{}|{audit_label}>", link_url(&links.audit)));
    if let Some(result) = &req.platform_result {
        // A fixed sentence: the platform's own text stays in the audit.
        let answer = match (result.ok, result.status) {
            (true, Some(s)) if !result.dry_run => format!("{} answered (HTTP {s})", req.platform),
            _ => format!("{}: {}", req.platform, result.public_detail()),
        };
        footer.push(answer);
    }
    blocks.push(json!({
        "type": "context",
        "block_id": "links",
        "elements": [{ "type": "mrkdwn", "text": cap(&footer.join(" · ")) }],
    }));
    Rendered {
        text,
        blocks: Value::Array(blocks),
    }
}

fn button(label: &str, action_id: &str, style: Option<&str>, value: Option<&str>, url: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "action_id": action_id,
        "text": { "type": "plain_text", "text": label, "emoji": true },
    });
    if let Some(style) = style {
        b["style"] = json!(style);
    }
    if let Some(value) = value {
        b["value"] = json!(value);
    }
    if let Some(url) = url {
        b["url"] = json!(url);
    }
    b
}

fn bullets(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| format!("• `{}` {}", r.code.as_str(), esc(&r.message)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Escapes text for Slack mrkdwn (`&`, `<`, `>` are control characters).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A URL inside `<url|label>`: `|` and `>` would end it early.
fn link_url(u: &str) -> String {
    u.replace('|', "%7C").replace('>', "%3E").replace('<', "%3C")
}

fn cap(s: &str) -> String {
    if s.chars().count() <= MAX_SECTION {
        return s.to_string();
    }
    s.chars().take(MAX_SECTION).collect::<String>() + "…"
}
