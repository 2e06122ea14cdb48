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
//! Codes, tokens, the client secret and the PKCE verifier never reach a
//! log line or a page.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::ingress::read_body;
use crate::config::{ReviewVia, SsoConfig};
use crate::domain::{DeploymentRequest, RequestStatus, Review};
use crate::gate::Gate;

const FLOW_COOKIE: &str = "portcullis_sso_flow";
const CSRF_COOKIE: &str = "portcullis_sso_csrf";
/// How long a sign-in, and then a signed-in form, stays usable.
const FLOW_TTL: i64 = 600;
/// Provider metadata (endpoints and keys) is refetched after this long.
const METADATA_TTL: Duration = Duration::from_secs(600);
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The ID token's claims beyond the standard ones (the groups claim).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ExtraClaims {
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}
impl AdditionalClaims for ExtraClaims {}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenAnswer = StandardTokenResponse<IdFields, CoreTokenType>;
type SsoClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenAnswer,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// openidconnect's HTTP calls, made by our reqwest client (one HTTP stack),
/// without following redirects (RFC 6749 §10.6 / the crate's advice).
struct OidcHttp(reqwest::Client);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct OidcHttpError(String);

impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, OidcHttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    OidcHttpError(if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "request failed".into()
                    })
                })?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| OidcHttpError("reading the answer failed".into()))?
            {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(OidcHttpError("the answer is too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            builder
                .body(body)
                .map_err(|_| OidcHttpError("an invalid answer".into()))
        })
    }
}

/// Route state (per worker): the HTTP client and the provider's metadata.
#[derive(Default)]
pub(crate) struct Sso {
    http: OnceLock<Option<OidcHttp>>,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(Sso::default()))
        .route("/reviews/callback", web::get().to(callback))
        .route("/reviews/{request}", web::get().to(start))
        .route("/reviews/{request}", web::post().to(submit));
}

