//! A property test of the decision engine against an oracle written apart
//! from it: over random requests, attestations, verdicts and reviews, the
//! engine approves exactly when every rule of the contract holds, rejects
//! whenever a rule is definitely broken, and otherwise waits (or, past the
//! deadline, rejects with `pending_timeout`).

use std::collections::BTreeMap;

use portcullis::config::Config;
use portcullis::decision::{Inputs, Outcome, ReasonCode, evaluate};
use portcullis::domain::{
    Attestation, DeploymentRequest, Platform, Producer, Reason, RequestStatus, Review, RunAttempt, Target, Verdict,
    VerdictSource,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";
const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);
const REVIEWERS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];

/// One generated review: which of the three listed reviewers (or an
/// outsider), approve or reject, and whether it carries the actor's login.
#[derive(Debug, Clone)]
struct GenReview {
    who: usize,
    approve: bool,
    is_actor: bool,
}

/// Everything the test varies. Each field is one rule's input, so the
/// oracle below reads the rules straight off it.
#[derive(Debug, Clone)]
struct Case {
    configured: bool,
    verdict_required: bool,
    reviews_required: u32,
    allow_self_review: bool,
    intake_problem: bool,
    past_deadline: bool,
    attestation: Option<GenAttestation>,
    verdict: Option<GenVerdict>,
    reviews: Vec<GenReview>,
}

#[derive(Debug, Clone)]
struct GenAttestation {
    same_repository: bool,
    sha: Option<bool>,
    claim: Option<bool>,
    approver: bool,
}

