//! The validated configuration: what the rest of the service reads. Built
//! only by [`super::validate`], so every value here has passed its checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use url::Url;

use super::Secret;
use crate::domain::Platform;

/// One configuration problem, naming the key it is about and, when known,
/// its line and column in the file (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) key: String,
    pub(crate) location: Option<(usize, usize)>,
    pub(crate) message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            location: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(
        key: impl Into<String>,
        location: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            key: key.into(),
            location,
            message: message.into(),
        }
    }

    /// The key, e.g. `environments.production.approvers`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Line and column (1-based) in the configuration file, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        self.location
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "{} (line {line}, column {column}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub(crate) Vec<ConfigError>);

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
    /// Per-source token buckets on `/v1/*`; `None` when turned off.
    pub rate_limit: Option<RateLimit>,
    /// A header (lower case) in which a trusted reverse proxy names the
    /// client's address, as `x-forwarded-for` does in its last entry.
    pub trusted_proxy_header: Option<String>,
    /// How long a client may take to send a request's headers.
    pub client_request_timeout: Duration,
    /// How long a connection's shutdown may take once the response is sent.
    pub client_disconnect_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive: Duration,
    /// `/metrics` follows the read API's rules (the read token, or a
    /// loopback caller without one); off: anyone who reaches it.
    pub metrics_read_token: bool,
}

/// A token bucket per source: `burst` requests at once, refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 20.0,
            burst: 40,
        }
    }
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
    /// Redis replicas that must acknowledge each audit batch and the gate's
    /// writes around a platform call (`WAIT`); 0 asks for none.
    pub min_replicas: u32,
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
    /// The audit key (PKCS#8 PEM text): signs checkpoints and receipts.
    /// Without it the trail is chained but neither checkpointed nor signed.
    pub signing_key: Option<Secret>,
    /// The log's origin line in checkpoints, and its note key name.
    pub log_name: String,
    /// How often a checkpoint is signed when there are new records.
    pub checkpoint_every: Duration,
    /// Not a file key: set by `serve --new-trail`.
    pub new_trail: bool,
    /// `[audit.anchor]`: write-once copies of checkpoints and records.
    pub anchor: Option<super::anchor::AnchorConfig>,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub app_id: Option<u64>,
    pub private_key: Option<Secret>,
    pub webhook_secrets: Vec<Secret>,
    pub api_url: Url,
    pub request_timeout: Duration,
    pub redeliver: RedeliverConfig,
    /// The configured name of the issuer whose tokens attest this GitHub's
    /// runs (`[github] issuer`; by default the only issuer of kind github).
    pub issuer: String,
    /// Status reports on waiting deployments this replica may post a minute
    /// (averaged; up to this many at once); 0 posts none. They share the
    /// App's API rate limit with the reviews, which they must never starve.
    pub status_reports_per_minute: u32,
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
    /// The configured name of the issuer whose tokens attest this GitLab's
    /// pipelines (`[gitlab] issuer`; by default the only issuer of kind gitlab).
    pub issuer: String,
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
    /// The workspace whose members may review (`T…`); others are refused.
    pub team_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SsoConfig {
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub groups_claim: String,
    /// Trust the provider's emails without `email_verified = true` (for a
    /// provider that only issues verified addresses and omits the claim).
    pub trust_unverified_email: bool,
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
    pub(crate) fn matches(&self, value: &Value) -> bool {
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
    pub(crate) fn describe(&self) -> String {
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
pub(crate) fn rule_matches(rule: &ClaimRule, claims: &BTreeMap<String, Value>) -> bool {
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
    /// A JSON Schema (2020-12) the posted evidence must match; without it,
    /// any JSON object is accepted and goes to the policy as it is.
    pub evidence_schema: Option<PathBuf>,
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
    /// `[environments.E.break_glass]`, when the environment has break glass.
    pub break_glass: Option<super::break_glass::BreakGlassPolicy>,
}

#[derive(Debug, Clone)]
pub struct PoliciesConfig {
    /// Loose `*.rego` modules and `*.json` data files (directories walked).
    pub paths: Vec<PathBuf>,
    /// OPA bundles, in the order configured.
    pub bundles: Vec<BundleSource>,
    /// PEM public key (RSA or EC P-256) that bundle signatures must verify
    /// against; when set, every bundle must be signed.
    pub verification_key: Option<Secret>,
    /// How often a remote bundle is asked for a new revision.
    pub polling_interval: Duration,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            paths: Vec::new(),
            bundles: Vec::new(),
            verification_key: None,
            polling_interval: Duration::from_secs(60),
        }
    }
}

/// Where an OPA bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A `.tar.gz` file, read at start and on SIGHUP.
    File(PathBuf),
    /// A bundle server's URL, polled with `If-None-Match`.
    Url(Url),
}

impl std::fmt::Display for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleSource::File(p) => write!(f, "{}", p.display()),
            BundleSource::Url(u) => write!(f, "{u}"),
        }
    }
}

impl Config {
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
