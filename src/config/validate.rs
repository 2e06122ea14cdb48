//! Validation: the raw serde shapes of [`super::raw`] into the types of
//! [`super::types`]. The validator collects every problem, each naming its
//! key, rather than stopping at the first. The integrations' tables are
//! validated in [`super::integrations`], secrets in [`super::secrets`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use url::Url;

use super::Secret;
use super::raw::{self, RawConfig, RawMatcher, RawSecret};
use super::types::*;

impl Config {
    /// Reads, parses and validates `path`. Relative paths inside the file
    /// (audit path, secret files, policies) are taken relative to the
    /// working directory, as the example commands run from the repository root.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = read_config(path)?;
        pointed(&text, Self::from_toml(&text, &|name| std::env::var(name).ok()))
    }

    /// Reads and validates `path` without resolving secrets (each becomes an
    /// empty placeholder). For commands that read only the audit trail, so
    /// an auditor needs the file but not the service's secrets.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigErrors> {
        let text = read_config(path)?;
        pointed(&text, Self::parse(&text, &|_| None, Some("")))
    }

    /// Reads and validates `path` resolving only the secrets of keys under
    /// `prefix` (e.g. `audit.anchor.`), from the process environment; the
    /// rest become empty placeholders. For `audit verify --anchor`, which
    /// needs the bucket's credentials and nothing else.
    pub fn load_with_secrets_under(path: &Path, prefix: &'static str) -> Result<Config, ConfigErrors> {
        let text = read_config(path)?;
        pointed(
            &text,
            Self::parse(&text, &|name| std::env::var(name).ok(), Some(prefix)),
        )
    }

    /// Parses and validates TOML text; `env` looks up environment variables
    /// (a parameter so tests need not touch the process environment).
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        Self::parse(text, env, None)
    }

    /// `only_secrets_under`: `None` resolves every secret; `Some(prefix)`
    /// only those of keys under `prefix` (`""`: none).
    fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        only_secrets_under: Option<&'static str>,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = super::pointing::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
        let mut v = Validator {
            errors: Vec::new(),
            env,
            skip_secrets: only_secrets_under.is_some(),
            secrets_under: only_secrets_under.unwrap_or(""),
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }
}

/// Gives each validation error the line and column of its key in the file,
/// where the key is written there (a missing key: its table's place).
fn pointed(text: &str, result: Result<Config, ConfigErrors>) -> Result<Config, ConfigErrors> {
    result.map_err(|mut errors| {
        for e in &mut errors.0 {
            if e.location.is_none() {
                e.location = super::pointing::locate(text, &e.key);
            }
        }
        errors
    })
}

fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}"),
        )])
    })
}

/// Collects every problem while turning raw shapes into validated ones.
pub(super) struct Validator<'a> {
    pub(super) errors: Vec<ConfigError>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) skip_secrets: bool,
    /// With `skip_secrets`, the keys whose secrets are resolved all the same.
    pub(super) secrets_under: &'static str,
}

/// The longest value a duration setting takes: a timeout of an outside
/// call or of shutdown is minutes at most; anything else (pending
/// timeouts, TTLs, ages, intervals) a year at most. Far-future values would
/// overflow time arithmetic and keep requests and records forever.
fn max_duration(key: &str) -> Duration {
    const MINUTE: u64 = 60;
    const DAY: u64 = 24 * 60 * MINUTE;
    let secs = if key.ends_with("request_timeout") || key.ends_with("signature_tolerance") {
        10 * MINUTE
    } else if key.ends_with("shutdown_timeout") {
        60 * MINUTE
    } else {
        366 * DAY
    };
    Duration::from_secs(secs)
}

