//! Policy verdicts over scan evidence: Rego evaluated in process (verdict mode
//! `"evaluated"`, with `regorus`) or by an OPA server (mode `"opa"`).
//!
//! The flow for an evidence-carrying `POST /v1/verdicts`:
//! 1. [`check_evidence`] checks that the evidence is a JSON object, valid
//!    against the environment's `evidence_schema` when it has one (an
//!    [`EvidenceError`] names the first failing field, for the 400);
//! 2. [`build_input`] wraps it with the decision's context into the contract's
//!    input `{"evidence", "context"}`;
//! 3. [`PolicyEngine::evaluate`] (or [`OpaClient::evaluate`]) runs the
//!    environment's query and its sibling `deny`/`reasons` set into an [`Evaluation`];
//! 4. the verdict records [`evidence_digest`] and [`PolicyEngine::revision`]
//!    (a bundle's manifest revision, or a hash of the loose files).
//!
//! Sources: loose files under `[policies] paths` (`sources`) and OPA bundles
//! (`bundle`, signatures in `signature` over `canonical_json`), compiled
//! together into one engine held by the live [`PolicySet`], which swaps in
//! new bundle revisions (polled, or on SIGHUP) atomically.
//!
//! [`evaluate_evidence`] runs those steps for an environment, in whichever
//! mode it is configured; the service and the offline `decide` share it.
//!
//! An `Err` here means "could not decide"; a denial is `Ok` with `allow: false`
//! and its reasons. Neither path ever produces an allow by default.

mod bundle;
mod canonical_json;
mod check;
mod engine;
mod evaluate;
mod evidence;
mod opa;
mod policy_set;
mod query;
mod schema;
mod signature;
mod sources;

#[cfg(test)]
mod bundle_tests;
#[cfg(test)]
mod tests;

pub use bundle::{Bundle, BundleError, read_bundle, read_bundle_unverified};
pub use engine::{PolicyEngine, RegoTestResult};
pub use evaluate::{EvaluateError, EvaluatedEvidence, Poster, evaluate_evidence};
pub use evidence::{build_input, evidence_digest};
pub use opa::OpaClient;
pub use policy_set::{
    FetchError, LoadError, PolicySet, PolicyStatus, ReloadError, approvers_of, compile_bundles, compile_paths,
    load_with_tests, missing_rules,
};
pub use query::validate_query;
pub use schema::{EvidenceError, EvidenceSchema, SchemaError, check_evidence, validate_evidence};
pub use signature::{SignatureError, VerificationKey, file_hash};

/// The outcome of evaluating a policy query over one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// True only when the query yielded exactly `true` and the policy gave no
    /// `deny`/`reasons` entry.
    pub allow: bool,
    /// The policy's `deny` (or `reasons`) entries, in the set's order; when the
    /// policy denies without any, one reason saying so, so a rejection is never
    /// unexplained.
    pub reasons: Vec<String>,
}

/// Why a policy could not be loaded or evaluated. Never an allow.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A configured policy path could not be read.
    #[error("cannot read policy path {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A Rego module does not parse or compile. `file` is the path as loaded
    /// (the configured path joined with the file's place under it).
    #[error("{file}:{line}:{column}: {message}")]
    Compile {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    /// A JSON data file is not a JSON object, or conflicts with other data.
    #[error("policy data {file}: {message}")]
    Data { file: String, message: String },
    /// The query is not a rule path such as `data.deploy.hipaa.allow`.
    #[error("policy query `{query}` is not a rule path such as data.deploy.hipaa.allow")]
    InvalidQuery { query: String },
    /// The policy raised an error while evaluating (a builtin error, a
    /// conflict between rule values, the evaluation time limit).
    #[error("policy evaluation failed: {message}")]
    Evaluation { message: String },
    /// The OPA server did not give a usable answer. The upstream body is never
    /// carried: only what went wrong.
    #[error("OPA server: {0}")]
    Opa(OpaFailure),
}

/// What went wrong talking to an OPA server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpaFailure {
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("unreachable")]
    Unreachable,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer is not a Data API response")]
    Malformed,
    #[error("answer exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the server URL cannot hold a path")]
    BadUrl,
}

/// At most this many reasons are kept from a policy's `deny`/`reasons` set,
/// each at most [`MAX_REASON_CHARS`] characters: they end up in platform
/// comments and audit records.
const MAX_REASONS: usize = 100;
const MAX_REASON_CHARS: usize = 1000;

impl Evaluation {
    /// The one reading of a query's value and its sibling `deny`/`reasons`
    /// value, shared by the in-process engine and the OPA client so that both
    /// modes decide alike. `None` is undefined.
    pub(crate) fn from_results(
        path: &query::RulePath,
        allow: Option<&serde_json::Value>,
        listed: Option<&serde_json::Value>,
    ) -> Evaluation {
        use serde_json::Value;
        let query = path.rego();
        let mut reasons: Vec<String> = Vec::new();
        match listed {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Array(items)) => reasons.extend(items.iter().map(reason_text)),
            Some(Value::Bool(true)) => reasons.push(format!("{}'s deny rule holds", path.package_rego())),
            Some(Value::Object(map)) if map.is_empty() => {}
            Some(other) => reasons.push(reason_text(other)),
        }
        match allow {
            Some(Value::Bool(_)) => {}
            None => reasons.push(format!("{query} is undefined")),
            Some(_) => reasons.push(format!("{query} is not a boolean")),
        }
        let allow = allow == Some(&Value::Bool(true)) && reasons.is_empty();
        if !allow && reasons.is_empty() {
            reasons.push(format!("denied by {query}"));
        }
        reasons.truncate(MAX_REASONS);
        Evaluation { allow, reasons }
    }
}

/// A `deny` entry as text: a string as is, a conftest-style `{"msg": ...}`
/// object by its message, anything else as JSON.
fn reason_text(item: &serde_json::Value) -> String {
    let text = match item {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => match map.get("msg") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => item.to_string(),
        },
        other => other.to_string(),
    };
    if text.chars().count() > MAX_REASON_CHARS {
        text.chars().take(MAX_REASON_CHARS).collect()
    } else {
        text
    }
}
