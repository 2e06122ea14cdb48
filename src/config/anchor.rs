//! `[audit.anchor]`: where signed checkpoints of the audit trail, and the
//! records they cover, are copied for write-once keeping (S3-compatible
//! storage with Object Lock in COMPLIANCE mode). Its raw shape, its
//! validated settings and their validation live here together.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::Secret;
use super::raw::RawSecret;
use super::validate::Validator;

const DAY: u64 = 24 * 3600;

/// `[audit.anchor]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnchor {
    pub kind: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub access_key_id: Option<RawSecret>,
    pub secret_access_key: Option<RawSecret>,
    pub retain: Option<String>,
    pub max_anchor_lag: Option<String>,
    pub path_style: Option<bool>,
}

/// The kind of write-once store. S3 (and S3-compatible servers) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorKind {
    S3,
}

/// The validated `[audit.anchor]`.
#[derive(Debug, Clone)]
pub struct AnchorConfig {
    pub kind: AnchorKind,
    /// The S3 endpoint's origin (`https://s3.eu-west-1.amazonaws.com`);
    /// plain http only on a loopback address.
    pub endpoint: Url,
    pub region: String,
    pub bucket: String,
    /// Prepended to every object key: empty, or ending in `/`.
    pub prefix: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// How long each object is kept under COMPLIANCE retention (at least a
    /// day; six years by default).
    pub retain: Duration,
    /// How far anchoring may fall behind the trail before it is reported.
    pub max_anchor_lag: Duration,
    /// `endpoint/bucket/key` URLs (the default) rather than
    /// `bucket.endpoint/key`.
    pub path_style: bool,
}

impl Validator<'_> {
    pub(super) fn anchor(&mut self, raw: RawAnchor) -> Option<AnchorConfig> {
        const KEY: &str = "audit.anchor";
        let kind = match raw.kind.as_deref() {
            Some("s3") => Some(AnchorKind::S3),
            Some(other) => {
                self.err(format!("{KEY}.kind"), format!("`{other}` is not one of \"s3\""));
                None
            }
            None => {
                self.err(format!("{KEY}.kind"), "is required (\"s3\")");
                None
            }
        };
        let endpoint = match raw.endpoint.as_deref() {
            Some(e) => self.url(&format!("{KEY}.endpoint"), e).and_then(|u| {
                if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
                    self.err(
                        format!("{KEY}.endpoint"),
                        format!("`{e}` must be an origin only, such as https://s3.eu-west-1.amazonaws.com"),
                    );
                    return None;
                }
                Some(u)
            }),
            None => {
                self.err(format!("{KEY}.endpoint"), "is required");
                None
            }
        };
        let region = raw.region.filter(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if region.is_none() {
            self.err(
                format!("{KEY}.region"),
                "is required: a region name such as \"eu-west-1\" (lower-case letters, digits and `-`)",
            );
        }
        let path_style = raw.path_style.unwrap_or(true);
        let bucket = self.bucket(raw.bucket, path_style);
        let prefix = match raw.prefix {
            None => String::new(),
            Some(p) if p.starts_with('/') => {
                self.err(format!("{KEY}.prefix"), format!("`{p}` must not start with `/`"));
                String::new()
            }
            Some(p) if p.split('/').any(|s| s == "." || s == "..") => {
                self.err(
                    format!("{KEY}.prefix"),
                    format!("`{p}` must not hold `.` or `..` segments"),
                );
                String::new()
            }
            Some(p) if p.is_empty() || p.ends_with('/') => p,
            Some(p) => format!("{p}/"),
        };
        let (access_key_id, secret_access_key) = self.anchor_credentials(&raw.access_key_id, &raw.secret_access_key);
        let retain = self.retain(raw.retain.as_deref());
        let max_anchor_lag = self.duration(
            &format!("{KEY}.max_anchor_lag"),
            raw.max_anchor_lag.as_deref(),
            Duration::from_secs(300),
        );
        Some(AnchorConfig {
            kind: kind?,
            endpoint: endpoint?,
            region: region?,
            bucket: bucket?,
            prefix,
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            retain,
            max_anchor_lag,
            path_style,
        })
    }

    /// An S3 bucket name: 3 to 63 lower-case letters, digits, `.` and `-`,
    /// starting and ending with a letter or digit; without dots when
    /// addressed as a host name (TLS certificates do not cover them).
    fn bucket(&mut self, raw: Option<String>, path_style: bool) -> Option<String> {
        const KEY: &str = "audit.anchor.bucket";
        let Some(b) = raw else {
            self.err(KEY, "is required");
            return None;
        };
        let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            && edge(b.bytes().next())
            && edge(b.bytes().last());
        if !valid {
            self.err(
                KEY,
                format!("`{b}` is not a bucket name (3 to 63 lower-case letters, digits, `.` and `-`)"),
            );
            return None;
        }
        if !path_style && b.contains('.') {
            self.err(
                KEY,
                format!("`{b}` holds dots, which cannot be a host name under TLS: keep path_style = true"),
            );
            return None;
        }
        Some(b)
    }

    /// The key pair: both from `{ env }`/`{ file }`, or, when neither is
    /// set, from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    fn anchor_credentials(
        &mut self,
        id: &Option<RawSecret>,
        secret: &Option<RawSecret>,
    ) -> (Option<Secret>, Option<Secret>) {
        const ID: &str = "audit.anchor.access_key_id";
        const SECRET: &str = "audit.anchor.secret_access_key";
        match (id, secret) {
            (Some(i), Some(s)) => (self.secret(ID, i), self.secret(SECRET, s)),
            (Some(i), None) => {
                self.err(SECRET, "is required when access_key_id is set");
                (self.secret(ID, i), None)
            }
            (None, Some(s)) => {
                self.err(ID, "is required when secret_access_key is set");
                (None, self.secret(SECRET, s))
            }
            (None, None) if self.skips("audit.anchor.access_key_id") => (Some(Secret::new("")), Some(Secret::new(""))),
            (None, None) => {
                let from_env = |v: &Self, name: &str| (v.env)(name).filter(|s| !s.is_empty()).map(Secret::new);
                let pair = (
                    from_env(self, "AWS_ACCESS_KEY_ID"),
                    from_env(self, "AWS_SECRET_ACCESS_KEY"),
                );
                if pair.0.is_none() || pair.1.is_none() {
                    self.err(
                        "audit.anchor.access_key_id",
                        "no S3 credentials: set access_key_id and secret_access_key ({ env = \"VAR\" } or \
                         { file = \"path\" }), or the environment variables AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY",
                    );
                }
                pair
            }
        }
    }

    /// `retain`: at least a day, at most 100 years; six years by default.
    fn retain(&mut self, raw: Option<&str>) -> Duration {
        const KEY: &str = "audit.anchor.retain";
        let default = Duration::from_secs(2190 * DAY);
        let Some(s) = raw else { return default };
        match humantime::parse_duration(s) {
            Ok(d) if d < Duration::from_secs(DAY) => {
                self.err(KEY, format!("`{s}` is shorter than a day"));
                default
            }
            Ok(d) if d > Duration::from_secs(36500 * DAY) => {
                self.err(KEY, format!("`{s}` is longer than 100 years"));
                default
            }
            Ok(d) => d,
            Err(_) => {
                self.err(
                    KEY,
                    format!("`{s}` is not a duration (examples: \"2190d\", \"7years\")"),
                );
                default
            }
        }
    }
}

#[cfg(test)]
#[path = "anchor_tests.rs"]
mod tests;
