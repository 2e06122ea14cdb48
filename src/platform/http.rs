//! The one retrying send of the platform clients.
//!
//! [`Sender::send`] makes one request with the client's retry policy and
//! returns a typed result: a 2xx [`Answer`], or a [`CallFailure`] whose
//! [`FailureKind`] says whether trying again later may help:
//! - timeouts, connection failures and 5xx answers are
//!   [`FailureKind::Transient`]: retried here with doubling back-off;
//! - a 429, or a 403 that is a rate limit (`x-ratelimit-remaining: 0` with
//!   `x-ratelimit-reset`, or a `Retry-After`), is
//!   [`FailureKind::RateLimited`]: retried here after the wait the platform
//!   names (`Retry-After`, else until `x-ratelimit-reset`, else the
//!   back-off), unless that wait exceeds [`RetryPolicy::max_wait`];
//! - every other answer (a 4xx, a 3xx: redirects are never followed) is
//!   [`FailureKind::Definite`] and returned at once.
//!
//! GitHub and GitLab share this contract; only the platform's name and the
//! reading of its error `message` differ.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use time::OffsetDateTime;
use url::Url;

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
/// How much of a platform's `message` a detail may quote.
pub(crate) const MAX_MESSAGE_CHARS: usize = 200;

/// What a failed call means for the caller: whether answering again later
/// may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer (timeout, connection failure) or a 5xx: a later try may
    /// pass.
    Transient,
    /// A refusal a later try repeats: a 4xx other than a rate limit, an
    /// answer that could not be used, a call refused before it was sent, a
    /// platform that is not configured.
    Definite,
    /// The platform's rate limit, with the wait it named (or the back-off
    /// delay when it named none).
    RateLimited { retry_after: Duration },
}

impl FailureKind {
    /// Transient and rate-limited failures are worth another try; definite
    /// ones are not.
    pub fn retryable(self) -> bool {
        !matches!(self, FailureKind::Definite)
    }
}

/// A call that did not succeed. `detail` is short, secret-free and names
/// the platform's status and `message` when it answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct CallFailure {
    pub kind: FailureKind,
    /// HTTP status of the last answer, if one came.
    pub status: Option<u16>,
    /// The platform's own error message (one line, at most 200 characters).
    pub message: Option<String>,
    pub detail: String,
}

impl CallFailure {
    /// A call refused before it was sent (bad input, no key to sign with).
    pub(crate) fn refused(detail: impl Into<String>) -> Self {
        CallFailure {
            kind: FailureKind::Definite,
            status: None,
            message: None,
            detail: detail.into(),
        }
    }

    /// A 2xx answer whose body could not be used.
    pub(crate) fn malformed(platform: &str, status: u16, what: &str) -> Self {
        CallFailure {
            kind: FailureKind::Definite,
            status: Some(status),
            message: None,
            detail: format!("{platform} answered {status} with {what}"),
        }
    }

    /// The same failure, its detail prefixed with the step that failed
    /// (`review: GitHub answered 403: ...`).
    pub(crate) fn in_step(mut self, step: &str) -> Self {
        self.detail = format!("{step}: {}", self.detail);
        self
    }
}

/// How many times a call is tried, the first back-off delay (doubled after
/// each attempt, with ±20% jitter), and the longest rate-limit wait honoured
/// before an attempt (a longer one ends the call as
/// [`FailureKind::RateLimited`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_wait: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let mut byte = [0u8; 1];
        // A failed RNG only loses the jitter, never the retry.
        let spread = match aws_lc_rs::rand::fill(&mut byte) {
            Ok(()) => f64::from(byte[0]) / 255.0,
            Err(_) => 0.5,
        };
        nominal.mul_f64(0.8 + 0.4 * spread)
    }
}

/// A 2xx answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Reads a platform's error `message` out of a response body.
pub(crate) type MessageReader = fn(&[u8]) -> Option<String>;

