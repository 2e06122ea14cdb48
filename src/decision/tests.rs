//! Table tests: one row per rule of the contract, each asserting the exact
//! reason codes.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::config::Config;
use crate::domain::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";
const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

fn config() -> Config {
    Config::from_toml(
        r#"
        [[issuers]]
        name = "gha"
        kind = "github"
        issuer = "https://token.actions.githubusercontent.com"
        audience = "portcullis"

        [environments.production]
        approvers = ["octocat", "hubot"]
        require_claims = { ref = "refs/heads/main", runner_environment = ["self-hosted", { pattern = "hipaa-.*" }] }
        pending_timeout = "30m"
        [environments.production.verdict]
        max_age = "24h"
        producers = [{ job_workflow_ref = { pattern = "octo-org/compliance/.+@refs/heads/main" } }]
        [environments.production.reviews]
        required = 2
        reviewers = ["alice@example.com", "bob@example.com", "octocat@example.com"]

        [environments.staging]
        approvers = ["octocat"]
        [environments.staging.verdict]
        required = false

        [slack]
        bot_token = { env = "T" }
        signing_secret = { env = "S" }
        "#,
        &|_| Some("x".into()),
    )
    .expect("test config is valid")
}

fn request(env: &str) -> DeploymentRequest {
    DeploymentRequest {
        id: "req_1".into(),
        platform: Platform::Github,
        issuer: "gha".into(),
        repository: "octo-org/payments".into(),
        run: "42".into(),
        environment: env.into(),
        sha: SHA.into(),
        target: Target::Github {
            owner: "octo-org".into(),
            repo: "payments".into(),
            run_id: 42,
            installation_id: Some(1),
            callback_url: "https://api.github.com/repos/octo-org/payments/actions/runs/42/deployment_protection_rule"
                .into(),
        },
        delivery: "d1".into(),
        received_at: NOW - time::Duration::minutes(1),
        deadline: NOW + time::Duration::minutes(29),
        intake_problems: vec![],
        reviews: vec![],
        status: RequestStatus::Pending,
        decision: None,
        run_attempt: Some(RunAttempt {
            number: 1,
            actor: Some("octocat".into()),
            triggering_actor: Some("octocat".into()),
            read: true,
        }),
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

fn claims(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn attestation() -> Attestation {
    Attestation {
        id: "att_1".into(),
        issuer_name: "gha".into(),
        issuer: "https://token.actions.githubusercontent.com".into(),
        platform: Platform::Github,
        subject: "repo:octo-org/payments:environment:production".into(),
        actor: "octocat".into(),
        repository: "octo-org/payments".into(),
        run: "42".into(),
        sha: Some(SHA.into()),
        claims: claims(&[
            ("ref", json!("refs/heads/main")),
            ("runner_environment", json!("self-hosted")),
            ("actor", json!("octocat")),
        ]),
        token_sha256: "ab".repeat(32),
        verified_at: NOW,
        expires_at: NOW + time::Duration::minutes(5),
    }
}

fn verdict(allow: bool) -> Verdict {
    Verdict {
        platform: Platform::Github,
        repository: "octo-org/payments".into(),
        sha: SHA.into(),
        environment: "production".into(),
        allow,
        source: VerdictSource::Asserted,
        policy: Some("data.deploy.hipaa.allow".into()),
        evidence_digest: None,
        policy_revision: None,
        reasons: if allow {
            vec![]
        } else {
            vec!["container: 2 critical CVEs".into()]
        },
        producer: Producer {
            issuer_name: "gha".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: "gate".into(),
            actor: "octocat".into(),
            claims: claims(&[(
                "job_workflow_ref",
                json!("octo-org/compliance/.github/workflows/gate.yml@refs/heads/main"),
            )]),
            token_sha256: "cd".repeat(32),
        },
        recorded_at: NOW - time::Duration::hours(1),
    }
}

fn review(who: &str, approve: bool) -> Review {
    Review {
        reviewer: who.into(),
        aliases: vec![],
        approve,
        via: "slack".into(),
        at: NOW,
    }
}

struct Case {
    name: &'static str,
    env: &'static str,
    req: fn(&mut DeploymentRequest),
    att: Option<fn(&mut Attestation)>,
    verdict: Option<fn(&mut Verdict)>,
    reviews: Vec<Review>,
    now: OffsetDateTime,
    outcome: Outcome,
    codes: Vec<ReasonCode>,
}

fn keep<T>(_: &mut T) {}

fn base(name: &'static str) -> Case {
    Case {
        name,
        env: "production",
        req: keep,
        att: Some(keep),
        verdict: Some(keep),
        reviews: vec![review("alice@example.com", true), review("bob@example.com", true)],
        now: NOW,
        outcome: Outcome::Approved,
        codes: vec![
            ReasonCode::AttestationVerified,
            ReasonCode::ClaimsSatisfied,
            ReasonCode::ActorApproved,
            ReasonCode::VerdictAllowed,
            ReasonCode::ReviewsSatisfied,
        ],
    }
}

fn run(case: &Case) -> Decision {
    let cfg = config();
    let mut req = request(case.env);
    (case.req)(&mut req);
    let att = case.att.map(|f| {
        let mut a = attestation();
        f(&mut a);
        a
    });
    let v = case.verdict.map(|f| {
        let mut v = verdict(true);
        v.environment = case.env.into();
        f(&mut v);
        v
    });
    evaluate(&Inputs {
        policy: cfg.environment(case.env),
        request: &req,
        attestation: att.as_ref(),
        verdict: v.as_ref(),
        reviews: &case.reviews,
        now: case.now,
    })
}

#[test]
fn every_rule_gives_its_reason_code() {
    use ReasonCode::*;
    let cases = vec![
        base("all rules hold"),
        Case {
            outcome: Outcome::Rejected,
            codes: vec![EnvironmentNotConfigured],
            env: "nope",
            ..base("1: unknown environment")
        },
        Case {
            att: None,
            outcome: Outcome::Pending,
            codes: vec![AttestationMissing],
            ..base("2: no attestation yet")
        },
        Case {
            att: Some(|a| a.repository = "octo-org/other".into()),
            outcome: Outcome::Rejected,
            codes: vec![IdentityMismatch],
            ..base("3: token of another repository")
        },
        Case {
            att: Some(|a| a.sha = Some(OTHER_SHA.into())),
            outcome: Outcome::Rejected,
            codes: vec![IdentityMismatch],
            ..base("3: token of another commit")
        },
        Case {
            att: Some(|a| a.platform = Platform::Gitlab),
            outcome: Outcome::Rejected,
            codes: vec![IdentityMismatch],
            ..base("3: token of another platform")
        },
        Case {
            att: Some(|a| {
                a.claims.insert("ref".into(), json!("refs/heads/feature"));
            }),
            outcome: Outcome::Rejected,
            codes: vec![ClaimNotSatisfied],
            ..base("4: wrong ref")
        },
        Case {
            att: Some(|a| {
                a.claims.remove("runner_environment");
            }),
            outcome: Outcome::Rejected,
            codes: vec![ClaimNotSatisfied],
            ..base("4: claim absent")
        },
        Case {
            att: Some(|a| a.actor = "mallory".into()),
            outcome: Outcome::Rejected,
            codes: vec![ActorNotApprover],
            ..base("5: actor not an approver")
        },
        Case {
            verdict: None,
            outcome: Outcome::Pending,
            codes: vec![VerdictMissing],
            ..base("6: no verdict yet")
        },
        Case {
            verdict: Some(|v| v.allow = false),
            outcome: Outcome::Rejected,
            codes: vec![VerdictDenied],
            ..base("6: verdict denies")
        },
        Case {
            verdict: Some(|v| v.recorded_at = NOW - time::Duration::hours(25)),
            outcome: Outcome::Pending,
            codes: vec![VerdictStale],
            ..base("6: stale verdict counts as missing")
        },
        Case {
            verdict: Some(|v| {
                v.producer.claims.insert(
                    "job_workflow_ref".into(),
                    json!("octo-org/payments/.github/workflows/self.yml@refs/heads/main"),
                );
            }),
            outcome: Outcome::Pending,
            codes: vec![VerdictProducerUntrusted],
            ..base("6: verdict from an untrusted producer counts as missing")
        },
        Case {
            verdict: Some(|v| v.sha = OTHER_SHA.into()),
            outcome: Outcome::Pending,
            codes: vec![VerdictMissing],
            ..base("6: verdict for another commit")
        },
        Case {
            reviews: vec![review("alice@example.com", true)],
            outcome: Outcome::Pending,
            codes: vec![ReviewsMissing],
            ..base("7: one of two reviews")
        },
        Case {
            reviews: vec![review("alice@example.com", true), review("ALICE@example.com", true)],
            outcome: Outcome::Pending,
            codes: vec![ReviewsMissing],
            ..base("7: the same reviewer twice counts once")
        },
        Case {
            reviews: vec![review("alice@example.com", true), review("mallory@example.com", true)],
            outcome: Outcome::Pending,
            codes: vec![ReviewsMissing],
            ..base("7: a reviewer not on the list counts for nothing")
        },
        Case {
            reviews: vec![review("alice@example.com", true), review("bob@example.com", false)],
            outcome: Outcome::Rejected,
            codes: vec![ReviewRejected],
            ..base("7: any rejection rejects")
        },
        Case {
            reviews: vec![
                review("alice@example.com", true),
                Review {
                    aliases: vec!["octocat".into()],
                    ..review("octocat@example.com", true)
                },
            ],
            outcome: Outcome::Pending,
            codes: vec![ReviewsMissing],
            ..base("7: the attested actor cannot review its own deployment")
        },
        Case {
            att: None,
            now: NOW + time::Duration::minutes(30),
            outcome: Outcome::Rejected,
            codes: vec![PendingTimeout, AttestationMissing],
            ..base("timeout names what was missing")
        },
        Case {
            req: |r| r.intake_problems = vec![Reason::new(CallbackHostMismatch, "evil host")],
            outcome: Outcome::Rejected,
            codes: vec![CallbackHostMismatch],
            ..base("a callback on a foreign host is never approved")
        },
        Case {
            att: Some(|a| a.actor = "mallory".into()),
            verdict: None,
            outcome: Outcome::Rejected,
            codes: vec![ActorNotApprover],
            ..base("a definite violation rejects at once, without waiting for the verdict")
        },
        Case {
            env: "staging",
            verdict: None,
            reviews: vec![],
            outcome: Outcome::Approved,
            codes: vec![AttestationVerified, ActorApproved, VerdictNotRequired],
            ..base("an environment without verdict or reviews")
        },
    ];
    for case in &cases {
        let d = run(case);
        assert_eq!(
            (d.outcome, d.codes()),
            (case.outcome, case.codes.clone()),
            "case `{}`: {:?}",
            case.name,
            d.reasons
        );
    }
}

#[test]
fn self_review_is_allowed_when_configured() {
    let mut cfg = config();
    cfg.environments
        .get_mut("production")
        .unwrap()
        .reviews
        .allow_self_review = true;
    let req = request("production");
    let att = attestation();
    let v = verdict(true);
    let reviews = vec![
        review("alice@example.com", true),
        Review {
            aliases: vec!["octocat".into()],
            ..review("octocat@example.com", true)
        },
    ];
    let d = evaluate(&Inputs {
        policy: cfg.environment("production"),
        request: &req,
        attestation: Some(&att),
        verdict: Some(&v),
        reviews: &reviews,
        now: NOW,
    });
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
}

#[test]
fn reasons_name_the_claim_and_the_verdicts_own_reasons() {
    let case = Case {
        att: Some(|a| {
            a.claims.insert("ref".into(), json!("refs/heads/feature"));
        }),
        verdict: Some(|v| {
            v.allow = false;
            v.reasons = vec!["container: 2 critical CVEs".into()];
        }),
        outcome: Outcome::Rejected,
        ..base("both")
    };
    let d = run(&case);
    assert_eq!(
        d.codes(),
        vec![ReasonCode::ClaimNotSatisfied, ReasonCode::VerdictDenied]
    );
    assert_eq!(
        d.reasons[0].message,
        "claim `ref` is \"refs/heads/feature\", required `refs/heads/main`"
    );
    assert_eq!(
        d.reasons[1].message,
        "data.deploy.hipaa.allow denied: container: 2 critical CVEs"
    );
}

#[test]
fn the_same_inputs_give_the_same_decision() {
    let a = run(&base("x"));
    let b = run(&base("x"));
    assert_eq!(a, b);
}

#[test]
fn the_identity_checked_is_whoever_started_this_attempt() {
    let config = config();
    let policy = config.environment("production").cloned().map(|mut p| {
        p.reviews.required = 0;
        p.verdict.required = false;
        p
    });
    let att = attestation(); // octocat
    let decide = |req: &DeploymentRequest| {
        evaluate(&Inputs {
            policy: policy.as_ref(),
            request: req,
            attestation: Some(&att),
            verdict: None,
            reviews: &[],
            now: NOW,
        })
    };
    let attempt = |number: u32, by: &str| {
        Some(RunAttempt {
            number,
            actor: Some("octocat".into()),
            triggering_actor: Some(by.into()),
            read: true,
        })
    };
    // GitHub, attempt 1: the token's actor, whatever else the run says.
    let mut req = request("production");
    req.run_attempt = attempt(1, "mallory");
    assert_eq!(decide(&req).outcome, Outcome::Approved);
    // GitHub, a re-run: its starter.
    req.run_attempt = attempt(2, "mallory");
    let d = decide(&req);
    assert_eq!(d.codes(), vec![ReasonCode::ActorNotApprover]);
    assert_eq!(
        d.reasons[0].message,
        "mallory (who started attempt 2 of run 42; its first attempt and token are octocat's) is not an approver of production"
    );
    req.run_attempt = attempt(3, "hubot");
    assert_eq!(decide(&req).outcome, Outcome::Approved);
    // GitHub, not read yet: waits.
    req.run_attempt = None;
    assert_eq!(decide(&req).codes(), vec![ReasonCode::RunAttemptUnknown]);
    // GitLab: the deployment's user.
    let mut gl = request("production");
    gl.platform = Platform::Gitlab;
    gl.repository = "octo-org/payments".into();
    let mut gl_att = att.clone();
    gl_att.platform = Platform::Gitlab;
    gl.run_attempt = attempt(0, "mallory");
    let d = evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &gl,
        attestation: Some(&gl_att),
        verdict: None,
        reviews: &[],
        now: NOW,
    });
    assert_eq!(d.codes(), vec![ReasonCode::ActorNotApprover], "{d:?}");
}

#[test]
fn another_issuers_attestation_or_verdict_never_counts() {
    let config = config();
    let policy = config.environment("production").cloned().map(|mut p| {
        p.reviews.required = 0;
        p
    });
    let req = request("production"); // bound to issuer `gha`
    let mut att = attestation();
    att.issuer_name = "ghes".into();
    let d = evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &req,
        attestation: Some(&att),
        verdict: Some(&verdict(true)),
        reviews: &[],
        now: NOW,
    });
    assert_eq!(d.codes(), vec![ReasonCode::IdentityMismatch]);
    assert_eq!(
        d.reasons[0].message,
        "the token is from issuer `ghes`; this platform's runs are attested by `gha`"
    );
    let mut v = verdict(true);
    v.producer.issuer_name = "ghes".into();
    let d = evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &req,
        attestation: Some(&attestation()),
        verdict: Some(&v),
        reviews: &[],
        now: NOW,
    });
    assert_eq!(d.codes(), vec![ReasonCode::VerdictMissing]);
}
