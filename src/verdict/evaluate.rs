//! Evidence in, verdict fields out: the one evaluation of a posted evidence
//! bundle under an environment's verdict settings, used by the service
//! (`POST /v1/verdicts`) and by the offline `decide` command alike, for every
//! verdict mode.

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;

use super::{Evaluation, PolicySet, build_input, check_evidence, evidence_digest};
use crate::config::{EnvironmentPolicy, VerdictMode};
use crate::domain::{ErrorCode, VerdictSource};

/// Who posted the evidence, as the policy's `input.context` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Poster<'a> {
    pub repository: &'a str,
    pub actor: &'a str,
    pub claims: &'a BTreeMap<String, Value>,
}

/// What the evaluation adds to a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluatedEvidence {
    pub allow: bool,
    pub reasons: Vec<String>,
    pub source: VerdictSource,
    /// The query that was evaluated.
    pub policy: String,
    /// `sha256:` of the evidence's canonical JSON.
    pub evidence_digest: String,
    /// The loaded policies' revision, or `opa:URL` for an OPA server.
    pub policy_revision: String,
}

/// Why evidence could not be evaluated. Never an allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvaluateError {
    /// The evidence or its claimed digest is wrong: the poster's fault (400).
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    /// Nothing could evaluate it now (no OPA server answer, no policies
    /// loaded): the poster may retry (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Evaluates `evidence` for commit `sha` with the environment's policy: in
/// process (mode `evaluated`, with the set's engine) or on its OPA server
/// (mode `opa`). The evidence must be a JSON object, and match the
/// environment's `evidence_schema` when it has one. A policy that fails to
/// evaluate in process gives a denying result that says so; an OPA server
/// that cannot answer, or policies not loaded yet, are
/// [`EvaluateError::Unavailable`].
pub async fn evaluate_evidence(
    policies: &PolicySet,
    policy: &EnvironmentPolicy,
    evidence: &Value,
    sha: &str,
    poster: Poster<'_>,
    claimed_digest: Option<&str>,
    now: OffsetDateTime,
) -> Result<EvaluatedEvidence, EvaluateError> {
    let invalid = |code: ErrorCode, message: String| EvaluateError::Invalid { code, message };
    check_evidence(policies.schema(&policy.name), evidence)
        .map_err(|e| invalid(ErrorCode::InvalidEvidence, format!("evidence{e}")))?;
    let digest = evidence_digest(evidence);
    if let Some(claimed) = claimed_digest
        && !claimed.eq_ignore_ascii_case(&digest)
    {
        return Err(invalid(
            ErrorCode::EvidenceDigestMismatch,
            format!("evidence_digest {claimed} is not the digest of the posted evidence ({digest})"),
        ));
    }
    let query = policy.verdict.policy.clone().unwrap_or_default();
    let input = build_input(
        evidence,
        &policy.name,
        sha,
        poster.repository,
        poster.actor,
        poster.claims,
        &Value::Array(Vec::new()),
        now,
    );
    let (evaluation, revision, source) = if policy.verdict.mode == VerdictMode::Opa {
        let url = policy
            .verdict
            .opa_url
            .clone()
            .ok_or_else(|| EvaluateError::Unavailable("no opa_url is configured".into()))?;
        match policies.opa().evaluate(&url, &query, &input).await {
            Ok(e) => (
                e,
                format!("opa:{}", url.as_str().trim_end_matches('/')),
                VerdictSource::Opa,
            ),
            Err(e) => {
                tracing::warn!(error = %e, environment = %policy.name, "OPA evaluation failed");
                return Err(EvaluateError::Unavailable(
                    "the OPA server did not answer; try again".into(),
                ));
            }
        }
    } else {
        let engine = policies
            .engine()
            .ok_or_else(|| EvaluateError::Unavailable("no Rego policies are loaded yet; try again".into()))?;
        let revision = engine.revision().to_string();
        let evaluation = match engine.evaluate(&query, &input, now) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, environment = %policy.name, "policy evaluation failed; recording a denying verdict");
                Evaluation {
                    allow: false,
                    reasons: vec![format!("policy evaluation failed: {e}")],
                }
            }
        };
        (evaluation, revision, VerdictSource::Evaluated)
    };
    Ok(EvaluatedEvidence {
        allow: evaluation.allow,
        reasons: evaluation.reasons,
        source,
        policy: query,
        evidence_digest: digest,
        policy_revision: revision,
    })
}