/// The HTTP side of one platform client: the reqwest client (which never
/// follows a redirect, so a credential never leaves for another host), the
/// per-attempt timeout, the retry policy, the platform's name and its
/// message reader.
pub(crate) struct Sender {
    http: reqwest::Client,
    timeout: Duration,
    retry: RetryPolicy,
    platform: &'static str,
    message_of: MessageReader,
}

impl Sender {
    pub(crate) fn new(
        platform: &'static str,
        timeout: Duration,
        message_of: MessageReader,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender {
            http,
            timeout,
            retry: RetryPolicy::default(),
            platform,
            message_of,
        })
    }

    /// Replaces the retry policy (at least one attempt).
    pub(crate) fn set_retry_policy(&mut self, retry: RetryPolicy) {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            ..retry
        };
    }

    /// Sends `method url`, decorated per attempt by `decorate` (headers,
    /// credentials, body: a credential that expires is made fresh for each
    /// attempt), reading at most `max_body` bytes of the answer. Retries as
    /// the module documentation says; a `decorate` error ends the call.
    pub(crate) async fn send<F>(
        &self,
        method: Method,
        url: &Url,
        max_body: usize,
        decorate: F,
    ) -> Result<Answer, CallFailure>
    where
        F: Fn(RequestBuilder) -> Result<RequestBuilder, CallFailure>,
    {
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let request = decorate(self.http.request(method.clone(), url.clone()))?;
            let outcome = tokio::time::timeout(self.timeout, async {
                let mut response = request.send().await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = read_capped(&mut response, max_body).await?;
                Ok::<_, reqwest::Error>(Answer { status, headers, body })
            })
            .await;
            let (last, wait) = match outcome {
                Ok(Ok(answer)) if answer.status.is_success() => return Ok(answer),
                Ok(Ok(answer)) => {
                    let kind = classify(
                        answer.status,
                        &answer.headers,
                        OffsetDateTime::now_utc(),
                        self.retry.delay(attempt),
                    );
                    let wait = match kind {
                        FailureKind::Definite => None,
                        FailureKind::Transient => Some(self.retry.delay(attempt)),
                        FailureKind::RateLimited { retry_after } => {
                            (retry_after <= self.retry.max_wait).then_some(retry_after)
                        }
                    };
                    let last = Last::Answered {
                        status: answer.status.as_u16(),
                        message: (self.message_of)(&answer.body),
                        kind,
                    };
                    (last, wait)
                }
                Ok(Err(e)) => (Last::Transport(transport_cause(&e)), Some(self.retry.delay(attempt))),
                Err(_) => (Last::Transport("timed out"), Some(self.retry.delay(attempt))),
            };
            let Some(wait) = wait.filter(|_| attempt < attempts) else {
                return Err(last.into_failure(self.platform, attempt));
            };
            tracing::warn!(
                platform = self.platform,
                status = last.status(),
                attempt,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                path = url.path(),
                "platform call failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// The last attempt of a call, before it becomes a [`CallFailure`].
enum Last {
    Answered {
        status: u16,
        message: Option<String>,
        kind: FailureKind,
    },
    Transport(&'static str),
}

impl Last {
    fn status(&self) -> Option<u16> {
        match self {
            Last::Answered { status, .. } => Some(*status),
            Last::Transport(_) => None,
        }
    }

    fn into_failure(self, platform: &str, attempts: u32) -> CallFailure {
        let tries = if attempts > 1 {
            format!(" after {attempts} attempts")
        } else {
            String::new()
        };
        match self {
            Last::Answered { status, message, kind } => {
                let mut detail = format!("{platform} answered {status}{tries}");
                if let Some(m) = &message {
                    detail.push_str(": ");
                    detail.push_str(m);
                }
                if let FailureKind::RateLimited { retry_after } = kind {
                    detail.push_str(&format!(" (rate-limited; retry after {}s)", retry_after.as_secs()));
                }
                CallFailure {
                    kind,
                    status: Some(status),
                    message,
                    detail,
                }
            }
            Last::Transport(cause) => CallFailure {
                kind: FailureKind::Transient,
                status: None,
                message: None,
                detail: format!("{cause}{tries}"),
            },
        }
    }
}

fn transport_cause(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    }
}

/// The category of a non-2xx answer at `now`; `backoff` is the wait of a
/// rate limit that names none.
fn classify(status: StatusCode, headers: &HeaderMap, now: OffsetDateTime, backoff: Duration) -> FailureKind {
    let named = rate_limit_wait(headers, now);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return FailureKind::RateLimited {
            retry_after: named.unwrap_or(backoff),
        };
    }
    if status == StatusCode::FORBIDDEN
        && let Some(retry_after) = named
    {
        return FailureKind::RateLimited { retry_after };
    }
    if status.is_server_error() {
        FailureKind::Transient
    } else {
        FailureKind::Definite
    }
}

/// The wait a rate-limited answer names: `Retry-After` (seconds), else the
/// time until `x-ratelimit-reset` (unix seconds) when
/// `x-ratelimit-remaining` is 0.
fn rate_limit_wait(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset")?.parse::<i64>().ok()?;
        let secs = reset.saturating_sub(now.unix_timestamp()).max(0);
        return Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
    }
    None
}

