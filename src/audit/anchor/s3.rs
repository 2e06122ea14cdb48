//! The anchor's S3 client: path-style URLs (`endpoint/bucket/key`) by
//! default, or virtual-hosted ones (`bucket.endpoint/key`); every request
//! signed with SigV4 over its whole body, sent through the crate's
//! no-redirect client with a timeout per request, and its answer read whole.
//!
//! Keys given to [`S3Anchor`] are relative to the configured prefix, which
//! it prepends; [`S3Anchor::list`] strips it again.

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use time::OffsetDateTime;
use url::Url;

use super::sigv4::{self, EMPTY_SHA256, SignedRequest, Signer};
use super::{AnchorError, PutOutcome, xml};
use crate::config::{AnchorConfig, Secret};
use crate::crypto::{sha256, sha256_hex};

/// How long one request to S3 may take, whole, unless set otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest key S3 takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// What an [`S3Anchor`] needs. `Debug` redacts both keys.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The endpoint's origin (scheme, host, port; no path).
    pub endpoint: Url,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key: empty, or ending in `/` (added if missing).
    pub prefix: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// Each object's COMPLIANCE retention, from the time it is written.
    pub retain: Duration,
    pub path_style: bool,
    /// The timeout of each whole request.
    pub request_timeout: Duration,
    /// `max-keys` of each listing page; S3's own (1000) when `None`.
    pub list_page_size: Option<u32>,
}

impl S3Settings {
    /// The settings of a validated `[audit.anchor]`, with the default
    /// request timeout and page size.
    pub fn from_config(c: &AnchorConfig) -> S3Settings {
        S3Settings {
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            bucket: c.bucket.clone(),
            prefix: c.prefix.clone(),
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            retain: c.retain,
            path_style: c.path_style,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            list_page_size: None,
        }
    }
}

/// A client for one bucket (and prefix) of write-once objects.
#[derive(Debug)]
pub struct S3Anchor {
    http: reqwest::Client,
    settings: S3Settings,
    /// `scheme://host[:port]`, the bucket's host when virtual-hosted.
    pub(super) origin: String,
    /// The `Host` header the requests carry (and sign).
    pub(super) host: String,
    /// `/bucket` when path-style, else empty.
    pub(super) bucket_path: String,
}

/// An answer, read whole.
pub(super) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `x-amz-delete-marker: true`: the key's current version is a delete
    /// marker.
    pub delete_marker: bool,
}

fn invalid(reason: impl Into<String>) -> AnchorError {
    AnchorError::Invalid { reason: reason.into() }
}

fn protocol(what: &str, reason: &str) -> AnchorError {
    AnchorError::Protocol {
        reason: format!("{what}: {reason}"),
    }
}

