//! Reviews through the organisation's OpenID Provider (`reviews.via = "sso"`).
//!
//! - `GET /reviews/{request}` starts an authorization-code flow against
//!   `[sso]` with PKCE (S256), a nonce and a state. The flow's secrets
//!   (state, nonce, PKCE verifier, request) travel in a short-lived
//!   (10 minutes), HMAC-sealed, HttpOnly cookie, so any replica can finish it.
//! - `GET /reviews/callback` checks the state against that cookie, exchanges
//!   the code (with the PKCE verifier), verifies the ID token (signature,
//!   issuer, audience, expiry and the nonce) through the openidconnect
//!   crate, then checks the token's email against the environment's
//!   `reviews.reviewers`. An eligible reviewer gets a small form; anyone else
//!   a page saying why, and nothing is recorded.
//! - `POST /reviews/{request}` records the review (`via: "sso"`). The form
//!   carries a sealed grant naming the verified reviewer, bound to a CSRF
//!   cookie set with the form (signed double submit), so another site cannot
//!   post it and the grant cannot be replayed from another browser.
//!
//! The seal key is derived from `sso.client_secret`, so replicas agree;
//! without a client secret (a public client) it is random per process, and
//! a flow must finish on the replica that started it.
//!
//! The groups of the ID token (`sso.groups_claim`) are read and logged with
//! the review; eligibility is by email, as the engine counts reviewers by
//! email (rule 7).
//!
//! The break-glass pages ([`break_glass`]) sign in through the same flow
//! and callback, then keep a short session (a sealed cookie) for their forms.
//!
//! Codes, tokens, the client secret and the PKCE verifier never reach a
//! log line or a page.

pub(super) mod break_glass;
mod oidc;
mod pages;
mod session;

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

pub(super) use oidc::Sso;
use pages::{already_decided, recorded, refused, review_form};
use session::{CSRF_COOKIE, FLOW_COOKIE, FLOW_TTL, cookie, random_token, s, seal, seal_key, set_cookie, unseal};

use super::ingress::read_body;
use crate::config::{ReviewVia, SsoConfig};
use crate::decision::{ReviewRefusal, review_eligibility};
use crate::domain::{DeploymentRequest, RequestStatus, Review};
use crate::gate::{Gate, ReviewOutcome};

/// The request and its environment, if SSO reviews apply to it; otherwise
/// the page that says why not.
async fn reviewable(gate: &Gate, id: &str) -> Result<DeploymentRequest, HttpResponse> {
    let req = match gate.store.get_request(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(refused(
                StatusCode::NOT_FOUND,
                "request_not_found",
                "No such request",
                &format!("There is no deployment request `{id}`."),
            ));
        }
        Err(e) => {
            warn!(request = %id, error = %e, "sso review: state unavailable");
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_unavailable",
                "Try again",
                "The request could not be read right now.",
            ));
        }
    };
    if review_eligibility(
        &req.environment,
        gate.config.environment(&req.environment),
        ReviewVia::Sso,
        None,
    )
    .is_err()
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "sso_reviews_not_enabled",
            "Not reviewed here",
            &format!(
                "Deployments to {} are not reviewed by signing in here.",
                req.environment
            ),
        ));
    }
    if req.status != RequestStatus::Pending {
        return Err(already_decided(&req));
    }
    Ok(req)
}

/// The page for a reviewer the review rule does not take.
fn not_a_reviewer(refusal: &ReviewRefusal) -> HttpResponse {
    refused(
        StatusCode::FORBIDDEN,
        "not_a_reviewer",
        "Not a reviewer",
        &format!("{refusal}."),
    )
}

pub(super) fn sso_config(gate: &Gate) -> Result<&SsoConfig, HttpResponse> {
    gate.config.sso.as_ref().ok_or_else(|| {
        refused(
            StatusCode::NOT_FOUND,
            "sso_not_configured",
            "Sign-in is not configured",
            "This portcullis has no [sso] provider.",
        )
    })
}