// ----- pages -------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A minimal page. `code` is a stable machine-readable code, also in a
/// `<meta>` so scripts and tests can read it.
fn page(status: StatusCode, code: &str, title: &str, body_html: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"portcullis-code\" content=\"{}\">\
         <title>{} · portcullis</title><style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         button{{font-size:1.1em;margin-right:1em;padding:.4em 1.2em}}</style></head><body><h1>{}</h1>{}</body></html>",
        html_escape(code),
        html_escape(title),
        html_escape(title),
        body_html
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header((
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(html)
}

fn refused(status: StatusCode, code: &str, title: &str, why: &str) -> HttpResponse {
    page(
        status,
        code,
        title,
        &format!("<p>{}</p><p>Nothing was recorded.</p>", html_escape(why)),
    )
}

// ----- sealed values and cookies ------------------------------------------------

fn seal_key(sso: &SsoConfig) -> Vec<u8> {
    static RANDOM: OnceLock<Vec<u8>> = OnceLock::new();
    match &sso.client_secret {
        Some(secret) => crate::crypto::hmac_sha256(secret.expose().as_bytes(), &[b"portcullis sso seal v1"]),
        None => RANDOM
            .get_or_init(|| {
                let mut key = vec![0u8; 32];
                if aws_lc_rs::rand::fill(&mut key).is_err() {
                    // Never expected; a fixed key would be guessable, so make
                    // every seal fail to open instead.
                    key.clear();
                }
                key
            })
            .clone(),
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(json).base64url(hmac)`, for `purpose`, expiring at `exp`.
fn seal(key: &[u8], purpose: &str, mut value: Value, exp: i64) -> String {
    value["purpose"] = json!(purpose);
    value["exp"] = json!(exp);
    let payload = URL_SAFE_NO_PAD.encode(value.to_string());
    let tag = crate::crypto::hmac_sha256(key, &[b"portcullis-seal.", payload.as_bytes()]);
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fn unseal(key: &[u8], purpose: &str, sealed: &str, now: i64) -> Option<Value> {
    if key.is_empty() {
        return None;
    }
    let (payload, tag) = sealed.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if !crate::crypto::hmac_sha256_verify(key, &[b"portcullis-seal.", payload.as_bytes()], &tag) {
        return None;
    }
    let value: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let fresh = value.get("exp").and_then(Value::as_i64).is_some_and(|exp| exp > now);
    (value.get("purpose").and_then(Value::as_str) == Some(purpose) && fresh).then_some(value)
}

fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(gate: &Gate, name: &str, value: &str, max_age: i64, same_site: &str) -> String {
    let secure = if gate.config.server.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/reviews; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

// ----- the provider -----------------------------------------------------------------

impl Sso {
    fn http(&self) -> Option<&OidcHttp> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .ok()
                    .map(OidcHttp)
            })
            .as_ref()
    }

    /// The provider's metadata (discovery document and keys), cached.
    async fn metadata(&self, sso: &SsoConfig, refresh: bool) -> Result<CoreProviderMetadata, String> {
        let http = self.http().ok_or("no HTTP client")?;
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && !refresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        // The configured URL is normalised with a trailing slash; issuers
        // differ on whether their identifier has one, and it must match exactly.
        let raw = sso.issuer.as_str();
        let mut candidates = vec![raw.trim_end_matches('/').to_string()];
        if raw.ends_with('/') {
            candidates.push(raw.to_string());
        }
        let mut last = String::new();
        for candidate in candidates {
            let issuer = IssuerUrl::new(candidate).map_err(|_| "sso.issuer is not a URL".to_string())?;
            match CoreProviderMetadata::discover_async(issuer, http).await {
                Ok(m) => {
                    *cached = Some((Instant::now(), m.clone()));
                    return Ok(m);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    async fn client(&self, gate: &Gate, sso: &SsoConfig, refresh: bool) -> Result<SsoClient, String> {
        let metadata = self.metadata(sso, refresh).await?;
        let base = gate.config.server.public_url.as_str().trim_end_matches('/');
        let redirect =
            RedirectUrl::new(format!("{base}/reviews/callback")).map_err(|_| "server.public_url is not a URL")?;
        Ok(SsoClient::from_provider_metadata(
            metadata,
            ClientId::new(sso.client_id.clone()),
            sso.client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(redirect))
    }
}

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
    let policy = gate.config.environment(&req.environment);
    match policy {
        Some(p) if p.reviews.required > 0 && p.reviews.via == ReviewVia::Sso => {}
        _ => {
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
    }
    if req.status != RequestStatus::Pending {
        return Err(already_decided(&req));
    }
    Ok(req)
}

fn already_decided(req: &DeploymentRequest) -> HttpResponse {
    refused(
        StatusCode::CONFLICT,
        "already_decided",
        "Already decided",
        &crate::slack::interaction::already_decided(req),
    )
}

fn sso_config(gate: &Gate) -> Result<&SsoConfig, HttpResponse> {
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

async fn start(path: web::Path<String>, gate: web::Data<Gate>, state: web::Data<Sso>) -> HttpResponse {
    let id = path.into_inner();
    let sso = match sso_config(&gate) {
        Ok(s) => s,
        Err(page) => return page,
    };
    if let Err(page) = reviewable(&gate, &id).await {
        return page;
    }
    let client = match state.client(&gate, sso, false).await {
        Ok(c) => c,
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
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let flow = seal(
        &seal_key(sso),
        "flow",
        json!({ "r": id, "s": csrf.secret(), "n": nonce.secret(), "v": verifier.secret() }),
        now + FLOW_TTL,
    );
    HttpResponse::Found()
        .insert_header(("location", url.to_string()))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("set-cookie", set_cookie(&gate, FLOW_COOKIE, &flow, FLOW_TTL, "Lax")))
        .finish()
}

// ----- GET /reviews/callback --------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// What the callback verified.
struct Verified {
    email: String,
    aliases: Vec<String>,
    groups: Vec<String>,
}

async fn callback(req: HttpRequest, gate: web::Data<Gate>, state: web::Data<Sso>) -> HttpResponse {
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
    let verified = match verify_sign_in(&gate, &state, sso, &flow, code).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let request = match reviewable(&gate, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let Some(policy) = gate.config.environment(&request.environment) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "environment_not_configured",
            "Not reviewed here",
            "The environment is not configured.",
        );
    };
    if !policy
        .reviews
        .reviewers
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&verified.email))
    {
        info!(reviewer = %verified.email, groups = ?verified.groups, request = %id, environment = %request.environment,
              "sso review refused: not a reviewer of the environment");
        return refused(
            StatusCode::FORBIDDEN,
            "not_a_reviewer",
            "Not a reviewer",
            &format!("{} is not a reviewer for {}.", verified.email, request.environment),
        );
    }
    let csrf = random_token();
    let grant = seal(
        &key,
        "grant",
        json!({ "r": id, "e": verified.email, "a": verified.aliases, "g": verified.groups, "c": csrf }),
        now + FLOW_TTL,
    );
    let missing = crate::slack::interaction::status_line(&request);
    let body = format!(
        "<p>Signed in as <strong>{email}</strong>.</p>\
         <p>Deployment of <code>{repo}</code> at <code>{sha}</code> ({platform} {run}) to <strong>{env}</strong>.</p>\
         <p>{missing}</p>\
         <form method=\"post\" action=\"/reviews/{id}\">\
         <input type=\"hidden\" name=\"grant\" value=\"{grant}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"reject\">Reject</button></form>",
        email = html_escape(&verified.email),
        repo = html_escape(&request.repository),
        sha = html_escape(&request.sha),
        platform = request.platform,
        run = html_escape(&request.run),
        env = html_escape(&request.environment),
        missing = html_escape(&missing),
        id = html_escape(&id),
        grant = html_escape(&grant),
    );
    let mut response = page(StatusCode::OK, "review_form", "Review the deployment", &body);
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

/// Exchanges the code and verifies the ID token; refuses with a page.
async fn verify_sign_in(
    gate: &Gate,
    state: &Sso,
    sso: &SsoConfig,
    flow: &Value,
    code: String,
) -> Result<Verified, HttpResponse> {
    let unavailable = || {
        refused(
            StatusCode::BAD_GATEWAY,
            "sign_in_failed",
            "Sign-in failed",
            "The sign-in could not be completed with the provider; start again.",
        )
    };
    let http = state.http().ok_or_else(unavailable)?;
    let client = state.client(gate, sso, false).await.map_err(|e| {
        warn!(error = %e, "sso: the provider is unavailable");
        unavailable()
    })?;
    let exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| unavailable())?;
    let answer = exchange
        .set_pkce_verifier(PkceCodeVerifier::new(s(flow, "v").to_string()))
        .request_async(http)
        .await
        .map_err(|e| {
            warn!(error = %e, "sso: the code exchange failed");
            unavailable()
        })?;
    let Some(id_token) = answer.extra_fields().id_token() else {
        warn!("sso: the token answer has no ID token");
        return Err(unavailable());
    };
    let nonce = Nonce::new(s(flow, "n").to_string());
    let verifier = client.id_token_verifier();
    let claims = match id_token.claims(&verifier, &nonce) {
        Ok(c) => c,
        Err(openidconnect::ClaimsVerificationError::InvalidNonce(_)) => {
            info!("sso: an ID token whose nonce is not the one this sign-in sent");
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "nonce_mismatch",
                "Sign-in not accepted",
                "The identity token was not issued for this sign-in (nonce mismatch).",
            ));
        }
        Err(e) => {
            if matches!(e, openidconnect::ClaimsVerificationError::SignatureVerification(_)) {
                // Perhaps rotated keys: fetch them again for the next attempt.
                let _ = state.client(gate, sso, true).await;
            }
            info!(error = %e, "sso: the ID token did not verify");
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "id_token_invalid",
                "Sign-in not accepted",
                "The identity token did not verify.",
            ));
        }
    };
    let Some(email) = claims
        .email()
        .map(|e| e.as_str().trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
    else {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "email_missing",
            "No email",
            "The identity token carries no email address.",
        ));
    };
    if claims.email_verified() == Some(false) {
        info!(reviewer = %email, "sso review refused: the email is not verified");
        return Err(refused(
            StatusCode::FORBIDDEN,
            "email_unverified",
            "Email not verified",
            "The provider says this email address is not verified.",
        ));
    }
    let groups: Vec<String> = match claims.additional_claims().other.get(&sso.groups_claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    let mut aliases: Vec<String> = Vec::new();
    let local = email.split_once('@').map(|(l, _)| l.to_string());
    let preferred = claims.preferred_username().map(|u| u.as_str().to_string());
    let nickname = claims
        .nickname()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_string());
    let name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_string());
    for a in [local, preferred, nickname, name].into_iter().flatten() {
        let a = a.trim().to_string();
        if !a.is_empty() && !aliases.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            aliases.push(a);
        }
    }
    Ok(Verified { email, aliases, groups })
}

// ----- POST /reviews/{request} ----------------------------------------------------------

async fn submit(
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
        Err(e) => return refused(e.status, e.code, "Not recorded", &e.message),
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
    let eligible = gate
        .config
        .environment(&request.environment)
        .is_some_and(|p| p.reviews.reviewers.iter().any(|r| r.eq_ignore_ascii_case(&email)));
    if !eligible {
        return refused(
            StatusCode::FORBIDDEN,
            "not_a_reviewer",
            "Not a reviewer",
            &format!("{email} is not a reviewer for {}.", request.environment),
        );
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
        Ok(true) => {
            info!(request = %id, reviewer = %email, groups = %groups, approve, via = "sso", "review recorded");
            let state = match gate.store.get_request(&id).await {
                Ok(Some(r)) => crate::slack::interaction::status_line(&r),
                _ => String::new(),
            };
            let verb = if approve { "approval" } else { "rejection" };
            let mut response = page(
                StatusCode::OK,
                "review_recorded",
                "Review recorded",
                &format!(
                    "<p>Recorded your {verb} of the deployment to {} as {} (identity verified by sign-in).</p><p>{}</p>",
                    html_escape(&request.environment),
                    html_escape(&email),
                    html_escape(&state)
                ),
            );
            if let Ok(v) =
                actix_web::http::header::HeaderValue::from_str(&set_cookie(&gate, CSRF_COOKIE, "", 0, "Strict"))
            {
                response.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
            }
            response
        }
        Ok(false) => match gate.store.get_request(&id).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_only_unchanged_for_its_purpose_and_before_it_expires() {
        let key = b"k".repeat(32);
        let sealed = seal(&key, "flow", json!({"r": "req_1"}), 1000);
        assert_eq!(
            unseal(&key, "flow", &sealed, 999).map(|v| v["r"].clone()),
            Some(json!("req_1"))
        );
        assert!(unseal(&key, "flow", &sealed, 1000).is_none(), "expired");
        assert!(unseal(&key, "grant", &sealed, 999).is_none(), "another purpose");
        assert!(unseal(b"other", "flow", &sealed, 999).is_none(), "another key");
        let (p, t) = sealed.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json!({"r": "req_2", "purpose": "flow", "exp": 2000}).to_string());
        assert!(
            unseal(&key, "flow", &format!("{forged}.{t}"), 999).is_none(),
            "another payload"
        );
        assert!(unseal(&key, "flow", p, 999).is_none(), "no tag");
        assert!(unseal(&[], "flow", &sealed, 999).is_none(), "no key");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