/// Reads a response body up to `max` bytes; past the cap the rest is not
/// read (a platform's error message is short, and an oversized answer then
/// fails to parse and counts as malformed).
async fn read_capped(response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > max {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A platform's error text cleaned for a detail: control characters become
/// spaces, and it is cut to 200 characters. `None` when nothing is left.
pub(crate) fn clean_message(text: &str) -> Option<String> {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| truncate_chars(clean, MAX_MESSAGE_CHARS))
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let end = s.char_indices().nth(max.saturating_sub(1)).map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..end])
        }
    }
}

/// Appends percent-encoded `segments` to `base`'s path, keeping any path it
/// has (`https://ghe.example.com/api/v3` + `app` ->
/// `https://ghe.example.com/api/v3/app`), with or without a trailing slash.
pub(crate) fn join_api_path(base: &Url, segments: &[&str]) -> Url {
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
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn answers_are_classified_by_status_and_rate_limit_headers() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("now");
        let backoff = Duration::from_millis(200);
        let limited = |s: u64| FailureKind::RateLimited {
            retry_after: Duration::from_secs(s),
        };
        let cases: [(&str, u16, HeaderMap, FailureKind); 12] = [
            ("server error", 502, headers(&[]), FailureKind::Transient),
            ("unavailable", 503, headers(&[]), FailureKind::Transient),
            ("bad request", 400, headers(&[]), FailureKind::Definite),
            ("unauthorized", 401, headers(&[]), FailureKind::Definite),
            ("forbidden", 403, headers(&[]), FailureKind::Definite),
            (
                "forbidden with quota left",
                403,
                headers(&[("x-ratelimit-remaining", "12"), ("x-ratelimit-reset", "1800000030")]),
                FailureKind::Definite,
            ),
            ("not found", 404, headers(&[]), FailureKind::Definite),
            ("unprocessable", 422, headers(&[]), FailureKind::Definite),
            ("redirect", 302, headers(&[]), FailureKind::Definite),
            (
                "429 without a wait",
                429,
                headers(&[]),
                FailureKind::RateLimited { retry_after: backoff },
            ),
            ("429 retry-after", 429, headers(&[("retry-after", "7")]), limited(7)),
            (
                "403 primary rate limit",
                403,
                headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1800000030")]),
                limited(30),
            ),
        ];
        for (name, status, h, expected) in cases {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(classify(status, &h, now, backoff), expected, "{name}");
        }
        // A reset in the past is no wait at all.
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1799999000")]);
        assert_eq!(classify(StatusCode::FORBIDDEN, &past, now, backoff), limited(0));
    }

    #[test]
    fn only_definite_failures_are_final() {
        assert!(FailureKind::Transient.retryable());
        assert!(
            FailureKind::RateLimited {
                retry_after: Duration::from_secs(1)
            }
            .retryable()
        );
        assert!(!FailureKind::Definite.retryable());
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
}
