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
        break_glass: &[],
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
        break_glass: &[],
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
            break_glass: &[],
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
    // Not read, and no attestation either: the run is read only once one
    // arrives, so only the attestation is named as missing.
    let unattested = evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &req,
        attestation: None,
        verdict: None,
        reviews: &[],
        break_glass: &[],
        now: NOW,
    });
    assert_eq!(unattested.outcome, Outcome::Pending);
    assert_eq!(unattested.codes(), vec![ReasonCode::AttestationMissing]);
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
        break_glass: &[],
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
        break_glass: &[],
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
        break_glass: &[],
        now: NOW,
    });
    assert_eq!(d.codes(), vec![ReasonCode::VerdictMissing]);
}

/// Break glass: who may ask, confirm and review, and the waiver of rules 6
/// and 7 (never 1 to 5) by a confirmed grant within its window.
mod break_glass {
    use super::*;
    use crate::config::ReviewVia;
    use crate::decision::break_glass::{Act, BreakGlassRefusal, break_glass_eligibility, justification};

    fn bg_config() -> Config {
        Config::from_toml(
            r##"
            [[issuers]]
            name = "gha"
            kind = "github"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "portcullis"

            [environments.production]
            approvers = ["octocat", "hubot"]
            [environments.production.verdict]
            max_age = "24h"
            producers = [{ job_workflow_ref = { pattern = "octo-org/compliance/.+@refs/heads/main" } }]
            [environments.production.reviews]
            required = 1
            reviewers = ["alice@example.com"]
            [environments.production.break_glass]
            requesters = ["oncall-lead@example.com"]
            confirmers = ["secops@example.com", "cto@example.com", "oncall-lead@example.com"]
            confirmations = 1
            window = "1h"
            alert_channel = "#security-alerts"

            [environments.staging]
            approvers = ["octocat"]
            [environments.staging.verdict]
            required = false

            [slack]
            bot_token = { env = "T" }
            signing_secret = { env = "S" }
            "##,
            &|_| Some("x".into()),
        )
        .expect("test config is valid")
    }

    fn person(email: &str) -> Person {
        Person {
            email: email.into(),
            aliases: vec![],
            via: "slack".into(),
            verified: "test".into(),
            at: NOW,
        }
    }

    fn grant(confirmed_by: &[&str]) -> Grant {
        let confirmed = !confirmed_by.is_empty();
        Grant {
            id: "bg_1".into(),
            repository: "Octo-Org/Payments".into(),
            sha: SHA.to_ascii_uppercase(),
            environment: "production".into(),
            justification: "payments are down; the hotfix must ship now".into(),
            requester: person("oncall-lead@example.com"),
            confirmations: confirmed_by.iter().map(|c| person(c)).collect(),
            required: 1,
            state: if confirmed {
                GrantState::Confirmed
            } else {
                GrantState::Requested
            },
            requested_at: NOW - time::Duration::minutes(10),
            confirmed_at: confirmed.then_some(NOW - time::Duration::minutes(5)),
            expires_at: NOW + time::Duration::minutes(55),
            uses: vec![],
            review_due: None,
            review: None,
            reminded_at: None,
            alert: None,
            version: 0,
        }
    }

    fn decide(grants: &[Grant], verdict: Option<&Verdict>, att: &Attestation, now: OffsetDateTime) -> Decision {
        let cfg = bg_config();
        let req = request("production");
        evaluate(&Inputs {
            policy: cfg.environment("production"),
            request: &req,
            attestation: Some(att),
            verdict,
            reviews: &[],
            break_glass: grants,
            now,
        })
    }

    #[test]
    fn a_confirmed_grant_within_its_window_waives_the_verdict_and_the_reviews() {
        let g = grant(&["secops@example.com"]);
        let d = decide(std::slice::from_ref(&g), None, &attestation(), NOW);
        assert_eq!(d.outcome, Outcome::Approved, "{d:?}");
        assert_eq!(
            d.codes(),
            [
                ReasonCode::AttestationVerified,
                ReasonCode::ActorApproved,
                ReasonCode::BreakGlass
            ]
        );
        let msg = &d.reasons[2].message;
        assert!(msg.contains("grant bg_1"), "{msg}");
        assert!(msg.contains("payments are down; the hotfix must ship now"), "{msg}");
        assert!(msg.contains("asked by oncall-lead@example.com (via slack)"), "{msg}");
        assert!(msg.contains("confirmed by secops@example.com (via slack)"), "{msg}");
        // A denying verdict does not reject it either.
        let d = decide(std::slice::from_ref(&g), Some(&verdict(false)), &attestation(), NOW);
        assert_eq!(d.outcome, Outcome::Approved, "{d:?}");
    }

    #[test]
    fn rules_one_to_five_are_never_waived() {
        let g = grant(&["secops@example.com"]);
        let mut att = attestation();
        att.actor = "mallory".into();
        let d = decide(std::slice::from_ref(&g), None, &att, NOW);
        assert_eq!(d.outcome, Outcome::Rejected);
        assert_eq!(d.codes(), [ReasonCode::ActorNotApprover]);
        let mut att = attestation();
        att.repository = "octo-org/other".into();
        let d = decide(std::slice::from_ref(&g), None, &att, NOW);
        assert_eq!(d.codes(), [ReasonCode::IdentityMismatch]);
    }

