//! GitHub App client: App JWT, installation tokens, the review call.
//!
//! portcullis answers a custom deployment protection rule as its GitHub App:
//! it signs a short-lived App JWT (RS256), trades it for an installation
//! token, and posts the review to
//! `{api_url}/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`.
//! It never calls the webhook's `deployment_callback_url`: the URL is built
//! from `api_url`, so a forged callback cannot redirect the App's token.
//! (Whether a callback's host is `api_url`'s is decided once, at intake, by
//! `webhook::github`; the gate answers no request that failed it.)
//!
//! Failures never become errors for the caller: [`PlatformClient::answer`]
//! always returns a [`CallResult`], whose `detail` is short and carries no
//! secret (no token, no JWT, no upstream body beyond GitHub's `message`).

mod app_auth;
mod runs;
mod status;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

use self::app_auth::{AppClaims, CachedToken};
pub use self::status::MAX_STATUS_REPORTS;
use super::http::{Answer, CallFailure, RetryPolicy, Sender, clean_message, join_api_path};
use super::{CallResult, PlatformClient, comment};
use crate::config::{GithubConfig, Secret};
use crate::domain::{DeploymentRequest, Platform, Target};

/// The platform's name in details.
const PLATFORM: &str = "GitHub";
/// The REST API version every call pins.
const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";
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
    HttpClient(#[source] reqwest::Error),
}

/// The GitHub App client. Cheap to share behind an `Arc`; it caches
/// installation tokens and installation ids for its lifetime.
pub struct GithubClient {
    sender: Sender,
    api_url: Url,
    app_id: u64,
    key: EncodingKey,
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

/// How a call authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// A fresh App JWT per attempt: a retry after a long pause must not
    /// present an expired one.
    AppJwt,
    Token(&'a Secret),
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
        let sender =
            Sender::new(PLATFORM, config.request_timeout, github_message).map_err(GithubClientError::HttpClient)?;
        Ok(GithubClient {
            sender,
            api_url: config.api_url.clone(),
            app_id,
            key,
            tokens: Mutex::new(HashMap::new()),
            installations: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.sender.set_retry_policy(retry);
        self
    }

    /// `{api_url}/<segments...>`, each segment percent-encoded, whatever
    /// path `api_url` already has (GitHub Enterprise: `/api/v3`).
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Url {
        join_api_path(&self.api_url, segments)
    }

    /// Sends one request with GitHub's headers and `auth`, through the
    /// shared retrying send.
    async fn call(
        &self,
        method: Method,
        url: Url,
        auth: Auth<'_>,
        body: Option<&Value>,
        max_body: usize,
    ) -> Result<Answer, CallFailure> {
        self.sender
            .send(method, &url, max_body, |request| {
                let bearer = match auth {
                    Auth::AppJwt => self.app_jwt()?,
                    Auth::Token(t) => t.expose().to_owned(),
                };
                let request = request
                    .header(reqwest::header::ACCEPT, ACCEPT)
                    .header("X-GitHub-Api-Version", API_VERSION)
                    .bearer_auth(bearer);
                Ok(match body {
                    Some(b) => request.json(b),
                    None => request,
                })
            })
            .await
    }

    /// Posts the review with the installation's token; a 401 drops the
    /// token and tries once more with a fresh one. A failure names its
    /// step: `installation token` or `review`.
    async fn review(&self, installation: u64, url: &Url, body: &Value) -> Result<Answer, (&'static str, CallFailure)> {
        let mut token = self
            .installation_token(installation)
            .await
            .map_err(|f| (STEP_TOKEN, f))?;
        let mut renewed = false;
        loop {
            match self
                .call(Method::POST, url.clone(), Auth::Token(&token), Some(body), MAX_BODY)
                .await
            {
                Err(f) if f.status == Some(StatusCode::UNAUTHORIZED.as_u16()) && !renewed => {
                    tracing::warn!(
                        installation,
                        "GitHub refused the installation token; fetching a new one"
                    );
                    self.forget_token(installation, &token).await;
                    token = self
                        .installation_token(installation)
                        .await
                        .map_err(|f| (STEP_TOKEN, f))?;
                    renewed = true;
                }
                other => return other.map_err(|f| (STEP_REVIEW, f)),
            }
        }
    }

    /// Where a request's protection-rule calls (its review, its status
    /// reports) go: the run's `deployment_protection_rule` endpoint and the
    /// installation to call it as. A refusal is the call's result.
    async fn rule_endpoint<'r>(&self, request: &'r DeploymentRequest) -> Result<RuleEndpoint<'r>, CallResult> {
        let Target::Github {
            owner,
            repo,
            run_id,
            installation_id,
            ..
        } = &request.target
        else {
            return Err(CallFailure::refused("not a GitHub request").into());
        };
        check_name(owner).and_then(|()| check_name(repo))?;
        let (installation, looked_up) = self
            .installation(owner, repo, *installation_id)
            .await
            .map_err(|f| f.in_step("installation lookup"))?;
        let url = self.endpoint(&[
            "repos",
            owner,
            repo,
            "actions",
            "runs",
            &run_id.to_string(),
            "deployment_protection_rule",
        ]);
        Ok(RuleEndpoint {
            owner,
            repo,
            url,
            installation,
            looked_up,
        })
    }

