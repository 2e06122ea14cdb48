//! Break glass through sign-in pages (`break_glass.via = "sso"`), for teams
//! without Slack. Plain HTML forms, no scripts:
//!
//! - `GET /reviews/break-glass?request={id}`: ask for a grant for a pending
//!   request's commit; `GET /reviews/break-glass` asks ahead of the deploy
//!   for a given environment, repository and sha. `POST /reviews/break-glass`
//!   asks.
//! - `GET /reviews/break-glass/grants/{grant}`: the grant, with its Confirm
//!   form (confirmers, while it waits) or its Review form (confirmers, once
//!   used). `POST` takes either.
//!
//! A page without a session signs the person in through the review pages'
//! flow (the same provider, PKCE, nonce, state and callback), which then
//! sets a session cookie (sealed: the verified email, how it was verified,
//! a CSRF token; 10 minutes) and comes back. Every form carries the
//! session's CSRF token; a POST whose token is not the session's records
//! nothing. Who may act is the engine's rule, asked by the gate.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::oidc::{Sso, Verified};
use super::pages::{html_escape, page, refused};
use super::session::{FLOW_COOKIE, FLOW_TTL, cookie, random_token, s, seal, seal_key, set_cookie, unseal};
use crate::config::ReviewVia;
use crate::decision::{Act, break_glass_eligibility};
use crate::domain::{Grant, GrantState, Person, RequestStatus};
use crate::gate::{Gate, GateError, GrantAsk};
use crate::server::ingress::read_body;

const SESSION_COOKIE: &str = "portcullis_sso_session";
/// Where a sign-in for these pages may come back to.
const BASE: &str = "/reviews/break-glass";

/// The signed-in person: their verified email, aliases, how verified, CSRF.
struct Session {
    email: String,
    aliases: Vec<String>,
    verified: String,
    csrf: String,
}

impl Session {
    fn person(&self) -> Person {
        Person {
            email: self.email.clone(),
            aliases: self.aliases.clone(),
            via: "sso".into(),
            verified: self.verified.clone(),
            at: OffsetDateTime::now_utc(),
        }
    }
}

fn session(gate: &Gate, req: &HttpRequest) -> Option<Session> {
    let sso = gate.config.sso.as_ref()?;
    let v = unseal(
        &seal_key(sso),
        "session",
        cookie(req, SESSION_COOKIE)?,
        OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    Some(Session {
        email: s(&v, "e").to_string(),
        aliases: v
            .get("a")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
        verified: s(&v, "v").to_string(),
        csrf: s(&v, "c").to_string(),
    })
    .filter(|s| !s.email.is_empty() && !s.csrf.is_empty())
}

/// The callback's end for a break-glass sign-in: a session, then back to
/// the page the sign-in started from.
pub(super) fn signed_in(gate: &Gate, key: &[u8], flow: &Value, verified: &Verified, now: i64) -> HttpResponse {
    let back = s(flow, "p");
    let back = if back.starts_with(BASE) && !back.contains("//") {
        back.to_string()
    } else {
        BASE.to_string()
    };
    let how = if verified.email_claim_verified {
        "its email_verified claim is true"
    } else {
        "the configuration trusts its emails (sso.trust_unverified_email)"
    };
    let value = json!({
        "e": verified.email,
        "a": verified.aliases,
        "c": random_token(),
        "v": format!("SSO sign-in at {} as subject {}; {how}", verified.issuer, verified.subject),
    });
    let sealed = seal(key, "session", value, now + FLOW_TTL);
    let mut r = HttpResponse::SeeOther()
        .insert_header(("location", back))
        .insert_header(("cache-control", "no-store"))
        .finish();
    for c in [
        set_cookie(gate, SESSION_COOKIE, &sealed, FLOW_TTL, "Lax"),
        set_cookie(gate, FLOW_COOKIE, "", 0, "Lax"),
    ] {
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&c) {
            r.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
        }
    }
    r
}

/// Starts a sign-in that comes back to `path`.
async fn sign_in(gate: &Gate, state: &Sso, path: String) -> HttpResponse {
    match super::sso_config(gate) {
        Ok(sso) => super::redirect_to_provider(gate, state, sso, [("k", json!("bg")), ("p", json!(path))]).await,
        Err(page) => page,
    }
}

