use std::path::Path;
use std::time::Duration;

use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml(text, &env_of(&[("SECRET", "s3cr3t")])) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|x| x.to_string()).collect(),
    }
}

const MINIMAL: &str = r#"
[[issuers]]
name = "gha"
kind = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = "portcullis"

[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
producers = [{ job_workflow_ref = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main" }]
"#;

#[test]
fn a_minimal_file_takes_the_embedded_defaults() {
    let c = Config::from_toml(MINIMAL, &|_| None).unwrap();
    assert!(matches!(c.state.backend, StateBackend::Memory));
    assert!(matches!(&c.audit.backend, AuditBackend::File { path } if path == Path::new("var/audit.jsonl")));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    let p = c.environment("production").unwrap();
    assert_eq!(p.pending_timeout, Duration::from_secs(1800));
    assert!(p.verdict.required);
    assert_eq!(p.verdict.max_age, Duration::from_secs(86400));
    assert_eq!(p.reviews.required, 0);
}

#[test]
fn unknown_keys_fail_and_name_the_key() {
    let errs = errors(&format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0],
        "server.lisen (line 15, column 1): unknown key `lisen` in [server]; did you mean `listen`?"
    );
}

#[test]
fn unknown_keys_in_environments_fail() {
    let errs = errors(&MINIMAL.replace(
        "approvers = [\"octocat\"]",
        "approvers = [\"octocat\"]\napprover = [\"x\"]",
    ));
    assert_eq!(
        errs[0],
        "environments.production.approver (line 10, column 1): unknown key `approver` in [environments.production]; did you mean `approvers`?"
    );
}

#[test]
fn every_validation_error_is_reported_with_its_key() {
    let text = r#"
[server]
listen = "nowhere"
[state]
backend = "etcd"
[github]
api_url = "http://api.github.com"
webhook_secrets = ["inline-secret"]
[[issuers]]
kind = "bitbucket"
issuer = "http://issuer.example"
[environments.production]
pending_timeout = "soon"
[environments.production.verdict]
mode = "evaluated"
[environments.production.reviews]
required = 3
reviewers = ["a@example.com"]
"#;
    let errs = errors(text);
    let expect = [
        "server.listen: `nowhere` is not an address",
        "state.backend: `etcd` is not one of",
        "github.app_id: is required unless server.dry_run = true",
        "github.private_key: is required",
        "github.webhook_secrets[0]: secrets are never written inline",
        "github.api_url: must be https",
        "issuers[0].kind: `bitbucket` is not one of",
        "issuers[0].issuer: must be https",
        "issuers[0].audience: is required",
        "environments.production.approvers: at least one approver",
        "environments.production.pending_timeout: `soon` is not a duration",
        "environments.production.verdict.policy: is required for modes",
        "environments.production.verdict.producers: a required verdict needs at least one trusted producer",
        "environments.production.reviews.required: requires 3 reviews but lists 1 reviewer(s)",
        "slack: an environment requires reviews via Slack",
        "policies.paths: an environment evaluates Rego verdicts",
    ];
    for e in expect {
        assert!(errs.iter().any(|x| x.starts_with(e)), "missing `{e}` in {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn secrets_come_from_env_or_file_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook");
    std::fs::write(&file, "from-file\n").unwrap();
    let text = format!(
        "{MINIMAL}\n[server]\ndry_run = true\n[github]\nwebhook_secrets = [{{ env = \"SECRET\" }}, {{ file = \"{}\" }}]\n",
        file.display()
    );
    let c = Config::from_toml(&text, &env_of(&[("SECRET", "s3cr3t")])).unwrap();
    let gh = c.github.unwrap();
    assert_eq!(gh.webhook_secrets[0].expose(), "s3cr3t");
    assert_eq!(gh.webhook_secrets[1].expose(), "from-file");
    let debug = format!("{:?}", gh.webhook_secrets);
    assert!(!debug.contains("s3cr3t") && !debug.contains("from-file"), "{debug}");
}

#[test]
fn a_missing_secret_names_the_variable_not_a_value() {
    let text = format!("{MINIMAL}\n[server]\ndry_run = true\n[github]\nwebhook_secrets = [{{ env = \"NOPE\" }}]\n");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec!["github.webhook_secrets[0]: environment variable `NOPE` is not set".to_string()]
    );
}

#[test]
fn http_is_allowed_only_on_loopback() {
    let ok = MINIMAL.replace("https://token.actions.githubusercontent.com", "http://127.0.0.1:9000");
    assert!(errors(&ok).is_empty());
    let ok6 = MINIMAL.replace("https://token.actions.githubusercontent.com", "http://[::1]:9000");
    assert!(errors(&ok6).is_empty());
    let bad = MINIMAL.replace("https://token.actions.githubusercontent.com", "http://10.0.0.1:9000");
    assert_eq!(
        errors(&bad),
        vec!["issuers[0].issuer: must be https (plain http is allowed only on loopback addresses)".to_string()]
    );
}

#[test]
fn claim_matchers_are_anchored_and_compile_lists() {
    let text = MINIMAL.replace(
        "approvers = [\"octocat\"]",
        "approvers = [\"octocat\"]\nrequire_claims = { ref = { pattern = \"refs/heads/(main|release/.*)\" }, runner_environment = [\"self-hosted\", \"github-hosted\"], ref_protected = true }",
    );
    let c = Config::from_toml(&text, &|_| None).unwrap();
    let rule = &c.environment("production").unwrap().require_claims;
    let m = &rule["ref"];
    assert!(m.matches(&serde_json::json!("refs/heads/main")));
    assert!(m.matches(&serde_json::json!("refs/heads/release/1.2")));
    assert!(
        !m.matches(&serde_json::json!("xrefs/heads/main")),
        "must be anchored at the start"
    );
    assert!(
        !m.matches(&serde_json::json!("refs/heads/mainx")),
        "must be anchored at the end"
    );
    assert!(rule["runner_environment"].matches(&serde_json::json!("github-hosted")));
    assert!(!rule["runner_environment"].matches(&serde_json::json!("hosted")));
    // GitLab sends booleans as strings, GitHub as JSON booleans: both match.
    assert!(rule["ref_protected"].matches(&serde_json::json!("true")));
    assert!(rule["ref_protected"].matches(&serde_json::json!(true)));
    assert!(!rule["ref_protected"].matches(&serde_json::json!(false)));
}

#[test]
fn a_bad_pattern_is_named() {
    let text = MINIMAL.replace(
        "approvers = [\"octocat\"]",
        "approvers = [\"octocat\"]\nrequire_claims = { ref = { pattern = \"(\" } }",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("environments.production.require_claims.ref: invalid pattern"),
        "{errs:?}"
    );
}

#[test]
fn an_empty_producer_rule_is_refused() {
    let text = MINIMAL.replace("producers = [{ job_workflow_ref", "producers = [{}, { job_workflow_ref");
    assert_eq!(
        errors(&text),
        vec![
            "environments.production.verdict.producers[0]: an empty producer rule would trust every token".to_string()
        ]
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let text = include_str!("../../config/portcullis.example.toml");
    let c = Config::from_toml(text, &env_of(&[("PORTCULLIS_GITHUB_WEBHOOK_SECRET", "dev")]));
    assert!(c.is_ok(), "{}", c.err().map(|e| e.to_string()).unwrap_or_default());
}

#[test]
fn a_redis_url_with_a_password_must_be_a_secret() {
    let text = format!("{MINIMAL}\n[state]\nbackend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\n");
    assert_eq!(
        errors(&text),
        vec!["state.url: a URL with a password is a secret: use { env = \"VAR\" } or { file = \"path\" }".to_string()]
    );
    let text = format!("{MINIMAL}\n[state]\nbackend = \"redis\"\nurl = {{ env = \"SECRET\" }}\n");
    let err = errors(&text);
    assert_eq!(
        err,
        vec!["state.url: must be a redis://, rediss://, unix:// or redis+sentinel:// URL".to_string()],
        "the env value is used"
    );
    let c = Config::from_toml(
        &format!("{MINIMAL}\n[state]\nbackend = \"redis\"\nurl = {{ env = \"R\" }}\n"),
        &env_of(&[("R", "redis://:pw@127.0.0.1:1/0")]),
    )
    .unwrap();
    assert!(matches!(&c.state.backend, StateBackend::Redis { url, .. } if url.expose() == "redis://:pw@127.0.0.1:1/0"));
}

#[test]
fn sentinel_urls_and_min_replicas_are_checked_by_key() {
    let redis = |state: &str| format!("{MINIMAL}\n[state]\nbackend = \"redis\"\n{state}\n");
    let text = redis("url = \"redis+sentinel://s1:26379,s2:26379,s3/mymaster/2\"\nmin_replicas = 1");
    let c = Config::from_toml(&text, &env_of(&[])).unwrap();
    assert_eq!(c.state.min_replicas, 1);
    assert!(
        matches!(&c.state.backend, StateBackend::Redis { url, .. } if url.expose().starts_with("redis+sentinel://s1:"))
    );
    assert_eq!(Config::from_toml(MINIMAL, &env_of(&[])).unwrap().state.min_replicas, 0);
    let cases = [
        (
            "url = \"redis+sentinel://s1:26379,s2:x/m\"",
            "state.url: sentinel 2 of the redis+sentinel:// URL is not host:port (a port from 1 to 65535)",
        ),
        (
            "url = \"redis+sentinel://s1:26379\"",
            "state.url: a redis+sentinel:// URL names the master after the sentinels: \
             redis+sentinel://host:port,…/MASTER_NAME[/DB]",
        ),
        (
            "url = \"redis+sentinel://:hunter2@s1:26379/m\"",
            "state.url: a URL with a password is a secret: use { env = \"VAR\" } or { file = \"path\" }",
        ),
        (
            "min_replicas = -1",
            "state.min_replicas: must be a whole number from 0 to 100",
        ),
        (
            "min_replicas = 101",
            "state.min_replicas: must be a whole number from 0 to 100",
        ),
    ];
    for (state, want) in cases {
        assert_eq!(errors(&redis(state)), vec![want.to_string()], "{state}");
    }
    assert_eq!(
        errors(&format!("{MINIMAL}\n[state]\nmin_replicas = 1\n")),
        vec!["state.min_replicas: only applies to the \"redis\" backend".to_string()]
    );
    // A password from a secret is fine, and never shown in an error.
    let text = redis("url = { env = \"R\" }");
    let c = Config::from_toml(&text, &env_of(&[("R", "redis+sentinel://app:hunter2@s1,s2/m")])).unwrap();
    assert!(matches!(c.state.backend, StateBackend::Redis { .. }));
    let Err(err) = Config::from_toml(&text, &env_of(&[("R", "redis+sentinel://app:hunter2@s1,s2:0/m")])) else {
        panic!("a sentinel on port 0 is refused");
    };
    let err = err.to_string();
    assert!(
        err.contains("state.url: sentinel 2 of") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn durations_have_upper_bounds_named_by_key() {
    let text = r#"
[server]
shutdown_timeout = "3h"
[github]
webhook_secrets = [{ env = "S" }]
request_timeout = "1h"
[[issuers]]
kind = "github"
name = "gha"
issuer = "https://token.actions.githubusercontent.com"
audience = "portcullis"
[environments.production]
approvers = ["octocat"]
pending_timeout = "100000y"
[environments.production.verdict]
required = false
"#;
    let errs = errors(text);
    for e in [
        "server.shutdown_timeout: `3h` is longer than the most this setting takes (1h)",
        "github.request_timeout: `1h` is longer than the most this setting takes (10m)",
        "environments.production.pending_timeout: `100000y` is longer than the most this setting takes (1year 18h)",
    ] {
        assert!(errs.iter().any(|x| x.starts_with(e)), "missing `{e}` in {errs:#?}");
    }
}

#[test]
fn server_limits_have_bounded_defaults() {
    let c = Config::from_toml(MINIMAL, &|_| None).unwrap();
    assert_eq!(
        c.server.rate_limit,
        Some(RateLimit {
            per_second: 20.0,
            burst: 40
        })
    );
    assert_eq!(c.server.trusted_proxy_header, None);
    assert_eq!(c.server.client_request_timeout, Duration::from_secs(5));
    assert_eq!(c.server.client_disconnect_timeout, Duration::from_secs(1));
    assert_eq!(c.server.keep_alive, Duration::from_secs(5));
}

#[test]
fn server_limits_are_configurable() {
    let text = format!(
        "[server]\nrate_limit = {{ per_second = 5 }}\ntrusted_proxy_header = \"X-Forwarded-For\"\n\
         client_request_timeout = \"2s\"\nclient_disconnect_timeout = \"500ms\"\nkeep_alive = \"30s\"\n{MINIMAL}"
    );
    let c = Config::from_toml(&text, &|_| None).unwrap();
    assert_eq!(
        c.server.rate_limit,
        Some(RateLimit {
            per_second: 5.0,
            burst: 10
        })
    );
    assert_eq!(c.server.trusted_proxy_header.as_deref(), Some("x-forwarded-for"));
    assert_eq!(c.server.client_request_timeout, Duration::from_secs(2));
    assert_eq!(c.server.client_disconnect_timeout, Duration::from_millis(500));
    assert_eq!(c.server.keep_alive, Duration::from_secs(30));
    let off = Config::from_toml(&format!("[server]\nrate_limit = false\n{MINIMAL}"), &|_| None).unwrap();
    assert_eq!(off.server.rate_limit, None);
    let both = format!("[server]\nrate_limit = {{ per_second = 0.5, burst = 3 }}\n{MINIMAL}");
    let both = Config::from_toml(&both, &|_| None).unwrap();
    assert_eq!(
        both.server.rate_limit,
        Some(RateLimit {
            per_second: 0.5,
            burst: 3
        })
    );
}

#[test]
fn server_limits_are_validated_naming_the_key() {
    let errs = errors(&format!(
        "[server]\nrate_limit = {{ per_second = 0, burst = 0, bursts = 1 }}\ntrusted_proxy_header = \"x forwarded\"\n\
         client_request_timeout = \"2m\"\nclient_disconnect_timeout = \"0s\"\nkeep_alive = \"1h\"\n{MINIMAL}"
    ));
    let expected = [
        "server.rate_limit.bursts: unknown key",
        "server.rate_limit.per_second: must be a number above 0",
        "server.rate_limit.burst: must be a whole number from 1 to 1000000",
        "server.trusted_proxy_header: `x forwarded` is not a header name",
        "server.client_request_timeout: must be at most 1m",
        "server.client_disconnect_timeout: must be longer than zero",
        "server.keep_alive: must be at most 5m",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:?}");
    for e in expected {
        assert!(errs.iter().any(|x| x.starts_with(e)), "missing `{e}` in {errs:?}");
    }
    let errs = errors(&format!("[server]\nrate_limit = \"fast\"\n{MINIMAL}"));
    assert!(
        errs[0].starts_with("server.rate_limit: must be true, false"),
        "{errs:?}"
    );
}

#[test]
fn each_platform_instance_is_bound_to_one_issuer() {
    let issuers = r#"
[[issuers]]
name = "github-com"
kind = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = "portcullis"
[[issuers]]
name = "ghes"
kind = "github"
issuer = "https://ghe.example.com/_services/token"
audience = "portcullis"
[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
required = false
"#;
    let github = |extra: &str| {
        format!("[server]\ndry_run = true\n[github]\nwebhook_secrets = [{{ env = \"S\" }}]\n{extra}\n{issuers}")
    };
    let errs = errors(&github(""));
    assert!(
        errs.iter().any(|e| e
            .starts_with("github.issuer: 2 issuers of kind github are configured (github-com, ghes); name the one")),
        "{errs:#?}"
    );
    let errs = errors(&github("issuer = \"nobody\""));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("github.issuer: `nobody` names no [[issuers]] entry")),
        "{errs:#?}"
    );
    let c = Config::from_toml(&github("issuer = \"ghes\""), &|_| Some("x".into())).expect("valid");
    assert_eq!(c.github.as_ref().unwrap().issuer, "ghes");
    // With one issuer of the kind, it is the one.
    let one = issuers
        .replacen("name = \"ghes\"", "name = \"gitlab-com\"", 1)
        .replacen(
            "kind = \"github\"\nissuer = \"https://ghe",
            "kind = \"gitlab\"\nissuer = \"https://ghe",
            1,
        );
    let c = Config::from_toml(
        &format!("[server]\ndry_run = true\n[github]\nwebhook_secrets = [{{ env = \"S\" }}]\n{one}"),
        &|_| Some("x".into()),
    )
    .expect("valid");
    assert_eq!(c.github.as_ref().unwrap().issuer, "github-com");
}
