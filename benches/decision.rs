//! The pure decision engine, `portcullis::decision::evaluate`, on the inputs
//! the gate hands it: an approval (every rule satisfied, listing why), a
//! pending request (nothing attested yet), a rejection (actor not an
//! approver), and an approval that also needs two human reviews.
//!
//! `cargo bench --bench decision`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::Config;
use portcullis::decision::{Inputs, Outcome, evaluate};
use portcullis::domain::{
    Attestation, DeploymentRequest, Platform, Producer, RequestStatus, Review, Target, Verdict, VerdictSource,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

const SHA: &str = "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6";
const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
const GATE: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";

fn config() -> Config {
    Config::from_toml(
        r#"
[environments.production]
approvers = ["octocat", "hubot"]
require_claims = { ref = "refs/heads/main", runner_environment = ["github-hosted", { pattern = "hipaa-.*" }] }
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{ job_workflow_ref = { pattern = "octo-org/compliance/.+@refs/heads/main" } }]

[environments.reviewed]
approvers = ["octocat"]
[environments.reviewed.verdict]
max_age = "24h"
producers = [{ job_workflow_ref = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main" }]
[environments.reviewed.reviews]
required = 2
reviewers = ["alice@example.com", "bob@example.com"]

[slack]
bot_token = { env = "T" }
signing_secret = { env = "S" }
"#,
        &|_| Some("x".into()),
    )
    .expect("bench config is valid")
}

fn request(environment: &str) -> DeploymentRequest {
    DeploymentRequest {
        id: "req_bench".into(),
        issuer: "gha".into(),
        platform: Platform::Github,
        repository: "octo-org/payments".into(),
        run: "13172451234".into(),
        environment: environment.into(),
        sha: SHA.into(),
        target: Target::Github {
            owner: "octo-org".into(),
            repo: "payments".into(),
            run_id: 13172451234,
            installation_id: Some(57203958),
            callback_url:
                "https://api.github.com/repos/octo-org/payments/actions/runs/13172451234/deployment_protection_rule"
                    .into(),
        },
        delivery: "d1".into(),
        received_at: NOW - time::Duration::minutes(1),
        deadline: NOW + time::Duration::minutes(29),
        intake_problems: vec![],
        reviews: vec![],
        status: RequestStatus::Pending,
        decision: None,
        run_attempt: None,
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

/// The 25 claims of a GitHub Actions ID token.
fn github_claims(actor: &str) -> BTreeMap<String, Value> {
    let v = json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "portcullis",
        "sub": "repo:octo-org/payments:environment:production", "ref": "refs/heads/main", "sha": SHA,
        "repository": "octo-org/payments", "repository_owner": "octo-org", "repository_owner_id": "1234567",
        "repository_id": "7654321", "repository_visibility": "private", "run_id": "13172451234",
        "run_number": "42", "run_attempt": "1", "actor": actor, "actor_id": "583231", "workflow": "deploy",
        "workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "workflow_sha": SHA,
        "job_workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "job_workflow_sha": SHA,
        "event_name": "push", "ref_type": "branch", "ref_protected": "true", "environment": "production",
        "runner_environment": "github-hosted",
    });
    serde_json::from_value(v).expect("claims")
}

fn attestation(actor: &str) -> Attestation {
    Attestation {
        id: "att_bench".into(),
        issuer_name: "gha".into(),
        issuer: "https://token.actions.githubusercontent.com".into(),
        platform: Platform::Github,
        subject: "repo:octo-org/payments:environment:production".into(),
        actor: actor.into(),
        repository: "octo-org/payments".into(),
        run: "13172451234".into(),
        sha: Some(SHA.into()),
        claims: github_claims(actor),
        token_sha256: "ab".repeat(32),
        verified_at: NOW - time::Duration::seconds(30),
        expires_at: NOW + time::Duration::minutes(10),
    }
}

fn verdict(environment: &str) -> Verdict {
    let mut claims = github_claims("compliance-bot");
    claims.insert("job_workflow_ref".into(), json!(GATE));
    Verdict {
        platform: Platform::Github,
        repository: "octo-org/payments".into(),
        sha: SHA.into(),
        environment: environment.into(),
        allow: true,
        source: VerdictSource::Asserted,
        policy: Some("data.deploy.hipaa.allow".into()),
        evidence_digest: Some(format!("sha256:{}", "cd".repeat(32))),
        policy_revision: None,
        reasons: vec![],
        producer: Producer {
            issuer_name: "gha".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: "repo:octo-org/compliance:ref:refs/heads/main".into(),
            actor: "compliance-bot".into(),
            claims,
            token_sha256: "ef".repeat(32),
        },
        recorded_at: NOW - time::Duration::minutes(5),
    }
}

fn review(who: &str) -> Review {
    Review {
        reviewer: who.into(),
        aliases: vec![],
        approve: true,
        via: "slack".into(),
        at: NOW,
    }
}

fn bench(c: &mut Criterion) {
    let config = config();
    let prod = config.environment("production");
    let reviewed = config.environment("reviewed");
    let (req, req_reviewed) = (request("production"), request("reviewed"));
    let (octocat, mallory) = (attestation("octocat"), attestation("mallory"));
    let (v_prod, v_reviewed) = (verdict("production"), verdict("reviewed"));
    let reviews = [review("alice@example.com"), review("bob@example.com")];

    let cases: [(&str, Inputs<'_>, Outcome); 4] = [
        (
            "approved",
            Inputs {
                policy: prod,
                request: &req,
                attestation: Some(&octocat),
                verdict: Some(&v_prod),
                reviews: &[],
                break_glass: &[],
                now: NOW,
            },
            Outcome::Approved,
        ),
        (
            "pending_no_attestation",
            Inputs {
                policy: prod,
                request: &req,
                attestation: None,
                verdict: None,
                reviews: &[],
                break_glass: &[],
                now: NOW,
            },
            Outcome::Pending,
        ),
        (
            "rejected_not_approver",
            Inputs {
                policy: prod,
                request: &req,
                attestation: Some(&mallory),
                verdict: Some(&v_prod),
                reviews: &[],
                break_glass: &[],
                now: NOW,
            },
            Outcome::Rejected,
        ),
        (
            "approved_with_two_reviews",
            Inputs {
                policy: reviewed,
                request: &req_reviewed,
                attestation: Some(&octocat),
                verdict: Some(&v_reviewed),
                reviews: &reviews,
                break_glass: &[],
                now: NOW,
            },
            Outcome::Approved,
        ),
    ];
    let mut group = c.benchmark_group("decision_evaluate");
    for (name, inputs, want) in &cases {
        assert_eq!(
            evaluate(inputs).outcome,
            *want,
            "{name}: {:?}",
            evaluate(inputs).reasons
        );
        group.bench_function(*name, |b| b.iter(|| evaluate(black_box(inputs))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
