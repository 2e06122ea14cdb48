//! GitHub App client: App JWT, installation tokens, the review call.
//!
//! portcullis answers a custom deployment protection rule as its GitHub App:
//! it signs a short-lived App JWT (RS256), trades it for an installation
//! token, and posts the review to
//! `{api_url}/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`.
//! It never calls the webhook's `deployment_callback_url`: the URL is built
//! from `api_url`, so a forged callback cannot redirect the App's token.
//!
//! Failures never become errors for the caller: [`PlatformClient::answer`]
//! always returns a [`CallResult`], whose `detail` is short and carries no
//! secret (no token, no JWT, no upstream body beyond GitHub's `message`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use url::Url;

use super::{CallResult, PlatformClient};
use crate::config::{GithubConfig, Secret};
use crate::domain::{DeploymentRequest, Target};

/// The REST API version every call pins.
const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";
const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
/// GitHub's limit on a review comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1024;
/// How much of GitHub's `message` a detail may quote.
const MAX_MESSAGE_CHARS: usize = 200;
/// The App JWT is back-dated against clock drift, and lives 9 minutes
/// (GitHub refuses more than 10).
const JWT_BACKDATE_SECS: i64 = 60;
const JWT_LIFETIME_SECS: i64 = 9 * 60;
/// An installation token is refreshed this long before it expires, so a
/// token never expires between the cache check and the call.
const TOKEN_REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);
/// Upper bounds on response bodies read into memory. An access-token
/// response lists the repositories of a "selected" installation (up to 500).
const MAX_TOKEN_BODY: usize = 8 * 1024 * 1024;
const MAX_BODY: usize = 256 * 1024;

/// Why a [`GithubClient`] could not be built. Each message names the
/// configuration key to fix.
#[derive(Debug, thiserror::Error)]
pub enum GithubClientError {
    #[error("github.app_id is required to answer GitHub")]
    MissingAppId,
    #[error("github.private_key is required to answer GitHub")]
    MissingPrivateKey,
    #[error("github.private_key is not a usable RSA private key in PEM form")]
    InvalidPrivateKey,
    #[error("github.api_url `{0}` cannot have paths joined to it")]
    InvalidApiUrl(String),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

pub use super::RetryPolicy;

/// The claims of the App JWT GitHub expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppClaims {
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

impl AppClaims {
    /// Claims for App `app_id` at `now` (unix seconds): back-dated 60 s,
    /// expiring 9 minutes ahead.
    pub fn new(app_id: u64, now: i64) -> Self {
        AppClaims {
            iat: now - JWT_BACKDATE_SECS,
            exp: now + JWT_LIFETIME_SECS,
            iss: app_id.to_string(),
        }
    }
}

/// The GitHub App client. Cheap to share behind an `Arc`; it caches
/// installation tokens and installation ids for its lifetime.
pub struct GithubClient {
    http: reqwest::Client,
    api_url: Url,
    api_host: Option<(String, Option<u16>)>,
    app_id: u64,
    key: EncodingKey,
    timeout: Duration,
    retry: RetryPolicy,
    /// One slot per installation. The async lock is held across the token
    /// fetch, so concurrent callers wait for one fetch and share its token.
    tokens: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
    /// Installation ids found by lookup, keyed by lower-cased `owner/repo`.
    installations: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("api_url", &self.api_url.as_str())
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

struct CachedToken {
    token: Secret,
    refresh_at: OffsetDateTime,
}

/// A call that did not succeed, before it becomes a [`CallResult`].
#[derive(Debug)]
enum Failure {
    /// GitHub answered with a status we do not treat as success.
    Status {
        status: u16,
        message: Option<String>,
        attempts: u32,
    },
    /// No answer: timeout or connection failure, after every attempt.
    Transport { cause: &'static str, attempts: u32 },
    /// GitHub answered 2xx with a body we could not use.
    Malformed { status: u16, what: &'static str },
    /// We refused to make the call.
    Refused(String),
}

impl Failure {
    fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } | Failure::Malformed { status, .. } => Some(*status),
            Failure::Transport { .. } | Failure::Refused(_) => None,
        }
    }