// ----- GET /reviews/{request} -----------------------------------------------------

pub(super) async fn start(path: web::Path<String>, gate: web::Data<Gate>, state: web::Data<Sso>) -> HttpResponse {
    let id = path.into_inner();
    let sso = match sso_config(&gate) {
        Ok(s) => s,
        Err(page) => return page,
    };
    if let Err(page) = reviewable(&gate, &id).await {
        return page;
    }
    redirect_to_provider(&gate, &state, sso, [("r", json!(id))]).await
}

/// Starts a sign-in at the provider and redirects the browser there. `flow`
/// is what the callback needs to finish; the sign-in's state, nonce and PKCE
/// verifier are added to it, and it all goes sealed in the flow cookie.
pub(super) async fn redirect_to_provider<const N: usize>(
    gate: &Gate,
    state: &Sso,
    sso: &SsoConfig,
    flow: [(&str, Value); N],
) -> HttpResponse {
    let sign_in = match state.begin_sign_in(gate, sso).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "sso: the provider is unavailable");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Sign-in unavailable",
                "The sign-in provider could not be reached; try again.",
            );
        }
    };
    let mut sealed: serde_json::Map<String, Value> = flow.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    sealed.insert("s".into(), json!(sign_in.state));
    sealed.insert("n".into(), json!(sign_in.nonce));
    sealed.insert("v".into(), json!(sign_in.verifier));
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let flow = seal(&seal_key(sso), "flow", Value::Object(sealed), now + FLOW_TTL);
    HttpResponse::Found()
        .insert_header(("location", sign_in.url.to_string()))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("set-cookie", set_cookie(gate, FLOW_COOKIE, &flow, FLOW_TTL, "Lax")))
        .finish()
}

// ----- GET /reviews/callback --------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

pub(super) async fn callback(req: HttpRequest, gate: web::Data<Gate>, state: web::Data<Sso>) -> HttpResponse {
    let sso = match sso_config(&gate) {
        Ok(s) => s,
        Err(page) => return page,
    };
    let q = match web::Query::<CallbackQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "callback_malformed",
                "Sign-in failed",
                "The sign-in answer is malformed.",
            );
        }
    };
    if let Some(error) = q.error.as_deref() {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        info!(error = %error, "sso: the provider refused the sign-in");
        return refused(
            StatusCode::BAD_REQUEST,
            "provider_refused",
            "Sign-in refused",
            &format!("The sign-in provider answered `{error}`."),
        );
    }
    let key = seal_key(sso);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let flow = cookie(&req, FLOW_COOKIE).and_then(|c| unseal(&key, "flow", c, now));
    let state_ok = match (&flow, q.state.as_deref()) {
        (Some(f), Some(given)) => {
            crate::crypto::secrets_equal(s(f, "s").as_bytes(), given.as_bytes()) && s(f, "s").len() == given.len()
        }
        _ => false,
    };
    let (Some(flow), true, Some(code)) = (flow, state_ok, q.code) else {
        info!("sso: a callback whose state does not match a sign-in started here");
        return refused(
            StatusCode::BAD_REQUEST,
            "state_invalid",
            "Sign-in not recognised",
            "This sign-in was not started here, was started in another browser, or took longer than 10 minutes. Start again from the review link.",
        );
    };
    let id = s(&flow, "r").to_string();
    let verified = match oidc::verify_sign_in(&gate, &state, sso, &flow, code).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    // A sign-in for the break-glass pages: a session, then back to the page.
    if s(&flow, "k") == "bg" {
        return break_glass::signed_in(&gate, &key, &flow, &verified, now);
    }
    let request = match reviewable(&gate, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    if let Err(refusal) = review_eligibility(
        &request.environment,
        gate.config.environment(&request.environment),
        ReviewVia::Sso,
        Some(&verified.email),
    ) {
        info!(reviewer = %verified.email, groups = ?verified.groups, request = %id, environment = %request.environment,
              "sso review refused: not a reviewer of the environment");
        return not_a_reviewer(&refusal);
    }
    let csrf = random_token();
    let grant = seal(
        &key,
        "grant",
        json!({ "r": id, "e": verified.email, "a": verified.aliases, "g": verified.groups, "c": csrf }),
        now + FLOW_TTL,
    );
    let mut response = review_form(&id, &verified.email, &request, &grant);
    let headers = response.headers_mut();
    for c in [
        set_cookie(&gate, CSRF_COOKIE, &csrf, FLOW_TTL, "Strict"),
        set_cookie(&gate, FLOW_COOKIE, "", 0, "Lax"),
    ] {
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&c) {
            headers.append(actix_web::http::header::SET_COOKIE, v);
        }
    }
    response
}

