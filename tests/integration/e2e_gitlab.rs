//! End to end through the application, in process, for GitLab: a `blocked` Deployment
//! Hook, GitLab-shaped ID tokens from a real OpenID Provider, and a recording
//! GitLab API mock that checks every request.

use std::time::Duration;

use crate::support::app::App;
use crate::support::gitlab_mock::{GitlabMock, Reply};
use crate::support::oidc::{OidcProvider, gitlab_claims};
use base64::Engine;
use serde_json::{Value, json};

const PROJECT_ID: u64 = 4711;
const PROJECT: &str = "platform/payments-api";
const API_TOKEN: &str = "glpat-test-only-0123456789";
const HOOK_TOKEN: &str = "test-only-hook-token";
const PARENT: &str = "gitlab.example.com/platform/compliance//parent.gitlab-ci.yml@refs/heads/main";
const WAIT: Duration = Duration::from_secs(15);

fn signing_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"test-only-signing-key-32-bytes!!")
    )
}

struct World {
    oidc: OidcProvider,
    gl: GitlabMock,
    app: App,
}

async fn world() -> World {
    let oidc = OidcProvider::start().await;
    let gl = GitlabMock::start(API_TOKEN).await;
    gl.add_project(PROJECT_ID, PROJECT);
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"

[audit]
path = "{{dir}}/audit.jsonl"

[gitlab]
url = "{gl}"
token = {{ env = "GL_TOKEN" }}
webhook_token = {{ env = "GL_HOOK_TOKEN" }}
signing_token = {{ env = "GL_SIGNING_TOKEN" }}
represented_as = "portcullis-bot"
play_after_approval = true
request_timeout = "2s"

[[issuers]]
name = "gitlab"
kind = "gitlab"
issuer = "{issuer}"
audience = "portcullis"

[environments.production]
approvers = ["alice"]
require_claims = {{ ref_protected = "true", environment_protected = "true", ref = "main" }}
[environments.production.verdict]
producers = [{{ ci_config_ref_uri = "{PARENT}" }}]

[environments.canary]
approvers = ["alice"]
pending_timeout = "2s"
[environments.canary.verdict]
required = false
"#,
        gl = gl.url(),
        issuer = oidc.issuer(),
    );
    let secret = signing_secret();
    let app = App::start(
        &config,
        &[
            ("GL_TOKEN", API_TOKEN),
            ("GL_HOOK_TOKEN", HOOK_TOKEN),
            ("GL_SIGNING_TOKEN", &secret),
        ],
    )
    .await;
    World { oidc, gl, app }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/gitlab/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

impl World {
    /// Registers deployment `id` of pipeline `pipeline` at the mock and
    /// returns its `blocked` hook.
    fn blocked(&self, id: u64, pipeline: u64, environment: &str, sha: &str) -> Vec<u8> {
        let mut api = fixture("api.deployment.json");
        api["id"] = json!(id);
        api["sha"] = json!(sha);
        api["environment"]["name"] = json!(environment);
        api["deployable"]["id"] = json!(id + 100_000);
        api["deployable"]["pipeline"]["id"] = json!(pipeline);
        api["deployable"]["pipeline"]["sha"] = json!(sha);
        // The pipeline's user (alice, as in the CI tokens) started the job.
        api["user"]["username"] = json!("alice");
        api["deployable"]["user"]["username"] = json!("alice");
        self.gl.add_deployment(PROJECT_ID, api);
        let mut hook = fixture("deployment.blocked.json");
        hook["deployment_id"] = json!(id);
        hook["deployable_id"] = json!(id + 100_000);
        hook["environment"] = json!(environment);
        hook["short_sha"] = json!(&sha[..8]);
        serde_json::to_vec(&hook).unwrap()
    }