    /// A short, secret-free sentence about the failure of `step`.
    fn describe(&self, step: &str) -> String {
        match self {
            Failure::Status {
                status,
                message,
                attempts,
            } => {
                let tries = if *attempts > 1 {
                    format!(" after {attempts} attempts")
                } else {
                    String::new()
                };
                match message {
                    Some(m) => format!("{step}: GitHub answered {status}{tries}: {m}"),
                    None => format!("{step}: GitHub answered {status}{tries}"),
                }
            }
            Failure::Transport { cause, attempts } => {
                format!(
                    "{step}: {cause} after {attempts} attempt{}",
                    if *attempts == 1 { "" } else { "s" }
                )
            }
            Failure::Malformed { status, what } => {
                format!("{step}: GitHub answered {status} with {what}")
            }
            Failure::Refused(why) => format!("{step}: {why}"),
        }
    }
}

/// One answered HTTP exchange.
struct Answered {
    status: StatusCode,
    body: Vec<u8>,
    /// The `Link` header (pagination), when present.
    link: Option<String>,
}

impl GithubClient {
    /// Builds the client from `[github]`. Fails when `app_id` or
    /// `private_key` is missing, when the key is not an RSA private key in
    /// PEM form (PKCS#1, as GitHub issues it, or PKCS#8), or when
    /// `api_url` cannot take a path.
    pub fn new(config: &GithubConfig) -> Result<Self, GithubClientError> {
        let app_id = config.app_id.ok_or(GithubClientError::MissingAppId)?;
        let pem = config
            .private_key
            .as_ref()
            .ok_or(GithubClientError::MissingPrivateKey)?;
        let key =
            EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|_| GithubClientError::InvalidPrivateKey)?;
        // The PEM parser checks only the envelope; signing once proves the
        // key itself is usable, at start rather than at the first deploy.
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &AppClaims::new(app_id, 0), &key)
            .map_err(|_| GithubClientError::InvalidPrivateKey)?;
        if config.api_url.cannot_be_a_base() {
            return Err(GithubClientError::InvalidApiUrl(config.api_url.to_string()));
        }
        let timeout = config.request_timeout;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            // The bearer token must never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubClientError::HttpClient(e.to_string()))?;
        let api_host = config
            .api_url
            .host_str()
            .map(|h| (h.to_ascii_lowercase(), config.api_url.port_or_known_default()));
        Ok(GithubClient {
            http,
            api_url: config.api_url.clone(),
            api_host,
            app_id,
            key,
            timeout,
            retry: RetryPolicy::default(),
            tokens: Mutex::new(HashMap::new()),
            installations: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            base_delay: retry.base_delay,
        };
        self
    }

