//! Configuration: parsed strictly from TOML (unknown keys fail), then
//! validated as a whole. Every error names its key; `load` reports all of
//! them at once. Secrets are resolved here, from the environment or a file,
//! and are held as [`Secret`], which never prints its value.

mod raw;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use url::Url;

use crate::domain::Platform;
use raw::{RawConfig, RawMatcher, RawSecret};

/// A secret value. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub state: StateConfig,
    pub audit: AuditConfig,
    pub github: Option<GithubConfig>,
    pub gitlab: Option<GitlabConfig>,
    pub slack: Option<SlackConfig>,
    pub sso: Option<SsoConfig>,
    pub issuers: Vec<IssuerConfig>,
    pub environments: BTreeMap<String, EnvironmentPolicy>,
    pub policies: PoliciesConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub public_url: Url,
    pub dry_run: bool,
    pub read_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum StateBackend {
    Memory,
    Redis { url: Secret, key_prefix: String },
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub attestation_ttl: Duration,
    pub verdict_ttl: Duration,
    /// How long a request's lease lets one replica act on it before another
    /// may take over: longer than a platform call with its retries. Not in
    /// the documented contract (default 60 s); tests shorten it.
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone)]
pub enum AuditBackend {
    File { path: PathBuf },
    Redis,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub backend: AuditBackend,
    /// For the Redis audit backend: refuse to start when Redis does not persist.
    pub require_persistence: bool,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub app_id: Option<u64>,
    pub private_key: Option<Secret>,
    pub webhook_secrets: Vec<Secret>,
    pub api_url: Url,
    pub request_timeout: Duration,
    pub redeliver: RedeliverConfig,
}

#[derive(Debug, Clone)]
pub struct RedeliverConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub lookback: Duration,
    pub max_per_run: u32,
}

#[derive(Debug, Clone)]
pub struct GitlabConfig {
    pub url: Url,
    pub token: Option<Secret>,
    pub webhook_token: Option<Secret>,
    pub signing_token: Option<Secret>,
    pub represented_as: Option<String>,
    pub play_after_approval: bool,
    pub signature_tolerance: Duration,
    pub request_timeout: Duration,
    pub poll: Vec<GitlabPoll>,
}

#[derive(Debug, Clone)]
pub struct GitlabPoll {
    /// A numeric project id or a `group/project` path.
    pub project: String,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: Secret,
    pub signing_secret: Secret,
    pub api_url: Url,
}

#[derive(Debug, Clone)]
pub struct SsoConfig {
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub groups_claim: String,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    pub kind: Platform,
    pub issuer: String,
    pub audience: String,
    pub jwks_url: Option<Url>,
}

/// A compiled claim matcher: exact string, anchored regex, or any of a list.
#[derive(Debug, Clone)]
pub enum ClaimMatcher {
    Exact(String),
    Pattern(Regex),
    Any(Vec<ClaimMatcher>),
}

impl ClaimMatcher {
    /// Does the claim value match? Non-string claims compare by their JSON
    /// text without quotes (`true`, `42`), since GitLab sends some booleans
    /// as strings and GitHub as JSON values.
    pub fn matches(&self, value: &Value) -> bool {
        let text = match value {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Bool(_) | Value::Number(_) => std::borrow::Cow::Owned(value.to_string()),
            _ => return false,
        };
        self.matches_str(&text)
    }

    fn matches_str(&self, s: &str) -> bool {
        match self {
            ClaimMatcher::Exact(e) => e == s,
            ClaimMatcher::Pattern(r) => r.is_match(s),
            ClaimMatcher::Any(list) => list.iter().any(|m| m.matches_str(s)),
        }
    }

    /// A short human description, for reasons.
    pub fn describe(&self) -> String {
        match self {
            ClaimMatcher::Exact(e) => format!("`{e}`"),
            ClaimMatcher::Pattern(r) => {
                let s = r.as_str();
                format!("pattern `{}`", &s[4..s.len() - 2])
            }
            ClaimMatcher::Any(list) => list.iter().map(|m| m.describe()).collect::<Vec<_>>().join(" or "),
        }
    }
}

/// All of a rule's claims must match.
pub type ClaimRule = BTreeMap<String, ClaimMatcher>;

