//! The values that flow through the gate: deployment requests, attestations,
//! verdicts and reviews. Once one of these is held, it has been validated by
//! whoever built it (the webhook parser, the OIDC verifier, the verdict route).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub mod break_glass;
mod error_code;
mod reason;

pub use break_glass::{Grant, GrantState, Person, grant_key};
pub use error_code::ErrorCode;
pub use reason::{Decision, Outcome, Reason, ReasonCode};

/// Which CI/CD platform a request, run or token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Github,
    Gitlab,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Github => "github",
            Platform::Gitlab => "gitlab",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a pipeline: GitHub repository and workflow run id, or GitLab
/// project path and pipeline id. Attestations are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunRef {
    /// The configured name of the issuer whose tokens attest this run.
    pub issuer: String,
    pub platform: Platform,
    pub repository: String,
    pub run: String,
}

impl RunRef {
    /// The storage key. Repository names compare case-insensitively on both
    /// platforms, so the key is lower-cased.
    pub fn key(&self) -> String {
        format!(
            "{}/{}:{}:{}",
            self.issuer,
            self.platform,
            self.repository.to_ascii_lowercase(),
            self.run
        )
    }
}

/// The key of the latest verdict for (repository, sha, environment), as
/// posted with a token of `issuer` (a configured issuer's name): one
/// instance's policy-gate jobs never stand in for another's.
pub fn verdict_key(issuer: &str, platform: Platform, repository: &str, sha: &str, environment: &str) -> String {
    format!(
        "{}/{}:{}:{}:{}",
        issuer,
        platform,
        repository.to_ascii_lowercase(),
        sha.to_ascii_lowercase(),
        environment
    )
}

/// A full commit id: 40 hex digits (SHA-1) or 64 (SHA-256 repositories).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(CommitSha(s.to_ascii_lowercase()))
        } else {
            Err(format!("`{s}` is not a full commit sha (40 or 64 hex digits)"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CommitSha {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        CommitSha::parse(&s)
    }
}

impl From<CommitSha> for String {
    fn from(s: CommitSha) -> String {
        s.0
    }
}

impl std::fmt::Display for CommitSha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Verified claims of a CI job's OIDC ID token: the triggering identity.
/// Holds the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attestation {
    pub id: String,
    /// Name of the trusted issuer entry (`[[issuers]].name`).
    pub issuer_name: String,
    pub issuer: String,
    pub platform: Platform,
    pub subject: String,
    pub actor: String,
    pub repository: String,
    pub run: String,
    pub sha: Option<String>,
    /// Every claim of the token (none of them is secret; the token is).
    pub claims: BTreeMap<String, Value>,
    pub token_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Attestation {
    pub fn run_ref(&self) -> RunRef {
        RunRef {
            issuer: self.issuer_name.clone(),
            platform: self.platform,
            repository: self.repository.clone(),
            run: self.run.clone(),
        }
    }
}

/// How a verdict came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictSource {
    /// The policy-gate job asserted `allow`.
    Asserted,
    /// portcullis evaluated its own Rego policy over posted evidence.
    Evaluated,
    /// An OPA server evaluated the evidence.
    Opa,
}

/// Who posted a verdict: the verified identity of the policy-gate job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    /// The configured name of the poster's issuer (empty in records written
    /// before it was kept).
    #[serde(default)]
    pub issuer_name: String,
    pub issuer: String,
    pub subject: String,
    pub actor: String,
    pub claims: BTreeMap<String, Value>,
    pub token_sha256: String,
}

/// The latest policy decision for (repository, sha, environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub platform: Platform,
    pub repository: String,
    pub sha: String,
    pub environment: String,
    pub allow: bool,
    pub source: VerdictSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<String>,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub producer: Producer,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// A human reviewer's vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// The verified identity (an email address) of the reviewer.
    pub reviewer: String,
    /// Other names the same person is known by (a platform login), used to
    /// refuse self-review.
    #[serde(default)]
    pub aliases: Vec<String>,
    pub approve: bool,
    /// How the identity was verified: `slack` (Slack user's email) or `sso`.
    pub via: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Where a request's answer goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    Github {
        owner: String,
        repo: String,
        run_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installation_id: Option<u64>,
        callback_url: String,
    },
    Gitlab {
        project_id: u64,
        deployment_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<u64>,
    },
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for an input (attestation, verdict, reviews) or its deadline.
    Pending,
    /// Decided and durably audited; the platform call is being made.
    Deciding,
    /// The platform was answered (or the answer was skipped under dry run).
    Done,
    /// Decided elsewhere (a human on the platform approved or rejected it).
    Superseded,
}

/// What the platform said to our answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformOutcome {
    pub ok: bool,
    /// HTTP status of the last attempt, if one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub detail: String,
    pub dry_run: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl PlatformOutcome {
    /// What a caller or a Slack reader is told of a platform call: a fixed
    /// sentence by outcome. `detail` can hold the platform's own error
    /// text, which goes only to the audit record and the log.
    pub fn public_detail(&self) -> &'static str {
        match (self.dry_run, self.ok, self.status) {
            (true, _, _) => "dry run: the platform was not called",
            (false, true, Some(_)) => "the platform took the answer",
            (false, true, None) => "the platform was not called; the audit record says why",
            (false, false, Some(_)) => "the platform refused the answer; the audit record has the details",
            (false, false, None) => "the platform could not be reached; the audit record has the details",
        }
    }
}

