//! Break glass through Slack (`break_glass.via = "slack"`).
//!
//! - "Break glass…" on a pending request's message opens a modal
//!   (`views.open` with the click's `trigger_id`) asking for the
//!   justification; its submission (`view_submission`, to the same
//!   signature-checked interactivity URL) asks for the grant.
//! - "Confirm" on the alert channel's message confirms it.
//! - "Review" on the alert channel's message of a used grant opens a modal
//!   for the notes; its submission records the review.
//!
//! Every person is identified as reviewers are: the Slack user's email from
//! `users.info`, with the same refusals (deactivated, bots, guests,
//! strangers, another workspace, unconfirmed emails). Who may take each
//! step is the engine's rule, asked by the gate.

use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::client::{SlackClient, SlackUser};
use super::interaction::Interaction;
use super::message::esc;
use crate::config::ReviewVia;
use crate::decision::{Act, break_glass_eligibility};
use crate::domain::break_glass::{MAX_JUSTIFICATION, MIN_JUSTIFICATION};
use crate::domain::{Grant, Person, RequestStatus};
use crate::gate::{Gate, GateError, GrantAsk};

/// Every break-glass `action_id` starts with this.
pub const ACTION_PREFIX: &str = "portcullis_break_glass";
/// "Break glass…" on a request's message; `value`: the request id.
pub const ACTION_BREAK_GLASS: &str = "portcullis_break_glass";
/// "Confirm" in the alert channel; `value`: the grant id.
pub const ACTION_CONFIRM: &str = "portcullis_break_glass_confirm";
/// "Review" in the alert channel; `value`: the grant id.
pub const ACTION_REVIEW: &str = "portcullis_break_glass_review";
/// A link button to the sign-in pages (`via = "sso"`): acknowledged only.
pub const ACTION_LINK: &str = "portcullis_break_glass_link";
/// The modal asking for the justification; `private_metadata`: the request id.
pub const CALLBACK_ASK: &str = "portcullis_break_glass_ask";
/// The modal of a review's notes; `private_metadata`: the grant id.
pub const CALLBACK_REVIEW: &str = "portcullis_break_glass_review";
/// The block (and action) ids of the modals' inputs.
pub const BLOCK_JUSTIFICATION: &str = "justification";
pub const BLOCK_NOTES: &str = "notes";

/// A break-glass interaction, verified and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BgInteraction {
    OpenAsk {
        user_id: String,
        request_id: String,
        trigger_id: String,
        response_url: Option<String>,
    },
    Confirm {
        user_id: String,
        grant_id: String,
        response_url: Option<String>,
    },
    OpenReview {
        user_id: String,
        grant_id: String,
        trigger_id: String,
        response_url: Option<String>,
    },
    Ask {
        user_id: String,
        request_id: String,
        justification: String,
    },
    Review {
        user_id: String,
        grant_id: String,
        notes: String,
    },
}

impl BgInteraction {
    pub fn user_id(&self) -> &str {
        match self {
            BgInteraction::OpenAsk { user_id, .. }
            | BgInteraction::Confirm { user_id, .. }
            | BgInteraction::OpenReview { user_id, .. }
            | BgInteraction::Ask { user_id, .. }
            | BgInteraction::Review { user_id, .. } => user_id,
        }
    }
}

/// What the interactivity route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BgReply {
    /// HTTP 200 with no body: a modal closes, or a view was opened.
    Ack,
    /// An ephemeral reply to the clicker (also posted to `response_url`).
    Ephemeral { text: String, response_url: Option<String> },
    /// The modal stays open with `message` under its input `block`.
    Errors { block: &'static str, message: String },
}

fn id_value(v: Option<&Value>, what: &str) -> Result<String, String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_string)
        .ok_or_else(|| format!("a break-glass {what} without its id"))
}

