//! The Slack Web API calls portcullis makes, over reqwest: `chat.postMessage`,
//! `chat.update`, `chat.getPermalink`, `users.info` and `views.open`.
//!
//! The bot token travels as `Authorization: Bearer`, never in a URL, a log
//! line or an error. Slack answers HTTP 200 with `{"ok": false, "error":
//! "..."}` for API errors; those become [`SlackError::Api`] with Slack's
//! code. A 429 is retried after its `Retry-After` (at most
//! [`MAX_RETRY_AFTER`] each, [`MAX_ATTEMPTS`] attempts in all), so one rate
//! limit never stalls the caller for long; every attempt has a timeout.

use std::time::Duration;

use serde_json::{Value, json};
use tracing::debug;

use crate::config::{Secret, SlackConfig};

/// Timeout of one call, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call (the first one included), for 429 and 5xx answers.
pub const MAX_ATTEMPTS: u32 = 3;
/// The longest `Retry-After` portcullis waits; a longer one fails the call.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Slack's answers are small; anything larger is refused.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a Slack call failed. Display texts carry no secret and no upstream body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack answered `{"ok": false, "error": code}`.
    #[error("Slack answered `{0}`")]
    Api(String),
    /// Still rate-limited after the allowed retries, or asked to wait longer
    /// than [`MAX_RETRY_AFTER`].
    #[error("Slack rate-limited the call (Retry-After {0:?})")]
    RateLimited(Option<Duration>),
    #[error("Slack did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach Slack ({0})")]
    Transport(&'static str),
    #[error("Slack answered HTTP {0}")]
    Status(u16),
    #[error("Slack's answer was not understood: {0}")]
    Malformed(String),
}

impl SlackError {
    /// A stable short code, for logs and tests.
    pub fn code(&self) -> &str {
        match self {
            SlackError::Api(code) => code,
            SlackError::RateLimited(_) => "rate_limited",
            SlackError::Timeout(_) => "timeout",
            SlackError::Transport(_) => "transport",
            SlackError::Status(_) => "http_status",
            SlackError::Malformed(_) => "malformed_answer",
        }
    }
}

/// Where `chat.postMessage` put the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The channel id (Slack answers with the id even when posted by name).
    pub channel: String,
    pub ts: String,
}

/// What `users.info` says about a user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlackUser {
    pub id: String,
    pub team_id: Option<String>,
    /// The handle (`name`), e.g. `octocat`.
    pub name: String,
    pub real_name: Option<String>,
    pub display_name: Option<String>,
    /// `profile.email`; needs the `users:read.email` scope.
    pub email: Option<String>,
    pub deleted: bool,
    pub is_bot: bool,
    /// A multi-channel guest.
    pub is_restricted: bool,
    /// A single-channel guest.
    pub is_ultra_restricted: bool,
    /// A user of another organisation, seen through a shared channel.
    pub is_stranger: bool,
    /// Slack has confirmed the profile's email belongs to the user; absent
    /// counts as not confirmed.
    pub is_email_confirmed: bool,
}

impl SlackUser {
    fn from_answer(v: &Value) -> Result<SlackUser, SlackError> {
        let u = v
            .get("user")
            .ok_or_else(|| SlackError::Malformed("users.info without `user`".into()))?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let profile = u.get("profile");
        let flag = |k: &str| u.get(k).and_then(Value::as_bool).unwrap_or(false);
        Ok(SlackUser {
            id: s(u.get("id")).ok_or_else(|| SlackError::Malformed("users.info without `user.id`".into()))?,
            team_id: s(u.get("team_id")),
            name: s(u.get("name")).unwrap_or_default(),
            real_name: s(u.get("real_name")).or_else(|| s(profile.and_then(|p| p.get("real_name")))),
            display_name: s(profile.and_then(|p| p.get("display_name"))),
            email: s(profile.and_then(|p| p.get("email"))),
            deleted: u.get("deleted").and_then(Value::as_bool).unwrap_or(false),
            is_bot: u.get("is_bot").and_then(Value::as_bool).unwrap_or(false),
            is_restricted: flag("is_restricted"),
            is_ultra_restricted: flag("is_ultra_restricted"),
            is_stranger: flag("is_stranger"),
            is_email_confirmed: u.get("is_email_confirmed").and_then(Value::as_bool) == Some(true),
        })
    }