/// The Slack message that mirrors a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlackRef {
    pub channel: String,
    pub ts: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permalink: Option<String>,
}

/// A platform's ask to deploy `sha` to `environment` for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRequest {
    pub id: String,
    pub platform: Platform,
    /// The configured name of the issuer whose tokens attest this platform
    /// instance's runs (`[github] issuer`, `[gitlab] issuer`): attestations
    /// and verdicts of any other issuer never count for it.
    #[serde(default)]
    pub issuer: String,
    pub repository: String,
    pub run: String,
    pub environment: String,
    pub sha: String,
    pub target: Target,
    pub delivery: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// Problems found when the request was received (a callback URL on a
    /// foreign host, say); any of them rejects the request.
    #[serde(default)]
    pub intake_problems: Vec<Reason>,
    #[serde(default)]
    pub reviews: Vec<Review>,
    pub status: RequestStatus,
    /// The last evaluation: pending with what is missing, or the final decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// GitHub only: the run's attempt and who started it, once read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_attempt: Option<RunAttempt>,
    /// The attestation and verdict a final decision weighed, kept from the
    /// evaluation to the `decision` record so the record names exactly them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_on: Option<Box<DecidedOn>>,
    /// The id of the durable `decision` audit record, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_record: Option<String>,
    /// Platform calls made so far (transient failures are re-driven).
    #[serde(default)]
    pub platform_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_result: Option<PlatformOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackRef>,
    /// Bumped by every write; compare-and-set uses it.
    #[serde(default)]
    pub version: u64,
}

impl DeploymentRequest {
    pub fn run_ref(&self) -> RunRef {
        RunRef {
            issuer: self.issuer.clone(),
            platform: self.platform,
            repository: self.repository.clone(),
            run: self.run.clone(),
        }
    }

    pub fn verdict_key(&self) -> String {
        verdict_key(
            &self.issuer,
            self.platform,
            &self.repository,
            &self.sha,
            &self.environment,
        )
    }

    /// The stable id of the request for (platform, repository, run,
    /// environment): every replica derives the same one, so a redelivered or
    /// concurrently delivered webhook lands on the same record.
    pub fn derive_id(platform: Platform, repository: &str, run: &str, environment: &str) -> String {
        let key = format!(
            "{}\n{}\n{}\n{}",
            platform,
            repository.to_ascii_lowercase(),
            run,
            environment
        );
        let digest = crate::crypto::sha256_hex(key.as_bytes());
        format!("req_{}", &digest[..24])
    }
}

/// Which attempt of a GitHub workflow run asks to deploy, and who started
/// that attempt. Read from the Actions API when the request arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAttempt {
    /// GitHub: 1 for the first attempt. 0 on GitHub when the run could not
    /// be read at all (no GitHub App credentials, in dry run): the token's
    /// actor is then the one checked, as for a first attempt. 0 on GitLab,
    /// which has no attempts (a retried job is a new deployment).
    pub number: u32,
    /// Who started the first attempt (the OIDC token's `actor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Who started this attempt (GitHub's `triggering_actor`; GitLab: the
    /// deployment's user): the person a re-run or retried job is checked
    /// against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggering_actor: Option<String>,
    /// Read from the platform's API (false: not read, see `number`).
    pub read: bool,
}

impl RunAttempt {
    /// The identity that must be an approver: whoever started this attempt
    /// (a GitHub re-run, any GitLab deployment), else the attested actor.
    pub fn deploying_actor<'a>(&'a self, attested_actor: &'a str) -> &'a str {
        match &self.triggering_actor {
            Some(t) if self.read && self.number != 1 => t,
            _ => attested_actor,
        }
    }
}

/// The inputs a final decision weighed (besides the request's own reviews).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecidedOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The break-glass grant that waived rules 6 and 7, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

/// A policy-gate job's verdict post (`POST /v1/verdicts`): an asserted
/// `allow`, or `evidence` for portcullis to evaluate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    pub environment: String,
    pub sha: String,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub allow: Option<bool>,
    #[serde(default)]
    pub evidence: Option<Value>,
    #[serde(default)]
    pub evidence_digest: Option<String>,
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl VerdictBody {
    /// The verdict this post asserts, for `repository` at `sha` (as the
    /// caller checked it), by `producer`. A post of evidence starts as a
    /// denial until its evaluation fills in `allow` and the reasons.
    pub fn verdict(
        &self,
        platform: Platform,
        repository: String,
        sha: String,
        producer: Producer,
        recorded_at: OffsetDateTime,
    ) -> Verdict {
        Verdict {
            platform,
            repository,
            sha,
            environment: self.environment.clone(),
            allow: self.allow.unwrap_or(false),
            source: VerdictSource::Asserted,
            policy: self.policy.clone(),
            evidence_digest: self.evidence_digest.clone(),
            policy_revision: None,
            reasons: self.reasons.clone(),
            producer,
            recorded_at,
        }
    }
}

/// When a request received at `now` times out: `now + pending_timeout`,
/// saturating at the end of the representable time rather than overflowing.
pub fn deadline(now: OffsetDateTime, pending_timeout: std::time::Duration) -> OffsetDateTime {
    time::Duration::try_from(pending_timeout)
        .ok()
        .and_then(|d| now.checked_add(d))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}
