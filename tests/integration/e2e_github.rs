//! End to end through the application (in process; the real binary where
//! SIGTERM is under test): a real OpenID Provider mints the CI
//! tokens, a recording GitHub API mock takes the review calls, and the
//! webhooks are full-size, schema-valid payloads signed as GitHub signs them.

use std::time::Duration;

use crate::support::app::{App, Run, WEBHOOK_SECRET, sign};
use crate::support::github_mock::{GithubMock, Reply, TEST_APP_ID, review_path, test_app_private_key};
use crate::support::oidc::{OidcProvider, TestKey, forge, github_claims, with_registered};
use serde_json::{Value, json};

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const WAIT: Duration = Duration::from_secs(15);

pub(crate) struct World {
    pub(crate) oidc: OidcProvider,
    pub(crate) gh: GithubMock,
    pub(crate) app: App,
}

async fn world() -> World {
    world_with(Run::InProcess, "").await
}

/// The world with the real binary, for what needs a process (SIGTERM).
async fn binary_world() -> World {
    world_with(Run::Binary, "").await
}

async fn world_with(run: Run, extra: &str) -> World {
    world_with_server(run, "", extra).await
}

/// The world, with `server_extra` added to `[server]` and `extra` at the end.
async fn world_with_server(run: Run, server_extra: &str, extra: &str) -> World {
    world_full(run, server_extra, "", extra).await
}

/// The world, with `server_extra` added to `[server]`, `audit_extra` to
/// `[audit]` and `extra` at the end; files written to `dir` first.
pub(crate) async fn world_full(run: Run, server_extra: &str, audit_extra: &str, extra: &str) -> World {
    world_in(tempfile::tempdir().unwrap(), run, server_extra, audit_extra, extra).await
}

pub(crate) async fn world_in(
    dir: tempfile::TempDir,
    run: Run,
    server_extra: &str,
    audit_extra: &str,
    extra: &str,
) -> World {
    world_in_with_github(dir, run, server_extra, audit_extra, "", extra).await
}

/// [`world_in`], with `github_extra` added to `[github]`.
pub(crate) async fn world_in_with_github(
    dir: tempfile::TempDir,
    run: Run,
    server_extra: &str,
    audit_extra: &str,
    github_extra: &str,
    extra: &str,
) -> World {
    let oidc = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
shutdown_timeout = "10s"
max_body_bytes = 65536
{server_extra}

[audit]
path = "{{dir}}/audit.jsonl"
{audit_extra}

[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "OLD_SECRET" }}, {{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "2s"
{github_extra}

[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"

[environments.production]
approvers = ["octocat", "hubot"]
require_claims = {{ ref = "refs/heads/main", runner_environment = ["github-hosted", "self-hosted"] }}
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]

[environments.hotfix]
approvers = ["octocat"]
pending_timeout = "2s"
[environments.hotfix.verdict]
required = false
{extra}
"#,
        api = gh.url(),
        issuer = oidc.issuer(),
    );
    let app = App::launch_in(
        run,
        dir,
        &config,
        &[("GH_WEBHOOK_SECRET", WEBHOOK_SECRET), ("OLD_SECRET", "previous-secret")],
    )
    .await;
    World { oidc, gh, app }
}

pub(crate) fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn payload(gh: &GithubMock, run: u64, environment: &str, sha: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github/deployment_protection_rule.requested.json"
    ))
    .unwrap();
    let mut p: Value = serde_json::from_str(&text).unwrap();
    p["deployment_callback_url"] = json!(gh.callback_url("octo-org", "payments", run));
    p["environment"] = json!(environment);
    p["deployment"]["sha"] = json!(sha);
    p["deployment"]["environment"] = json!(environment);
    serde_json::to_vec(&p).unwrap()
}

pub(crate) fn ci_claims(run: u64, sha: &str) -> Value {
    let mut c = github_claims(sha);
    c["repository"] = json!(REPO);
    c["run_id"] = json!(run.to_string());
    c["sub"] = json!(format!("repo:{REPO}:environment:production"));
    c
}

impl World {
    pub(crate) async fn attest(&self, claims: Value) -> (u16, Value) {
        let token = self.oidc.mint("portcullis", claims).await;
        self.app.post_bearer("/v1/attestations", &token, None).await
    }

