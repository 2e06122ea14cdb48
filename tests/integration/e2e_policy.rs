//! Evaluated verdicts end to end: the policy-gate job posts its evidence
//! bundle, portcullis evaluates the shipped `deploy.hipaa` Rego policy over
//! it, records the verdict with the evidence digest and the policy revision,
//! and the decision uses it.

use std::time::Duration;

use crate::support::app::{App, Run};
use crate::support::github_mock::{GithubMock, TEST_APP_ID, review_path, test_app_private_key};
use crate::support::oidc::{OidcProvider, github_claims};
use serde_json::{Value, json};

pub(crate) const REPO: &str = "octo-org/payments";
const GATE: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const DIGEST: &str = "sha256:6c3e1b5f0c6d8e2a4b7f9d1c3e5a7b9d2f4c6e8a0b1d3f5a7c9e1b3d5f7a9c0e";
const WAIT: Duration = Duration::from_secs(15);

pub(crate) struct World {
    pub(crate) oidc: OidcProvider,
    pub(crate) gh: GithubMock,
    pub(crate) app: App,
}

async fn world() -> World {
    world_with_verdict(
        r#"mode = "evaluated"
policy = "data.deploy.hipaa.allow""#,
    )
    .await
}

/// The world with `verdict` as the production environment's verdict mode
/// and policy lines, and the shipped policy with its evidence schema.
async fn world_with_verdict(verdict: &str) -> World {
    world_with(
        &format!(
            "{verdict}\nevidence_schema = \"{}\"",
            concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/evidence.schema.json")
        ),
        &format!(
            "[policies]\npaths = [\"{}\"]",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/policies")
        ),
    )
    .await
}

/// The world with `verdict` as the production environment's verdict lines
/// and `policies` as the `[policies]` table (`{dir}` is the app's directory).
pub(crate) async fn world_with(verdict: &str, policies: &str) -> World {
    world_with_dir(Run::InProcess, tempfile::tempdir().unwrap(), verdict, policies).await
}

/// [`world_with`] run as `run` says, in `dir` (which may hold the policy
/// files already).
pub(crate) async fn world_with_dir(run: Run, dir: tempfile::TempDir, verdict: &str, policies: &str) -> World {
    let oidc = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
[audit]
path = "{{dir}}/audit.jsonl"
[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"
[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
{verdict}
producers = [{{ job_workflow_ref = "{GATE}" }}]
{policies}
"#,
        api = gh.url(),
        issuer = oidc.issuer(),
    );
    let app = App::launch_in(
        run,
        dir,
        &config,
        &[("GH_WEBHOOK_SECRET", crate::support::app::WEBHOOK_SECRET)],
    )
    .await;
    World { oidc, gh, app }
}

pub(crate) fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn ago(minutes: i64) -> String {
    portcullis::time_fmt::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes))
}

fn evidence() -> Value {
    json!({
        "scans": {
            "sast": {"tool": "semgrep", "timestamp": ago(30), "critical": 0, "high": 2},
            "container": {"tool": "trivy", "timestamp": ago(25), "image_digest": DIGEST, "critical": 0, "high": 1},
            "iac": {"tools": ["tfsec", "checkov"], "timestamp": ago(20), "critical": 0, "high": 0},
            "secrets": {"tool": "gitleaks", "timestamp": ago(30), "findings": 0},
            "dependencies": {"tool": "osv-scanner", "timestamp": ago(40), "critical": 0, "high": 4}
        },
        "artifact": {
            "digest": DIGEST,
            "cosign_verified": true,
            "signed_by": "awskms:///alias/hipaa-production-cosign",
            "target_environment": "production"
        }
    })
}

impl World {
    pub(crate) async fn gate_token(&self, sha: &str) -> String {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["job_workflow_ref"] = json!(GATE);
        self.oidc.mint("portcullis", c).await
    }

    pub(crate) async fn post_evidence(&self, sha: &str, evidence: Value) -> (u16, Value) {
        let token = self.gate_token(sha).await;
        let body = json!({"environment": "production", "sha": sha, "evidence": evidence});
        self.app.post_bearer("/v1/verdicts", &token, Some(&body)).await
    }

