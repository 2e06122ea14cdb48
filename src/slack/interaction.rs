//! A click on the message's Approve or Reject button, turned into a review.
//!
//! The payload is trusted only after its signature verified (see
//! [`super::signature`]). Who clicked is Slack's user id from the payload;
//! the identity that counts is that user's email, read from Slack's
//! directory (`users.info`), which must be on the environment's
//! `reviews.reviewers`. A click from anyone else records nothing (and is
//! logged).
//!
//! Self-review: the attested actor of a request is a CI login (GitHub
//! `actor`, GitLab `user_login`), not an email. So the review carries, as
//! `aliases`, the names the same person goes by: the Slack handle
//! (`name`), the display name, the real name and the email's local part
//! (`octocat` for `octocat@example.com`). The engine's review rule
//! ([`crate::decision::reviews`]) does not count an approval whose email or
//! any alias equals the actor (case-insensitively), unless the environment
//! allows self-review. A reviewer whose CI login
//! matches none of these is not recognised as the actor: keep Slack handles
//! or email local parts equal to CI logins where self-review matters.

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::ReviewVia;
use crate::decision::{Outcome, ReasonCode, ReviewRefusal, review_eligibility};
use crate::domain::{DeploymentRequest, RequestStatus, Review};
use crate::gate::{Gate, ReviewOutcome};

use super::client::{SlackClient, SlackUser};
use super::{ACTION_APPROVE, ACTION_REJECT, ACTION_SSO};

/// A verified interactivity payload, as far as portcullis cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// Approve or Reject on a request's message.
    Review(Click),
    /// A break-glass button or modal (see [`super::break_glass`]).
    BreakGlass(super::break_glass::BgInteraction),
    /// Anything else (the SSO link button, other payload types): acknowledged.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub user_id: String,
    pub request_id: String,
    pub approve: bool,
    pub response_url: Option<String>,
}

/// Parses the form body `payload=<json>` of an interactivity request.
pub fn parse(body: &[u8]) -> Result<Interaction, String> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("the body has no `payload` field")?;
    let v: Value = serde_json::from_str(&payload).map_err(|_| "`payload` is not JSON".to_string())?;
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "view_submission" {
        return super::break_glass::parse_submission(&v);
    }
    if kind != "block_actions" {
        return Ok(Interaction::Ignored(format!("payload type `{kind}`")));
    }
    let user_id = v
        .pointer("/user/id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or("a block_actions payload without `user.id`")?
        .to_string();
    let response_url = v.get("response_url").and_then(Value::as_str).map(str::to_string);
    let actions = v
        .get("actions")
        .and_then(Value::as_array)
        .ok_or("a block_actions payload without `actions`")?;
    for a in actions {
        let approve = match a.get("action_id").and_then(Value::as_str) {
            Some(ACTION_APPROVE) => true,
            Some(ACTION_REJECT) => false,
            Some(ACTION_SSO) => return Ok(Interaction::Ignored("the SSO review link".into())),
            Some(id) if id.starts_with(super::break_glass::ACTION_PREFIX) => {
                return super::break_glass::parse_action(&v, a, user_id);
            }
            _ => continue,
        };
        let request_id = a
            .get("value")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .ok_or("a review button without a request id")?
            .to_string();
        return Ok(Interaction::Review(Click {
            user_id,
            request_id,
            approve,
            response_url,
        }));
    }
    Ok(Interaction::Ignored("no portcullis action".into()))
}

/// The names a Slack user goes by, besides the email: handle, display name,
/// real name, email local part. Empty and repeated ones are dropped.
pub fn aliases(user: &SlackUser) -> Vec<String> {
    crate::identity::reviewer::aliases([
        Some(user.name.clone()),
        user.display_name.clone(),
        user.real_name.clone(),
        user.email.as_deref().and_then(crate::identity::reviewer::local_part),
    ])
}

/// The review a Slack user's click stands for, or `None` without an email.
pub fn review_of(user: &SlackUser, approve: bool, at: OffsetDateTime) -> Option<Review> {
    let email = user.email.as_deref()?.trim().to_ascii_lowercase();
    (!email.is_empty()).then(|| Review {
        reviewer: email,
        aliases: aliases(user),
        approve,
        via: "slack".into(),
        at,
    })
}

