//! `redis+sentinel://[user:pass@]host1:port1,host2:port2/MASTER_NAME[/DB]`:
//! the sentinels to ask, the name of the master they watch, and the database
//! and credentials for the Redis servers. Parsed by hand (the `url` crate
//! takes one host per URL). Errors never quote the URL: a password with an
//! unescaped `/` or `@` could otherwise land in a message.

use std::fmt;

pub(crate) const SCHEME: &str = "redis+sentinel://";

/// A sentinel's port when the URL gives none.
pub(crate) const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A parsed `redis+sentinel://` URL. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// Each sentinel's host (an IPv6 address without brackets) and port.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The master's name, as in the sentinels' `sentinel monitor NAME …`.
    pub(crate) master: String,
    pub(crate) db: i64,
    /// For the Redis servers (master and replicas), not the sentinels.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a `[state] url` is not one portcullis can use. The text names the
/// part at fault, never the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    #[error("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")]
    Scheme,
    #[error(
        "a redis+sentinel:// URL names the master after the sentinels: redis+sentinel://host:port,…/MASTER_NAME[/DB]"
    )]
    NoMaster,
    #[error("a redis+sentinel:// URL names at least one sentinel (host:port, comma-separated)")]
    NoSentinel,
    #[error("sentinel {0} of the redis+sentinel:// URL is not host:port (a port from 1 to 65535)")]
    Sentinel(usize),
    #[error(
        "the master name of the redis+sentinel:// URL has a character that is not a letter, digit, `.`, `_` or `-`"
    )]
    MasterName,
    #[error("the database of the redis+sentinel:// URL (after the master name) is not a number from 0 to 65535")]
    Db,
    #[error("a redis+sentinel:// URL has nothing after the database")]
    TrailingPath,
    #[error("a redis+sentinel:// URL takes no query (`?`) or fragment (`#`)")]
    Query,
    #[error("the user or password of the redis+sentinel:// URL is not valid percent-encoding of UTF-8")]
    Credentials,
}

/// `url` starts with the sentinel scheme (in any case).
pub(crate) fn is_sentinel(url: &str) -> bool {
    url.get(..SCHEME.len()).is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
}

impl SentinelUrl {
    pub(crate) fn parse(url: &str) -> Result<SentinelUrl, UrlError> {
        if !is_sentinel(url) {
            return Err(UrlError::Scheme);
        }
        let rest = &url[SCHEME.len()..];
        let (authority, path) = split_authority(rest);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if path.is_some_and(|p| p.contains(['?', '#'])) || hosts.contains(['?', '#']) {
            return Err(UrlError::Query);
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (non_empty(decode(user)?), non_empty(decode(pass)?))
            }
        };
        if hosts.is_empty() {
            return Err(UrlError::NoSentinel);
        }
        let sentinels = hosts
            .split(',')
            .enumerate()
            .map(|(i, h)| sentinel(h).ok_or(UrlError::Sentinel(i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(path) = path else {
            return Err(UrlError::NoMaster);
        };
        let mut segments = path.split('/');
        let master = segments.next().unwrap_or_default();
        if master.is_empty() {
            return Err(UrlError::NoMaster);
        }
        if !master
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(UrlError::MasterName);
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => d.parse::<u16>().map_err(|_| UrlError::Db)?.into(),
            Some(_) => return Err(UrlError::Db),
        };
        if segments.any(|s| !s.is_empty()) {
            return Err(UrlError::TrailingPath);
        }
        Ok(SentinelUrl {
            sentinels,
            master: master.to_string(),
            db,
            username,
            password,
        })
    }
}

/// Whether a sentinel URL carries a password (checked even when the rest
/// does not parse, so that an inline secret is always reported).
pub(crate) fn has_password(url: &str) -> bool {
    if !is_sentinel(url) {
        return false;
    }
    let (authority, _) = split_authority(&url[SCHEME.len()..]);
    authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .is_some_and(|(_, pass)| !pass.is_empty())
}

/// The authority (up to the first `/` after any `@`) and the path after it.
fn split_authority(rest: &str) -> (&str, Option<&str>) {
    // A `/` inside the credentials belongs to them only when escaped; a
    // literal one still must not cut the password into the path.
    let after_at = rest.rfind('@').map_or(0, |i| i + 1);
    match rest[after_at..].find('/') {
        Some(i) => (&rest[..after_at + i], Some(&rest[after_at + i + 1..])),
        None => (rest, None),
    }
}

fn sentinel(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.')) {
            return None;
        }
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(valid) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => DEFAULT_SENTINEL_PORT,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p > 0)?
        }
        Some(_) => return None,
    };
    Some((host.to_string(), port))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Percent-decoding of a user or password.
fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UrlError::Credentials)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(UrlError::Credentials);
            }
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::Credentials)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Credentials)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Credentials)
}