    pub(crate) async fn run(&self, run: u64, sha: &str) -> Value {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["run_id"] = json!(run.to_string());
        let token = self.oidc.mint("portcullis", c).await;
        assert_eq!(self.app.post_bearer("/v1/attestations", &token, None).await.0, 201);
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/github/deployment_protection_rule.requested.json"
        ))
        .unwrap();
        let mut p: Value = serde_json::from_str(&text).unwrap();
        p["deployment_callback_url"] = json!(self.gh.callback_url("octo-org", "payments", run));
        p["deployment"]["sha"] = json!(sha);
        let (code, body) = self
            .app
            .post_webhook(
                "deployment_protection_rule",
                &format!("d-{run}"),
                &serde_json::to_vec(&p).unwrap(),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        self.app
            .wait_request(body["request"].as_str().unwrap(), "done", WAIT)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_is_evaluated_and_the_verdict_decides() {
    let w = world().await;

    // Passing evidence: allowed, with its digest and the policy's revision.
    let s = sha(9001);
    let bundle = evidence();
    let (code, v) = w.post_evidence(&s, bundle.clone()).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (v["allow"].as_bool(), v["source"].as_str()),
        (Some(true), Some("evaluated")),
        "{v}"
    );
    assert_eq!(v["evidence_digest"], portcullis::verdict::evidence_digest(&bundle));
    assert!(v["policy_revision"].as_str().unwrap().starts_with("sha256:"), "{v}");
    let req = w.run(9001, &s).await;
    assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    assert_eq!(
        w.gh.reviews()
            .iter()
            .filter(|r| r.path == review_path("octo-org", "payments", 9001))
            .count(),
        1
    );

    // Critical CVEs: the policy denies and says why; the request is rejected.
    let s = sha(9002);
    let mut bad = evidence();
    bad["scans"]["container"]["critical"] = json!(2);
    let (code, v) = w.post_evidence(&s, bad).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["allow"], false);
    assert_eq!(v["reasons"], json!(["container: 2 critical CVEs"]));
    let req = w.run(9002, &s).await;
    assert_eq!(req["decision"]["outcome"], "rejected");
    assert_eq!(
        req["decision"]["reasons"][0]["message"],
        "data.deploy.hipaa.allow denied: container: 2 critical CVEs"
    );

    // The audit holds the verdict with its digest and revision.
    let recorded: Vec<Value> = w
        .app
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "verdict_recorded")
        .collect();
    assert_eq!(recorded.len(), 2);
    assert!(
        recorded[0]["verdict"]["evidence_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        recorded[0]["verdict"]["policy_revision"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_mismatched_evidence_is_refused_naming_the_field() {
    let w = world().await;
    let s = sha(9101);
    let mut bad = evidence();
    bad["scans"]["container"]["critical"] = json!("two");
    let (code, err) = w.post_evidence(&s, bad).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("invalid_evidence")),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("evidence/scans/container/critical"),
        "{err}"
    );

    let token = w.gate_token(&s).await;
    let asserted = json!({"environment": "production", "sha": s, "allow": true});
    let (code, err) = w.app.post_bearer("/v1/verdicts", &token, Some(&asserted)).await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("evidence_required")));

    let wrong = json!({"environment": "production", "sha": s, "evidence": evidence(), "evidence_digest": format!("sha256:{}", "0".repeat(64))});
    let (code, err) = w.app.post_bearer("/v1/verdicts", &token, Some(&wrong)).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("evidence_digest_mismatch"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_evaluates_an_evidence_file_offline() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let webhook = dir.path().join("webhook.json");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github/deployment_protection_rule.requested.json"
    ))
    .unwrap();
    let mut fixture: Value = serde_json::from_str(&text).unwrap();
    let (run, s) = (9201, sha(9201));
    fixture["deployment_callback_url"] = json!(w.gh.callback_url("octo-org", "payments", run));
    fixture["deployment"]["sha"] = json!(s);
    std::fs::write(&webhook, fixture.to_string()).unwrap();
    let mut claims = github_claims(&s);
    claims["repository"] = json!(REPO);
    claims["run_id"] = json!(run.to_string());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, w.oidc.mint("portcullis", claims).await).unwrap();
    let mut bad = evidence();
    bad["artifact"]["cosign_verified"] = json!(false);
    let evidence_file = dir.path().join("evidence.json");
    std::fs::write(&evidence_file, bad.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["decide", "--webhook"])
        .arg(&webhook)
        .arg("--token")
        .arg(&token_file)
        .arg("--evidence")
        .arg(&evidence_file)
        .arg("--config")
        .arg(&w.app.config_path)
        .env("GH_WEBHOOK_SECRET", "x")
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed["decision"], "rejected");
    assert_eq!(printed["reasons"][0]["code"], "verdict_denied");
    assert!(
        printed["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("artifact: not verified by cosign"),
        "{printed}"
    );
    assert!(w.gh.requests().is_empty(), "decide calls nothing");
}

/// A stand-in OPA Data API that allows everything while `up`, and answers
/// 500 otherwise: what a real OPA server does when it fails is not the
/// point here, only that it fails.
async fn fake_opa(up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = HttpServer::new(move || {
        let up = up.clone();
        App::new().default_service(actix_web::web::to(move |req: HttpRequest| {
            let up = up.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if !up {
                    return HttpResponse::InternalServerError().finish();
                }
                let result = if req.path().ends_with("/allow") {
                    json!(true)
                } else {
                    json!([])
                };
                HttpResponse::Ok().json(json!({ "result": result }))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_opa_evaluation_withdraws_the_previous_verdict() {
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let opa = fake_opa(up.clone()).await;
    let w = world_with_verdict(&format!(
        "mode = \"opa\"\nopa_url = \"{opa}\"\npolicy = \"data.deploy.hipaa.allow\""
    ))
    .await;
    let s = sha(6601);
    let (code, body) = w.post_evidence(&s, evidence()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["allow"], true);
    // OPA fails on the next evaluation of the same commit's evidence.
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = w.post_evidence(&s, evidence()).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("policy_unavailable")),
        "{body}"
    );
    // The earlier allow no longer stands: the deployment waits for a verdict.
    let mut c = github_claims(&s);
    c["repository"] = json!(REPO);
    c["run_id"] = json!("6601");
    let token = w.oidc.mint("portcullis", c).await;
    assert_eq!(w.app.post_bearer("/v1/attestations", &token, None).await.0, 201);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github/deployment_protection_rule.requested.json"
    ))
    .unwrap();
    let mut p: Value = serde_json::from_str(&text).unwrap();
    p["deployment_callback_url"] = json!(w.gh.callback_url("octo-org", "payments", 6601));
    p["deployment"]["sha"] = json!(s);
    let (code, body) = w
        .app
        .post_webhook("deployment_protection_rule", "d-6601", &serde_json::to_vec(&p).unwrap())
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["request"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
        if req["decision"]["outcome"] == "pending" {
            let codes: Vec<&str> = req["decision"]["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["code"].as_str().unwrap())
                .collect();
            assert_eq!(codes, ["verdict_missing"], "{req}");
            break;
        }
        assert_ne!(req["status"], "done", "decided on a withdrawn verdict: {req}");
        assert!(std::time::Instant::now() < deadline, "{req}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(w.gh.reviews().is_empty(), "nothing was approved");
}
