//! The policy side of the command line: `check-config` checks everything
//! the service would load, naming file and line (or key, line and column);
//! `policy test` runs the Rego tests like `opa test`; `policy eval`; and
//! `decide` on a GitLab Deployment Hook with a verdict evaluated by Go OPA.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::common::{OpaServer, policies_dir};
use crate::support::oidc::{OidcProvider, gitlab_claims};

fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run portcullis")
}

fn check_config(dir: &Path, config: &str) -> (Option<i32>, String, String) {
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let out = portcullis(dir, &["check-config", "--config", "c.toml"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const EVALUATED: &str = r#"[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
mode = "evaluated"
policy = "data.acme.release.allow"
producers = [{ job_workflow_ref = "x" }]
"#;

#[test]
fn check_config_fails_naming_file_and_line_of_a_policy_that_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/release.rego"),
        "package acme.release\n\nimport rego.v1\n\nallow if {\n\tinput.x ==\n}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(dir.path(), &format!("{EVALUATED}[policies]\npaths = [\"policies\"]\n"));
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  policies/release.rego:7:1: expecting expression\n"
    );
    assert_eq!(stdout, "", "nothing says OK");

    // A call of a function that does not exist, in a branch rarely taken.
    std::fs::write(
        dir.path().join("policies/release.rego"),
        "package acme.release\n\nimport rego.v1\n\nallow if input.x == 1\n\nallow if {\n\tinput.y\n\tsemver.cmpare(input.v, \"1.0.0\") > 0\n}\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(dir.path(), &format!("{EVALUATED}[policies]\npaths = [\"policies\"]\n"));
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  policies/release.rego:9:18: unknown function semver.cmpare\n"
    );
}

#[test]
fn check_config_checks_data_schemas_and_that_each_query_names_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("release.rego"),
        "package acme.release\n\nimport rego.v1\n\nallow if input.x == 1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("limits.json"), "{\"a\": 1,}").unwrap();
    std::fs::write(
        dir.path().join("schema.json"),
        "{\n  \"type\": \"object\",\n  required: []\n}",
    )
    .unwrap();
    let config = EVALUATED
        .replace("data.acme.release.allow", "data.acme.release.alow")
        .replace("producers", "evidence_schema = \"schema.json\"\nproducers")
        + "[policies]\npaths = [\"release.rego\", \"limits.json\"]\n";
    let (code, _, stderr) = check_config(dir.path(), &config);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  \
         environments.production.verdict.evidence_schema (line 6, column 19): schema.json:3:3: not JSON: key must be a string\n  \
         policy data limits.json: trailing comma at line 1 column 9\n"
    );
    // The data fixed, the query is checked against the rules that exist.
    std::fs::write(dir.path().join("limits.json"), "{\"a\": 1}").unwrap();
    std::fs::write(dir.path().join("schema.json"), "{\"type\": \"object\"}").unwrap();
    let (code, _, stderr) = check_config(dir.path(), &config);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  \
         environments.production.verdict.policy (line 5, column 10): data.acme.release.alow names no rule of the loaded policies; did you mean data.acme.release.allow?\n"
    );
    let (code, stdout, stderr) = check_config(dir.path(), &config.replace(".alow", ".allow"));
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
}

#[test]
fn check_config_names_key_line_and_column_of_a_type_error_or_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:8080\"\n[environments.production]\napprovers = \"not-a-list\"\n",
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  environments.production.approvers (line 4, column 13): invalid type: string, expected a sequence\n"
    );
    let (code, _, stderr) = check_config(dir.path(), "[server]\nlisten_typo = \"127.0.0.1:8080\"\n");
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  server.listen_typo (line 2, column 1): unknown key `listen_typo` in [server]; did you mean `listen`?\n"
    );
}

#[test]
fn the_example_configuration_checks_with_its_policy_and_schema() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config", "config/portcullis.example.toml"])
        .current_dir(repo)
        .env("PORTCULLIS_GITHUB_WEBHOOK_SECRET", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("environment hipaa-production:") && stdout.ends_with("configuration OK\n"),
        "{stdout}"
    );
}