impl S3Anchor {
    pub fn new(mut settings: S3Settings) -> Result<S3Anchor, AnchorError> {
        let endpoint = &settings.endpoint;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid(format!("the endpoint `{endpoint}` is not http(s)")));
        }
        let Some(endpoint_host) = endpoint.host_str() else {
            return Err(invalid(format!("the endpoint `{endpoint}` has no host")));
        };
        if !settings.path_style && !matches!(endpoint.host(), Some(url::Host::Domain(_))) {
            return Err(invalid("virtual-hosted addressing needs a host name, not an address"));
        }
        if settings.bucket.is_empty() || settings.bucket.contains('/') {
            return Err(invalid(format!("`{}` is not a bucket name", settings.bucket)));
        }
        if !settings.prefix.is_empty() && !settings.prefix.ends_with('/') {
            settings.prefix.push('/');
        }
        if settings.prefix.starts_with('/') || has_dot_segment(&settings.prefix) {
            return Err(invalid(format!("`{}` is not a key prefix", settings.prefix)));
        }
        let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
        let host = if settings.path_style {
            format!("{endpoint_host}{port}")
        } else {
            format!("{}.{endpoint_host}{port}", settings.bucket)
        };
        let origin = format!("{}://{host}", endpoint.scheme());
        let bucket_path = if settings.path_style {
            format!("/{}", sigv4::uri_encode(&settings.bucket, true))
        } else {
            String::new()
        };
        let http = crate::outbound::client_with_timeout(settings.request_timeout)
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(S3Anchor {
            http,
            settings,
            origin,
            host,
            bucket_path,
        })
    }

    /// The object's full key in the bucket: the prefix, then `key`. A key
    /// is not empty, does not start with `/`, has no `.` or `..` segment
    /// (an HTTP client would resolve them away) and fits S3's 1024 bytes.
    pub fn object_key(&self, key: &str) -> Result<String, AnchorError> {
        let full = format!("{}{key}", self.settings.prefix);
        if key.is_empty() || key.starts_with('/') || has_dot_segment(key) || full.len() > MAX_KEY_BYTES {
            return Err(invalid(format!("`{key}` is not an object key")));
        }
        Ok(full)
    }

    /// Writes `body` at `key` under COMPLIANCE retention until now +
    /// `retain`, never over an existing object: if `key` is taken, its bytes
    /// decide between [`PutOutcome::AlreadyIdentical`] and
    /// [`AnchorError::Conflict`]; a key hidden by a delete marker is
    /// [`AnchorError::Hidden`], and nothing is written beside it.
    ///
    /// The PUT carries `If-None-Match: *`, which S3 answers with 412 when
    /// the key exists, atomically. A GET first also catches an
    /// S3-compatible server that ignores the condition (only a concurrent
    /// writer could then slip between the two), and answers a retry of a
    /// landed write without a PUT.
    pub async fn put_once(&self, key: &str, body: &[u8], content_type: &str) -> Result<PutOutcome, AnchorError> {
        let object = self.object_key(key)?;
        let path = self.object_path(&object);
        if reqwest::header::HeaderValue::from_str(content_type).is_err() {
            return Err(invalid(format!("`{content_type}` is not a header value")));
        }
        if let Some(existing) = self.get_object(&object, &path).await? {
            return same_or_conflict(&object, &existing, body);
        }
        let until = retain_until(OffsetDateTime::now_utc(), self.settings.retain)?;
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256(body));
        let headers = [
            ("content-type", content_type),
            ("if-none-match", "*"),
            ("x-amz-checksum-sha256", checksum.as_str()),
            ("x-amz-object-lock-mode", "COMPLIANCE"),
            ("x-amz-object-lock-retain-until-date", until.as_str()),
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
        ];
        let what = format!("PUT {object}");
        let answer = self
            .send(Method::PUT, &path, &[], &headers, body.to_vec(), &what)
            .await?;
        match answer.status {
            200..=299 => Ok(PutOutcome::Written),
            412 => self.compare(&object, &path, body).await,
            _ => Err(failure(&what, &answer)),
        }
    }

    /// The bytes at `key`, or `None` when there is no such key;
    /// [`AnchorError::Hidden`] when a delete marker hides it.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, AnchorError> {
        let object = self.object_key(key)?;
        let path = self.object_path(&object);
        self.get_object(&object, &path).await
    }

    /// Every key under `prefix` (relative to the configured prefix, as
    /// [`Self::put_once`] takes them), in S3's order (by UTF-8 bytes),
    /// through every page of ListObjectsV2.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, AnchorError> {
        let full = format!("{}{prefix}", self.settings.prefix);
        let path = if self.bucket_path.is_empty() {
            "/".to_string()
        } else {
            self.bucket_path.clone()
        };
        let what = format!("LIST {full}");
        let page_size = self.settings.list_page_size.map(|n| n.to_string());
        let mut token: Option<String> = None;
        let mut keys = Vec::new();
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", full.as_str())];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            if let Some(n) = &page_size {
                query.push(("max-keys", n));
            }
            let answer = self.send(Method::GET, &path, &query, &[], Vec::new(), &what).await?;
            if !(200..=299).contains(&answer.status) {
                return Err(failure(&what, &answer));
            }
            let text = String::from_utf8(answer.body).map_err(|_| protocol(&what, "the listing is not UTF-8"))?;
            let page = xml::all(&text, "Key").ok_or_else(|| protocol(&what, "the listing's keys are malformed"))?;
            for key in page {
                match key.strip_prefix(&self.settings.prefix) {
                    Some(rel) => keys.push(rel.to_string()),
                    None => return Err(protocol(&what, "the listing holds a key outside the prefix")),
                }
            }
            if xml::first(&text, "IsTruncated").as_deref() != Some("true") {
                return Ok(keys);
            }
            let next = xml::first(&text, "NextContinuationToken")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| protocol(&what, "a truncated listing without a continuation token"))?;
            if token.as_deref() == Some(next.as_str()) {
                return Err(protocol(&what, "the listing repeats its continuation token"));
            }
            token = Some(next);
        }
    }

    /// `/bucket/key` (path-style) or `/key`, the key URI-encoded.
    fn object_path(&self, object: &str) -> String {
        format!("{}/{}", self.bucket_path, sigv4::uri_encode(object, false))
    }

    async fn get_object(&self, object: &str, path: &str) -> Result<Option<Vec<u8>>, AnchorError> {
        let what = format!("GET {object}");
        let answer = self.send(Method::GET, path, &[], &[], Vec::new(), &what).await?;
        match answer.status {
            200..=299 => Ok(Some(answer.body)),
            404 if answer.delete_marker => Err(AnchorError::Hidden {
                key: object.to_string(),
            }),
            404 => match error_code(&answer.body) {
                None => Ok(None),
                Some(code) if code == "NoSuchKey" => Ok(None),
                Some(code) => Err(AnchorError::Refused { status: 404, code }),
            },
            _ => Err(failure(&what, &answer)),
        }
    }

    /// The key was taken at the PUT: its bytes decide.
    async fn compare(&self, object: &str, path: &str, body: &[u8]) -> Result<PutOutcome, AnchorError> {
        match self.get_object(object, path).await? {
            Some(existing) => same_or_conflict(object, &existing, body),
            None => Err(AnchorError::Transient {
                reason: format!("PUT {object}: the key was reported taken, then missing"),
            }),
        }
    }

    /// Signs and sends one request; `headers` are the request's own, signed
    /// along with `host`, `x-amz-date` and `x-amz-content-sha256`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
        what: &str,
    ) -> Result<Answer, AnchorError> {
        let amz_date = sigv4::amz_date(OffsetDateTime::now_utc());
        let payload = if body.is_empty() {
            EMPTY_SHA256.to_string()
        } else {
            sha256_hex(&body)
        };
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", self.host.as_str()),
            ("x-amz-content-sha256", payload.as_str()),
            ("x-amz-date", amz_date.as_str()),
        ];
        signed.extend_from_slice(headers);
        let signer = Signer {
            access_key_id: self.settings.access_key_id.expose(),
            secret_access_key: self.settings.secret_access_key.expose(),
            region: &self.settings.region,
            service: "s3",
        };
        let authorization = signer.authorization(
            &amz_date,
            &SignedRequest {
                method: method.as_str(),
                path,
                query,
                headers: &signed,
                payload_sha256: &payload,
            },
        );
        let query = sigv4::canonical_query(query);
        let url = if query.is_empty() {
            format!("{}{path}", self.origin)
        } else {
            format!("{}{path}?{query}", self.origin)
        };
        let is_put = method == Method::PUT;
        // The Host header is the client's own, from the URL: the same value.
        let mut request = self.http.request(method, url);
        for (name, value) in &signed[1..] {
            request = request.header(*name, *value);
        }
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
        if is_put {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| transport(what, &e))?;
        let status = response.status().as_u16();
        let delete_marker = response
            .headers()
            .get("x-amz-delete-marker")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = response.bytes().await.map_err(|e| transport(what, &e))?;
        Ok(Answer {
            status,
            body: body.to_vec(),
            delete_marker,
        })
    }
}