#[derive(Debug, Clone)]
struct GenVerdict {
    allow: bool,
    fresh: bool,
    trusted: bool,
    same_sha: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let att = (
        any::<bool>(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(|(same_repository, sha, claim, approver)| GenAttestation {
            same_repository,
            sha,
            claim,
            approver,
        });
    let verdict =
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(allow, fresh, trusted, same_sha)| {
            GenVerdict {
                allow,
                fresh,
                trusted,
                same_sha,
            }
        });
    let review = (0usize..4, any::<bool>(), any::<bool>()).prop_map(|(who, approve, is_actor)| GenReview {
        who,
        approve,
        is_actor,
    });
    (
        (
            any::<bool>(),
            any::<bool>(),
            0u32..3,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        proptest::option::weighted(0.8, att),
        proptest::option::weighted(0.8, verdict),
        proptest::collection::vec(review, 0..5),
    )
        .prop_map(
            |(
                (configured, verdict_required, reviews_required, allow_self_review, intake_problem, past_deadline),
                attestation,
                verdict,
                reviews,
            )| Case {
                configured,
                verdict_required,
                reviews_required,
                allow_self_review,
                intake_problem: intake_problem && reviews_required == 1, // rarer
                past_deadline,
                attestation,
                verdict,
                reviews,
            },
        )
}

fn config(c: &Case) -> Config {
    let text = format!(
        r#"
        [[issuers]]
        name = "gha"
        kind = "github"
        issuer = "https://token.actions.githubusercontent.com"
        audience = "portcullis"

        [environments.production]
        approvers = ["octocat"]
        require_claims = {{ ref = "refs/heads/main" }}
        pending_timeout = "30m"
        [environments.production.verdict]
        required = {required}
        max_age = "1h"
        producers = [{{ job_workflow_ref = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main" }}]
        [environments.production.reviews]
        required = {reviews}
        reviewers = ["alice@example.com", "bob@example.com", "carol@example.com"]
        allow_self_review = {self_review}

        [slack]
        bot_token = {{ env = "T" }}
        signing_secret = {{ env = "S" }}
        "#,
        required = c.verdict_required,
        reviews = c.reviews_required,
        self_review = c.allow_self_review,
    );
    Config::from_toml(&text, &|_| Some("x".into())).expect("generated config is valid")
}

fn build(c: &Case) -> (DeploymentRequest, Option<Attestation>, Option<Verdict>, Vec<Review>) {
    let deadline = if c.past_deadline {
        NOW - time::Duration::seconds(1)
    } else {
        NOW + time::Duration::minutes(10)
    };
    let request = DeploymentRequest {
        id: "req_prop".into(),
        platform: Platform::Github,
        issuer: "gha".into(),
        repository: "octo-org/payments".into(),
        run: "42".into(),
        environment: if c.configured { "production" } else { "nowhere" }.into(),
        sha: SHA.into(),
        target: Target::Github {
            owner: "octo-org".into(),
            repo: "payments".into(),
            run_id: 42,
            installation_id: None,
            callback_url: "https://api.github.com/repos/octo-org/payments/actions/runs/42/deployment_protection_rule"
                .into(),
        },
        delivery: "d".into(),
        received_at: NOW - time::Duration::minutes(20),
        deadline,
        intake_problems: if c.intake_problem {
            vec![Reason::new(ReasonCode::CallbackHostMismatch, "foreign callback host")]
        } else {
            vec![]
        },
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
    };
    let attestation = c.attestation.as_ref().map(|a| {
        let mut claims: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(ok) = a.claim {
            claims.insert(
                "ref".into(),
                json!(if ok { "refs/heads/main" } else { "refs/heads/dev" }),
            );
        }
        Attestation {
            id: "att".into(),
            issuer_name: "gha".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            platform: Platform::Github,
            subject: "repo:octo-org/payments".into(),
            actor: if a.approver { "octocat" } else { "mallory" }.into(),
            repository: if a.same_repository {
                "Octo-Org/Payments"
            } else {
                "octo-org/other"
            }
            .into(),
            run: "42".into(),
            sha: a
                .sha
                .map(|same| if same { SHA.to_uppercase() } else { OTHER_SHA.into() }),
            claims,
            token_sha256: "00".repeat(32),
            verified_at: NOW,
            expires_at: NOW + time::Duration::minutes(5),
        }
    });
    let verdict = c.verdict.as_ref().map(|v| {
        let mut producer_claims = BTreeMap::new();
        producer_claims.insert(
            "job_workflow_ref".to_string(),
            json!(if v.trusted {
                "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main"
            } else {
                "octo-org/payments/.github/workflows/self.yml@refs/heads/main"
            }),
        );
        Verdict {
            platform: Platform::Github,
            repository: "octo-org/payments".into(),
            sha: if v.same_sha { SHA } else { OTHER_SHA }.into(),
            environment: "production".into(),
            allow: v.allow,
            source: VerdictSource::Asserted,
            policy: None,
            evidence_digest: None,
            policy_revision: None,
            reasons: vec![],
            producer: Producer {
                issuer_name: "gha".into(),
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: "gate".into(),
                actor: "bot".into(),
                claims: producer_claims,
                token_sha256: "11".repeat(32),
            },
            recorded_at: if v.fresh {
                NOW - time::Duration::minutes(5)
            } else {
                NOW - time::Duration::hours(2)
            },
        }
    });
    let actor_login = attestation.as_ref().map(|a| a.actor.clone()).unwrap_or_default();
    let reviews = c
        .reviews
        .iter()
        .map(|r| Review {
            reviewer: REVIEWERS.get(r.who).copied().unwrap_or("eve@example.com").into(),
            aliases: if r.is_actor { vec![actor_login.clone()] } else { vec![] },
            approve: r.approve,
            via: "slack".into(),
            at: NOW,
        })
        .collect();
    (request, attestation, verdict, reviews)
}

/// The oracle's verdict on each rule: `Some(true)` holds, `Some(false)`
/// definitely broken, `None` still open (an input may yet arrive).
struct Oracle {
    rules: Vec<(&'static str, Option<bool>)>,
}

fn oracle(c: &Case) -> Oracle {
    let mut rules: Vec<(&'static str, Option<bool>)> = Vec::new();
    rules.push(("1 environment configured", Some(c.configured)));
    rules.push(("intake", Some(!c.intake_problem)));
    match &c.attestation {
        None => rules.push(("2 attestation", None)),
        Some(a) => {
            rules.push(("3 identity agrees", Some(a.same_repository && a.sha != Some(false))));
            rules.push(("4 claims", Some(a.claim == Some(true))));
            rules.push(("5 approver", Some(a.approver)));
        }
    }
    if c.verdict_required {
        rules.push((
            "6 verdict",
            match &c.verdict {
                Some(v) if v.same_sha && v.trusted && v.fresh => Some(v.allow),
                _ => None,
            },
        ));
    }
    if c.reviews_required > 0 {
        let actor_known = c.attestation.is_some();
        let listed = |r: &&GenReview| r.who < REVIEWERS.len();
        let rejected = c.reviews.iter().filter(listed).any(|r| !r.approve);
        let mut approvers: Vec<usize> = c
            .reviews
            .iter()
            .filter(listed)
            .filter(|r| r.approve && (c.allow_self_review || !(r.is_actor && actor_known)))
            .map(|r| r.who)
            .collect();
        approvers.sort();
        approvers.dedup();
        rules.push((
            "7 reviews",
            if rejected {
                Some(false)
            } else if approvers.len() as u32 >= c.reviews_required {
                Some(true)
            } else {
                None
            },
        ));
    }
    Oracle { rules }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_rules(c in case()) {
        let config = config(&c);
        let (request, attestation, verdict, reviews) = build(&c);
        let decision = evaluate(&Inputs {
            policy: config.environment(&request.environment),
            request: &request,
            attestation: attestation.as_ref(),
            verdict: verdict.as_ref(),
            reviews: &reviews,
            break_glass: &[],
            now: NOW,
        });
        let o = oracle(&c);
        let broken: Vec<&str> = o.rules.iter().filter(|(_, v)| *v == Some(false)).map(|(n, _)| *n).collect();
        let open: Vec<&str> = o.rules.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        let all_hold = broken.is_empty() && open.is_empty();

        // Approved exactly when every rule holds.
        prop_assert_eq!(decision.outcome == Outcome::Approved, all_hold,
            "decision {:?}, broken {:?}, open {:?}", decision, broken, open);
        // Any definitely broken rule rejects at once.
        if !broken.is_empty() {
            prop_assert_eq!(decision.outcome, Outcome::Rejected, "broken {:?}: {:?}", broken, decision);
        }
        // Only open rules: pending, or past the deadline, rejected for it.
        if broken.is_empty() && !open.is_empty() {
            if c.past_deadline {
                prop_assert_eq!(decision.outcome, Outcome::Rejected);
                prop_assert_eq!(decision.reasons[0].code, ReasonCode::PendingTimeout);
            } else {
                prop_assert_eq!(decision.outcome, Outcome::Pending, "open {:?}: {:?}", open, decision);
            }
        }
        // A rejection or a wait always says why.
        prop_assert!(!decision.reasons.is_empty());
    }
}