/// A `block_actions` payload's break-glass button `a`.
pub(super) fn parse_action(v: &Value, a: &Value, user_id: String) -> Result<Interaction, String> {
    let response_url = v.get("response_url").and_then(Value::as_str).map(str::to_string);
    let trigger = || {
        v.get("trigger_id")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .map(str::to_string)
            .ok_or_else(|| "a break-glass button without a trigger_id".to_string())
    };
    let action = a.get("action_id").and_then(Value::as_str).unwrap_or("");
    let bg = match action {
        ACTION_BREAK_GLASS => BgInteraction::OpenAsk {
            user_id,
            request_id: id_value(a.get("value"), "button")?,
            trigger_id: trigger()?,
            response_url,
        },
        ACTION_CONFIRM => BgInteraction::Confirm {
            user_id,
            grant_id: id_value(a.get("value"), "button")?,
            response_url,
        },
        ACTION_REVIEW => BgInteraction::OpenReview {
            user_id,
            grant_id: id_value(a.get("value"), "button")?,
            trigger_id: trigger()?,
            response_url,
        },
        other => return Ok(Interaction::Ignored(format!("break-glass action `{other}`"))),
    };
    Ok(Interaction::BreakGlass(bg))
}

/// A `view_submission` payload of one of portcullis's modals.
pub(super) fn parse_submission(v: &Value) -> Result<Interaction, String> {
    let user_id = v
        .pointer("/user/id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or("a view_submission payload without `user.id`")?
        .to_string();
    let view = v.get("view").ok_or("a view_submission payload without `view`")?;
    let metadata = id_value(view.get("private_metadata"), "modal")?;
    let input = |block: &str| -> String {
        view.pointer(&format!("/state/values/{block}/{block}/value"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let bg = match view.get("callback_id").and_then(Value::as_str) {
        Some(CALLBACK_ASK) => BgInteraction::Ask {
            user_id,
            request_id: metadata,
            justification: input(BLOCK_JUSTIFICATION),
        },
        Some(CALLBACK_REVIEW) => BgInteraction::Review {
            user_id,
            grant_id: metadata,
            notes: input(BLOCK_NOTES),
        },
        other => return Ok(Interaction::Ignored(format!("a view submission of {other:?}"))),
    };
    Ok(Interaction::BreakGlass(bg))
}

/// The person a Slack user stands for, or why they cannot act: the same
/// checks as for reviewers, and how the identity was verified.
pub fn person_of(user: &SlackUser, team_id: Option<&str>, at: OffsetDateTime) -> Result<Person, &'static str> {
    if let Some(why) = user.review_refusal(team_id) {
        return Err(why);
    }
    let email = user
        .email
        .as_deref()
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .ok_or("a profile without an email")?;
    Ok(Person {
        email,
        aliases: super::interaction::aliases(user),
        via: "slack".into(),
        verified: format!(
            "Slack users.info: user {} (@{}) of workspace {}, an active full member whose email Slack confirmed",
            user.id,
            user.name,
            user.team_id.as_deref().unwrap_or("unknown")
        ),
        at,
    })
}

fn text(t: &str) -> Value {
    json!({ "type": "plain_text", "text": t, "emoji": true })
}

/// The modal asking for a grant for a request's commit.
pub fn ask_modal(gate: &Gate, request_id: &str, repository: &str, sha: &str, environment: &str) -> Value {
    let bg = gate
        .config
        .environment(environment)
        .and_then(|p| p.break_glass.as_ref());
    let (confirmations, confirmers, channel) = bg.map_or((1, String::new(), None), |b| {
        (b.confirmations, b.confirmers.join(", "), b.alert_channel.clone())
    });
    let seen = channel.map_or(String::new(), |c| format!(" Every step is announced in {}.", esc(&c)));
    json!({
        "type": "modal",
        "callback_id": CALLBACK_ASK,
        "private_metadata": request_id,
        "title": text("Break glass"),
        "submit": text("Ask for the grant"),
        "close": text("Cancel"),
        "blocks": [
            { "type": "section", "block_id": "what", "text": { "type": "mrkdwn", "text": format!(
                "Deploy `{}` at `{}` to *{}* without the policy verdict and human reviews. Who ran the pipeline, from where and with which claims is still checked.\nThe grant needs {confirmations} confirmation(s) by {}; it is reviewed afterwards.{seen}",
                esc(repository), esc(&sha[..sha.len().min(12)]), esc(environment), esc(&confirmers)
            )}},
            { "type": "input", "block_id": BLOCK_JUSTIFICATION, "label": text("Justification"),
              "hint": text(&format!("At least {MIN_JUSTIFICATION} characters: what is broken, and why this cannot wait.")),
              "element": { "type": "plain_text_input", "action_id": BLOCK_JUSTIFICATION, "multiline": true,
                           "min_length": MIN_JUSTIFICATION, "max_length": MAX_JUSTIFICATION } },
        ],
    })
}

/// The modal of a used grant's review.
pub fn review_modal(grant: &Grant) -> Value {
    let uses: Vec<String> = grant.uses.iter().map(|u| format!("`{}`", esc(&u.request))).collect();
    json!({
        "type": "modal",
        "callback_id": CALLBACK_REVIEW,
        "private_metadata": grant.id,
        "title": text("Review break glass"),
        "submit": text("Record the review"),
        "close": text("Cancel"),
        "blocks": [
            { "type": "section", "block_id": "what", "text": { "type": "mrkdwn", "text": super::alerts::cap(&format!(
                "Grant `{}` for `{}` at `{}` to *{}*: \"{}\"\n{}.\nUsed by {}.",
                esc(&grant.id), esc(&grant.repository), esc(&grant.sha[..grant.sha.len().min(12)]),
                esc(&grant.environment), esc(&grant.justification), esc(&grant.people()), uses.join(", ")
            ))}},
            { "type": "input", "block_id": BLOCK_NOTES, "label": text("Review notes"),
              "hint": text("What was deployed under the grant, and was breaking glass right?"),
              "element": { "type": "plain_text_input", "action_id": BLOCK_NOTES, "multiline": true,
                           "min_length": 1, "max_length": MAX_JUSTIFICATION } },
        ],
    })
}

/// What to tell a person whose step was refused or failed.
fn refusal(e: &GateError) -> String {
    match e {
        GateError::Refused { message, .. } => format!("{message}; nothing was recorded."),
        _ => "portcullis could not record this right now; try again.".into(),
    }
}

/// The verified person behind `user_id`, or what to tell them.
async fn who(client: &SlackClient, user_id: &str) -> Result<Person, String> {
    let user = client.user_info(user_id).await.map_err(|e| {
        warn!(slack_user = %user_id, error = %e, "break glass: users.info failed");
        format!(
            "Slack could not confirm who you are ({}); nothing was recorded. Try again.",
            e.code()
        )
    })?;
    person_of(&user, client.team_id(), OffsetDateTime::now_utc()).map_err(|why| {
        info!(slack_user = %user.id, "break glass refused: {why}");
        "Your Slack account cannot take part in break glass; nothing was recorded.".to_string()
    })
}

/// Takes a break-glass interaction and says what to answer.
pub async fn handle(gate: &Arc<Gate>, client: &SlackClient, bg: BgInteraction) -> BgReply {
    let now = OffsetDateTime::now_utc();
    match bg {
        BgInteraction::OpenAsk {
            request_id,
            trigger_id,
            response_url,
            ..
        } => {
            let ephemeral = |text: String| BgReply::Ephemeral {
                text,
                response_url: response_url.clone(),
            };
            let req = match gate.store.get_request(&request_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return ephemeral("This deployment request is not known to portcullis.".into()),
                Err(_) => return ephemeral("portcullis could not read the request right now; try again.".into()),
            };
            let policy = gate.config.environment(&req.environment);
            if let Err(r) = break_glass_eligibility(&req.environment, policy, ReviewVia::Slack, Act::Request, None, now)
            {
                return ephemeral(format!("{r}; nothing was recorded."));
            }
            if req.status != RequestStatus::Pending {
                return ephemeral(super::interaction::already_decided(&req).replace("your review", "break glass"));
            }
            let view = ask_modal(gate, &req.id, &req.repository, &req.sha, &req.environment);
            match client.open_view(&trigger_id, &view).await {
                Ok(()) => BgReply::Ack,
                Err(e) => {
                    warn!(request = %req.id, error = %e, "break glass: views.open failed");
                    ephemeral(format!("Slack could not open the form ({}); try again.", e.code()))
                }
            }
        }
        BgInteraction::OpenReview {
            grant_id,
            trigger_id,
            response_url,
            ..
        } => {
            let ephemeral = |text: String| BgReply::Ephemeral {
                text,
                response_url: response_url.clone(),
            };
            let grant = match gate.grant(&grant_id).await {
                Ok(g) => g,
                Err(e) => return ephemeral(refusal(&e)),
            };
            let policy = gate.config.environment(&grant.environment);
            if let Err(r) = break_glass_eligibility(
                &grant.environment,
                policy,
                ReviewVia::Slack,
                Act::Review(&grant),
                None,
                now,
            ) {
                return ephemeral(format!("{r}; nothing was recorded."));
            }
            match client.open_view(&trigger_id, &review_modal(&grant)).await {
                Ok(()) => BgReply::Ack,
                Err(e) => {
                    warn!(grant = %grant.id, error = %e, "break glass: views.open failed");
                    ephemeral(format!("Slack could not open the form ({}); try again.", e.code()))
                }
            }
        }
        BgInteraction::Confirm {
            user_id,
            grant_id,
            response_url,
        } => {
            let text = match who(client, &user_id).await {
                Err(t) => t,
                Ok(person) => match gate.confirm_grant(&grant_id, person.clone(), ReviewVia::Slack).await {
                    Ok(g) if g.state == crate::domain::GrantState::Confirmed => format!(
                        "Recorded your confirmation of grant {}, as {} (identity verified through Slack). The grant is active until {}.",
                        g.id,
                        person.email,
                        crate::time_fmt::rfc3339(g.expires_at)
                    ),
                    Ok(g) => format!(
                        "Recorded your confirmation of grant {}, as {} (identity verified through Slack). {} of {} confirmations.",
                        g.id,
                        person.email,
                        g.confirmations.len(),
                        g.required
                    ),
                    Err(e) => refusal(&e),
                },
            };
            BgReply::Ephemeral { text, response_url }
        }
        BgInteraction::Ask {
            user_id,
            request_id,
            justification,
        } => {
            let errors = |message: String| BgReply::Errors {
                block: BLOCK_JUSTIFICATION,
                message,
            };
            let person = match who(client, &user_id).await {
                Ok(p) => p,
                Err(t) => return errors(t),
            };
            let req = match gate.store.get_request(&request_id).await {
                Ok(Some(r)) => r,
                _ => return errors("This deployment request is not known to portcullis.".into()),
            };
            let ask = GrantAsk {
                environment: req.environment.clone(),
                repository: req.repository.clone(),
                sha: req.sha.clone(),
                justification,
                requester: person,
            };
            match gate.request_grant(ask, ReviewVia::Slack).await {
                Ok(g) => {
                    info!(grant = %g.id, request = %req.id, "break glass asked for through Slack");
                    BgReply::Ack
                }
                Err(e) => errors(refusal(&e)),
            }
        }
        BgInteraction::Review {
            user_id,
            grant_id,
            notes,
        } => {
            let person = match who(client, &user_id).await {
                Ok(p) => p,
                Err(t) => {
                    return BgReply::Errors {
                        block: BLOCK_NOTES,
                        message: t,
                    };
                }
            };
            match gate.review_grant(&grant_id, person, &notes, ReviewVia::Slack).await {
                Ok(_) => BgReply::Ack,
                Err(e) => BgReply::Errors {
                    block: BLOCK_NOTES,
                    message: refusal(&e),
                },
            }
        }
    }
}