    /// Why this Slack account may not stand for a reviewer, if it may not:
    /// deactivated, a bot, a guest, a stranger, of another workspace than
    /// `team_id` (when one is configured), or with an email Slack has not
    /// confirmed. The email is the reviewer's identity, so it must be one the
    /// workspace vouches for.
    pub fn review_refusal(&self, team_id: Option<&str>) -> Option<&'static str> {
        if self.deleted || self.is_bot {
            Some("a deactivated or bot user")
        } else if self.is_restricted || self.is_ultra_restricted {
            Some("a guest account")
        } else if self.is_stranger {
            Some("a user of another organisation")
        } else if team_id.is_some_and(|t| self.team_id.as_deref() != Some(t)) {
            Some("a user of another workspace")
        } else if !self.is_email_confirmed {
            Some("an unconfirmed email")
        } else {
            None
        }
    }
}

enum Body<'a> {
    Json(&'a Value),
    Query(&'a [(&'a str, &'a str)]),
}

/// A small Slack Web API client: a reqwest client, the API base URL and the
/// bot token.
pub struct SlackClient {
    http: reqwest::Client,
    api_url: String,
    token: Secret,
    timeout: Duration,
    max_retry_after: Duration,
    /// The workspace whose members may review (`[slack] team_id`).
    team_id: Option<String>,
}

impl std::fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackClient")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl SlackClient {
    /// A client for `[slack]` with the default timeout.
    pub fn new(config: &SlackConfig) -> Result<SlackClient, String> {
        Self::with_timeout(config, DEFAULT_TIMEOUT)
    }

    /// A client whose calls each give up after `timeout`.
    pub fn with_timeout(config: &SlackConfig, timeout: Duration) -> Result<SlackClient, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the Slack HTTP client: {e}"))?;
        Ok(SlackClient {
            http,
            api_url: config.api_url.as_str().trim_end_matches('/').to_string(),
            token: config.bot_token.clone(),
            timeout,
            max_retry_after: MAX_RETRY_AFTER,
            team_id: config.team_id.clone(),
        })
    }

    /// Lowers the longest `Retry-After` honoured (tests).
    pub fn with_max_retry_after(mut self, max: Duration) -> SlackClient {
        self.max_retry_after = max;
        self
    }

    /// The API base URL, without a trailing slash.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// `chat.postMessage`: posts `blocks` (with `text` as the notification
    /// fallback) to `channel` (an id or a `#name`).
    pub async fn post_message(&self, channel: &str, text: &str, blocks: &Value) -> Result<Posted, SlackError> {
        let body =
            json!({ "channel": channel, "text": text, "blocks": blocks, "unfurl_links": false, "unfurl_media": false });
        let v = self.call("chat.postMessage", Body::Json(&body)).await?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match (field("channel"), field("ts")) {
            (Some(channel), Some(ts)) => Ok(Posted { channel, ts }),
            _ => Err(SlackError::Malformed(
                "chat.postMessage without `channel` and `ts`".into(),
            )),
        }
    }

    /// `chat.update`: replaces the message at (`channel` id, `ts`).
    pub async fn update_message(&self, channel: &str, ts: &str, text: &str, blocks: &Value) -> Result<(), SlackError> {
        let body = json!({ "channel": channel, "ts": ts, "text": text, "blocks": blocks });
        self.call("chat.update", Body::Json(&body)).await.map(|_| ())
    }

    /// `views.open`: opens `view` (a modal) for the user whose interaction
    /// gave `trigger_id` (valid for three seconds, usable once).
    pub async fn open_view(&self, trigger_id: &str, view: &Value) -> Result<(), SlackError> {
        let body = json!({ "trigger_id": trigger_id, "view": view });
        self.call("views.open", Body::Json(&body)).await.map(|_| ())
    }

    /// `chat.getPermalink` of the message at (`channel` id, `ts`).
    pub async fn permalink(&self, channel: &str, ts: &str) -> Result<String, SlackError> {
        let v = self
            .call(
                "chat.getPermalink",
                Body::Query(&[("channel", channel), ("message_ts", ts)]),
            )
            .await?;
        v.get("permalink")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SlackError::Malformed("chat.getPermalink without `permalink`".into()))
    }

    /// `users.info` of `user` (a Slack user id).
    /// The workspace whose members may review, when one is configured.
    pub fn team_id(&self) -> Option<&str> {
        self.team_id.as_deref()
    }

    pub async fn user_info(&self, user: &str) -> Result<SlackUser, SlackError> {
        let v = self.call("users.info", Body::Query(&[("user", user)])).await?;
        SlackUser::from_answer(&v)
    }

    /// Posts an ephemeral reply to an interaction's `response_url`. The URL
    /// comes from a verified payload; it is still only called on Slack's
    /// hooks host or the configured API host (see [`Self::response_url_allowed`]).
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackError> {
        if !self.response_url_allowed(response_url) {
            return Err(SlackError::Transport("response_url is not on a Slack host"));
        }
        let body = json!({ "response_type": "ephemeral", "replace_original": false, "text": text });
        let response = self
            .http
            .post(response_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(SlackError::Status(status)),
        }
    }

    /// `https://hooks.slack.com/...`, or the host and port of `api_url`
    /// (a Slack-compatible gateway, or the local fake in tests).
    pub fn response_url_allowed(&self, response_url: &str) -> bool {
        let (Ok(u), Ok(api)) = (url::Url::parse(response_url), url::Url::parse(&self.api_url)) else {
            return false;
        };
        let slack_hooks = u.scheme() == "https" && u.host_str() == Some("hooks.slack.com");
        let same_as_api = u.scheme() == api.scheme()
            && u.host_str() == api.host_str()
            && u.port_or_known_default() == api.port_or_known_default();
        (slack_hooks || same_as_api) && u.username().is_empty() && u.password().is_none()
    }

    fn transport(&self, e: &reqwest::Error) -> SlackError {
        if e.is_timeout() {
            SlackError::Timeout(self.timeout)
        } else if e.is_connect() {
            SlackError::Transport("connection failed")
        } else {
            SlackError::Transport("request failed")
        }
    }

    async fn call(&self, method: &str, body: Body<'_>) -> Result<Value, SlackError> {
        let url = format!("{}/{method}", self.api_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = match &body {
                Body::Json(v) => self
                    .http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(v.to_string()),
                Body::Query(q) => {
                    let mut u =
                        url::Url::parse(&url).map_err(|_| SlackError::Transport("slack.api_url is not a URL"))?;
                    u.query_pairs_mut().extend_pairs(q.iter());
                    self.http.get(u.as_str())
                }
            };
            let response = request
                .bearer_auth(self.token.expose())
                .send()
                .await
                .map_err(|e| self.transport(&e))?;
            let status = response.status().as_u16();
            if status == 429 {
                let wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let delay = wait.unwrap_or(Duration::from_secs(1));
                if attempt >= MAX_ATTEMPTS || delay > self.max_retry_after {
                    return Err(SlackError::RateLimited(wait));
                }
                debug!(method, retry_after = ?delay, "slack: rate-limited; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            if status >= 500 {
                if attempt >= MAX_ATTEMPTS {
                    return Err(SlackError::Status(status));
                }
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                continue;
            }
            if status != 200 {
                return Err(SlackError::Status(status));
            }
            let bytes = read_limited(response).await.map_err(|e| match e {
                ReadError::TooLarge => SlackError::Malformed("the answer is too large".into()),
                ReadError::Http(e) => self.transport(&e),
            })?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|_| SlackError::Malformed("not JSON".into()))?;
            return match v.get("ok").and_then(Value::as_bool) {
                Some(true) => Ok(v),
                Some(false) => Err(SlackError::Api(
                    v.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown_error")
                        .chars()
                        .take(100)
                        .collect(),
                )),
                None => Err(SlackError::Malformed("no `ok` field".into())),
            };
        }
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
