//! The cost of one in-process verdict over the shipped `deploy.hipaa` policy:
//! `PolicyEngine::evaluate` (the query and its `deny` set) on a passing and on
//! a failing bundle, plus the evidence checks done before it. Run with
//! `cargo bench --bench policy`; medians are in
//! `target/criterion/<name>/new/estimates.json`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::verdict::{PolicyEngine, build_input, evidence_digest, validate_evidence};
use serde_json::{Value, json};
use time::macros::datetime;

const QUERY: &str = "data.deploy.hipaa.allow";

fn evidence(digest: &str) -> Value {
    json!({
        "scans": {
            "sast": {"tool": "semgrep", "timestamp": "2026-03-01T10:00:00Z", "critical": 0, "high": 2},
            "container": {"tool": "trivy", "timestamp": "2026-03-01T10:05:00Z", "image_digest": digest, "critical": 0, "high": 1},
            "iac": {"tools": ["tfsec", "checkov"], "timestamp": "2026-03-01T10:10:00Z", "critical": 0, "high": 0},
            "secrets": {"tool": "gitleaks", "timestamp": "2026-03-01T10:00:00Z", "findings": 0},
            "dependencies": {"tool": "osv-scanner", "timestamp": "2026-03-01T09:00:00Z", "critical": 1, "high": 4}
        },
        "artifact": {
            "digest": digest,
            "cosign_verified": true,
            "signed_by": "awskms:///alias/hipaa-production-cosign",
            "target_environment": "production"
        }
    })
}

fn bench(c: &mut Criterion) {
    let now = datetime!(2026-03-01 12:00:00 UTC);
    let approvers = BTreeMap::from([("production".to_owned(), vec!["octocat".to_owned(), "hubot".to_owned()])]);
    let engine = PolicyEngine::load(
        &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/policies")],
        &approvers,
    )
    .expect("the shipped policy loads");
    let digest = format!("sha256:{}", "1".repeat(64));
    let claims = BTreeMap::new();
    let sha = "0123456789abcdef0123456789abcdef01234567";

    let good = evidence(&digest);
    let allow_input = build_input(
        &good,
        "production",
        sha,
        "octo-org/app",
        "octocat",
        &claims,
        &json!([]),
        now,
    );
    assert!(engine.evaluate(QUERY, &allow_input, now).expect("evaluates").allow);

    let mut bad = evidence(&digest);
    bad["scans"]["container"]["critical"] = json!(2);
    bad["scans"]["sast"]["timestamp"] = json!("2026-02-27T10:00:00Z");
    bad["artifact"]["signed_by"] = json!("awskms:///alias/rogue");
    let deny_input = build_input(
        &bad,
        "production",
        sha,
        "octo-org/app",
        "mallory",
        &claims,
        &json!([]),
        now,
    );
    let denied = engine.evaluate(QUERY, &deny_input, now).expect("evaluates");
    assert_eq!(denied.reasons.len(), 4, "{:?}", denied.reasons);

    c.bench_function("evaluate_allow", |b| {
        b.iter(|| engine.evaluate(QUERY, black_box(&allow_input), now))
    });
    c.bench_function("evaluate_deny", |b| {
        b.iter(|| engine.evaluate(QUERY, black_box(&deny_input), now))
    });
    c.bench_function("validate_and_digest_evidence", |b| {
        b.iter(|| {
            let _ = validate_evidence(black_box(&good));
            evidence_digest(black_box(&good))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