    async fn hook(&self, body: &[u8], idempotency: &str) -> (u16, Value) {
        let r = self
            .app
            .http
            .post(self.app.url("/webhooks/gitlab"))
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Deployment Hook")
            .header("x-gitlab-token", HOOK_TOKEN)
            .header("idempotency-key", idempotency)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn attest(&self, claims: Value) {
        let token = self.oidc.mint("portcullis", claims).await;
        let (code, body) = self.app.post_bearer("/v1/attestations", &token, None).await;
        assert_eq!(code, 201, "{body}");
    }

    async fn verdict(&self, sha: &str, env: &str, allow: bool, reasons: &[&str]) {
        let mut claims = gitlab_claims(sha);
        claims["project_path"] = json!(PROJECT);
        claims["ci_config_ref_uri"] = json!(PARENT);
        let token = self.oidc.mint("portcullis", claims).await;
        let body = json!({"environment": env, "sha": sha, "allow": allow, "reasons": reasons, "policy": "data.deploy.hipaa.allow"});
        let (code, resp) = self.app.post_bearer("/v1/verdicts", &token, Some(&body)).await;
        assert_eq!(code, 201, "{resp}");
    }

    async fn approval_for(&self, deployment: u64) -> crate::support::gitlab_mock::Approval {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(a) = self.gl.approvals().into_iter().find(|a| a.deployment_id == deployment) {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no approval call for {deployment}; logs:\n{}",
                self.app.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ci(pipeline: u64, sha: &str) -> Value {
    let mut c = gitlab_claims(sha);
    c["project_path"] = json!(PROJECT);
    c["project_id"] = json!(PROJECT_ID.to_string());
    c["pipeline_id"] = json!(pipeline.to_string());
    c
}

fn codes(req: &Value) -> Vec<String> {
    req["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_deployment_is_approved_and_its_job_played() {
    let w = world().await;
    let (dep, pipeline, s) = (2001, 53001, sha(2001));
    w.attest(ci(pipeline, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let (code, body) = w.hook(&w.blocked(dep, pipeline, "production", &s), "idem-2001").await;
    assert_eq!(code, 202, "{body}");
    let req = w
        .app
        .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
        .await;
    assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    assert_eq!(req["run"], pipeline.to_string());
    assert_eq!(req["sha"], s, "the full sha comes from the deployments API");

    let a = w.approval_for(dep).await;
    assert_eq!(
        (a.status.as_str(), a.represented_as.as_deref()),
        ("approved", Some("portcullis-bot"))
    );
    let comment = a.comment.unwrap();
    assert!(
        comment.starts_with(&format!(
            "portcullis approved the deployment of {} to production.",
            &s[..12]
        )),
        "{comment}"
    );
    let approval =
        w.gl.requests()
            .into_iter()
            .find(|r| r.path.ends_with(&format!("/deployments/{dep}/approval")))
            .unwrap();
    assert_eq!(approval.header("private-token"), Some(API_TOKEN));
    // GitLab does not start the job by itself: it is played.
    let deadline = std::time::Instant::now() + WAIT;
    while !w
        .gl
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with(&format!("/jobs/{}/play", dep + 100_000)))
    {
        assert!(std::time::Instant::now() < deadline, "the job was not played");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = w.app.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!std::fs::read_to_string(w.app.audit_path()).unwrap().contains(API_TOKEN));
    assert!(!w.app.logs().contains(API_TOKEN) && !w.app.logs().contains(HOOK_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_deploy_job_is_decided_afresh_and_its_retrier_is_checked() {
    let w = world().await;
    let (pipeline, s) = (53011, sha(2011));
    w.attest(ci(pipeline, &s)).await; // the pipeline's token: alice, an approver
    w.verdict(&s, "production", true, &[]).await;

    // mallory (not an approver) retries the deploy job of alice's pipeline:
    // GitLab makes a new deployment, whose user is mallory.
    let retried = w.blocked(2011, pipeline, "production", &s);
    let mut api = w.gl.deployment(PROJECT_ID, 2011).expect("the mock holds it");
    api["user"]["username"] = json!("mallory");
    w.gl.add_deployment(PROJECT_ID, api);
    let (code, body) = w.hook(&retried, "idem-2011").await;
    assert_eq!(code, 202, "{body}");
    let first = body["request"].as_str().unwrap().to_string();
    let req = w.app.wait_request(&first, "done", WAIT).await;
    assert_eq!(codes(&req), ["actor_not_approver"], "{req}");
    let message = req["decision"]["reasons"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "mallory (who started this deployment's job in pipeline {pipeline}; the pipeline's token is alice's)"
        )),
        "{message}"
    );
    assert_eq!(w.approval_for(2011).await.status, "rejected");

    // alice retries it again: another new deployment, decided afresh.
    let (code, body) = w.hook(&w.blocked(2012, pipeline, "production", &s), "idem-2012").await;
    assert_eq!(code, 202, "{body}");
    let second = body["request"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let req = w.app.wait_request(&second, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    assert_eq!(w.approval_for(2012).await.status, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_hook_naming_another_project_than_the_api_is_rejected() {
    let w = world().await;
    let (pipeline, s) = (53021, sha(2021));
    w.attest(ci(pipeline, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    // The hook claims another project than the deployment GitLab holds.
    let mut hook: Value = serde_json::from_slice(&w.blocked(2021, pipeline, "production", &s)).unwrap();
    hook["project"]["path_with_namespace"] = json!("someone-else/project");
    let (code, body) = w.hook(&serde_json::to_vec(&hook).unwrap(), "idem-2021").await;
    assert_eq!(code, 202, "{body}");
    let req = w
        .app
        .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
        .await;
    assert_eq!(codes(&req)[0], "identity_mismatch", "{req}");
    let message = req["decision"]["reasons"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the hook names project `someone-else/project`, GitLab's deployments API `"),
        "{message}"
    );
    assert_eq!(w.approval_for(2021).await.status, "rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_rejects_a_blocked_deployment_with_its_reason() {
    let w = world().await;
    struct Case {
        dep: u64,
        env: &'static str,
        claims: fn(Value) -> Value,
        verdict: Option<(bool, &'static [&'static str])>,
        codes: &'static [&'static str],
    }
    let cases = [
        Case {
            dep: 3001,
            env: "staging",
            claims: |c| c,
            verdict: None,
            codes: &["environment_not_configured"],
        },
        Case {
            dep: 3002,
            env: "production",
            claims: |mut c| {
                c["sha"] = json!(sha(42));
                c
            },
            verdict: Some((true, &[])),
            codes: &["identity_mismatch"],
        },
        Case {
            dep: 3003,
            env: "production",
            claims: |mut c| {
                c["ref_protected"] = json!("false");
                c
            },
            verdict: Some((true, &[])),
            codes: &["claim_not_satisfied"],
        },
        Case {
            dep: 3004,
            env: "production",
            claims: |mut c| {
                c["user_login"] = json!("mallory");
                c
            },
            verdict: Some((true, &[])),
            codes: &["actor_not_approver"],
        },
        Case {
            dep: 3005,
            env: "production",
            claims: |c| c,
            verdict: Some((false, &["sast: 3 critical findings"])),
            codes: &["verdict_denied"],
        },
        Case {
            dep: 3006,
            env: "canary",
            claims: |c| c,
            verdict: None,
            codes: &["pending_timeout", "attestation_missing"],
        },
    ];
    for c in &cases {
        let (pipeline, s) = (c.dep + 50_000, sha(c.dep));
        if c.codes[0] != "pending_timeout" {
            w.attest((c.claims)(ci(pipeline, &s))).await;
        }
        if let Some((allow, reasons)) = c.verdict {
            w.verdict(&s, c.env, allow, reasons).await;
        }
    }
    for c in &cases {
        let (pipeline, s) = (c.dep + 50_000, sha(c.dep));
        let hook = w.blocked(c.dep, pipeline, c.env, &s);
        // Whoever ran the pipeline (the token's user) started its deploy job.
        let user = (c.claims)(ci(pipeline, &s))["user_login"].clone();
        let mut api = w.gl.deployment(PROJECT_ID, c.dep).expect("registered");
        api["user"]["username"] = user;
        w.gl.add_deployment(PROJECT_ID, api);
        let (code, body) = w.hook(&hook, &format!("idem-{}", c.dep)).await;
        assert_eq!(code, 202, "{body}");
        let req = w
            .app
            .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
            .await;
        assert_eq!(req["decision"]["outcome"], "rejected");
        assert_eq!(codes(&req), c.codes, "deployment {}", c.dep);
        let a = w.approval_for(c.dep).await;
        assert_eq!(a.status, "rejected");
        assert!(a.comment.unwrap().contains(&format!("- {}: ", c.codes[0])));
    }
    // Rejected jobs are never played.
    assert!(!w.gl.requests().iter().any(|r| r.path.ends_with("/play")));
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_refusals_are_audited_never_approvals() {
    let w = world().await;
    let (dep, pipeline, s) = (4001, 54001, sha(4001));
    w.gl.script(
        "POST",
        &format!("/api/v4/projects/{PROJECT_ID}/deployments/{dep}/approval"),
        [Reply::message(403, "403 Forbidden")],
    );
    w.attest(ci(pipeline, &s)).await;
    w.verdict(&s, "production", true, &[]).await;
    let (_, body) = w.hook(&w.blocked(dep, pipeline, "production", &s), "idem-4001").await;
    let req = w
        .app
        .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
        .await;
    assert_eq!(req["platform_result"]["ok"], false);
    assert_eq!(req["platform_result"]["status"], 403);
    let result = w
        .app
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "platform_result")
        .unwrap();
    assert_eq!(
        (result["detail"]["ok"].as_bool(), result["detail"]["status"].as_u64()),
        (Some(false), Some(403))
    );
    assert!(result["detail"]["detail"].as_str().unwrap().contains("403"), "{result}");
    assert!(w.gl.approvals().is_empty());
    assert!(!w.gl.requests().iter().any(|r| r.path.ends_with("/play")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_tokens_dedup_and_status_hooks() {
    let w = world().await;
    let (dep, pipeline, s) = (5001, 55001, sha(5001));
    let body = w.blocked(dep, pipeline, "production", &s);

    // A wrong token, and no credential at all.
    let r = w
        .app
        .http
        .post(w.app.url("/webhooks/gitlab"))
        .header("x-gitlab-token", "nope")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "signature_invalid");
    let r = w
        .app
        .http
        .post(w.app.url("/webhooks/gitlab"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Standard Webhooks: signed with the signing token, fresh.
    let key = base64::engine::general_purpose::STANDARD
        .decode(&signing_secret()[6..])
        .unwrap();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let signed = |id: &str, ts: &str| {
        let mac = portcullis::crypto::hmac_sha256(&key, &[format!("{id}.{ts}.").as_bytes(), &body]);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
    };
    let send = |id: &'static str, ts: String, sig: String| {
        w.app
            .http
            .post(w.app.url("/webhooks/gitlab"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts)
            .header("webhook-signature", sig)
            .body(body.clone())
            .send()
    };
    let stale = (time::OffsetDateTime::now_utc().unix_timestamp() - 3600).to_string();
    let r = send("msg_1", stale.clone(), signed("msg_1", &stale)).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "signature_stale");
    let r = send("msg_1", ts.clone(), signed("msg_other", &ts)).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = send("msg_1", ts.clone(), signed("msg_1", &ts)).await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    // The same webhook-id again is a duplicate.
    let r = send("msg_1", ts.clone(), signed("msg_1", &ts)).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");

    // Someone approves on GitLab and the job runs: recorded, and the request
    // (still waiting for its attestation) is closed as superseded.
    let mut approved = fixture("deployment.approved.json");
    approved["deployment_id"] = json!(dep);
    approved["environment"] = json!("production");
    let (code, resp) = w
        .hook(&serde_json::to_vec(&approved).unwrap(), "idem-5001-approved")
        .await;
    assert_eq!((code, resp["status"].as_str()), (202, Some("recorded")));
    let mut running = fixture("deployment.success.json");
    running["deployment_id"] = json!(dep);
    running["environment"] = json!("production");
    running["status"] = json!("running");
    // A `running` hook that GitLab's API does not confirm (the deployment is
    // still blocked there) changes nothing: a hook is only a claim.
    let (code, _) = w
        .hook(&serde_json::to_vec(&running).unwrap(), "idem-5001-running-unconfirmed")
        .await;
    assert_eq!(code, 202);
    let unconfirmed = loop {
        let found = w
            .app
            .audit_records()
            .into_iter()
            .find(|r| r["detail"]["source"] == "gitlab_deployment_hook" && r["detail"]["status"] == "running");
        if let Some(r) = found {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(unconfirmed["detail"]["confirmed_by_api"], false);
    let (_, still) = w
        .app
        .get(&format!("/v1/requests/{}", accepted["request"].as_str().unwrap()))
        .await;
    assert_eq!(still["status"], "pending", "an unconfirmed hook closes nothing");
    // Once GitLab's API shows the deployment running, the hook closes it.
    let mut moved_on = w.gl.deployment(PROJECT_ID, dep).expect("the mock holds the deployment");
    moved_on["status"] = json!("running");
    w.gl.add_deployment(PROJECT_ID, moved_on);
    let (code, _) = w
        .hook(&serde_json::to_vec(&running).unwrap(), "idem-5001-running")
        .await;
    assert_eq!(code, 202);
    let req = w
        .app
        .wait_request(accepted["request"].as_str().unwrap(), "superseded", WAIT)
        .await;
    assert_eq!(req["status"], "superseded");
    let recorded: Vec<Value> = w
        .app
        .audit_records()
        .into_iter()
        .filter(|r| r["detail"]["source"] == "gitlab_deployment_hook")
        .collect();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0]["detail"]["status"], "approved");
    assert_eq!(recorded[2]["detail"]["confirmed_by_api"], true);
    assert!(recorded[0]["detail"]["approver"].is_string(), "{}", recorded[0]);
    assert!(w.gl.approvals().is_empty(), "portcullis approved nothing");
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}
