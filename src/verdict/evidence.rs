//! The evidence bundle: its digest, and the policy input around it. Its
//! shape is checked in [`super::schema`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

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
