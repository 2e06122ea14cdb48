//! Configuration: parsed strictly from TOML (unknown keys fail), then
//! validated as a whole. Every error names its key; `load` reports all of
//! them at once. Secrets are resolved here, from the environment or a file,
//! and are held as [`Secret`], which never prints its value.
//!
//! - `raw`: the file as written (strict serde shapes).
//! - `validate`: raw shapes into validated types, collecting every error.
//! - `audit`: validation of `[audit]`.
//! - `anchor`: validation of `[audit.anchor]` (write-once S3 copies).
//! - `break_glass`: `[environments.E.break_glass]`, its shape and validation.
//! - `reviews`: validation of `[environments.E.reviews]`.
//! - `integrations`: validation of `[github]`, `[gitlab]`, `[slack]`, `[sso]`
//!   and `[[issuers]]`.
//! - `secrets`: `{ env = … }` / `{ file = … }` resolution into [`Secret`].
//! - `types`: the validated types the service reads, and claim matching.

mod anchor;
mod audit;
mod break_glass;
mod environment;
mod integrations;
mod pointing;
mod raw;
mod reviews;
mod secrets;
mod types;
mod validate;

pub use anchor::{AnchorConfig, AnchorKind};
pub use break_glass::BreakGlassPolicy;
pub(crate) use pointing::levenshtein;
pub use pointing::locate;
pub use secrets::Secret;
pub(crate) use types::rule_matches;
pub use types::{
    AuditBackend, AuditConfig, BundleSource, ClaimMatcher, ClaimRule, Config, ConfigError, ConfigErrors,
    EnvironmentPolicy, GithubConfig, GitlabConfig, GitlabPoll, IssuerConfig, LogFormat, PoliciesConfig, RateLimit,
    RedeliverConfig, ReviewPolicy, ReviewVia, ServerConfig, SlackConfig, SsoConfig, StateBackend, StateConfig,
    VerdictMode, VerdictPolicy,
};

#[cfg(test)]
mod pointing_tests;
#[cfg(test)]
mod tests;