    /// Signs a fresh App JWT.
    fn app_jwt(&self) -> Result<String, Failure> {
        let claims = AppClaims::new(self.app_id, OffsetDateTime::now_utc().unix_timestamp());
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|_| Failure::Refused("could not sign the App JWT".into()))
    }

    /// `{api_url}/<segments...>`, each segment percent-encoded, whatever
    /// path `api_url` already has (GitHub Enterprise: `/api/v3`).
    pub fn endpoint(&self, segments: &[&str]) -> Url {
        join_api_path(&self.api_url, segments)
    }

    /// The installation to answer for: the request's, or one looked up
    /// (and cached) by repository.
    async fn installation(&self, owner: &str, repo: &str, given: Option<u64>) -> Result<(u64, bool), Failure> {
        if let Some(id) = given {
            return Ok((id, false));
        }
        let key = format!("{}/{}", owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        if let Some(id) = lock(&self.installations).get(&key).copied() {
            return Ok((id, true));
        }
        let url = self.endpoint(&["repos", owner, repo, "installation"]);
        let answered = self.call(Method::GET, url, Auth::AppJwt, None, MAX_BODY).await?;
        if !answered.status.is_success() {
            return Err(status_failure(&answered, self.retry.attempts));
        }
        let id = serde_json::from_slice::<Value>(&answered.body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64))
            .ok_or(Failure::Malformed {
                status: answered.status.as_u16(),
                what: "no installation id",
            })?;
        lock(&self.installations).insert(key, id);
        Ok((id, true))
    }

    fn forget_installation(&self, owner: &str, repo: &str) {
        let key = format!("{}/{}", owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        lock(&self.installations).remove(&key);
    }

    fn token_slot(&self, installation: u64) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        lock(&self.tokens).entry(installation).or_default().clone()
    }

    /// An installation token: the cached one while it has more than five
    /// minutes left, else a new one. Concurrent callers share one fetch.
    async fn installation_token(&self, installation: u64) -> Result<Secret, Failure> {
        let slot = self.token_slot(installation);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && OffsetDateTime::now_utc() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        *cached = None;
        let id = installation.to_string();
        let url = self.endpoint(&["app", "installations", &id, "access_tokens"]);
        let answered = self.call(Method::POST, url, Auth::AppJwt, None, MAX_TOKEN_BODY).await?;
        if !answered.status.is_success() {
            return Err(status_failure(&answered, self.retry.attempts));
        }
        let status = answered.status.as_u16();
        let parsed: TokenResponse = serde_json::from_slice(&answered.body).map_err(|_| Failure::Malformed {
            status,
            what: "no usable token",
        })?;
        if parsed.token.is_empty() {
            return Err(Failure::Malformed {
                status,
                what: "an empty token",
            });
        }
        let token = Secret::new(parsed.token);
        // An unreadable expiry is used once and not cached.
        if let Some(expires_at) = parsed
            .expires_at
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        {
            *cached = Some(CachedToken {
                token: token.clone(),
                refresh_at: expires_at - TOKEN_REFRESH_MARGIN,
            });
        }
        Ok(token)
    }

    /// Drops `stale` from the cache, unless another caller already
    /// replaced it.
    async fn forget_token(&self, installation: u64, stale: &Secret) {
        let slot = self.token_slot(installation);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == stale) {
            *cached = None;
        }
    }

    /// Sends one request, retrying timeouts, connection failures and 5xx
    /// answers with back-off. Returns the last answer (5xx included) or
    /// the transport failure of the last attempt.
    async fn call(
        &self,
        method: Method,
        url: Url,
        auth: Auth<'_>,
        body: Option<&Value>,
        max_body: usize,
    ) -> Result<Answered, Failure> {
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            // A new JWT per attempt: a retry after a long pause must not
            // present an expired one.
            let bearer = match auth {
                Auth::AppJwt => self.app_jwt()?,
                Auth::Token(t) => t.expose().to_owned(),
            };
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, ACCEPT)
                .header("X-GitHub-Api-Version", API_VERSION)
                .bearer_auth(bearer);
            if let Some(b) = body {
                request = request.json(b);
            }
            let outcome = tokio::time::timeout(self.timeout, async {
                let mut response = request.send().await?;
                let status = response.status();
                let link = response
                    .headers()
                    .get(reqwest::header::LINK)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = super::read_capped(&mut response, max_body).await?;
                Ok::<_, reqwest::Error>(Answered {
                    status,
                    body: bytes,
                    link,
                })
            })
            .await;
            let failure = match outcome {
                Ok(Ok(answered)) if answered.status.is_server_error() && attempt < attempts => {
                    tracing::warn!(
                        status = answered.status.as_u16(),
                        attempt,
                        path = url.path(),
                        "GitHub server error; retrying"
                    );
                    None
                }
                Ok(Ok(answered)) => return Ok(answered),
                Ok(Err(e)) => Some(if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                }),
                Err(_) => Some("timed out"),
            };
            if let Some(cause) = failure {
                tracing::warn!(cause, attempt, path = url.path(), "GitHub call failed");
                if attempt >= attempts {
                    return Err(Failure::Transport { cause, attempts });
                }
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// Posts the review with the installation's token; a 401 drops the
    /// token and tries once more with a fresh one. A failure names its
    /// step: `installation token` or `review`.
    async fn review(&self, installation: u64, url: &Url, body: &Value) -> Result<Answered, (&'static str, Failure)> {
        const TOKEN: &str = "installation token";
        let mut token = self.installation_token(installation).await.map_err(|f| (TOKEN, f))?;
        let mut renewed = false;
        loop {
            let answered = self
                .call(Method::POST, url.clone(), Auth::Token(&token), Some(body), MAX_BODY)
                .await
                .map_err(|f| ("review", f))?;
            if answered.status == StatusCode::UNAUTHORIZED && !renewed {
                tracing::warn!(
                    installation,
                    "GitHub refused the installation token; fetching a new one"
                );
                self.forget_token(installation, &token).await;
                token = self.installation_token(installation).await.map_err(|f| (TOKEN, f))?;
                renewed = true;
                continue;
            }
            return Ok(answered);
        }
    }

    async fn answer_github(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let Target::Github {
            owner,
            repo,
            run_id,
            installation_id,
            callback_url,
        } = &request.target
        else {
            return refused("not a GitHub request".into());
        };
        let (run_id, installation_id) = (*run_id, *installation_id);
        if let Err(why) = check_name(owner).and_then(|()| check_name(repo)) {
            return refused(why);
        }
        // Defence in depth: intake already rejects a foreign callback host,
        // and no approval may go out for one.
        if approve && !self.same_host(callback_url) {
            return refused("the deployment callback URL is not on github.api_url's host; not approving".into());
        }
        let (installation, looked_up) = match self.installation(owner, repo, installation_id).await {
            Ok(found) => found,
            Err(f) => return failed(&f, "installation lookup"),
        };
        let url = self.endpoint(&[
            "repos",
            owner,
            repo,
            "actions",
            "runs",
            &run_id.to_string(),
            "deployment_protection_rule",
        ]);
        let state = if approve { "approved" } else { "rejected" };
        let body = json!({
            "environment_name": request.environment,
            "state": state,
            "comment": truncate_comment(comment),
        });
        let answered = match self.review(installation, &url, &body).await {
            Ok(a) => a,
            Err((step, f)) => {
                // A looked-up installation may be gone (App reinstalled):
                // look it up again next time.
                if looked_up && matches!(f, Failure::Status { status: 404, .. }) {
                    self.forget_installation(owner, repo);
                }
                return failed(&f, step);
            }
        };
        let status = answered.status.as_u16();
        if answered.status.is_success() {
            return CallResult {
                ok: true,
                status: Some(status),
                detail: format!("GitHub took the review ({state})"),
            };
        }
        if answered.status == StatusCode::UNPROCESSABLE_ENTITY {
            // GitHub says the rule was already reviewed or the run is no
            // longer waiting: there is nothing left to answer.
            let message = github_message(&answered.body)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return CallResult {
                ok: true,
                status: Some(status),
                detail: format!("GitHub answered 422, already reviewed or not waiting; treated as done{message}"),
            };
        }
        failed(&status_failure(&answered, self.retry.attempts), "review")
    }

    fn same_host(&self, callback_url: &str) -> bool {
        let Ok(callback) = Url::parse(callback_url) else {
            return false;
        };
        let host = callback
            .host_str()
            .map(|h| (h.to_ascii_lowercase(), callback.port_or_known_default()));
        host.is_some() && host == self.api_host
    }
}