fn gate_refusal(e: &GateError) -> HttpResponse {
    match e {
        GateError::Refused { code, message } => {
            use actix_web::ResponseError;
            let status = crate::server::ApiError::new(*code, "").status_code();
            refused(status, code.as_str(), "Not recorded", message)
        }
        other => {
            warn!(error = %other, "break glass: could not be recorded");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_recorded",
                "Try again",
                "This could not be recorded right now.",
            )
        }
    }
}

fn csrf_refused() -> HttpResponse {
    refused(
        StatusCode::FORBIDDEN,
        "csrf_invalid",
        "Not recorded",
        "This form was not issued to this browser's session, or the session expired. Open the page again.",
    )
}

fn path_and_query(req: &HttpRequest) -> String {
    match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    }
}

fn signed_in_line(session: &Session) -> String {
    format!("<p>Signed in as <strong>{}</strong>.</p>", html_escape(&session.email))
}

fn justification_field() -> String {
    format!(
        "<p><label for=\"justification\">Justification (at least {} characters: what is broken, why it cannot wait)</label><br>\
         <textarea id=\"justification\" name=\"justification\" rows=\"5\" cols=\"60\" minlength=\"{}\" maxlength=\"{}\" required></textarea></p>",
        crate::domain::break_glass::MIN_JUSTIFICATION,
        crate::domain::break_glass::MIN_JUSTIFICATION,
        crate::domain::break_glass::MAX_JUSTIFICATION
    )
}

// ----- GET /reviews/break-glass --------------------------------------------------

pub(in crate::server) async fn ask_page(
    req: HttpRequest,
    gate: web::Data<Gate>,
    state: web::Data<Sso>,
) -> HttpResponse {
    let Some(session) = session(&gate, &req) else {
        return sign_in(&gate, &state, path_and_query(&req)).await;
    };
    let q: BTreeMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let now = OffsetDateTime::now_utc();
    let csrf = format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        html_escape(&session.csrf)
    );
    let body = if let Some(id) = q.get("request") {
        let request = match gate.store.get_request(id).await {
            Ok(Some(r)) => r,
            _ => {
                return refused(
                    StatusCode::NOT_FOUND,
                    "request_not_found",
                    "No such request",
                    &format!("There is no deployment request `{id}`."),
                );
            }
        };
        if let Err(r) = break_glass_eligibility(
            &request.environment,
            gate.config.environment(&request.environment),
            ReviewVia::Sso,
            Act::Request,
            Some(&session.email),
            now,
        ) {
            return refused(
                StatusCode::FORBIDDEN,
                r.code().as_str(),
                "Not for you",
                &format!("{r}."),
            );
        }
        if request.status != RequestStatus::Pending {
            return super::pages::already_decided(&request);
        }
        format!(
            "{}<p>Deployment of <code>{}</code> at <code>{}</code> to <strong>{}</strong> ({}).</p>\
             <p>A grant waives the policy verdict and human reviews for this commit once confirmed; who ran the pipeline, from where and with which claims is still checked. Everyone in the alert channel sees it, and it is reviewed afterwards.</p>\
             <form method=\"post\" action=\"{BASE}\">{csrf}<input type=\"hidden\" name=\"request\" value=\"{}\">{}\
             <p><button type=\"submit\">Ask for break glass</button></p></form>",
            signed_in_line(&session),
            html_escape(&request.repository),
            html_escape(&request.sha),
            html_escape(&request.environment),
            html_escape(&crate::slack::interaction::status_line(&request)),
            html_escape(&request.id),
            justification_field(),
        )
    } else {
        let options: String = gate
            .config
            .environments
            .iter()
            .filter(|(_, e)| {
                e.break_glass.as_ref().is_some_and(|b| {
                    b.via == ReviewVia::Sso && b.requesters.iter().any(|r| r.eq_ignore_ascii_case(&session.email))
                })
            })
            .map(|(name, _)| format!("<option value=\"{0}\">{0}</option>", html_escape(name)))
            .collect();
        if options.is_empty() {
            return refused(
                StatusCode::FORBIDDEN,
                "not_a_break_glass_requester",
                "Not for you",
                &format!("{} may not ask for break glass on any environment here.", session.email),
            );
        }
        format!(
            "{}<p>Ask for a grant ahead of the deploy, for one commit.</p>\
             <form method=\"post\" action=\"{BASE}\">{csrf}\
             <p><label for=\"environment\">Environment</label><br><select id=\"environment\" name=\"environment\" required>{options}</select></p>\
             <p><label for=\"repository\">Repository (GitHub owner/name or GitLab project path)</label><br><input id=\"repository\" name=\"repository\" size=\"50\" required></p>\
             <p><label for=\"sha\">Commit (full sha)</label><br><input id=\"sha\" name=\"sha\" size=\"50\" minlength=\"40\" maxlength=\"64\" pattern=\"[0-9a-fA-F]{{40}}|[0-9a-fA-F]{{64}}\" required></p>\
             {}<p><button type=\"submit\">Ask for break glass</button></p></form>",
            signed_in_line(&session),
            justification_field(),
        )
    };
    page(StatusCode::OK, "break_glass_ask", "Break glass", &body)
}