/// Equal bytes are an earlier attempt's; other bytes are a fork.
fn same_or_conflict(object: &str, existing: &[u8], body: &[u8]) -> Result<PutOutcome, AnchorError> {
    if existing == body {
        Ok(PutOutcome::AlreadyIdentical)
    } else {
        Err(AnchorError::Conflict {
            key: object.to_string(),
        })
    }
}

/// Does a key or prefix hold a `.` or `..` segment?
fn has_dot_segment(key: &str) -> bool {
    key.split('/').any(|s| s == "." || s == "..")
}

/// The retain-until date of an object written at `now`: `now + retain`,
/// rounded up to the whole second, in RFC 3339 UTC (`2031-05-01T12:00:00Z`).
pub(super) fn retain_until(now: OffsetDateTime, retain: Duration) -> Result<String, AnchorError> {
    let out_of_range = || invalid("the retention is out of range");
    let retain = time::Duration::try_from(retain).map_err(|_| out_of_range())?;
    let until = now.checked_add(retain).ok_or_else(out_of_range)?;
    let until = if until.nanosecond() == 0 {
        until
    } else {
        until
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.checked_add(time::Duration::SECOND))
            .ok_or_else(out_of_range)?
    };
    if until.year() > 9999 {
        return Err(out_of_range());
    }
    Ok(crate::time_fmt::rfc3339(until))
}

/// The S3 error `<Code>` of an answer's body: letters, digits and dots only.
fn error_code(body: &[u8]) -> Option<String> {
    xml::first(&String::from_utf8_lossy(body), "Code")
        .filter(|c| !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
}

/// The error of an answer that is not a success: transient for 5xx, 408,
/// 429 and the codes S3 uses for "try again"; refused otherwise.
pub(super) fn failure(what: &str, answer: &Answer) -> AnchorError {
    let status = answer.status;
    let code = error_code(&answer.body).unwrap_or_else(|| {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown")
            .replace(' ', "")
    });
    let retry = status >= 500
        || matches!(status, 408 | 429)
        || matches!(
            code.as_str(),
            "SlowDown" | "RequestTimeout" | "OperationAborted" | "ConditionalRequestConflict" | "InternalError"
        );
    if retry {
        AnchorError::Transient {
            reason: format!("{what}: HTTP {status} {code}"),
        }
    } else {
        AnchorError::Refused { status, code }
    }
}

/// A request that got no answer: timed out, or no connection.
fn transport(what: &str, e: &reqwest::Error) -> AnchorError {
    let mut reason = if e.is_timeout() {
        format!("{what}: timed out")
    } else if e.is_connect() {
        format!("{what}: cannot connect")
    } else {
        format!("{what}: the exchange failed")
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(&format!(": {s}"));
        source = s.source();
    }
    AnchorError::Transient { reason }
}