    async fn answer_github(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let RuleEndpoint {
            owner,
            repo,
            url,
            installation,
            looked_up,
        } = match self.rule_endpoint(request).await {
            Ok(endpoint) => endpoint,
            Err(refused) => return refused,
        };
        let state = if approve { "approved" } else { "rejected" };
        let body = json!({
            "environment_name": request.environment,
            "state": state,
            "comment": comment::cap(Platform::Github, comment),
        });
        match self.review(installation, &url, &body).await {
            Ok(answer) => CallResult::done(
                Some(answer.status.as_u16()),
                format!("GitHub took the review ({state})"),
            ),
            // GitHub says the rule was already reviewed or the run is no
            // longer waiting: there is nothing left to answer.
            Err((STEP_REVIEW, f)) if f.status == Some(StatusCode::UNPROCESSABLE_ENTITY.as_u16()) => {
                let message = f.message.map(|m| format!(": {m}")).unwrap_or_default();
                CallResult::done(
                    f.status,
                    format!("GitHub answered 422, already reviewed or not waiting; treated as done{message}"),
                )
            }
            Err((step, f)) => {
                // A looked-up installation may be gone (App reinstalled):
                // look it up again next time.
                if looked_up && step == STEP_TOKEN && f.status == Some(StatusCode::NOT_FOUND.as_u16()) {
                    self.forget_installation(owner, repo);
                }
                f.in_step(step).into()
            }
        }
    }

    /// Sends one request authenticated as the App (a fresh App JWT per
    /// attempt), with the client's headers, timeout and retries: the
    /// redelivery reconciler's calls.
    pub(crate) async fn app_call(&self, method: Method, url: Url, max_body: usize) -> Result<Answer, CallFailure> {
        self.call(method, url, Auth::AppJwt, None, max_body).await
    }
}

/// A run's protection-rule endpoint and the installation to call it as
/// (`looked_up`: found through the API, not given by the webhook).
struct RuleEndpoint<'r> {
    owner: &'r str,
    repo: &'r str,
    url: Url,
    installation: u64,
    looked_up: bool,
}

const STEP_TOKEN: &str = "installation token";
const STEP_REVIEW: &str = "review";

#[async_trait]
impl PlatformClient for GithubClient {
    async fn answer(&self, request: &DeploymentRequest, approve: bool, comment: &str) -> CallResult {
        let result = self.answer_github(request, approve, comment).await;
        tracing::info!(
            request = %request.id,
            ok = result.ok(),
            failure = ?result.failure,
            status = result.status,
            detail = %result.detail,
            "answered GitHub"
        );
        result
    }
}

/// GitHub's `message` field, on one line and at most 200 characters. The
/// rest of an upstream body never leaves this module.
fn github_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    clean_message(value.get("message")?.as_str()?)
}

/// GitHub owner and repository names: letters, digits, `-`, `_`, `.`; never
/// `.` or `..`, which would walk the URL path.
fn check_name(name: &str) -> Result<(), CallFailure> {
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
        Err(CallFailure::refused(
            "the repository owner or name is not a valid GitHub name",
        ))
    }
}
