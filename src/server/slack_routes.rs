//! `POST /webhooks/slack`: Slack interactivity (the review buttons).
//!
//! Answers 200 quickly, as Slack wants within three seconds: the review is
//! recorded within a budget and its outcome is the ephemeral reply; past
//! the budget the reply says it is being recorded and the outcome follows
//! through the payload's `response_url`. The outcome is always also posted
//! to `response_url`, which is where Slack shows replies to button clicks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{Instrument, info, info_span, warn};

use super::ApiError;
use super::ingress::{header, read_body};
use crate::domain::ErrorCode;
use crate::gate::Gate;
use crate::slack::SlackClient;
use crate::slack::interaction::{self, Interaction};
use crate::slack::signature;

/// How long a click may take before the reply is deferred to `response_url`.
const REPLY_BUDGET: Duration = Duration::from_millis(2500);

/// The Slack client of the interactivity routes, built on first use from
/// the gate's configuration (route state is created per worker).
#[derive(Default)]
pub(super) struct SlackRoutes {
    client: OnceLock<Option<Arc<SlackClient>>>,
}

impl SlackRoutes {
    fn client(&self, gate: &Gate) -> Option<Arc<SlackClient>> {
        self.client
            .get_or_init(|| {
                let cfg = gate.config.slack.as_ref()?;
                match SlackClient::new(cfg) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        warn!(error = %e, "slack: no client for interactivity");
                        None
                    }
                }
            })
            .clone()
    }
}

pub(super) async fn slack_webhook(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
    routes: web::Data<SlackRoutes>,
) -> Result<HttpResponse, ApiError> {
    let Some(slack) = gate.config.slack.as_ref() else {
        return Err(ApiError::new(
            ErrorCode::PlatformNotConfigured,
            "Slack is not configured",
        ));
    };
    let body = read_body(&req, payload, gate.config.server.max_body_bytes).await?;
    if let Err(e) = signature::verify(
        slack.signing_secret.expose().as_bytes(),
        header(&req, "x-slack-request-timestamp"),
        header(&req, "x-slack-signature"),
        &body,
        OffsetDateTime::now_utc(),
    ) {
        info!(code = %e.code(), "slack interaction refused");
        return Err(e.into());
    }
    let click = match interaction::parse(&body) {
        Ok(Interaction::Review(click)) => click,
        Ok(Interaction::BreakGlass(bg)) => {
            let Some(client) = routes.client(&gate) else {
                return Err(ApiError::new(
                    ErrorCode::SlackUnavailable,
                    "the Slack client could not be built",
                ));
            };
            return Ok(break_glass(gate.into_inner(), client, bg).await);
        }
        Ok(Interaction::Ignored(what)) => {
            info!(what = %what, "slack interaction acknowledged");
            return Ok(HttpResponse::Ok().finish());
        }
        Err(msg) => return Err(ApiError::new(ErrorCode::PayloadMalformed, msg)),
    };
    let Some(client) = routes.client(&gate) else {
        return Err(ApiError::new(
            ErrorCode::SlackUnavailable,
            "the Slack client could not be built",
        ));
    };
    let span =
        info_span!("slack_review", request = %click.request_id, slack_user = %click.user_id, approve = click.approve);
    let gate = gate.into_inner();
    let mut work = {
        let (gate, client, click) = (gate.clone(), client.clone(), click.clone());
        tokio::spawn(async move { interaction::handle(&gate, &client, &click).await }.instrument(span))
    };
    let reply = match tokio::time::timeout(REPLY_BUDGET, &mut work).await {
        Ok(Ok(reply)) => {
            respond_later(
                client,
                click.response_url.clone(),
                std::future::ready(Some(reply.clone())),
            );
            reply
        }
        Ok(Err(e)) => {
            warn!(error = %e, "slack review task failed");
            "portcullis could not record your review right now; try again.".to_string()
        }
        Err(_) => {
            let deferred = async move { work.await.ok() };
            respond_later(client, click.response_url.clone(), deferred);
            "Recording your review; the outcome follows in a moment.".to_string()
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "response_type": "ephemeral", "replace_original": false, "text": reply })))
}

/// A break-glass button or modal: a view opened, a modal closed or kept
/// open with its error, or an ephemeral reply (also to `response_url`).
/// Past the reply budget a modal closes and the work goes on; the alert
/// channel shows what became of it.
async fn break_glass(
    gate: std::sync::Arc<Gate>,
    client: Arc<SlackClient>,
    bg: crate::slack::break_glass::BgInteraction,
) -> HttpResponse {
    use crate::slack::break_glass::{BgReply, handle};
    let span = info_span!("slack_break_glass", slack_user = %bg.user_id());
    let mut work = {
        let client = client.clone();
        tokio::spawn(async move { handle(&gate, &client, bg).await }.instrument(span))
    };
    let reply = match tokio::time::timeout(REPLY_BUDGET, &mut work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            warn!(error = %e, "slack break-glass task failed");
            BgReply::Ephemeral {
                text: "portcullis could not record this right now; try again.".into(),
                response_url: None,
            }
        }
        Err(_) => BgReply::Ack,
    };
    match reply {
        BgReply::Ack => HttpResponse::Ok().finish(),
        BgReply::Errors { block, message } => {
            HttpResponse::Ok().json(json!({ "response_action": "errors", "errors": { block: message } }))
        }
        BgReply::Ephemeral { text, response_url } => {
            respond_later(client, response_url, std::future::ready(Some(text.clone())));
            HttpResponse::Ok().json(json!({ "response_type": "ephemeral", "replace_original": false, "text": text }))
        }
    }
}

/// Posts the outcome to the interaction's `response_url` in the background.
fn respond_later(
    client: Arc<SlackClient>,
    response_url: Option<String>,
    outcome: impl std::future::Future<Output = Option<String>> + Send + 'static,
) {
    let Some(url) = response_url else { return };
    tokio::spawn(async move {
        if let Some(text) = outcome.await
            && let Err(e) = client.respond(&url, &text).await
        {
            warn!(error = %e, "slack: the reply to the click could not be posted");
        }
    });
}
