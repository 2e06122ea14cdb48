//! The configuration file as written: strict serde types. Every table denies
//! unknown keys; validation into [`super::Config`] happens in `super::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub audit: RawAudit,
    pub github: Option<RawGithub>,
    pub gitlab: Option<RawGitlab>,
    pub slack: Option<RawSlack>,
    pub sso: Option<RawSso>,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    #[serde(default)]
    pub environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    pub policies: RawPolicies,
}

/// `{ env = "VAR" }` or `{ file = "path" }`. A bare string is accepted by the
/// parser only so that validation can name the key and refuse it.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawSecret {
    Env(EnvRef),
    File(FileRef),
    /// Held only to be refused, with the key named.
    Inline(#[allow(dead_code)] String),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvRef {
    pub env: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRef {
    pub file: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub dry_run: Option<bool>,
    pub read_token: Option<RawSecret>,
    pub max_body_bytes: Option<usize>,
    pub log_format: Option<String>,
    pub shutdown_timeout: Option<String>,
    /// `true`, `false`, or `{ per_second, burst }`: read as a value so that
    /// validation can name the offending key.
    pub rate_limit: Option<toml::Value>,
    pub trusted_proxy_header: Option<String>,
    pub client_request_timeout: Option<String>,
    pub client_disconnect_timeout: Option<String>,
    pub keep_alive: Option<String>,
    pub metrics_read_token: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub backend: Option<String>,
    /// A URL without a password, or `{ env }`/`{ file }` for one with.
    pub url: Option<RawSecret>,
    pub key_prefix: Option<String>,
    pub attestation_ttl: Option<String>,
    pub verdict_ttl: Option<String>,
    /// Hidden: how long a request's lease lasts (tests shorten it).
    pub lease_ttl: Option<String>,
    /// Redis replicas that must acknowledge audit records and decisions.
    pub min_replicas: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub require_persistence: Option<bool>,
    /// The Ed25519 key (PKCS#8 PEM) that signs checkpoints and receipts.
    pub signing_key: Option<RawSecret>,
    pub log_name: Option<String>,
    pub checkpoint_every: Option<String>,
    pub anchor: Option<super::anchor::RawAnchor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGithub {
    pub app_id: Option<u64>,
    pub private_key: Option<RawSecret>,
    #[serde(default)]
    pub webhook_secrets: Vec<RawSecret>,
    pub api_url: Option<String>,
    pub issuer: Option<String>,
    pub request_timeout: Option<String>,
    pub redeliver: Option<RawRedeliver>,
    pub status_reports_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedeliver {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub lookback: Option<String>,
    pub max_per_run: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGitlab {
    pub url: Option<String>,
    pub token: Option<RawSecret>,
    pub webhook_token: Option<RawSecret>,
    pub signing_token: Option<RawSecret>,
    pub represented_as: Option<String>,
    pub play_after_approval: Option<bool>,
    pub signature_tolerance: Option<String>,
    pub issuer: Option<String>,
    pub request_timeout: Option<String>,
    #[serde(default)]
    pub poll: Vec<RawGitlabPoll>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGitlabPoll {
    pub project: Option<String>,
    pub interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlack {
    pub bot_token: Option<RawSecret>,
    pub signing_secret: Option<RawSecret>,
    pub api_url: Option<String>,
    pub team_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSso {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    pub groups_claim: Option<String>,
    pub trust_unverified_email: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
}

/// A claim matcher as written: a string, `{ pattern = "regex" }`, or a list
/// of either.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawMatcher {
    Exact(String),
    Bool(bool),
    Pattern(PatternRef),
    Any(Vec<RawMatcher>),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct PatternRef {
    pub pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub approvers: Option<Vec<String>>,
    #[serde(default)]
    pub require_claims: BTreeMap<String, RawMatcher>,
    pub pending_timeout: Option<String>,
    pub verdict: Option<RawVerdict>,
    pub reviews: Option<RawReviews>,
    pub slack: Option<RawEnvSlack>,
    pub break_glass: Option<super::break_glass::RawBreakGlass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerdict {
    pub required: Option<bool>,
    pub max_age: Option<String>,
    pub mode: Option<String>,
    pub policy: Option<String>,
    pub opa_url: Option<String>,
    /// A JSON Schema (2020-12) file the posted evidence must match.
    pub evidence_schema: Option<String>,
    #[serde(default)]
    pub producers: Vec<BTreeMap<String, RawMatcher>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReviews {
    pub required: Option<u32>,
    pub via: Option<String>,
    #[serde(default)]
    pub reviewers: Vec<String>,
    pub allow_self_review: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvSlack {
    pub channel: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicies {
    #[serde(default)]
    pub paths: Vec<String>,
    /// OPA bundles: `.tar.gz` files, or http(s) URLs polled for new revisions.
    #[serde(default)]
    pub bundles: Vec<String>,
    /// The PEM public key bundle signatures are verified with (not a secret,
    /// but given as `{ file = … }` or `{ env = … }` like one).
    pub verification_key: Option<RawSecret>,
    pub polling_interval: Option<String>,
}
