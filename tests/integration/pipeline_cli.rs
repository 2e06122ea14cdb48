//! The CI side through the real binary: `portcullis attest` gets the job's
//! token from a fake of GitHub Actions' token endpoint (which checks the
//! bearer and the audience as GitHub does) and the attestation is recorded;
//! `portcullis evidence` reads real scanner outputs (the projects' own test
//! fixtures, `tests/fixtures/scanners/ORIGIN.md`) into the counts they hold;
//! `portcullis verdict` posts the bundle and the request is decided.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix_web::{App as ActixApp, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::e2e_github::{World, ci_claims, sha, world_in};
use crate::support::app::Run;

const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const REQUEST_TOKEN: &str = "test-only-actions-request-token";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A fake of GitHub Actions' OIDC token endpoint
/// (`ACTIONS_ID_TOKEN_REQUEST_URL`): `GET` with the runner's request token
/// as bearer and an `audience` parameter; answers `{"value": <ID token>}`
/// for the one audience it was given a token for, 401 for another bearer
/// and 400 for another audience or none. Records every query string.
struct TokenEndpoint {
    url: String,
    queries: Arc<Mutex<Vec<String>>>,
    handle: actix_web::dev::ServerHandle,
}

impl TokenEndpoint {
    async fn start(tokens: HashMap<String, String>) -> TokenEndpoint {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = web::Data::new((tokens, queries.clone()));
        let server = HttpServer::new(move || {
            ActixApp::new()
                .app_data(state.clone())
                .route("/_apis/token", web::get().to(token))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        TokenEndpoint {
            url: format!("http://127.0.0.1:{port}/_apis/token?api-version=2.0"),
            queries,
            handle,
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        let h = self.handle.clone();
        tokio::spawn(async move { h.stop(false).await });
    }
}

type TokenState = (HashMap<String, String>, Arc<Mutex<Vec<String>>>);

async fn token(req: HttpRequest, state: web::Data<TokenState>) -> HttpResponse {
    let (tokens, queries) = state.get_ref();
    queries.lock().unwrap().push(req.query_string().to_string());
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(REQUEST_TOKEN) {
        return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    if params.get("api-version").map(String::as_str) != Some("2.0") {
        return HttpResponse::BadRequest().json(json!({"message": "api-version is required"}));
    }
    match params.get("audience").and_then(|a| tokens.get(a)) {
        Some(t) => HttpResponse::Ok().json(json!({"count": 1, "value": t})),
        None => HttpResponse::BadRequest().json(json!({"message": "unexpected audience"})),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scanners")
        .join(name)
}

/// Runs the binary with exactly `env` as its environment.
async fn portcullis(args: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A world whose `scanned` environment evaluates posted evidence with a
/// small Rego policy that names the counts it sees.
async fn scanned_world() -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/ci.rego"),
        r#"package deploy.ci

default allow := false

allow if count(deny) == 0

deny contains sprintf("container: %d medium", [input.evidence.scans.container.medium]) if input.evidence.scans.container.medium > 0
deny contains sprintf("dependencies: %d critical", [input.evidence.scans.dependencies.critical]) if input.evidence.scans.dependencies.critical > 0
deny contains sprintf("secrets: %d finding(s)", [input.evidence.scans.secrets.findings]) if input.evidence.scans.secrets.findings > 0
"#,
    )
    .unwrap();
    let extra = format!(
        r#"
[policies]
paths = ["{{dir}}/policies"]

[environments.scanned]
approvers = ["octocat"]
pending_timeout = "30m"
[environments.scanned.verdict]
mode = "evaluated"
policy = "data.deploy.ci.allow"
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]
"#
    );
    world_in(dir, Run::InProcess, "", "", &extra).await
}

fn evidence_args(out: &Path) -> Vec<String> {
    let f = |kind: &str, name: &str| format!("{kind}={}", fixture(name).display());
    [
        "evidence",
        "--scan",
        &f("sast", "codeql-action-valid.sarif"),
        "--scan",
        &f("container", "trivy-alpine-310.json"),
        "--scan",
        &f("iac", "trivy-alpine-310.sarif"),
        "--scan",
        &f("secrets", "gitleaks-simple.json"),
        "--scan",
        &f("dependencies", "grype-imgs.json"),
        "--image-digest",
        DIGEST,
        "--cosign-verified",
        "--signed-by",
        "awskms:///alias/ci-cosign",
        "--environment",
        "scanned",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn digest_of(name: &str) -> String {
    format!(
        "sha256:{}",
        portcullis::crypto::sha256_hex(&std::fs::read(fixture(name)).unwrap())
    )
}

fn mtime_of(name: &str) -> String {
    let t: time::OffsetDateTime = std::fs::metadata(fixture(name)).unwrap().modified().unwrap().into();
    portcullis::time_fmt::rfc3339(t.replace_nanosecond(0).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_counts_what_the_real_reports_hold() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle.json");
    let args = evidence_args(&out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = portcullis(&args, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sarif = "trivy-alpine-310.sarif";
    assert_eq!(
        bundle,
        json!({
            "scans": {
                // CodeQL's SARIF (two runs, LGTM's and CodeQL's): three
                // results whose rules default to `note`.
                "sast": {"tool": "codeql", "version": "2.0.0", "timestamp": mtime_of("codeql-action-valid.sarif"),
                         "critical": 0, "high": 0, "medium": 0, "low": 3,
                         "report_digest": digest_of("codeql-action-valid.sarif")},
                // Trivy's JSON: four MEDIUM vulnerabilities, scanned at CreatedAt.
                "container": {"tool": "trivy", "timestamp": "2021-08-25T12:20:30Z", "image_digest": DIGEST,
                              "critical": 0, "high": 0, "medium": 4, "low": 0,
                              "report_digest": digest_of("trivy-alpine-310.json")},
                // Trivy's SARIF: four results of security-severity 5.3.
                "iac": {"tools": ["trivy"], "timestamp": mtime_of(sarif),
                        "critical": 0, "high": 0, "medium": 4, "low": 0, "report_digest": digest_of(sarif)},
                // Gitleaks: one finding.
                "secrets": {"tool": "gitleaks", "timestamp": mtime_of("gitleaks-simple.json"), "findings": 1,
                            "report_digest": digest_of("gitleaks-simple.json")},
                // Grype: one Low, one Critical.
                "dependencies": {"tool": "grype", "timestamp": mtime_of("grype-imgs.json"),
                                 "critical": 1, "high": 0, "medium": 0, "low": 1,
                                 "report_digest": digest_of("grype-imgs.json")},
            },
            "artifact": {"digest": DIGEST, "cosign_verified": true, "signed_by": "awskms:///alias/ci-cosign",
                         "target_environment": "scanned"},
        })
    );

    // Gitleaks' SARIF: one finding, and the version its driver names.
    let out = dir.path().join("secrets.json");
    let scan = format!("secrets={}", fixture("gitleaks-simple.sarif").display());
    let out_s = out.display().to_string();
    let (code, _, stderr) = portcullis(&["evidence", "--scan", &scan, "--out", &out_s], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        bundle,
        json!({"scans": {"secrets": {"tool": "gitleaks", "version": "v8.0.0",
            "timestamp": mtime_of("gitleaks-simple.sarif"), "findings": 1,
            "report_digest": digest_of("gitleaks-simple.sarif")}}})
    );

    // A report of no known format, and a kind given twice, are named.
    let (code, _, stderr) = portcullis(
        &[
            "evidence",
            "--scan",
            &format!("sast={}", fixture("ORIGIN.md").display()),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("ORIGIN.md is not JSON"), "{stderr}");
    let twice = format!("secrets={}", fixture("gitleaks-simple.json").display());
    let (code, _, stderr) = portcullis(&["evidence", "--scan", &twice, "--scan", &twice], &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        "portcullis: --scan secrets= is given twice; only iac takes several reports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_evidence_and_verdict_from_a_github_job_get_the_request_decided() {
    let w = scanned_world().await;
    let (run, s) = (9501, sha(9501));
    let mut claims = ci_claims(run, &s);
    claims["job_workflow_ref"] = json!(GATE_WORKFLOW);
    let token = w.oidc.mint("portcullis", claims).await;
    let endpoint = TokenEndpoint::start(HashMap::from([("portcullis".to_string(), token)])).await;
    let server = w.app.url("");
    let job_env = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", endpoint.url.as_str()),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN),
        ("GITHUB_SHA", s.as_str()),
    ];

    // authorize: the attestation is recorded.
    let (code, att, stderr) = portcullis(&["attest", "--server", &server, "--environment", "scanned"], &job_env).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (att["actor"].as_str(), att["repository"].as_str(), att["run"].as_str()),
        (Some("octocat"), Some("octo-org/payments"), Some("9501"))
    );
    assert!(att["attestation_id"].as_str().is_some_and(|a| !a.is_empty()), "{att}");
    assert_eq!(
        endpoint.queries.lock().unwrap().as_slice(),
        ["api-version=2.0&audience=portcullis"]
    );
    let accepted = w.app.audited("attestation_accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["run"], "9501");

    // policy-gate: the bundle from the real reports, posted; the policy
    // sees its counts.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    let args = evidence_args(&bundle);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(portcullis(&args, &[]).await.0, 0);
    let bundle = bundle.display().to_string();
    let (code, verdict, stderr) = portcullis(
        &[
            "verdict",
            "--server",
            &server,
            "--environment",
            "scanned",
            "--evidence",
            &bundle,
        ],
        &job_env,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdict["allow"], false, "{verdict}");
    assert_eq!(verdict["sha"], s.as_str());
    assert_eq!(
        verdict["reasons"],
        json!([
            "container: 4 medium",
            "dependencies: 1 critical",
            "secrets: 1 finding(s)"
        ])
    );

    // The deployment is decided on them.
    let id = w.webhook("d-9501", run, "scanned", &s).await;
    let done = w
        .app
        .wait_request(&id, "done", std::time::Duration::from_secs(15))
        .await;
    assert_eq!(done["decision"]["outcome"], "rejected", "{done}");
    let codes: Vec<&str> = done["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"verdict_denied"), "{codes:?}");

    // A refusal: the service's code and message, exit status 2.
    let (code, _, stderr) = portcullis(
        &["verdict", "--server", &server, "--environment", "nowhere", "--allow"],
        &job_env,
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("portcullis: refused (400): environment_not_configured: "),
        "{stderr}"
    );

    // Another audience is asked for, and the fake refuses it: nothing is posted.
    let (code, _, stderr) = portcullis(
        &[
            "attest",
            "--server",
            &server,
            "--environment",
            "scanned",
            "--audience",
            "other",
        ],
        &job_env,
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        "portcullis: GitHub's token endpoint: answered 400 Bad Request"
    );
    // Neither the request token nor the ID token is ever printed.
    assert!(!stderr.contains(REQUEST_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_job_attests_with_its_id_tokens_variable() {
    let w = scanned_world().await;
    let token = w.oidc.mint("portcullis", ci_claims(9601, &sha(9601))).await;
    let server = w.app.url("");
    let (code, att, stderr) = portcullis(
        &[
            "attest",
            "--server",
            &server,
            "--environment",
            "scanned",
            "--token-env",
            "PORTCULLIS_TOKEN",
        ],
        &[("PORTCULLIS_TOKEN", token.as_str())],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(att["run"], "9601");
    // Without a token anywhere, it says where one would come from.
    let (code, _, stderr) = portcullis(&["attest", "--server", &server, "--environment", "scanned"], &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        "portcullis: no ID token: set PORTCULLIS_ID_TOKEN (GitLab `id_tokens:`), or run on GitHub Actions with `permissions: id-token: write`"
    );
    // A server URL that would send the token in clear is refused.
    let (code, _, stderr) = portcullis(
        &[
            "attest",
            "--server",
            "http://portcullis.example.com",
            "--environment",
            "scanned",
        ],
        &[("PORTCULLIS_ID_TOKEN", token.as_str())],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("must be an https URL"), "{stderr}");
}