async fn form_of(
    req: &HttpRequest,
    payload: web::Payload,
    gate: &Gate,
) -> Result<BTreeMap<String, String>, HttpResponse> {
    let body = read_body(req, payload, gate.config.server.max_body_bytes)
        .await
        .map_err(|e| {
            use actix_web::ResponseError;
            refused(e.status_code(), e.code().as_str(), "Not recorded", e.message())
        })?;
    Ok(url::form_urlencoded::parse(&body).into_owned().collect())
}

/// The session, when the form's CSRF token is its own.
fn checked(gate: &Gate, req: &HttpRequest, form: &BTreeMap<String, String>) -> Option<Session> {
    let session = session(gate, req)?;
    let given = form.get("csrf")?;
    (given.len() == session.csrf.len() && crate::crypto::secrets_equal(given.as_bytes(), session.csrf.as_bytes()))
        .then_some(session)
}

// ----- POST /reviews/break-glass --------------------------------------------------

pub(in crate::server) async fn ask_submit(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> HttpResponse {
    let form = match form_of(&req, payload, &gate).await {
        Ok(f) => f,
        Err(page) => return page,
    };
    let Some(session) = checked(&gate, &req, &form) else {
        info!("break glass refused: the form's CSRF token is missing, forged or not this session's");
        return csrf_refused();
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (environment, repository, sha) = match form.get("request") {
        Some(id) => match gate.store.get_request(id).await {
            Ok(Some(r)) => (r.environment, r.repository, r.sha),
            _ => {
                return refused(
                    StatusCode::NOT_FOUND,
                    "request_not_found",
                    "No such request",
                    &format!("There is no deployment request `{id}`."),
                );
            }
        },
        None => (field("environment"), field("repository"), field("sha")),
    };
    let ask = GrantAsk {
        environment,
        repository,
        sha,
        justification: field("justification"),
        requester: session.person(),
    };
    let gate = gate.into_inner();
    match gate.request_grant(ask, ReviewVia::Sso).await {
        Ok(g) => page(
            StatusCode::OK,
            "break_glass_requested",
            "Break glass asked for",
            &format!(
                "<p>Grant <code>{id}</code> for <code>{}</code> at <code>{}</code> to <strong>{}</strong> is asked for, as {} (identity verified by sign-in).</p>\
                 <p>It needs {} confirmation(s) by a confirmer other than you, who signs in at <a href=\"{BASE}/grants/{id}\">{BASE}/grants/{id}</a>.</p>",
                html_escape(&g.repository),
                html_escape(&g.sha),
                html_escape(&g.environment),
                html_escape(&g.requester.email),
                g.required,
                id = html_escape(&g.id),
            ),
        ),
        Err(e) => gate_refusal(&e),
    }
}

fn grant_summary(g: &Grant) -> String {
    let now = OffsetDateTime::now_utc();
    let uses: Vec<String> = g
        .uses
        .iter()
        .map(|u| format!("<code>{}</code>", html_escape(&u.request)))
        .collect();
    let mut out = format!(
        "<p>Grant <code>{}</code>: deployment of <code>{}</code> at <code>{}</code> to <strong>{}</strong>.</p>\
         <blockquote>{}</blockquote><p>{}.</p><p>State: {}.</p>",
        html_escape(&g.id),
        html_escape(&g.repository),
        html_escape(&g.sha),
        html_escape(&g.environment),
        html_escape(&g.justification),
        html_escape(&g.people()),
        html_escape(&crate::slack::alerts::grant_state(g, now)),
    );
    if !uses.is_empty() {
        out.push_str(&format!("<p>Approved requests: {}.</p>", uses.join(", ")));
    }
    if let Some(r) = &g.review {
        out.push_str(&format!(
            "<p>Reviewed by {}: {}</p>",
            html_escape(&r.reviewer.email),
            html_escape(&r.notes)
        ));
    }
    out
}

// ----- GET /reviews/break-glass/grants/{grant} ------------------------------------------

pub(in crate::server) async fn grant_page(
    req: HttpRequest,
    path: web::Path<String>,
    gate: web::Data<Gate>,
    state: web::Data<Sso>,
) -> HttpResponse {
    let Some(session) = session(&gate, &req) else {
        return sign_in(&gate, &state, path_and_query(&req)).await;
    };
    let grant = match gate.grant(&path.into_inner()).await {
        Ok(g) => g,
        Err(e) => return gate_refusal(&e),
    };
    let now = OffsetDateTime::now_utc();
    let policy = gate.config.environment(&grant.environment);
    let may = |act| {
        break_glass_eligibility(
            &grant.environment,
            policy,
            ReviewVia::Sso,
            act,
            Some(&session.email),
            now,
        )
    };
    let csrf = format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        html_escape(&session.csrf)
    );
    let action = format!("{BASE}/grants/{}", html_escape(&grant.id));
    let form = if grant.state == GrantState::Requested && may(Act::Confirm(&grant)).is_ok() {
        format!(
            "<form method=\"post\" action=\"{action}\">{csrf}<p>Confirming makes the grant active for its window; you own it with the requester.</p>\
             <p><button type=\"submit\" name=\"action\" value=\"confirm\">Confirm the grant</button></p></form>"
        )
    } else if grant.awaiting_review() && may(Act::Review(&grant)).is_ok() {
        format!(
            "<form method=\"post\" action=\"{action}\">{csrf}<input type=\"hidden\" name=\"action\" value=\"review\">\
             <p><label for=\"notes\">Review notes: what was deployed under the grant, and was breaking glass right?</label><br>\
             <textarea id=\"notes\" name=\"notes\" rows=\"5\" cols=\"60\" maxlength=\"2000\" required></textarea></p>\
             <p><button type=\"submit\">Record the review</button></p></form>"
        )
    } else {
        "<p>There is nothing for you to do on this grant.</p>".to_string()
    };
    page(
        StatusCode::OK,
        "break_glass_grant",
        "Break glass",
        &format!("{}{}{form}", signed_in_line(&session), grant_summary(&grant)),
    )
}

// ----- POST /reviews/break-glass/grants/{grant} -----------------------------------------

pub(in crate::server) async fn grant_submit(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> HttpResponse {
    let id = path.into_inner();
    let form = match form_of(&req, payload, &gate).await {
        Ok(f) => f,
        Err(page) => return page,
    };
    let Some(session) = checked(&gate, &req, &form) else {
        info!(grant = %id, "break glass refused: the form's CSRF token is missing, forged or not this session's");
        return csrf_refused();
    };
    let gate = gate.into_inner();
    let result = match form.get("action").map(String::as_str) {
        Some("confirm") => gate
            .confirm_grant(&id, session.person(), ReviewVia::Sso)
            .await
            .map(|g| ("break_glass_confirmed", "Confirmation recorded", g)),
        Some("review") => gate
            .review_grant(
                &id,
                session.person(),
                form.get("notes").map_or("", String::as_str),
                ReviewVia::Sso,
            )
            .await
            .map(|g| ("break_glass_reviewed", "Review recorded", g)),
        _ => {
            return refused(
                StatusCode::BAD_REQUEST,
                "action_missing",
                "Not recorded",
                "Choose Confirm or Review.",
            );
        }
    };
    match result {
        Ok((code, title, g)) => page(
            StatusCode::OK,
            code,
            title,
            &format!(
                "<p>Recorded as {} (identity verified by sign-in).</p>{}",
                html_escape(&session.email),
                grant_summary(&g)
            ),
        ),
        Err(e) => gate_refusal(&e),
    }
}