    pub(crate) async fn verdict(&self, sha: &str, environment: &str, allow: bool, reasons: &[&str]) -> (u16, Value) {
        let mut claims = github_claims(sha);
        claims["repository"] = json!(REPO);
        claims["job_workflow_ref"] = json!(GATE_WORKFLOW);
        claims["sub"] = json!(format!("repo:{REPO}:ref:refs/heads/main"));
        let token = self.oidc.mint("portcullis", claims).await;
        let body = json!({
            "environment": environment, "sha": sha, "policy": "data.deploy.hipaa.allow", "allow": allow,
            "evidence_digest": format!("sha256:{}", "ab".repeat(32)), "reasons": reasons,
        });
        self.app.post_bearer("/v1/verdicts", &token, Some(&body)).await
    }

    pub(crate) async fn webhook(&self, delivery: &str, run: u64, environment: &str, sha: &str) -> String {
        let (code, body) = self
            .app
            .post_webhook(
                "deployment_protection_rule",
                delivery,
                &payload(&self.gh, run, environment, sha),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
        body["request"].as_str().unwrap().to_string()
    }

    /// A re-run's delivery: the same run, a new deployment (each attempt of
    /// a deploying job gets its own).
    async fn rerun_webhook(&self, delivery: &str, run: u64, deployment: u64, sha: &str) -> String {
        let mut p: Value = serde_json::from_slice(&payload(&self.gh, run, "production", sha)).unwrap();
        p["deployment"]["id"] = json!(deployment);
        let (code, body) = self
            .app
            .post_webhook("deployment_protection_rule", delivery, &serde_json::to_vec(&p).unwrap())
            .await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
        body["request"].as_str().unwrap().to_string()
    }

    /// Waits until `n` review calls for `run` were made; returns them.
    async fn wait_reviews_for(&self, run: u64, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = self.reviews_for(run);
            if r.len() >= n {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} review calls for run {run}; logs:\n{}",
                r.len(),
                self.app.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn audited(&self, event: &str) -> Vec<Value> {
        self.app.audited(event).await
    }

    fn reviews_for(&self, run: u64) -> Vec<Value> {
        let path = review_path("octo-org", "payments", run);
        self.gh
            .reviews()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.body.unwrap())
            .collect()
    }

    async fn review_for(&self, run: u64) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = self.reviews_for(run);
            if let Some(first) = r.first() {
                return first.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no review call for run {run}; logs:\n{}",
                self.app.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn codes(request: &Value) -> Vec<String> {
    request["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_end_to_end_with_a_verifying_audit_chain() {
    let w = world().await;
    let (run, sha) = (7001, sha(7001));

    let (code, att) = w.attest(ci_claims(run, &sha)).await;
    assert_eq!(code, 201, "{att}");
    assert_eq!(
        (att["actor"].as_str(), att["repository"].as_str(), att["run"].as_str()),
        (Some("octocat"), Some(REPO), Some("7001"))
    );
    assert_eq!(att["issuer"], w.oidc.issuer());
    let (code, v) = w.verdict(&sha, "production", true, &[]).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["allow"], true);

    let id = w.webhook("d-7001", run, "production", &sha).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(
        codes(&req),
        [
            "attestation_verified",
            "claims_satisfied",
            "actor_approved",
            "verdict_allowed"
        ]
    );

    let review = w.review_for(run).await;
    assert_eq!(review["environment_name"], "production");
    assert_eq!(review["state"], "approved");
    let comment = review["comment"].as_str().unwrap();
    let record = req["decision_record"].as_str().unwrap();
    assert!(
        comment.starts_with(&format!(
            "portcullis approved the deployment of {} to production.",
            &sha[..12]
        )),
        "{comment}"
    );
    assert!(
        comment.ends_with(&format!("Audit: https://portcullis.example/v1/audit/{record}")),
        "{comment}"
    );
    assert!(comment.chars().count() <= 1024);
    let call = w.gh.reviews().pop().unwrap();
    assert!(call.header("authorization").unwrap().starts_with("Bearer "));
    assert_eq!(call.header("x-github-api-version"), Some("2022-11-28"));

    // The audit trail tells the story, in order, and verifies.
    let events: Vec<String> = w
        .app
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "attestation_accepted",
            "verdict_recorded",
            "request_received",
            "decision",
            "platform_result"
        ]
    );
    let (code, decision) = w.app.get(&format!("/v1/audit/{record}")).await;
    assert_eq!(code, 200);
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["actor"], "octocat");
    assert_eq!(decision["claims"]["ref"], "refs/heads/main");
    assert_eq!(decision["verdict"]["allow"], true);
    assert_eq!(decision["token_sha256"].as_str().map(str::len), Some(64));
    let out = w.app.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("audit chain OK: 5 record(s)"));
    let out = w.app.cli(&["audit", "query", "--sha", &sha, "--actor", "octocat"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["event"].as_str().unwrap()).collect::<Vec<_>>(),
        ["attestation_accepted", "verdict_recorded", "decision"]
    );

    // Secrets stay out of logs and the audit trail.
    let audit_text = std::fs::read_to_string(w.app.audit_path()).unwrap();
    for secret in [
        WEBHOOK_SECRET,
        "previous-secret",
        "BEGIN RSA PRIVATE KEY",
        "BEGIN PRIVATE KEY",
    ] {
        assert!(!w.app.logs().contains(secret), "`{secret}` leaked into the logs");
        assert!(!audit_text.contains(secret), "`{secret}` leaked into the audit");
    }
    assert!(!audit_text.contains("eyJ"), "a JWT leaked into the audit");
    assert!(!w.app.logs().contains("eyJ"), "a JWT leaked into the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_rejects_with_its_reason_and_the_platform_is_told() {
    let w = world().await;
    struct Case {
        run: u64,
        env: &'static str,
        claims: fn(Value) -> Value,
        verdict: Option<(bool, &'static [&'static str])>,
        code: &'static str,
    }
    let cases = [
        Case {
            run: 8001,
            env: "staging",
            claims: |c| c,
            verdict: None,
            code: "environment_not_configured",
        },
        Case {
            run: 8002,
            env: "production",
            claims: |mut c| {
                c["sha"] = json!(sha(9999));
                c
            },
            verdict: Some((true, &[])),
            code: "identity_mismatch",
        },
        Case {
            run: 8003,
            env: "production",
            claims: |mut c| {
                c["ref"] = json!("refs/heads/feature");
                c
            },
            verdict: Some((true, &[])),
            code: "claim_not_satisfied",
        },
        Case {
            run: 8004,
            env: "production",
            claims: |mut c| {
                c["actor"] = json!("mallory");
                c
            },
            verdict: Some((true, &[])),
            code: "actor_not_approver",
        },
        Case {
            run: 8005,
            env: "production",
            claims: |c| c,
            verdict: Some((false, &["container: 2 critical CVEs"])),
            code: "verdict_denied",
        },
    ];
    for c in &cases {
        let s = sha(c.run);
        let (code, body) = w.attest((c.claims)(ci_claims(c.run, &s))).await;
        assert_eq!(code, 201, "{body}");
        if let Some((allow, reasons)) = c.verdict {
            assert_eq!(w.verdict(&s, c.env, allow, reasons).await.0, 201);
        }
    }
    for c in &cases {
        let id = w.webhook(&format!("d-{}", c.run), c.run, c.env, &sha(c.run)).await;
        let req = w.app.wait_request(&id, "done", WAIT).await;
        assert_eq!(req["decision"]["outcome"], "rejected", "{}", c.code);
        assert_eq!(codes(&req), [c.code], "run {}", c.run);
        let review = w.review_for(c.run).await;
        assert_eq!(review["state"], "rejected", "{}", c.code);
        assert!(
            review["comment"].as_str().unwrap().contains(&format!("- {}: ", c.code)),
            "{review}"
        );
    }
    let denied = w.review_for(8005).await;
    assert!(
        denied["comment"]
            .as_str()
            .unwrap()
            .contains("verdict_denied: data.deploy.hipaa.allow denied: container: 2 critical CVEs")
    );
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_on_a_foreign_host_is_rejected_and_never_called() {
    let w = world().await;
    let (run, s) = (8101, sha(8101));
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let mut p: Value = serde_json::from_slice(&payload(&w.gh, run, "production", &s)).unwrap();
    p["deployment_callback_url"] = json!(format!(
        "https://evil.example/repos/{REPO}/actions/runs/{run}/deployment_protection_rule"
    ));
    let (code, body) = w
        .app
        .post_webhook("deployment_protection_rule", "d-8101", &serde_json::to_vec(&p).unwrap())
        .await;
    assert_eq!(code, 202, "{body}");
    let req = w
        .app
        .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
        .await;
    assert_eq!(req["decision"]["outcome"], "rejected");
    assert_eq!(codes(&req), ["callback_host_mismatch"]);
    assert_eq!(
        req["platform_result"]["detail"],
        "the platform was not called; the audit record says why"
    );
    let result = w
        .app
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "platform_result")
        .unwrap();
    assert_eq!(
        result["detail"]["detail"],
        "not called: the callback URL is not on the configured API host"
    );
    assert!(
        w.gh.requests().is_empty(),
        "nothing may be called: {:?}",
        w.gh.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_until_the_verdict_arrives_then_approved() {
    let w = world().await;
    let (run, s) = (7101, sha(7101));
    w.attest(ci_claims(run, &s)).await;
    let id = w.webhook("d-7101", run, "production", &s).await;
    // Pending, naming what is missing; nothing is called.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
        if req["decision"]["outcome"] == "pending" {
            assert_eq!(req["status"], "pending");
            assert_eq!(codes(&req), ["verdict_missing"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never pending: {req}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.reviews_for(run).is_empty());
    assert_eq!(w.verdict(&s, "production", true, &[]).await.0, 201);
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(w.review_for(run).await["state"], "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_arriving_after_the_webhook_unblocks_the_request() {
    let w = world().await;
    let (run, s) = (7201, sha(7201));
    w.verdict(&s, "production", true, &[]).await;
    let id = w.webhook("d-7201", run, "production", &s).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(codes(&req), ["attestation_missing"]);
    w.attest(ci_claims(run, &s)).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_missing_inputs_at_its_deadline_is_rejected_naming_them() {
    let w = world().await;
    let (run, s) = (7301, sha(7301));
    let id = w.webhook("d-7301", run, "hotfix", &s).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "rejected");
    assert_eq!(codes(&req), ["pending_timeout", "attestation_missing"]);
    let review = w.review_for(run).await;
    assert_eq!(review["state"], "rejected");
    assert!(
        review["comment"]
            .as_str()
            .unwrap()
            .contains("pending_timeout: still missing at the deadline (2s): attestation_missing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_twice_gives_one_review_call() {
    let w = world().await;
    let (run, s) = (7401, sha(7401));
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let body = payload(&w.gh, run, "production", &s);
    let (a, b) = tokio::join!(
        w.app.post_webhook("deployment_protection_rule", "d-7401", &body),
        w.app.post_webhook("deployment_protection_rule", "d-7401", &body)
    );
    let mut statuses = vec![
        a.1["status"].as_str().unwrap().to_string(),
        b.1["status"].as_str().unwrap().to_string(),
    ];
    statuses.sort();
    assert_eq!(
        (a.0, b.0, statuses),
        (202, 202, vec!["accepted".to_string(), "duplicate".to_string()])
    );
    // A second delivery id for the same run and environment is the same request.
    let (code, again) = w
        .app
        .post_webhook("deployment_protection_rule", "d-7401-b", &body)
        .await;
    assert_eq!(code, 202);
    w.app
        .wait_request(again["request"].as_str().unwrap(), "done", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.reviews_for(run).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_rejection_gets_its_own_answer() {
    let w = world().await;
    let (run, s) = (7601, sha(7601));
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", false, &["CVE-2026-0001 is critical"]).await;
    let first = w.webhook("d-7601-1", run, "production", &s).await;
    let done = w.app.wait_request(&first, "done", WAIT).await;
    assert_eq!(codes(&done), ["verdict_denied"]);
    assert_eq!(w.wait_reviews_for(run, 1).await[0]["state"], "rejected");

    // The fix lands, the verdict allows, and the team re-runs the failed
    // job: GitHub sends a new delivery for the same run (attempt 2).
    w.verdict(&s, "production", true, &[]).await;
    w.gh.set_run(run, 2, "octocat", "octocat");
    let second = w.rerun_webhook("d-7601-2", run, 99_000_001, &s).await;
    assert_ne!(second, first, "a re-run is a new request");
    let done = w.app.wait_request(&second, "done", WAIT).await;
    assert_eq!(done["decision"]["outcome"], "approved", "{done}");
    assert_eq!(done["run_attempt"]["number"], 2);
    let reviews = w.wait_reviews_for(run, 2).await;
    assert_eq!(
        reviews.iter().map(|r| r["state"].as_str().unwrap()).collect::<Vec<_>>(),
        ["rejected", "approved"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_by_a_non_approver_of_an_approvers_run_is_rejected_naming_the_rerunner() {
    let w = world().await;
    let (run, s) = (7602, sha(7602));
    // octocat (an approver) started the run; the token's actor is octocat.
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    // mallory (not an approver) re-ran it.
    w.gh.set_run(run, 2, "octocat", "mallory");
    let id = w.rerun_webhook("d-7602-2", run, 99_000_002, &s).await;
    let done = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(codes(&done), ["actor_not_approver"]);
    let message = done["decision"]["reasons"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("mallory (who started attempt 2 of run 7602; its first attempt and token are octocat's)"),
        "{message}"
    );
    let review = w.review_for(run).await;
    assert_eq!(review["state"], "rejected");
    assert!(review["comment"].as_str().unwrap().contains("mallory"), "{review}");
    assert!(review["comment"].as_str().unwrap().contains("octocat"), "{review}");
    // The decision record names the attested actor and the re-runner.
    let decision = w
        .app
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "decision" && r["request"] == id.as_str())
        .expect("a decision record");
    assert_eq!(decision["actor"], "octocat");
    assert_eq!(
        decision["detail"],
        json!({"run_attempt": 2, "triggering_actor": "mallory"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_failed_jobs_by_an_approver_with_only_the_first_attestation_is_approved() {
    let w = world().await;
    let (run, s) = (7603, sha(7603));
    // mallory started the run (attempt 1: the authorize job's token says
    // mallory); hubot, an approver, re-ran the failed deploy job. The
    // authorize job was not re-run: attempt 1's attestation is all there is.
    let mut claims = ci_claims(run, &s);
    claims["actor"] = json!("mallory");
    w.attest(claims).await;
    w.verdict(&s, "production", true, &[]).await;
    w.gh.set_run(run, 2, "mallory", "hubot");
    let id = w.rerun_webhook("d-7603-2", run, 99_000_003, &s).await;
    let done = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(done["decision"]["outcome"], "approved", "{done}");
    let approved = done["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "actor_approved")
        .expect("actor_approved")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        approved.starts_with("hubot (who started attempt 2 of run 7603"),
        "{approved}"
    );
    assert_eq!(w.review_for(run).await["state"], "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_is_read_before_any_answer_and_a_failed_read_waits() {
    let w = world().await;
    let (run, s) = (7604, sha(7604));
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    // GitHub cannot show the run for a while: the request waits.
    w.gh.script(
        &format!("/repos/{REPO}/actions/runs/{run}"),
        [
            Reply::status(502),
            Reply::status(502),
            Reply::status(502),
            Reply::status(502),
            Reply::status(502),
        ],
    );
    let id = w.webhook("d-7604", run, "production", &s).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
        if req["decision"]["outcome"] == "pending" {
            assert_eq!(codes(&req), ["run_attempt_unknown"]);
            break;
        }
        assert!(req["status"] != "done", "answered without the run: {req}");
        assert!(std::time::Instant::now() < deadline, "{req}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.reviews_for(run).is_empty(), "never answered without the run");
    // Once GitHub answers, the retried read lets it through.
    let done = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(done["decision"]["outcome"], "approved");
    assert_eq!(done["run_attempt"]["number"], 1);
}

/// A request whose run has no attestation yet can only wait: it is stored
/// pending at once, naming the attestation, and the run is not read from
/// GitHub until an attestation arrives (no API quota for a request that may
/// never be deployed); then it is read once and the request decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_is_read_only_once_its_attestation_has_arrived() {
    let w = world().await;
    let (run, s) = (7605, sha(7605));
    w.verdict(&s, "production", true, &[]).await;
    let run_path = format!("/repos/{REPO}/actions/runs/{run}");
    let id = w.webhook("d-7605", run, "production", &s).await;
    let (code, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(req["status"], "pending", "{req}");
    assert_eq!(req["decision"]["outcome"], "pending", "{req}");
    assert_eq!(codes(&req), ["attestation_missing"]);
    // Give a background evaluation, were there one, time to read the run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads = |w: &World| {
        w.gh.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == run_path)
            .count()
    };
    assert_eq!(reads(&w), 0, "the run is not read before its attestation");
    w.attest(ci_claims(run, &s)).await;
    let done = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(done["decision"]["outcome"], "approved", "{done}");
    assert_eq!(done["run_attempt"]["number"], 1);
    assert_eq!(reads(&w), 1, "read once, after the attestation");
    assert_eq!(w.reviews_for(run).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_for_another_commit_than_the_posting_jobs_is_refused() {
    let w = world().await;
    let (job_sha, other) = (sha(7701), sha(7702));
    let mut claims = github_claims(&job_sha);
    claims["repository"] = json!(REPO);
    claims["job_workflow_ref"] = json!(GATE_WORKFLOW);
    claims["sub"] = json!(format!("repo:{REPO}:ref:refs/heads/main"));
    let token = w.oidc.mint("portcullis", claims).await;
    let body = json!({"environment": "production", "sha": other, "allow": true});
    let (code, err) = w.app.post_bearer("/v1/verdicts", &token, Some(&body)).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (403, Some("sha_mismatch")),
        "{err}"
    );
    // The same job may post for its own commit.
    let body = json!({"environment": "production", "sha": job_sha, "allow": true});
    let (code, _) = w.app.post_bearer("/v1/verdicts", &token, Some(&body)).await;
    assert_eq!(code, 201);
    let refused = w.audited("attestation_rejected").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["detail"]["code"], "sha_mismatch");
    assert_eq!(refused[0]["sha"], json!(other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_tokens_grows_nothing_and_a_real_deploy_still_goes_through() {
    // The rate limit is off so that every token of the flood reaches the
    // verifier: what is measured is what the gate keeps of them.
    let w = world_with_server(Run::InProcess, "rate_limit = false", "").await;
    let audit_before = w.app.audit_records().len();
    let rss_before = rss_kib();
    const FLOOD: usize = 100_000;
    const CONNECTIONS: usize = 16;
    let url = w.app.url("/v1/attestations");
    let flood = {
        let http = reqwest::Client::new();
        let url = url.clone();
        tokio::spawn(async move {
            let mut refused = 0usize;
            let mut workers = Vec::new();
            for c in 0..CONNECTIONS {
                let (http, url) = (http.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    for i in (c..FLOOD).step_by(CONNECTIONS) {
                        let r = http
                            .post(&url)
                            .bearer_auth(format!("garbage-{i}"))
                            .send()
                            .await
                            .expect("post");
                        assert_eq!(r.status().as_u16(), 401);
                        n += 1;
                    }
                    n
                }));
            }
            for w in workers {
                refused += w.await.expect("worker");
            }
            refused
        })
    };
    // A real deployment while the flood runs.
    let (run, s) = (7801, sha(7801));
    let (code, _) = w.attest(ci_claims(run, &s)).await;
    assert_eq!(code, 201);
    w.verdict(&s, "production", true, &[]).await;
    let id = w.webhook("d-7801", run, "production", &s).await;
    let done = w.app.wait_request(&id, "done", Duration::from_secs(120)).await;
    assert_eq!(done["decision"]["outcome"], "approved", "{done}");
    assert_eq!(flood.await.expect("flood"), FLOOD);

    let records = w.app.audit_records();
    let grown: Vec<&Value> = records[audit_before..].iter().collect();
    assert!(
        grown.iter().all(|r| r["event"] != "attestation_rejected"),
        "no refused garbage token is audited"
    );
    assert!(grown.len() <= 8, "only the real deploy's records: {}", grown.len());
    let (_, metrics) = w.app.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(&format!("portcullis_tokens_refused_unverified_total {FLOOD}")),
        "{metrics}"
    );
    // Memory: the process (app and flooding client together) grew by less
    // than 64 MiB for 100,000 refused tokens; nothing is kept per token.
    let grown_kib = rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "RSS grew by {grown_kib} KiB");
}

/// This process's resident set size, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_429_with_retry_after_is_waited_out() {
    let w = world().await;
    let (run, s) = (7901, sha(7901));
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    w.gh.script_review(
        "octo-org",
        "payments",
        run,
        [Reply::status(429).header("retry-after", "1"), Reply::normal()],
    );
    let started = std::time::Instant::now();
    let id = w.webhook("d-7901", run, "production", &s).await;
    let done = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(done["decision"]["outcome"], "approved");
    assert_eq!(done["platform_result"]["ok"], true, "{done}");
    assert_eq!(done["platform_attempts"], 1, "waited out inside the one call");
    let reviews = w.wait_reviews_for(run, 2).await;
    assert_eq!(reviews.len(), 2, "the refused call, then the one after the wait");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_signed_by_a_trusted_issuer_are_audited_when_refused() {
    let w = world().await;
    let claims = with_registered(
        ci_claims(7401, &sha(7401)),
        &w.oidc.issuer(),
        "portcullis",
        now_unix(),
        300,
    );
    let mut unknown_issuer = claims.clone();
    unknown_issuer["iss"] = json!("https://issuer.invalid");
    let refused_unaudited = [
        ("garbage", "x".to_string(), "token_malformed"),
        (
            "unsigned",
            crate::support::oidc::forge_unsigned(&claims),
            "algorithm_not_allowed",
        ),
        ("a rogue key", forge(TestKey::Rogue, &claims), "signature_invalid"),
        (
            "an unknown issuer",
            forge(TestKey::ProviderRs256, &unknown_issuer),
            "issuer_not_trusted",
        ),
    ];
    for (what, token, code) in &refused_unaudited {
        let (status, err) = w.app.post_bearer("/v1/attestations", token, None).await;
        assert_eq!((status, err["error"]["code"].as_str()), (401, Some(*code)), "{what}");
    }
    // A token the issuer really signed, refused for what it says, is audited.
    let expired = with_registered(
        ci_claims(7401, &sha(7401)),
        &w.oidc.issuer(),
        "portcullis",
        now_unix() - 3600,
        300,
    );
    let expired = forge(TestKey::ProviderRs256, &expired);
    let (status, err) = w.app.post_bearer("/v1/attestations", &expired, None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (401, Some("token_expired")));

    let rejected = w.audited("attestation_rejected").await;
    assert_eq!(rejected.len(), 1, "only the signed token is audited: {rejected:?}");
    assert_eq!(
        rejected[0]["token_sha256"],
        json!(portcullis::crypto::sha256_hex(expired.as_bytes()))
    );
    assert_eq!(rejected[0]["detail"]["code"], "token_expired");
    assert!(
        w.app
            .logs()
            .contains("token refused before its signature verified (not audited)"),
        "the unaudited refusals are logged (rate-limited)"
    );
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contracts_error_bodies() {
    let w = world().await;
    let body = payload(&w.gh, 7501, "production", &sha(7501));

    let (code, err) = w
        .app
        .post_webhook_signed("deployment_protection_rule", "d-1", &body, &sign("wrong", &body))
        .await;
    assert_eq!((code, err["error"]["code"].as_str()), (401, Some("signature_invalid")));
    let (code, err) = w
        .app
        .post_webhook_signed("deployment_protection_rule", "d-1", &body, "")
        .await;
    assert_eq!((code, err["error"]["code"].as_str()), (401, Some("signature_invalid")));
    // The rotated-out secret still verifies.
    let (code, _) = w
        .app
        .post_webhook_signed("ping", "d-2", b"{}", &sign("previous-secret", b"{}"))
        .await;
    assert_eq!(code, 200);

    let big = vec![b' '; 70_000];
    let (code, err) = w.app.post_webhook("deployment_protection_rule", "d-3", &big).await;
    assert_eq!((code, err["error"]["code"].as_str()), (413, Some("payload_too_large")));

    let (code, err) = w
        .app
        .post_webhook("deployment_protection_rule", "d-4", b"{\"action\": \"requested\",")
        .await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("payload_malformed")));
    assert!(
        err["error"]["message"].as_str().unwrap().contains("EOF while parsing"),
        "{err}"
    );

    let (code, ok) = w.app.post_webhook("push", "d-5", b"{}").await;
    assert_eq!((code, ok), (202, json!({"status": "ignored", "event": "push"})));
    let (code, ok) = w
        .app
        .post_webhook("ping", "d-6", b"{\"zen\": \"Keep it logically awesome.\"}")
        .await;
    assert_eq!((code, ok), (200, json!({"status": "pong"})));

    // Tokens a real provider will not mint, through HTTP.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = forge(
        TestKey::ProviderRs256,
        &with_registered(ci_claims(1, &sha(1)), &w.oidc.issuer(), "portcullis", now - 7200, 600),
    );
    let (code, err) = w.app.post_bearer("/v1/attestations", &expired, None).await;
    assert_eq!(
        err,
        json!({"error": {"code": "token_expired", "message": err["error"]["message"]}})
    );
    assert_eq!(code, 401);
    let wrong_aud = w.oidc.mint("someone-else", ci_claims(1, &sha(1))).await;
    let (code, err) = w.app.post_bearer("/v1/attestations", &wrong_aud, None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (401, Some("audience_mismatch")));
    let (code, err) = w.app.post_bearer("/v1/attestations", "not-a-jwt", None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (401, Some("token_malformed")));
    let (code, err) = w.app.get("/v1/nothing").await;
    assert_eq!((code, err["error"]["code"].as_str()), (404, Some("not_found")));

    // A verdict from a job that is not a trusted producer.
    let s = sha(7502);
    let token = w.oidc.mint("portcullis", ci_claims(7502, &s)).await;
    let (code, err) = w
        .app
        .post_bearer(
            "/v1/verdicts",
            &token,
            Some(&json!({"environment": "production", "sha": s, "allow": true})),
        )
        .await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (403, Some("producer_not_trusted"))
    );
    let (code, err) = w
        .app
        .post_bearer(
            "/v1/verdicts",
            &token,
            Some(&json!({"environment": "production", "sha": "abc", "allow": true})),
        )
        .await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("invalid_sha")));
    let (code, err) = w
        .app
        .post_bearer(
            "/v1/verdicts",
            &token,
            Some(&json!({"environment": "production", "sha": s})),
        )
        .await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("invalid_verdict")),
        "{err}"
    );
    let (code, err) = w
        .app
        .post_bearer(
            "/v1/verdicts",
            &token,
            Some(&json!({"environment": "nope", "sha": s, "allow": true})),
        )
        .await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("environment_not_configured"))
    );
    // Nothing of this reached the platform.
    assert!(w.gh.reviews().is_empty());
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_failures_are_retried_and_422_counts_as_done() {
    let w = world().await;
    let (run, s) = (7601, sha(7601));
    w.gh.script(
        &review_path("octo-org", "payments", run),
        [Reply::status(502), Reply::status(503)],
    );
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let id = w.webhook("d-7601", run, "production", &s).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["platform_result"]["ok"], true);
    assert_eq!(req["platform_result"]["status"], 204);
    assert_eq!(w.reviews_for(run).len(), 3, "two failures, then success");

    let (run, s) = (7602, sha(7602));
    w.gh.script(&review_path("octo-org", "payments", run), [Reply::status(422)]);
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let id = w.webhook("d-7602", run, "production", &s).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(
        (
            req["platform_result"]["ok"].as_bool(),
            req["platform_result"]["status"].as_u64()
        ),
        (Some(true), Some(422))
    );
    assert_eq!(w.reviews_for(run).len(), 1);

    // A definite refusal closes the request after one call: not retried
    // inside the call, not re-driven.
    let (run, s) = (7603, sha(7603));
    w.gh.script(
        &review_path("octo-org", "payments", run),
        [Reply::status(403), Reply::normal()],
    );
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let id = w.webhook("d-7603", run, "production", &s).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(
        (
            req["platform_result"]["ok"].as_bool(),
            req["platform_result"]["status"].as_u64(),
            req["platform_attempts"].as_u64()
        ),
        (Some(false), Some(403), Some(1))
    );
    assert_eq!(w.reviews_for(run).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn githubs_error_text_reaches_the_audit_record_never_the_read_api() {
    let w = world().await;
    let cases = [
        (
            7651,
            403,
            "Resource not accessible by integration (upstream-text-7651)",
            false,
            "the platform refused the answer; the audit record has the details",
        ),
        (
            7652,
            422,
            "No pending deployment requests to approve or reject (upstream-text-7652)",
            true,
            "the platform took the answer",
        ),
    ];
    for (run, status, message, ok, shown) in cases {
        let s = sha(run);
        w.gh.script(
            &review_path("octo-org", "payments", run),
            [Reply::status(status).message(message)],
        );
        w.attest(ci_claims(run, &s)).await;
        w.verdict(&s, "production", true, &[]).await;
        let id = w.webhook(&format!("d-{run}"), run, "production", &s).await;
        let req = w.app.wait_request(&id, "done", WAIT).await;
        assert_eq!(
            req["platform_result"],
            json!({
                "ok": ok,
                "status": status,
                "detail": shown,
                "dry_run": false,
                "at": req["platform_result"]["at"],
            })
        );
        assert!(!req.to_string().contains("upstream-text"), "{req}");
        let recorded = w
            .app
            .audit_records()
            .into_iter()
            .rfind(|r| r["event"] == "platform_result" && r["request"] == json!(id))
            .unwrap();
        assert!(
            recorded["detail"]["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("upstream-text-{run}")),
            "the audit record keeps GitHub's text: {recorded}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_decision_in_flight_finish() {
    let mut w = binary_world().await;
    let (run, s) = (7701, sha(7701));
    w.gh.script(
        &review_path("octo-org", "payments", run),
        [Reply::normal().delay(Duration::from_millis(1500))],
    );
    w.attest(ci_claims(run, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    w.webhook("d-7701", run, "production", &s).await;
    // Wait for the review call to be under way, then stop the service.
    let deadline = std::time::Instant::now() + WAIT;
    while !w.app.logs().contains("decided") {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = w.app.terminate();
    assert!(status.success(), "exit status {status:?}; logs:\n{}", w.app.logs());
    assert_eq!(w.reviews_for(run).len(), 1, "the call in flight completed");
    let events: Vec<String> = w
        .app
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events.last().map(String::as_str), Some("platform_result"));
}