// ----- App-level calls, for the redelivery reconciler (platform/redeliver.rs)

/// The answer to an App-authenticated call.
pub(crate) struct AppAnswer {
    pub status: u16,
    /// The `Link` header, for pagination.
    pub link: Option<String>,
    pub body: Vec<u8>,
}

impl GithubClient {
    /// Sends one request authenticated as the App (a fresh App JWT per
    /// attempt), with the client's headers, timeout and retries. An `Err`
    /// is a short, secret-free sentence.
    pub(crate) async fn app_call(&self, method: Method, url: Url, max_body: usize) -> Result<AppAnswer, String> {
        match self.call(method, url, Auth::AppJwt, None, max_body).await {
            Ok(a) => Ok(AppAnswer {
                status: a.status.as_u16(),
                link: a.link,
                body: a.body,
            }),
            Err(f) => Err(f.describe("GitHub App call")),
        }
    }

    /// GitHub's `message` in an error body, short and on one line.
    pub(crate) fn message_of(body: &[u8]) -> Option<String> {
        github_message(body)
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    AppJwt,
    Token(&'a Secret),
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
    expires_at: Option<String>,
}

#[async_trait]
impl PlatformClient for GithubClient {
    async fn answer(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let result = self.answer_github(request, approve, comment).await;
        tracing::info!(
            request = %request.id,
            ok = result.ok,
            status = result.status,
            detail = %result.detail,
            "answered GitHub"
        );
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain data; a panic elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn refused(detail: String) -> CallResult {
    CallResult {
        ok: false,
        status: None,
        detail,
    }
}

fn failed(f: &Failure, step: &str) -> CallResult {
    CallResult {
        ok: false,
        status: f.status(),
        detail: f.describe(step),
    }
}

fn status_failure(answered: &Answered, attempts: u32) -> Failure {
    let attempts = if answered.status.is_server_error() { attempts } else { 1 };
    Failure::Status {
        status: answered.status.as_u16(),
        message: github_message(&answered.body),
        attempts,
    }
}

/// GitHub's `message` field, on one line and at most 200 characters. The
/// rest of an upstream body never leaves this module.
fn github_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("message")?.as_str()?;
    let clean: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return None;
    }
    Some(truncate_chars(clean, MAX_MESSAGE_CHARS))
}

/// GitHub owner and repository names: letters, digits, `-`, `_`, `.`; never
/// `.` or `..`, which would walk the URL path.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("the repository owner or name is not a valid GitHub name".into())
    }
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..end])
        }
    }
}

