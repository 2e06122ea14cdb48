//! Signed decision receipts: an in-toto Statement v1 about the commit, with
//! a SLSA verification summary (`https://slsa.dev/verification_summary/v1`)
//! as its predicate, in a DSSE envelope signed with the audit key.
//!
//! Built from the decision's audit record alone (and the deployment it
//! answered), so a receipt says exactly what the trail says; with the record's
//! leaf index, an inclusion proof ties it to a signed checkpoint.

use serde_json::{Value, json};

use super::AuditRecord;
use crate::signing::{IN_TOTO_PAYLOAD_TYPE, SigningKey};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const VSA_PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";

/// What a receipt is about besides its decision record.
pub struct ReceiptSubject<'a> {
    /// `verifier.id`: the service's public URL.
    pub verifier_id: &'a str,
    /// The deployment answered (the platform's URL for it).
    pub resource_uri: &'a str,
    /// The policy the environment named, when a verdict was weighed.
    pub policy_uri: Option<&'a str>,
}

/// The in-toto statement of a final decision record (`event = "decision"`).
pub fn statement(record: &AuditRecord, subject: &ReceiptSubject<'_>) -> Value {
    let e = &record.event;
    let passed = e.decision.as_deref() == Some("approved");
    let mut predicate = json!({
        "verifier": {"id": subject.verifier_id},
        "timeVerified": record.at,
        "resourceUri": subject.resource_uri,
        "verificationResult": if passed { "PASSED" } else { "FAILED" },
        "verifiedLevels": [],
        "portcullis": {
            "decision": e.decision,
            "reasons": e.reasons,
            "request": e.request,
            "environment": e.environment,
            "actor": e.actor,
            "record": record.id,
            "record_hash": record.hash,
            "leaf_index": record.seq - 1,
        },
    });
    // The policy, with the digest of the revision the verdict was made under.
    let revision = e
        .verdict
        .as_ref()
        .and_then(|v| v["policy_revision"].as_str())
        .filter(|r| !r.is_empty());
    let policy_name = e.verdict.as_ref().and_then(|v| v["policy"].as_str());
    if let Some(uri) = subject.policy_uri.or(policy_name) {
        let mut policy = json!({ "uri": uri });
        if let Some(rev) = revision {
            let hex = rev.strip_prefix("sha256:").unwrap_or(rev);
            policy["digest"] = json!({ "sha256": hex });
        }
        predicate["policy"] = policy;
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": e.repository,
            "digest": { "gitCommit": e.sha },
        }],
        "predicateType": VSA_PREDICATE_TYPE,
        "predicate": predicate,
    })
}

/// The statement signed: a DSSE envelope.
pub fn sign(key: &SigningKey, statement: &Value) -> Value {
    let payload = serde_json::to_vec(statement).unwrap_or_default();
    key.sign_dsse(IN_TOTO_PAYLOAD_TYPE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, EventKind, GENESIS};
    use crate::domain::{Reason, ReasonCode};
    use crate::signing::verify_dsse;

    fn record(decision: &str) -> AuditRecord {
        AuditRecord {
            seq: 12,
            id: "aud_0123456789abcdef0123".into(),
            at: "2026-12-04T10:00:00.000000Z".into(),
            event: AuditEvent::new(EventKind::Decision)
                .request("req_1")
                .repository("acme/api")
                .environment("production")
                .sha("0123456789abcdef0123456789abcdef01234567")
                .actor("octocat")
                .decision(decision)
                .reasons(vec![Reason::new(ReasonCode::ActorApproved, "octocat is an approver")])
                .verdict(json!({"policy": "data.hipaa.deploy", "policy_revision": "sha256:abcd"})),
            prev_hash: GENESIS.into(),
            hash: "h".into(),
        }
    }

    #[test]
    fn an_approval_passes_a_rejection_fails_and_both_verify() {
        let key = SigningKey::from_pem("log", &SigningKey::generate_pem().unwrap()).unwrap();
        let subject = ReceiptSubject {
            verifier_id: "https://portcullis.example.com",
            resource_uri: "https://api.github.com/repos/acme/api/actions/runs/1/deployment_protection_rule",
            policy_uri: None,
        };
        for (decision, result) in [("approved", "PASSED"), ("rejected", "FAILED")] {
            let st = statement(&record(decision), &subject);
            assert_eq!(
                st["subject"][0]["digest"]["gitCommit"],
                "0123456789abcdef0123456789abcdef01234567"
            );
            assert_eq!(st["subject"][0]["name"], "acme/api");
            assert_eq!(st["predicate"]["verificationResult"], result);
            assert_eq!(st["predicate"]["portcullis"]["leaf_index"], 11);
            assert_eq!(
                st["predicate"]["policy"],
                json!({"uri": "data.hipaa.deploy", "digest": {"sha256": "abcd"}})
            );
            let env = sign(&key, &st);
            let payload = verify_dsse(&env, &[key.public().clone()]).unwrap();
            assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), st);
        }
    }
}