#[test]
fn policy_test_passes_on_the_shipped_tests_and_names_a_broken_one() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = portcullis(repo, &["policy", "test", "config/policies"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nPASS: 34/34\n", "-".repeat(80))
    );

    let dir = tempfile::tempdir().unwrap();
    for name in ["hipaa.rego", "hipaa-data.json", "hipaa_test.rego"] {
        std::fs::copy(policies_dir().join(name), dir.path().join(name)).unwrap();
    }
    let test = std::fs::read_to_string(dir.path().join("hipaa_test.rego")).unwrap();
    std::fs::write(
        dir.path().join("hipaa_test.rego"),
        test.replace(
            "allow_of(patched({\"context\": {\"actor\": \"hubot\"}})) == true",
            "allow_of(patched({\"context\": {\"actor\": \"mallory\"}})) == true",
        ),
    )
    .unwrap();
    let out = portcullis(dir.path(), &["policy", "test", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "data.deploy.hipaa.test_second_approver_allows: FAIL\n{}\nPASS: 33/34\nFAIL: 1/34\n",
            "-".repeat(80)
        )
    );
}

#[test]
fn policy_eval_prints_the_decision_and_its_reasons() {
    let dir = release_policy_and_input(2);
    let out = portcullis(
        dir.path(),
        &[
            "policy",
            "eval",
            "release.rego",
            "--input",
            "input.json",
            "--query",
            "data.acme.release.allow",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["allow"], false);
    assert_eq!(printed["reasons"], json!(["snyk: 2 open"]));
    assert_eq!(printed["query"], "data.acme.release.allow");
    assert!(printed["revision"].as_str().unwrap().starts_with("sha256:"));
}

/// `policy eval --repeat N` times N evaluations in process (as `opa bench`
/// does): the same decision, and the median, p99 and fastest of N runs.
#[test]
fn policy_eval_repeat_times_the_evaluation() {
    let dir = release_policy_and_input(0);
    let args = [
        "policy",
        "eval",
        "release.rego",
        "--input",
        "input.json",
        "--query",
        "data.acme.release.allow",
        "--repeat",
        "50",
    ];
    let out = portcullis(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["allow"], true);
    let timing = &printed["timing"];
    assert_eq!(timing["evaluations"], 50);
    let (min, median, p99) = (
        timing["min_us"].as_f64().unwrap(),
        timing["median_us"].as_f64().unwrap(),
        timing["p99_us"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= median && median <= p99, "{timing}");
    // Zero evaluations is refused before anything runs.
    let mut zero = args;
    zero[8] = "0";
    let out = portcullis(dir.path(), &zero);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeat"));
}

/// `audit bench` appends to a throwaway trail with the Merkle tree and
/// checkpoints on, reports what it measured, and leaves nothing behind.
#[test]
fn audit_bench_measures_a_trail_with_checkpoints_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "audit",
        "bench",
        "--dir",
        ".",
        "--records",
        "600",
        "--concurrency",
        "16",
        "--checkpoint-every",
        "5ms",
    ];
    let out = portcullis(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["records"], 600);
    assert_eq!(printed["tree_size"], 600);
    assert_eq!(printed["concurrency"], 16);
    assert_eq!(printed["checkpoint_every"], "5ms");
    assert!(printed["checkpoints"].as_u64().unwrap() >= 1, "{printed}");
    assert!(printed["fsyncs"].as_u64().unwrap() >= 1, "{printed}");
    assert!(printed["records_per_s"].as_f64().unwrap() > 0.0, "{printed}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the trail is removed"
    );
    // A zero interval and a missing directory are clear errors.
    let mut zero = args;
    zero[9] = "0s";
    let out = portcullis(dir.path(), &zero);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checkpoint-every must be longer than zero"));
    let mut missing = args;
    missing[3] = "no/such/dir";
    let out = portcullis(dir.path(), &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create no/such/dir/portcullis-audit-bench-"));
}

/// A directory holding `release.rego` (allow unless a scanner has open
/// findings, each a reason) and `input.json` with one scanner with `open`.
fn release_policy_and_input(open: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("release.rego"),
        "package acme.release\n\nimport rego.v1\n\ndefault allow := false\n\nallow if count(deny) == 0\n\ndeny contains sprintf(\"%s: %d open\", [s.tool, s.open]) if {\n\tsome s in input.evidence.scanners\n\ts.open > 0\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("input.json"),
        json!({"evidence": {"scanners": [{"tool": "snyk", "open": open}]}, "context": {}}).to_string(),
    )
    .unwrap();
    dir
}