/// The review comment, cut to GitHub's 1024 characters.
pub fn truncate_comment(comment: &str) -> String {
    truncate_chars(comment, MAX_COMMENT_CHARS)
}

/// Appends percent-encoded `segments` to `base`'s path, keeping any path it
/// has (`https://ghe.example.com/api/v3` + `app` ->
/// `https://ghe.example.com/api/v3/app`), with or without a trailing slash.
pub fn join_api_path(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const TEST_KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-app-private-key.pem");
    const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-app-public-key.pem");
    /// A P-256 key, generated for this test only: a PEM key of the wrong kind.
    const TEST_EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBd8/jJq6xakSmb08
aY6vR1Q1J9H8G/8JmqjUrGLqsxuhRANCAAQAblDKKa2tXGPfhR8QzLPRzfpzdadb
L08ifT/2zIiA5HbueffZjVMpi/uFukBXscwKR+cQJWqYsqbfi8JC5GpJ
-----END PRIVATE KEY-----
";

    fn config(key: Option<&str>, app_id: Option<u64>, api_url: &str) -> GithubConfig {
        GithubConfig {
            app_id,
            private_key: key.map(Secret::new),
            webhook_secrets: vec![Secret::new("s")],
            api_url: Url::parse(api_url).expect("test URL"),
            request_timeout: Duration::from_secs(5),
            redeliver: crate::config::RedeliverConfig {
                enabled: false,
                interval: Duration::from_secs(300),
                lookback: Duration::from_secs(3600),
                max_per_run: 50,
            },
        }
    }

    #[test]
    fn app_claims_are_backdated_and_expire_within_ten_minutes() {
        let claims = AppClaims::new(1012345, 1_800_000_000);
        assert_eq!(
            claims,
            AppClaims {
                iat: 1_799_999_940,
                exp: 1_800_000_540,
                iss: "1012345".into()
            }
        );
        assert!(claims.exp - claims.iat <= 600);
    }

    #[test]
    fn app_jwt_is_rs256_and_verifies_against_the_app_public_key() {
        let client = GithubClient::new(&config(Some(TEST_KEY), Some(1012345), "https://api.github.com"))
            .expect("client from the test key");
        let jwt = client.app_jwt().expect("signs");
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&["1012345"]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).expect("public key");
        let data = jsonwebtoken::decode::<AppClaims>(&jwt, &key, &validation).expect("verifies");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (now - 62..=now - 58).contains(&data.claims.iat),
            "iat {} now {now}",
            data.claims.iat
        );
        assert!(
            (now + 538..=now + 542).contains(&data.claims.exp),
            "exp {} now {now}",
            data.claims.exp
        );
    }

    #[test]
    fn new_fails_clearly_without_app_id_or_key_or_with_a_bad_key() {
        let cases: [(&str, GithubConfig, &str); 5] = [
            (
                "no app id",
                config(Some(TEST_KEY), None, "https://api.github.com"),
                "github.app_id is required",
            ),
            (
                "no key",
                config(None, Some(1), "https://api.github.com"),
                "github.private_key is required",
            ),
            (
                "not PEM",
                config(Some("hello"), Some(1), "https://api.github.com"),
                "not a usable RSA private key",
            ),
            (
                "public key",
                config(Some(TEST_PUBLIC_KEY), Some(1), "https://api.github.com"),
                "not a usable RSA private key",
            ),
            (
                "EC key",
                config(Some(TEST_EC_KEY), Some(1), "https://api.github.com"),
                "not a usable RSA private key",
            ),
        ];
        for (name, cfg, expected) in cases {
            let err = GithubClient::new(&cfg).expect_err(name);
            assert!(err.to_string().contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn comment_is_capped_at_1024_chars_on_a_char_boundary() {
        let cases: [(&str, String, String); 5] = [
            ("empty", String::new(), String::new()),
            ("short", "ok".into(), "ok".into()),
            ("exactly 1024", "a".repeat(1024), "a".repeat(1024)),
            ("1025 ascii", "a".repeat(1025), format!("{}…", "a".repeat(1023))),
            ("multibyte", "é".repeat(2000), format!("{}…", "é".repeat(1023))),
        ];
        for (name, input, expected) in cases {
            let out = truncate_comment(&input);
            assert_eq!(out, expected, "{name}");
            assert!(out.chars().count() <= MAX_COMMENT_CHARS, "{name}");
        }
        let emoji = "🚀".repeat(1500);
        assert_eq!(truncate_comment(&emoji).chars().count(), 1024);
    }

    #[test]
    fn api_paths_join_onto_any_base_path() {
        let cases = [
            (
                "dotcom",
                "https://api.github.com",
                "https://api.github.com/app/installations/7/access_tokens",
            ),
            (
                "dotcom slash",
                "https://api.github.com/",
                "https://api.github.com/app/installations/7/access_tokens",
            ),
            (
                "ghe",
                "https://ghe.example.com/api/v3",
                "https://ghe.example.com/api/v3/app/installations/7/access_tokens",
            ),
            (
                "ghe slash",
                "https://ghe.example.com/api/v3/",
                "https://ghe.example.com/api/v3/app/installations/7/access_tokens",
            ),
            (
                "loopback port",
                "http://127.0.0.1:8080/x?q=1",
                "http://127.0.0.1:8080/x/app/installations/7/access_tokens",
            ),
        ];
        for (name, base, expected) in cases {
            let url = join_api_path(
                &Url::parse(base).expect("base"),
                &["app", "installations", "7", "access_tokens"],
            );
            assert_eq!(url.as_str(), expected, "{name}");
        }
        let odd = join_api_path(
            &Url::parse("https://api.github.com").expect("base"),
            &["repos", "a/b", "c?d"],
        );
        assert_eq!(odd.as_str(), "https://api.github.com/repos/a%2Fb/c%3Fd");
    }

    #[test]
    fn names_that_would_walk_the_path_are_refused() {
        for bad in ["", ".", "..", "a/b", "a b", "a%2e", &"x".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["octo-org", "payments", "my.repo", "a_b", "A1"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn github_message_is_one_line_and_capped() {
        assert_eq!(
            github_message(br#"{"message":"Bad credentials","documentation_url":"x"}"#).as_deref(),
            Some("Bad credentials")
        );
        assert_eq!(github_message(b"<html>oops</html>"), None);
        assert_eq!(github_message(br#"{"token":"ghs_secret"}"#), None);
        let long = format!(r#"{{"message":"a\nb{}"}}"#, "c".repeat(500));
        let m = github_message(long.as_bytes()).expect("message");
        assert!(m.starts_with("a b"));
        assert_eq!(m.chars().count(), 200);
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let policy = RetryPolicy::default();
        for _ in 0..50 {
            let first = policy.delay(1);
            let second = policy.delay(2);
            assert!(
                (Duration::from_millis(160)..=Duration::from_millis(240)).contains(&first),
                "{first:?}"
            );
            assert!(
                (Duration::from_millis(320)..=Duration::from_millis(480)).contains(&second),
                "{second:?}"
            );
        }
    }

    #[test]
    fn callback_host_must_be_api_host() {
        let client =
            GithubClient::new(&config(Some(TEST_KEY), Some(1), "https://ghe.example.com/api/v3")).expect("client");
        assert!(client.same_host("https://ghe.example.com/api/v3/repos/o/r/actions/runs/1/deployment_protection_rule"));
        assert!(client.same_host("https://GHE.example.com:443/x"));
        assert!(
            !client.same_host("https://evil.example.com/api/v3/repos/o/r/actions/runs/1/deployment_protection_rule")
        );
        assert!(!client.same_host("https://ghe.example.com:8443/x"));
        assert!(!client.same_host("not a url"));
    }
}