impl Validator<'_> {
    pub(super) fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    pub(super) fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d > max_duration(key) => {
                    self.err(
                        key,
                        format!(
                            "`{s}` is longer than the most this setting takes ({})",
                            humantime::format_duration(max_duration(key))
                        ),
                    );
                    default
                }
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(key, "must be longer than zero");
                    default
                }
                Err(_) => {
                    self.err(
                        key,
                        format!("`{s}` is not a duration (examples: \"90s\", \"30m\", \"24h\")"),
                    );
                    default
                }
            },
        }
    }

    /// A duration like [`Self::duration`], and at most `max`.
    pub(super) fn bounded_duration(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let d = self.duration(key, raw, default);
        if d > max {
            self.err(key, format!("must be at most {}", humantime::format_duration(max)));
            return default;
        }
        d
    }

    /// An outside service's URL: https, or http on a loopback address only.
    pub(super) fn url(&mut self, key: &str, raw: &str) -> Option<Url> {
        let url = match Url::parse(raw) {
            Ok(u) => u,
            Err(e) => {
                self.err(key, format!("`{raw}` is not a URL: {e}"));
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.err(key, "must not carry credentials in the URL");
            return None;
        }
        match url.scheme() {
            "https" => Some(url),
            "http" if is_loopback(&url) => Some(url),
            "http" => {
                self.err(key, "must be https (plain http is allowed only on loopback addresses)");
                None
            }
            other => {
                self.err(key, format!("scheme `{other}` is not allowed; use https"));
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        let state = self.state(raw.state);
        let audit = self.audit(raw.audit, &state, &server.public_url);
        let github = raw.github.map(|g| self.github(g, server.dry_run));
        let gitlab = raw.gitlab.map(|g| self.gitlab(g, server.dry_run));
        let slack = raw.slack.and_then(|s| self.slack(s));
        let sso = raw.sso.and_then(|s| self.sso(s));
        let issuers = self.issuers(raw.issuers);
        let github = github.map(|mut g| {
            g.issuer = self.bind_issuer("github", &g.issuer, crate::domain::Platform::Github, &issuers);
            g
        });
        let gitlab = gitlab.map(|mut g| {
            g.issuer = self.bind_issuer("gitlab", &g.issuer, crate::domain::Platform::Gitlab, &issuers);
            g
        });
        let mut environments = BTreeMap::new();
        for (name, env) in raw.environments {
            if let Some(e) = self.environment(&name, env) {
                environments.insert(name, e);
            }
        }
        let policies = self.policies(raw.policies);
        if environments
            .values()
            .any(|e| e.reviews.required > 0 && e.reviews.via == ReviewVia::Slack)
            && slack.is_none()
        {
            self.err(
                "slack",
                "an environment requires reviews via Slack, but [slack] is not configured",
            );
        }
        if environments
            .values()
            .any(|e| e.reviews.required > 0 && e.reviews.via == ReviewVia::Sso)
            && sso.is_none()
        {
            self.err(
                "sso",
                "an environment requires reviews via SSO, but [sso] is not configured",
            );
        }
        self.break_glass_needs(&environments, slack.is_some(), sso.is_some());
        if environments.values().any(|e| e.verdict.mode == VerdictMode::Evaluated)
            && policies.paths.is_empty()
            && policies.bundles.is_empty()
        {
            self.err(
                "policies.paths",
                "an environment evaluates Rego verdicts, but no policy paths or bundles are configured",
            );
        }
        Config {
            server,
            state,
            audit,
            github,
            gitlab,
            slack,
            sso,
            issuers,
            environments,
            policies,
        }
    }

    fn server(&mut self, raw: raw::RawServer) -> ServerConfig {
        let listen_raw = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_raw.parse().unwrap_or_else(|_| {
            self.err(
                "server.listen",
                format!("`{listen_raw}` is not an address such as 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let public_raw = raw.public_url.unwrap_or_else(|| format!("http://{listen}"));
        let public_url = match Url::parse(&public_raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                self.err("server.public_url", format!("`{public_raw}` is not an http(s) URL"));
                Url::parse("http://127.0.0.1:8080").expect("static URL")
            }
        };
        let read_token = raw
            .read_token
            .as_ref()
            .and_then(|s| self.secret("server.read_token", s));
        let max_body_bytes = raw.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body_bytes < 1024 {
            self.err("server.max_body_bytes", "must be at least 1024");
        }
        let log_format = match raw.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.err(
                    "server.log_format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                );
                LogFormat::Text
            }
        };
        let shutdown_timeout = self.duration(
            "server.shutdown_timeout",
            raw.shutdown_timeout.as_deref(),
            Duration::from_secs(30),
        );
        let rate_limit = self.rate_limit(raw.rate_limit.as_ref());
        let trusted_proxy_header = raw.trusted_proxy_header.and_then(|h| {
            let name = h.trim().to_ascii_lowercase();
            match actix_web::http::header::HeaderName::from_bytes(name.as_bytes()) {
                Ok(_) => Some(name),
                Err(_) => {
                    self.err("server.trusted_proxy_header", format!("`{h}` is not a header name"));
                    None
                }
            }
        });
        let client_request_timeout = self.bounded_duration(
            "server.client_request_timeout",
            raw.client_request_timeout.as_deref(),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let client_disconnect_timeout = self.bounded_duration(
            "server.client_disconnect_timeout",
            raw.client_disconnect_timeout.as_deref(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let keep_alive = self.bounded_duration(
            "server.keep_alive",
            raw.keep_alive.as_deref(),
            Duration::from_secs(5),
            Duration::from_secs(300),
        );
        ServerConfig {
            listen,
            public_url,
            dry_run: raw.dry_run.unwrap_or(false),
            read_token,
            max_body_bytes,
            log_format,
            shutdown_timeout,
            rate_limit,
            trusted_proxy_header,
            client_request_timeout,
            client_disconnect_timeout,
            keep_alive,
            metrics_read_token: raw.metrics_read_token.unwrap_or(false),
        }
    }

    /// `server.rate_limit`: on by default; `false` turns it off; a table
    /// sets `per_second` (more than 0, at most 100000) and `burst` (1 to
    /// 1000000; twice `per_second` when left out).
    fn rate_limit(&mut self, raw: Option<&toml::Value>) -> Option<RateLimit> {
        const KEY: &str = "server.rate_limit";
        let table = match raw {
            None | Some(toml::Value::Boolean(true)) => return Some(RateLimit::default()),
            Some(toml::Value::Boolean(false)) => return None,
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                self.err(KEY, "must be true, false or { per_second = 20, burst = 40 }");
                return Some(RateLimit::default());
            }
        };
        let mut limit = RateLimit::default();
        for key in table.keys().filter(|k| !matches!(k.as_str(), "per_second" | "burst")) {
            self.err(format!("{KEY}.{key}"), "unknown key (expected per_second, burst)");
        }
        let per_second = match table.get("per_second") {
            None => None,
            Some(toml::Value::Integer(n)) => Some(*n as f64),
            Some(toml::Value::Float(x)) => Some(*x),
            Some(_) => Some(f64::NAN),
        };
        if let Some(rate) = per_second {
            if rate.is_finite() && rate > 0.0 && rate <= 100_000.0 {
                limit.per_second = rate;
                limit.burst = (rate * 2.0).ceil().max(1.0) as u32;
            } else {
                self.err(
                    format!("{KEY}.per_second"),
                    "must be a number above 0 and at most 100000",
                );
            }
        }
        match table.get("burst") {
            None => {}
            Some(toml::Value::Integer(n)) if (1..=1_000_000).contains(n) => limit.burst = *n as u32,
            Some(_) => self.err(format!("{KEY}.burst"), "must be a whole number from 1 to 1000000"),
        }
        Some(limit)
    }

    fn state(&mut self, raw: raw::RawState) -> StateConfig {
        let backend = match raw.backend.as_deref().unwrap_or("memory") {
            "memory" => StateBackend::Memory,
            "redis" => {
                let url = match &raw.url {
                    None => "redis://127.0.0.1:6379/0".to_string(),
                    Some(RawSecret::Inline(u)) => {
                        if crate::redis_conn::url_has_password(u) {
                            self.err(
                                "state.url",
                                "a URL with a password is a secret: use { env = \"VAR\" } or { file = \"path\" }",
                            );
                        }
                        u.clone()
                    }
                    Some(secret) => self
                        .secret("state.url", secret)
                        .map(|s| s.expose().to_string())
                        .unwrap_or_default(),
                };
                if let Err(e) = crate::redis_conn::check_url(&url)
                    && !self.skip_secrets
                {
                    self.err("state.url", e.to_string());
                }
                StateBackend::Redis {
                    url: Secret::new(url),
                    key_prefix: raw.key_prefix.clone().unwrap_or_else(|| "portcullis:".into()),
                }
            }
            other => {
                self.err(
                    "state.backend",
                    format!("`{other}` is not one of \"memory\", \"redis\""),
                );
                StateBackend::Memory
            }
        };
        if matches!(backend, StateBackend::Memory) && (raw.url.is_some() || raw.key_prefix.is_some()) {
            self.err("state.url", "only applies to the \"redis\" backend");
        }
        let min_replicas = match raw.min_replicas.map(u32::try_from) {
            None => 0,
            Some(Ok(n)) if n <= 100 => n,
            Some(_) => {
                self.err("state.min_replicas", "must be a whole number from 0 to 100");
                0
            }
        };
        if matches!(backend, StateBackend::Memory) && raw.min_replicas.is_some() {
            self.err("state.min_replicas", "only applies to the \"redis\" backend");
        }
        let lease_ttl = self.duration("state.lease_ttl", raw.lease_ttl.as_deref(), Duration::from_secs(60));
        if lease_ttl < Duration::from_secs(1) {
            self.err("state.lease_ttl", "must be at least 1s");
        }
        StateConfig {
            backend,
            attestation_ttl: self.duration(
                "state.attestation_ttl",
                raw.attestation_ttl.as_deref(),
                Duration::from_secs(6 * 3600),
            ),
            verdict_ttl: self.duration(
                "state.verdict_ttl",
                raw.verdict_ttl.as_deref(),
                Duration::from_secs(7 * 24 * 3600),
            ),
            lease_ttl,
            min_replicas,
        }
    }

    fn matcher(&mut self, key: &str, raw: &RawMatcher) -> Option<ClaimMatcher> {
        match raw {
            RawMatcher::Exact(s) => Some(ClaimMatcher::Exact(s.clone())),
            RawMatcher::Bool(b) => Some(ClaimMatcher::Exact(b.to_string())),
            RawMatcher::Pattern(p) => match Regex::new(&format!("^(?:{})$", p.pattern)) {
                Ok(r) => Some(ClaimMatcher::Pattern(r)),
                Err(e) => {
                    self.err(key, format!("invalid pattern: {e}"));
                    None
                }
            },
            RawMatcher::Any(list) => {
                if list.is_empty() {
                    self.err(key, "an empty list matches nothing");
                    return None;
                }
                let mut out = Vec::new();
                for (i, m) in list.iter().enumerate() {
                    out.push(self.matcher(&format!("{key}[{i}]"), m)?);
                }
                Some(ClaimMatcher::Any(out))
            }
        }
    }

    pub(super) fn claim_rule(&mut self, key: &str, raw: &BTreeMap<String, RawMatcher>) -> ClaimRule {
        let mut rule = ClaimRule::new();
        for (claim, m) in raw {
            if let Some(m) = self.matcher(&format!("{key}.{claim}"), m) {
                rule.insert(claim.clone(), m);
            }
        }
        rule
    }
}

/// Is the URL's host a loopback address (127.0.0.0/8, ::1) or `localhost`?
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}
