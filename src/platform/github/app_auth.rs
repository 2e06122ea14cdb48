//! Authenticating as the GitHub App: the App JWT, installation ids, and
//! installation tokens (cached until five minutes before they expire).

use std::sync::{Arc, Mutex, MutexGuard};

use jsonwebtoken::{Algorithm, Header};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Auth, GithubClient, MAX_BODY, MAX_TOKEN_BODY, PLATFORM};
use crate::config::Secret;
use crate::platform::http::CallFailure;

/// The App JWT is back-dated against clock drift, and lives 9 minutes
/// (GitHub refuses more than 10).
const JWT_BACKDATE_SECS: i64 = 60;
const JWT_LIFETIME_SECS: i64 = 9 * 60;
/// An installation token is refreshed this long before it expires, so a
/// token never expires between the cache check and the call.
const TOKEN_REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);

/// The claims of the App JWT GitHub expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppClaims {
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

impl AppClaims {
    /// Claims for App `app_id` at `now` (unix seconds): back-dated 60 s,
    /// expiring 9 minutes ahead.
    pub(crate) fn new(app_id: u64, now: i64) -> Self {
        AppClaims {
            iat: now - JWT_BACKDATE_SECS,
            exp: now + JWT_LIFETIME_SECS,
            iss: app_id.to_string(),
        }
    }
}

pub(super) struct CachedToken {
    token: Secret,
    refresh_at: OffsetDateTime,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
    expires_at: Option<String>,
}

impl GithubClient {
    /// Signs a fresh App JWT.
    pub(super) fn app_jwt(&self) -> Result<String, CallFailure> {
        let claims = AppClaims::new(self.app_id, OffsetDateTime::now_utc().unix_timestamp());
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|_| CallFailure::refused("could not sign the App JWT"))
    }

    /// The installation to answer for: the request's, or one looked up
    /// (and cached) by repository. `true` when looked up.
    pub(super) async fn installation(
        &self,
        owner: &str,
        repo: &str,
        given: Option<u64>,
    ) -> Result<(u64, bool), CallFailure> {
        if let Some(id) = given {
            return Ok((id, false));
        }
        let key = repo_key(owner, repo);
        if let Some(id) = lock(&self.installations).get(&key).copied() {
            return Ok((id, true));
        }
        let url = self.endpoint(&["repos", owner, repo, "installation"]);
        let answer = self.call(Method::GET, url, Auth::AppJwt, None, MAX_BODY).await?;
        let id = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64))
            .ok_or_else(|| CallFailure::malformed(PLATFORM, answer.status.as_u16(), "no installation id"))?;
        lock(&self.installations).insert(key, id);
        Ok((id, true))
    }

    pub(super) fn forget_installation(&self, owner: &str, repo: &str) {
        lock(&self.installations).remove(&repo_key(owner, repo));
    }

    fn token_slot(&self, installation: u64) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        lock(&self.tokens).entry(installation).or_default().clone()
    }

    /// An installation token: the cached one while it has more than five
    /// minutes left, else a new one. Concurrent callers share one fetch.
    pub(super) async fn installation_token(&self, installation: u64) -> Result<Secret, CallFailure> {
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
        let answer = self.call(Method::POST, url, Auth::AppJwt, None, MAX_TOKEN_BODY).await?;
        let status = answer.status.as_u16();
        let parsed: TokenResponse = serde_json::from_slice(&answer.body)
            .map_err(|_| CallFailure::malformed(PLATFORM, status, "no usable token"))?;
        if parsed.token.is_empty() {
            return Err(CallFailure::malformed(PLATFORM, status, "an empty token"));
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
    pub(super) async fn forget_token(&self, installation: u64, stale: &Secret) {
        let slot = self.token_slot(installation);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == stale) {
            *cached = None;
        }
    }
}

/// Installation ids are cached by lower-cased `owner/repo`.
fn repo_key(owner: &str, repo: &str) -> String {
    format!("{}/{}", owner.to_ascii_lowercase(), repo.to_ascii_lowercase())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain data; a panic elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