// ----- POST /reviews/{request} ----------------------------------------------------------

pub(super) async fn submit(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> HttpResponse {
    let id = path.into_inner();
    let sso = match sso_config(&gate) {
        Ok(s) => s,
        Err(page) => return page,
    };
    let body = match read_body(&req, payload, gate.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            use actix_web::ResponseError;
            return refused(e.status_code(), e.code().as_str(), "Not recorded", e.message());
        }
    };
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let now = OffsetDateTime::now_utc();
    let grant = form
        .get("grant")
        .and_then(|g| unseal(&seal_key(sso), "grant", g, now.unix_timestamp()));
    let csrf_ok = match (&grant, cookie(&req, CSRF_COOKIE)) {
        (Some(g), Some(c)) => {
            !c.is_empty()
                && c.len() == s(g, "c").len()
                && crate::crypto::secrets_equal(c.as_bytes(), s(g, "c").as_bytes())
        }
        _ => false,
    };
    let Some(grant) = grant.filter(|g| csrf_ok && s(g, "r") == id) else {
        info!(request = %id, "sso review refused: the form's grant or CSRF token is missing, expired or forged");
        return refused(
            StatusCode::FORBIDDEN,
            "csrf_invalid",
            "Not recorded",
            "This form was not issued to this browser for this request, or it expired. Sign in again from the review link.",
        );
    };
    let approve = match form.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("reject") => false,
        _ => {
            return refused(
                StatusCode::BAD_REQUEST,
                "decision_missing",
                "Not recorded",
                "Choose Approve or Reject.",
            );
        }
    };
    let request = match reviewable(&gate, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let email = s(&grant, "e").to_string();
    if let Err(refusal) = review_eligibility(
        &request.environment,
        gate.config.environment(&request.environment),
        ReviewVia::Sso,
        Some(&email),
    ) {
        return not_a_reviewer(&refusal);
    }
    let aliases: Vec<String> = grant
        .get("a")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let groups = grant.get("g").cloned().unwrap_or(Value::Null);
    let review = Review {
        reviewer: email.clone(),
        aliases,
        approve,
        via: "sso".into(),
        at: now,
    };
    let gate = gate.into_inner();
    match gate.add_review(&id, review).await {
        Ok(ReviewOutcome::Recorded { .. }) => {
            info!(request = %id, reviewer = %email, groups = %groups, approve, via = "sso", "review recorded");
            let state = match gate.store.get_request(&id).await {
                Ok(Some(r)) => crate::slack::interaction::status_line(&r),
                _ => String::new(),
            };
            let mut response = recorded(approve, &request.environment, &email, &state);
            if let Ok(v) =
                actix_web::http::header::HeaderValue::from_str(&set_cookie(&gate, CSRF_COOKIE, "", 0, "Strict"))
            {
                response.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
            }
            response
        }
        Ok(ReviewOutcome::AlreadyDecided) => match gate.store.get_request(&id).await {
            Ok(Some(r)) => already_decided(&r),
            _ => already_decided(&request),
        },
        Err(e) => {
            warn!(request = %id, error = %e, "sso review: could not be recorded");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "review_not_recorded",
                "Try again",
                "The review could not be recorded right now.",
            )
        }
    }
}
