//! The evidence bundle: its schema, its digest, and the policy input around it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// The bundle's JSON Schema, also published in the repository for pipeline authors.
const EVIDENCE_SCHEMA: &str = include_str!("../../schemas/evidence.schema.json");

/// A bundle that does not match `schemas/evidence.schema.json`: the first
/// failing field as a JSON pointer (`/` for the bundle itself) and what was
/// expected there. Its text never echoes the posted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct EvidenceError {
    /// JSON pointer of the field, e.g. `/scans/container/critical`.
    pub path: String,
    /// What is wrong, e.g. `expected integer`.
    pub message: String,
}

/// Validates `evidence` against the bundle's schema, returning the first
/// error with the field's path (e.g. `/scans/container/critical: expected integer`).
pub fn validate_evidence(evidence: &Value) -> Result<(), EvidenceError> {
    let validator = match validator() {
        Ok(v) => v,
        Err(message) => {
            return Err(EvidenceError {
                path: "/".to_owned(),
                message: message.clone(),
            });
        }
    };
    match validator.validate(evidence) {
        Ok(()) => Ok(()),
        Err(error) => Err(describe(&error)),
    }
}

fn validator() -> &'static Result<jsonschema::Validator, String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(EVIDENCE_SCHEMA)
            .map_err(|e| format!("the embedded evidence schema is not JSON: {e}"))?;
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| format!("the embedded evidence schema does not compile: {e}"))
    })
}

/// Turns a schema error into a field path and a message that names the
/// expectation, never the posted value.
fn describe(error: &jsonschema::ValidationError<'_>) -> EvidenceError {
    let at = error.instance_path().as_str().to_owned();
    let child = |name: &str| format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
    let (path, message) = match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            (at, format!("expected {expected}"))
        }
        ValidationErrorKind::Required { property } => {
            (child(property.as_str().unwrap_or_default()), "is required".to_owned())
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => match unexpected.first() {
            Some(name) => (child(name), "is not a field of the evidence bundle".to_owned()),
            None => (at, "has unknown fields".to_owned()),
        },
        ValidationErrorKind::Format { format } if format == "date-time" => (
            at,
            "expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z".to_owned(),
        ),
        ValidationErrorKind::Format { format } => (at, format!("expected format {format}")),
        ValidationErrorKind::Pattern { pattern } if pattern.starts_with("^sha256:") => {
            (at, "expected sha256: and 64 lower-case hex digits".to_owned())
        }
        ValidationErrorKind::Pattern { pattern } if pattern.contains("T([01]") => (
            at,
            "expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z".to_owned(),
        ),
        ValidationErrorKind::Pattern { pattern } => (at, format!("does not match {pattern}")),
        ValidationErrorKind::Enum { options } => (at, format!("expected one of {options}")),
        ValidationErrorKind::Constant { expected_value } => (at, format!("expected {expected_value}")),
        ValidationErrorKind::Minimum { limit } => (at, format!("must be at least {limit}")),
        ValidationErrorKind::Maximum { limit } => (at, format!("must be at most {limit}")),
        ValidationErrorKind::MinLength { limit: 1 } => (at, "must not be empty".to_owned()),
        ValidationErrorKind::MinLength { limit } => (at, format!("must be at least {limit} characters")),
        ValidationErrorKind::MaxLength { limit } => (at, format!("must be at most {limit} characters")),
        ValidationErrorKind::MinItems { limit } => (at, format!("must have at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => (at, format!("must have at most {limit} items")),
        ValidationErrorKind::UniqueItems => (at, "must not repeat items".to_owned()),
        other => (at, format!("fails the schema's `{}` rule", other.keyword())),
    };
    EvidenceError {
        path: if path.is_empty() { "/".to_owned() } else { path },
        message,
    }
}

/// `"sha256:"` and the hex SHA-256 of the canonical JSON of `evidence`:
/// object keys sorted (by their UTF-8 bytes), no whitespace, strings and
/// numbers as serde_json writes them. Independent of serde_json's
/// `preserve_order` feature, so the digest does not depend on the build.
pub fn evidence_digest(evidence: &Value) -> String {
    format!("sha256:{}", crate::crypto::sha256_hex(canonical(evidence).as_bytes()))
}

/// The canonical JSON text of `value` (see [`evidence_digest`]).
pub(crate) fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_leaf(&Value::String(key.clone()), out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        leaf => write_leaf(leaf, out),
    }
}

fn write_leaf(value: &Value, out: &mut String) {
    // Serializing a scalar Value cannot fail; `write!` into a String neither.
    let _ = write!(out, "{value}");
}

/// Builds the policy input of the contract:
/// `{"evidence": <bundle>, "context": {"environment", "sha", "repository",
/// "actor", "claims", "reviews", "now_ns"}}`. `now_ns` is `now` in Unix
/// nanoseconds, the same instant [`super::PolicyEngine::evaluate`] gives
/// `time.now_ns()`.
#[allow(clippy::too_many_arguments)]
pub fn build_input(
    evidence: &Value,
    environment: &str,
    sha: &str,
    repository: &str,
    actor: &str,
    claims: &BTreeMap<String, Value>,
    reviews: &Value,
    now: OffsetDateTime,
) -> Value {
    let claims: Map<String, Value> = claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    json!({
        "evidence": evidence,
        "context": {
            "environment": environment,
            "sha": sha,
            "repository": repository,
            "actor": actor,
            "claims": claims,
            "reviews": reviews,
            "now_ns": unix_nanos(now),
        },
    })
}

/// `now` in Unix nanoseconds as an `i64` (exact until the year 2262; clamped
/// beyond, never a panic).
pub(crate) fn unix_nanos(now: OffsetDateTime) -> i64 {
    let ns = now.unix_timestamp_nanos();
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}