/// Do the claims satisfy every entry of `rule`?
pub fn rule_matches(rule: &ClaimRule, claims: &BTreeMap<String, Value>) -> bool {
    rule.iter().all(|(k, m)| claims.get(k).is_some_and(|v| m.matches(v)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictMode {
    Asserted,
    Evaluated,
    Opa,
}

#[derive(Debug, Clone)]
pub struct VerdictPolicy {
    pub required: bool,
    pub max_age: Duration,
    pub mode: VerdictMode,
    pub policy: Option<String>,
    pub opa_url: Option<Url>,
    pub producers: Vec<ClaimRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewVia {
    Slack,
    Sso,
}

#[derive(Debug, Clone)]
pub struct ReviewPolicy {
    pub required: u32,
    pub via: ReviewVia,
    pub reviewers: Vec<String>,
    pub allow_self_review: bool,
}

#[derive(Debug, Clone)]
pub struct EnvironmentPolicy {
    pub name: String,
    pub approvers: Vec<String>,
    pub require_claims: ClaimRule,
    pub pending_timeout: Duration,
    pub verdict: VerdictPolicy,
    pub reviews: ReviewPolicy,
    pub slack_channel: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PoliciesConfig {
    pub paths: Vec<PathBuf>,
}

impl Config {
    /// Reads, parses and validates `path`. Relative paths inside the file
    /// (audit path, secret files, policies) are taken relative to the
    /// working directory, as the example commands run from the repository root.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        Self::from_toml(&text, &|name| std::env::var(name).ok())
    }

    /// Reads and validates `path` without resolving secrets (each becomes an
    /// empty placeholder). For commands that read only the audit trail, so
    /// an auditor needs the file but not the service's secrets.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        Self::parse(&text, &|_| None, true)
    }

    /// Parses and validates TOML text; `env` looks up environment variables
    /// (a parameter so tests need not touch the process environment).
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        Self::parse(text, env, false)
    }

    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>, skip_secrets: bool) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: toml_error_key(&e),
                message: e.message().to_string(),
            }])
        })?;
        let mut v = Validator {
            errors: Vec::new(),
            env,
            skip_secrets,
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    pub fn environment(&self, name: &str) -> Option<&EnvironmentPolicy> {
        self.environments.get(name)
    }

    /// A short human summary, printed by `check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let state = match &self.state.backend {
            StateBackend::Memory => "memory".to_string(),
            StateBackend::Redis { key_prefix, .. } => format!("redis (prefix `{key_prefix}`)"),
        };
        let audit = match &self.audit.backend {
            AuditBackend::File { path } => format!("file {}", path.display()),
            AuditBackend::Redis => "redis".to_string(),
        };
        out.push_str(&format!(
            "listen {} · public_url {} · dry_run {}\nstate {state} · audit {audit}\n",
            self.server.listen, self.server.public_url, self.server.dry_run
        ));
        let platforms: Vec<&str> = [
            self.github.as_ref().map(|_| "github"),
            self.gitlab.as_ref().map(|_| "gitlab"),
            self.slack.as_ref().map(|_| "slack"),
            self.sso.as_ref().map(|_| "sso"),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.push_str(&format!(
            "integrations: {}\n",
            if platforms.is_empty() {
                "none".into()
            } else {
                platforms.join(", ")
            }
        ));
        for i in &self.issuers {
            out.push_str(&format!(
                "issuer {} ({}): {} aud={}\n",
                i.name, i.kind, i.issuer, i.audience
            ));
        }
        for (name, e) in &self.environments {
            let verdict = if e.verdict.required {
                format!(
                    "verdict required ({:?}, max_age {}, {} producer rule(s))",
                    e.verdict.mode,
                    humantime::format_duration(e.verdict.max_age),
                    e.verdict.producers.len()
                )
                .to_lowercase()
            } else {
                "verdict not required".to_string()
            };
            out.push_str(&format!(
                "environment {name}: {} approver(s), {} claim rule(s), {verdict}, {} review(s), timeout {}\n",
                e.approvers.len(),
                e.require_claims.len(),
                e.reviews.required,
                humantime::format_duration(e.pending_timeout)
            ));
        }
        out
    }
}

fn toml_error_key(e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("configuration (at byte {}..{})", span.start, span.end),
        None => "configuration".to_string(),
    }
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
    skip_secrets: bool,
}