    #[test]
    fn an_expired_unconfirmed_or_foreign_grant_waives_nothing() {
        let pending = [ReasonCode::VerdictMissing, ReasonCode::ReviewsMissing];
        let g = grant(&["secops@example.com"]);
        // Past its window (whether or not the sweeper marked it yet).
        let mut ended = g.clone();
        ended.expires_at = NOW;
        let d = decide(&[ended], None, &attestation(), NOW);
        assert_eq!((d.outcome, d.codes()), (Outcome::Pending, pending.to_vec()));
        let mut expired = g.clone();
        expired.state = GrantState::Expired;
        let d = decide(&[expired], None, &attestation(), NOW);
        assert_eq!(d.codes(), pending);
        // Not confirmed yet.
        let d = decide(&[grant(&[])], None, &attestation(), NOW);
        assert_eq!(d.codes(), pending);
        // Confirmed only by the requester, or by someone off the list.
        for who in ["oncall-lead@example.com", "mallory@example.com"] {
            let d = decide(&[grant(&[who])], None, &attestation(), NOW);
            assert_eq!(d.codes(), pending, "confirmed by {who}");
        }
        // For another commit or environment.
        let mut other = g.clone();
        other.sha = OTHER_SHA.into();
        let mut staging = g.clone();
        staging.environment = "staging".into();
        let d = decide(&[other, staging], None, &attestation(), NOW);
        assert_eq!(d.codes(), pending);
        // Asked by someone who is not a requester (any more).
        let mut stranger = g.clone();
        stranger.requester = person("mallory@example.com");
        let d = decide(&[stranger], None, &attestation(), NOW);
        assert_eq!(d.codes(), pending);
    }

    #[test]
    fn who_may_ask_confirm_and_review() {
        let cfg = bg_config();
        let policy = cfg.environment("production");
        let ask = |who: &str, via| break_glass_eligibility("production", policy, via, Act::Request, Some(who), NOW);
        assert!(ask("oncall-lead@example.com", ReviewVia::Slack).is_ok());
        assert!(ask("ONCALL-LEAD@example.com", ReviewVia::Slack).is_ok());
        assert_eq!(
            ask("secops@example.com", ReviewVia::Slack).unwrap_err(),
            BreakGlassRefusal::NotARequester {
                person: "secops@example.com".into(),
                environment: "production".into()
            }
        );
        assert_eq!(
            ask("oncall-lead@example.com", ReviewVia::Sso).unwrap_err().code(),
            ErrorCode::BreakGlassNotEnabled
        );
        assert_eq!(
            break_glass_eligibility(
                "staging",
                cfg.environment("staging"),
                ReviewVia::Slack,
                Act::Request,
                None,
                NOW
            )
            .unwrap_err(),
            BreakGlassRefusal::NotEnabled("staging".into())
        );

        let g = grant(&[]);
        let confirm = |who: &str, g: &Grant| {
            break_glass_eligibility("production", policy, ReviewVia::Slack, Act::Confirm(g), Some(who), NOW)
                .map(|_| ())
                .map_err(|e| e.code())
        };
        assert_eq!(confirm("secops@example.com", &g), Ok(()));
        assert_eq!(confirm("oncall-lead@example.com", &g), Err(ErrorCode::SelfConfirmation));
        assert_eq!(
            confirm("mallory@example.com", &g),
            Err(ErrorCode::NotABreakGlassConfirmer)
        );
        let mut two = g.clone();
        two.required = 2;
        two.confirmations.push(person("secops@example.com"));
        assert_eq!(confirm("secops@example.com", &two), Err(ErrorCode::GrantClosed));
        assert_eq!(confirm("cto@example.com", &two), Ok(()));
        let confirmed = grant(&["secops@example.com"]);
        assert_eq!(confirm("cto@example.com", &confirmed), Err(ErrorCode::GrantClosed));
        let mut lapsed = g.clone();
        lapsed.expires_at = NOW;
        assert_eq!(confirm("cto@example.com", &lapsed), Err(ErrorCode::GrantClosed));

        let review = |who: &str, g: &Grant| {
            break_glass_eligibility("production", policy, ReviewVia::Slack, Act::Review(g), Some(who), NOW)
                .map(|_| ())
                .map_err(|e| e.code())
        };
        assert_eq!(
            review("cto@example.com", &confirmed),
            Err(ErrorCode::GrantClosed),
            "not used"
        );
        let mut used = confirmed.clone();
        used.uses.push(crate::domain::break_glass::GrantUse {
            request: "req_1".into(),
            decision_record: "rec".into(),
            at: NOW,
        });
        assert_eq!(review("cto@example.com", &used), Ok(()));
        assert_eq!(
            review("oncall-lead@example.com", &used),
            Err(ErrorCode::SelfConfirmation)
        );
        assert_eq!(
            review("mallory@example.com", &used),
            Err(ErrorCode::NotABreakGlassConfirmer)
        );
    }

    #[test]
    fn a_justification_has_at_least_twenty_characters() {
        assert_eq!(
            justification("  too short  ").unwrap_err(),
            BreakGlassRefusal::JustificationTooShort(9)
        );
        assert_eq!(
            justification(" payments are down, hotfix ").unwrap(),
            "payments are down, hotfix"
        );
        assert_eq!(justification(&"x".repeat(5000)).unwrap().len(), 2000);
    }
}