/// Records the click as a review when it comes from an eligible reviewer,
/// and says what happened, for the clicker only.
pub async fn handle(gate: &Arc<Gate>, client: &SlackClient, click: &Click) -> String {
    let req = match gate.store.get_request(&click.request_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return "This deployment request is not known to portcullis; nothing was recorded.".into(),
        Err(e) => {
            warn!(request = %click.request_id, error = %e, "slack review: state unavailable");
            return "portcullis could not read the request right now; nothing was recorded. Try again.".into();
        }
    };
    let env = req.environment.clone();
    if let Err(refusal) = review_eligibility(&env, gate.config.environment(&env), ReviewVia::Slack, None) {
        return refusal_text(gate, &req, &refusal);
    }
    if req.status != RequestStatus::Pending {
        return already_decided(&req);
    }
    let user = match client.user_info(&click.user_id).await {
        Ok(u) => u,
        Err(e) => {
            warn!(slack_user = %click.user_id, request = %req.id, error = %e, "slack review: users.info failed");
            return format!(
                "Slack could not confirm who you are ({}); nothing was recorded. Try again.",
                e.code()
            );
        }
    };
    if let Some(why) = user.review_refusal(client.team_id()) {
        info!(slack_user = %user.id, request = %req.id, "slack review refused: {why}");
        return "Your Slack account cannot review deployments; nothing was recorded.".into();
    }
    let Some(review) = review_of(&user, click.approve, OffsetDateTime::now_utc()) else {
        info!(slack_user = %user.id, request = %req.id, environment = %env, "slack review refused: the Slack profile has no email");
        return format!(
            "Your Slack profile shows no email address, so you cannot be matched to the reviewers of {env}; nothing was recorded."
        );
    };
    if let Err(refusal) = review_eligibility(
        &env,
        gate.config.environment(&env),
        ReviewVia::Slack,
        Some(&review.reviewer),
    ) {
        info!(slack_user = %user.id, reviewer = %review.reviewer, request = %req.id, environment = %env,
              "slack review refused: not a reviewer of the environment");
        return refusal_text(gate, &req, &refusal);
    }
    let reviewer = review.reviewer.clone();
    let approve = review.approve;
    match gate.add_review(&req.id, review).await {
        Ok(ReviewOutcome::AlreadyDecided) => {
            already_decided(&gate.store.get_request(&req.id).await.ok().flatten().unwrap_or(req))
        }
        Ok(ReviewOutcome::Recorded { counts }) => {
            info!(request = %req.id, reviewer = %reviewer, approve, via = "slack", "review recorded");
            let verb = if approve { "approval" } else { "rejection" };
            let mut out = format!(
                "Recorded your {verb} of the deployment of {} to {env}, as {reviewer} (identity verified through Slack).",
                short(&req.sha)
            );
            if approve && !counts {
                out.push_str(&format!(
                    " It does not count: you triggered this deployment, and {env} does not allow self-review."
                ));
            }
            if let Ok(Some(now)) = gate.store.get_request(&req.id).await {
                out.push(' ');
                out.push_str(&status_line(&now));
            }
            out
        }
        Err(e) => {
            warn!(request = %req.id, reviewer = %reviewer, error = %e, "slack review: could not be recorded");
            "portcullis could not record your review right now; try again.".into()
        }
    }
}

/// What the clicker is told when a review cannot be taken.
fn refusal_text(gate: &Gate, req: &DeploymentRequest, refusal: &ReviewRefusal) -> String {
    let env = &req.environment;
    match refusal {
        ReviewRefusal::EnvironmentNotConfigured(_) => {
            format!("{env} is not configured in portcullis; nothing was recorded.")
        }
        ReviewRefusal::NoReviews(_) => format!("{env} takes no reviews; nothing was recorded."),
        ReviewRefusal::OtherChannel { .. } => {
            let base = gate.config.server.public_url.as_str().trim_end_matches('/');
            format!("Reviews for {env} are made by signing in: {base}/reviews/{}", req.id)
        }
        ReviewRefusal::NotAReviewer { .. } => format!("You are not a reviewer for {env}; nothing was recorded."),
    }
}

/// "This request was already decided ...": the answer to a late review.
pub fn already_decided(req: &DeploymentRequest) -> String {
    let outcome = match (req.status, req.decision.as_ref().map(|d| d.outcome)) {
        (RequestStatus::Superseded, _) => "on the platform".to_string(),
        (_, Some(o)) if o != Outcome::Pending => o.as_str().to_string(),
        _ => "closed".to_string(),
    };
    format!("This request was already decided ({outcome}); your review changes nothing.")
}

/// Where the request stands, in one sentence.
pub fn status_line(req: &DeploymentRequest) -> String {
    match req.decision.as_ref() {
        Some(d) if d.outcome == Outcome::Pending => {
            let missing: Vec<String> = d
                .reasons
                .iter()
                .map(|r| {
                    if r.code == ReasonCode::ReviewsMissing {
                        r.message.clone()
                    } else {
                        r.code.as_str().to_string()
                    }
                })
                .collect();
            format!("Still missing: {}.", missing.join(", "))
        }
        Some(d) => format!("The deployment is {}.", d.outcome.as_str()),
        None => "The request is being evaluated.".into(),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