impl Validator<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn secret(&mut self, key: &str, raw: &RawSecret) -> Option<Secret> {
        match raw {
            RawSecret::Inline(_) => {
                self.err(
                    key,
                    "secrets are never written inline; use { env = \"VAR\" } or { file = \"path\" }",
                );
                None
            }
            RawSecret::Env(_) | RawSecret::File(_) if self.skip_secrets => Some(Secret(String::new())),
            RawSecret::Env(r) => match (self.env)(&r.env) {
                Some(v) if !v.is_empty() => Some(Secret(v)),
                _ => {
                    self.err(key, format!("environment variable `{}` is not set", r.env));
                    None
                }
            },
            RawSecret::File(r) => match std::fs::read_to_string(&r.file) {
                Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim_end_matches(['\n', '\r']).to_string())),
                Ok(_) => {
                    self.err(key, format!("secret file `{}` is empty", r.file));
                    None
                }
                Err(e) => {
                    self.err(key, format!("cannot read secret file `{}`: {}", r.file, e.kind()));
                    None
                }
            },
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
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

    /// An outside service's URL: https, or http on a loopback address only.
    fn url(&mut self, key: &str, raw: &str) -> Option<Url> {
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
        let audit = self.audit(raw.audit, &state);
        let github = raw.github.map(|g| self.github(g, server.dry_run));
        let gitlab = raw.gitlab.map(|g| self.gitlab(g, server.dry_run));
        let slack = raw.slack.and_then(|s| self.slack(s));
        let sso = raw.sso.and_then(|s| self.sso(s));
        let issuers = self.issuers(raw.issuers);
        let mut environments = BTreeMap::new();
        for (name, env) in raw.environments {
            if let Some(e) = self.environment(&name, env) {
                environments.insert(name, e);
            }
        }
        let policies = PoliciesConfig {
            paths: raw.policies.paths.into_iter().map(PathBuf::from).collect(),
        };
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
        if environments.values().any(|e| e.verdict.mode == VerdictMode::Evaluated) && policies.paths.is_empty() {
            self.err(
                "policies.paths",
                "an environment evaluates Rego verdicts, but no policy paths are configured",
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
        ServerConfig {
            listen,
            public_url,
            dry_run: raw.dry_run.unwrap_or(false),
            read_token,
            max_body_bytes,
            log_format,
            shutdown_timeout,
        }
    }

    fn state(&mut self, raw: raw::RawState) -> StateConfig {
        let backend = match raw.backend.as_deref().unwrap_or("memory") {
            "memory" => StateBackend::Memory,
            "redis" => {
                let url = match &raw.url {
                    None => "redis://127.0.0.1:6379/0".to_string(),
                    Some(RawSecret::Inline(u)) => {
                        if Url::parse(u).is_ok_and(|p| p.password().is_some()) {
                            self.err(
                                "state.url",
                                "a URL with a password is a secret: use { env = \"VAR\" } or { file = \"path\" }",
                            );
                        }
                        u.clone()
                    }
                    Some(secret) => self.secret("state.url", secret).map(|s| s.0).unwrap_or_default(),
                };
                let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|p| url.starts_with(p));
                if !self.skip_secrets && !scheme_ok {
                    self.err("state.url", "must be a redis://, rediss:// or unix:// URL");
                }
                StateBackend::Redis {
                    url: Secret(url),
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
        }
    }

    fn audit(&mut self, raw: raw::RawAudit, state: &StateConfig) -> AuditConfig {
        let backend = match raw.backend.as_deref().unwrap_or("file") {
            "file" => AuditBackend::File {
                path: PathBuf::from(raw.path.unwrap_or_else(|| "var/audit.jsonl".into())),
            },
            "redis" => {
                if !matches!(state.backend, StateBackend::Redis { .. }) {
                    self.err(
                        "audit.backend",
                        "\"redis\" uses [state] url, so it needs state.backend = \"redis\"",
                    );
                }
                if raw.path.is_some() {
                    self.err("audit.path", "only applies to the \"file\" backend");
                }
                AuditBackend::Redis
            }
            other => {
                self.err("audit.backend", format!("`{other}` is not one of \"file\", \"redis\""));
                AuditBackend::File {
                    path: PathBuf::from("var/audit.jsonl"),
                }
            }
        };
        AuditConfig {
            backend,
            require_persistence: raw.require_persistence.unwrap_or(true),
        }
    }

    fn github(&mut self, raw: raw::RawGithub, dry_run: bool) -> GithubConfig {
        let private_key = raw
            .private_key
            .as_ref()
            .and_then(|s| self.secret("github.private_key", s));
        if !dry_run {
            if raw.app_id.is_none() {
                self.err("github.app_id", "is required unless server.dry_run = true");
            }
            if raw.private_key.is_none() {
                self.err("github.private_key", "is required unless server.dry_run = true");
            }
        }
        if let Some(key) = private_key.as_ref().filter(|_| !self.skip_secrets)
            && jsonwebtoken::EncodingKey::from_rsa_pem(key.expose().as_bytes()).is_err()
        {
            self.err("github.private_key", "is not an RSA private key in PEM form");
        }
        let mut webhook_secrets = Vec::new();
        for (i, s) in raw.webhook_secrets.iter().enumerate() {
            if let Some(s) = self.secret(&format!("github.webhook_secrets[{i}]"), s) {
                webhook_secrets.push(s);
            }
        }
        if raw.webhook_secrets.is_empty() {
            self.err("github.webhook_secrets", "at least one webhook secret is required");
        }
        let api_url = self
            .url(
                "github.api_url",
                raw.api_url.as_deref().unwrap_or("https://api.github.com"),
            )
            .unwrap_or_else(|| Url::parse("https://api.github.com").expect("static URL"));
        let redeliver = match raw.redeliver {
            None => RedeliverConfig {
                enabled: false,
                interval: Duration::from_secs(300),
                lookback: Duration::from_secs(3600),
                max_per_run: 50,
            },
            Some(r) => RedeliverConfig {
                enabled: r.enabled.unwrap_or(true),
                interval: self.duration(
                    "github.redeliver.interval",
                    r.interval.as_deref(),
                    Duration::from_secs(300),
                ),
                lookback: self.duration(
                    "github.redeliver.lookback",
                    r.lookback.as_deref(),
                    Duration::from_secs(3600),
                ),
                max_per_run: r.max_per_run.unwrap_or(50),
            },
        };
        GithubConfig {
            app_id: raw.app_id,
            private_key,
            webhook_secrets,
            api_url,
            request_timeout: self.duration(
                "github.request_timeout",
                raw.request_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            redeliver,
        }
    }

    fn gitlab(&mut self, raw: raw::RawGitlab, dry_run: bool) -> GitlabConfig {
        let url = match raw.url.as_deref() {
            Some(u) => self.url("gitlab.url", u),
            None => {
                self.err("gitlab.url", "is required");
                None
            }
        }
        .unwrap_or_else(|| Url::parse("https://gitlab.invalid").expect("static URL"));
        let token = raw.token.as_ref().and_then(|s| self.secret("gitlab.token", s));
        if raw.token.is_none() && !dry_run {
            self.err("gitlab.token", "is required unless server.dry_run = true");
        }
        let webhook_token = raw
            .webhook_token
            .as_ref()
            .and_then(|s| self.secret("gitlab.webhook_token", s));
        let signing_token = raw
            .signing_token
            .as_ref()
            .and_then(|s| self.secret("gitlab.signing_token", s));
        if raw.webhook_token.is_none() && raw.signing_token.is_none() {
            self.err(
                "gitlab.webhook_token",
                "one of webhook_token or signing_token is required",
            );
        }
        if let Some(s) = signing_token.as_ref().filter(|_| !self.skip_secrets)
            && crate::crypto::standard_webhooks_key(s.expose()).is_none()
        {
            self.err("gitlab.signing_token", "must be `whsec_` followed by base64");
        }
        let mut poll = Vec::new();
        for (i, p) in raw.poll.into_iter().enumerate() {
            let key = format!("gitlab.poll[{i}]");
            match p.project {
                Some(project) if !project.is_empty() => poll.push(GitlabPoll {
                    project,
                    interval: self.duration(
                        &format!("{key}.interval"),
                        p.interval.as_deref(),
                        Duration::from_secs(30),
                    ),
                }),
                _ => self.err(format!("{key}.project"), "is required"),
            }
        }
        GitlabConfig {
            url,
            token,
            webhook_token,
            signing_token,
            represented_as: raw.represented_as,
            play_after_approval: raw.play_after_approval.unwrap_or(false),
            signature_tolerance: self.duration(
                "gitlab.signature_tolerance",
                raw.signature_tolerance.as_deref(),
                Duration::from_secs(300),
            ),
            request_timeout: self.duration(
                "gitlab.request_timeout",
                raw.request_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            poll,
        }
    }

    fn slack(&mut self, raw: raw::RawSlack) -> Option<SlackConfig> {
        let bot_token = match &raw.bot_token {
            Some(s) => self.secret("slack.bot_token", s),
            None => {
                self.err("slack.bot_token", "is required");
                None
            }
        };
        let signing_secret = match &raw.signing_secret {
            Some(s) => self.secret("slack.signing_secret", s),
            None => {
                self.err("slack.signing_secret", "is required");
                None
            }
        };
        let api_url = self.url(
            "slack.api_url",
            raw.api_url.as_deref().unwrap_or("https://slack.com/api"),
        );
        Some(SlackConfig {
            bot_token: bot_token?,
            signing_secret: signing_secret?,
            api_url: api_url?,
        })
    }

    fn sso(&mut self, raw: raw::RawSso) -> Option<SsoConfig> {
        let issuer = match raw.issuer.as_deref() {
            Some(i) => self.url("sso.issuer", i),
            None => {
                self.err("sso.issuer", "is required");
                None
            }
        };
        let client_id = raw.client_id.filter(|c| !c.is_empty());
        if client_id.is_none() {
            self.err("sso.client_id", "is required");
        }
        let client_secret = raw
            .client_secret
            .as_ref()
            .and_then(|s| self.secret("sso.client_secret", s));
        Some(SsoConfig {
            issuer: issuer?,
            client_id: client_id?,
            client_secret,
            groups_claim: raw.groups_claim.unwrap_or_else(|| "groups".into()),
        })
    }

    fn issuers(&mut self, raw: Vec<raw::RawIssuer>) -> Vec<IssuerConfig> {
        let mut out: Vec<IssuerConfig> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("issuers[{i}]");
            let name = r.name.unwrap_or_else(|| format!("issuer-{i}"));
            let kind = match r.kind.as_deref() {
                Some("github") => Some(Platform::Github),
                Some("gitlab") => Some(Platform::Gitlab),
                Some(other) => {
                    self.err(
                        format!("{key}.kind"),
                        format!("`{other}` is not one of \"github\", \"gitlab\""),
                    );
                    None
                }
                None => {
                    self.err(format!("{key}.kind"), "is required (\"github\" or \"gitlab\")");
                    None
                }
            };
            let issuer = match r.issuer.as_deref() {
                Some(u) => self
                    .url(&format!("{key}.issuer"), u)
                    .map(|_| u.trim_end_matches('/').to_string()),
                None => {
                    self.err(format!("{key}.issuer"), "is required");
                    None
                }
            };
            let audience = r.audience.filter(|a| !a.is_empty());
            if audience.is_none() {
                self.err(
                    format!("{key}.audience"),
                    "is required: tokens must be minted for portcullis",
                );
            }
            let jwks_url = r
                .jwks_url
                .as_deref()
                .and_then(|u| self.url(&format!("{key}.jwks_url"), u));
            if let (Some(kind), Some(issuer), Some(audience)) = (kind, issuer, audience) {
                if out.iter().any(|o| o.issuer == issuer) {
                    self.err(format!("{key}.issuer"), format!("`{issuer}` is listed twice"));
                }
                out.push(IssuerConfig {
                    name,
                    kind,
                    issuer,
                    audience,
                    jwks_url,
                });
            }
        }
        out
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

    fn claim_rule(&mut self, key: &str, raw: &BTreeMap<String, RawMatcher>) -> ClaimRule {
        let mut rule = ClaimRule::new();
        for (claim, m) in raw {
            if let Some(m) = self.matcher(&format!("{key}.{claim}"), m) {
                rule.insert(claim.clone(), m);
            }
        }
        rule
    }

    fn environment(&mut self, name: &str, raw: raw::RawEnvironment) -> Option<EnvironmentPolicy> {
        let key = format!("environments.{name}");
        if name.is_empty() || name.len() > 255 {
            self.err(&key, "environment names are 1 to 255 characters");
        }
        let approvers = raw.approvers.unwrap_or_default();
        if approvers.is_empty() {
            self.err(
                format!("{key}.approvers"),
                "at least one approver is required (nobody could deploy)",
            );
        }
        let require_claims = self.claim_rule(&format!("{key}.require_claims"), &raw.require_claims);
        let pending_timeout = self.duration(
            &format!("{key}.pending_timeout"),
            raw.pending_timeout.as_deref(),
            Duration::from_secs(30 * 60),
        );
        let verdict = match raw.verdict {
            None => {
                self.err(
                    format!("{key}.verdict"),
                    "is required: say `required = false` explicitly to deploy without a policy verdict",
                );
                VerdictPolicy {
                    required: true,
                    max_age: Duration::from_secs(86400),
                    mode: VerdictMode::Asserted,
                    policy: None,
                    opa_url: None,
                    producers: Vec::new(),
                }
            }
            Some(v) => {
                let vkey = format!("{key}.verdict");
                let required = v.required.unwrap_or(true);
                let mode = match v.mode.as_deref().unwrap_or("asserted") {
                    "asserted" => VerdictMode::Asserted,
                    "evaluated" => VerdictMode::Evaluated,
                    "opa" => VerdictMode::Opa,
                    other => {
                        self.err(
                            format!("{vkey}.mode"),
                            format!("`{other}` is not one of \"asserted\", \"evaluated\", \"opa\""),
                        );
                        VerdictMode::Asserted
                    }
                };
                if matches!(mode, VerdictMode::Evaluated | VerdictMode::Opa) {
                    match &v.policy {
                        Some(p) if p.starts_with("data.") => {}
                        Some(p) => self.err(
                            format!("{vkey}.policy"),
                            format!("`{p}` is not a query such as data.deploy.hipaa.allow"),
                        ),
                        None => self.err(
                            format!("{vkey}.policy"),
                            "is required for modes \"evaluated\" and \"opa\"",
                        ),
                    }
                }
                let opa_url = v
                    .opa_url
                    .as_deref()
                    .and_then(|u| self.url(&format!("{vkey}.opa_url"), u));
                if mode == VerdictMode::Opa && v.opa_url.is_none() {
                    self.err(format!("{vkey}.opa_url"), "is required for mode \"opa\"");
                }
                let mut producers = Vec::new();
                for (i, p) in v.producers.iter().enumerate() {
                    let pkey = format!("{vkey}.producers[{i}]");
                    if p.is_empty() {
                        self.err(&pkey, "an empty producer rule would trust every token");
                        continue;
                    }
                    producers.push(self.claim_rule(&pkey, p));
                }
                if required && v.producers.is_empty() {
                    self.err(
                        format!("{vkey}.producers"),
                        "a required verdict needs at least one trusted producer",
                    );
                }
                VerdictPolicy {
                    required,
                    max_age: self.duration(
                        &format!("{vkey}.max_age"),
                        v.max_age.as_deref(),
                        Duration::from_secs(86400),
                    ),
                    mode,
                    policy: v.policy,
                    opa_url,
                    producers,
                }
            }
        };
        let reviews = match raw.reviews {
            None => ReviewPolicy {
                required: 0,
                via: ReviewVia::Slack,
                reviewers: Vec::new(),
                allow_self_review: false,
            },
            Some(r) => {
                let rkey = format!("{key}.reviews");
                let via = match r.via.as_deref().unwrap_or("slack") {
                    "slack" => ReviewVia::Slack,
                    "sso" => ReviewVia::Sso,
                    other => {
                        self.err(
                            format!("{rkey}.via"),
                            format!("`{other}` is not one of \"slack\", \"sso\""),
                        );
                        ReviewVia::Slack
                    }
                };
                let required = r.required.unwrap_or(0);
                if required as usize > r.reviewers.len() {
                    self.err(
                        format!("{rkey}.required"),
                        format!(
                            "requires {required} reviews but lists {} reviewer(s)",
                            r.reviewers.len()
                        ),
                    );
                }
                ReviewPolicy {
                    required,
                    via,
                    reviewers: r.reviewers.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
                    allow_self_review: r.allow_self_review.unwrap_or(false),
                }
            }
        };
        let slack_channel = raw.slack.and_then(|s| s.channel);
        Some(EnvironmentPolicy {
            name: name.to_string(),
            approvers,
            require_claims,
            pending_timeout,
            verdict,
            reviews,
            slack_channel,
        })
    }
}

/// Is the URL's host a loopback address (127.0.0.0/8, ::1) or `localhost`?
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests;