/// `decide` on a GitLab `blocked` Deployment Hook, with the CI token and an
/// evidence file evaluated by Go OPA (verdict mode "opa").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_takes_a_gitlab_hook_and_evaluates_evidence_on_opa() {
    let oidc = OidcProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("release.rego"),
        "package acme.release\n\nimport rego.v1\n\ndefault allow := false\n\nallow if count(deny) == 0\n\ndeny contains sprintf(\"%s: %d open\", [s.tool, s.open]) if {\n\tsome s in input.evidence.scanners\n\ts.open > 0\n}\n\ndeny contains \"not an approver\" if not input.context.actor in data.approvers[input.context.environment]\n",
    )
    .unwrap();
    let approvers = std::collections::BTreeMap::from([("production".to_owned(), vec!["jdoe".to_owned()])]);
    let opa = OpaServer::start_with(&[&dir.path().join("release.rego")], &approvers, None);
    let config = format!(
        r#"[server]
dry_run = true
[gitlab]
url = "https://gitlab.example.com"
webhook_token = {{ env = "GL_HOOK_TOKEN" }}
[[issuers]]
name = "gitlab"
kind = "gitlab"
issuer = "{issuer}"
audience = "portcullis"
[environments.production]
approvers = ["jdoe"]
[environments.production.verdict]
mode = "opa"
opa_url = "{opa}"
policy = "data.acme.release.allow"
producers = [{{ ci_config_ref_uri = "x" }}]
"#,
        issuer = oidc.issuer(),
        opa = opa.url,
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let hook = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gitlab/deployment.blocked.json"
    ))
    .unwrap();
    std::fs::write(dir.path().join("hook.json"), hook).unwrap();
    let sha = "3f9a2c7e5b1d4e8f9a0b1c2d3e4f5a6b7c8d9e0f";
    let mut claims = gitlab_claims(sha);
    claims["project_path"] = json!("platform/payments-api");
    claims["project_id"] = json!("4711");
    claims["user_login"] = json!("jdoe");
    claims["pipeline_id"] = json!("9001");
    std::fs::write(dir.path().join("token"), oidc.mint("portcullis", claims).await).unwrap();

    let dir_path = dir.path().to_path_buf();
    let decide = move |open: u64| {
        let dir = &dir_path;
        std::fs::write(
            dir.join("evidence.json"),
            json!({"scanners": [{"tool": "trufflehog", "open": open}]}).to_string(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "decide",
                "--config",
                "c.toml",
                "--webhook",
                "hook.json",
                "--token",
                "token",
                "--evidence",
                "evidence.json",
            ])
            .current_dir(dir)
            .env("GL_HOOK_TOKEN", "x")
            .output()
            .unwrap();
        let printed: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), printed)
    };
    let (code, printed) = tokio::task::spawn_blocking({
        let decide = decide.clone();
        move || decide(0)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(
        (
            printed["platform"].as_str(),
            printed["repository"].as_str(),
            printed["run"].as_str(),
            printed["sha"].as_str(),
            printed["decision"].as_str()
        ),
        (
            Some("gitlab"),
            Some("platform/payments-api"),
            Some("9001"),
            Some(sha),
            Some("approved")
        ),
        "{printed}"
    );
    assert_eq!(printed["verdict"]["source"], "opa");
    assert_eq!(
        printed["verdict"]["policy_revision"],
        format!("opa:{}", opa.url.as_str().trim_end_matches('/'))
    );

    let (code, printed) = tokio::task::spawn_blocking(move || decide(4)).await.unwrap();
    assert_eq!(code, Some(2), "{printed}");
    assert_eq!(printed["decision"], "rejected");
    assert_eq!(
        printed["reasons"][0],
        json!({"code": "verdict_denied", "message": "data.acme.release.allow denied: trufflehog: 4 open"})
    );
}

#[test]
fn check_config_points_at_the_key_of_every_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "[server]\nlog_format = \"xml\"\n[environments.production]\napprovers = []\n[environments.production.verdict]\nrequired = false\nmode = \"asserted\"\nevidence_schema = \"s.json\"\n",
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "portcullis: invalid configuration c.toml:\n  \
         server.log_format (line 2, column 14): `xml` is not one of \"text\", \"json\"\n  \
         environments.production.approvers (line 4, column 13): at least one approver is required (nobody could deploy)\n  \
         environments.production.verdict.evidence_schema (line 8, column 19): applies to posted evidence, so only to modes \"evaluated\" and \"opa\"\n"
    );
}
