//! The GitHub webhook fixtures are real-shaped: every file under
//! `tests/fixtures/github/` is checked against GitHub's own payload schema
//! for its event (`tests/contracts/`), so tests that replay them replay
//! what GitHub sends.
//!
//! A fixture is named `<event>.<action>.json` or `<event>.json`. Add a
//! schema (or a structural check) to [`check_fixture`] when adding an event.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn manifest_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The `deployment_protection_rule` (`requested`) payload schema.
///
/// The contract file is an excerpt of `@octokit/openapi-webhooks`: OpenAPI
/// 3.1 components, whose schema dialect is JSON Schema 2020-12 (it has no
/// `$schema` of its own; its nullable fields are `"type": [..., "null"]`).
/// The file itself becomes the root, so its `#/components/...` references
/// resolve unchanged, with `$ref` pointing at the payload schema.
fn deployment_protection_rule_validator() -> jsonschema::Validator {
    let mut document = read_json(&manifest_path(
        "tests/contracts/github-webhook-deployment_protection_rule.schema.json",
    ));
    let payload_ref = document["schema"]["$ref"].clone();
    assert_eq!(
        payload_ref,
        json!("#/components/schemas/webhook-deployment-protection-rule-requested")
    );
    let root = document.as_object_mut().expect("the schema file is an object");
    root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    root.insert("$ref".into(), payload_ref);
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&document)
        .expect("the webhook schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect()
}

/// The `ping` event has no schema in `tests/contracts/`: check the shape
/// GitHub sends when an App's webhook is created.
fn ping_problems(payload: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !payload["zen"].is_string() {
        problems.push("`zen` must be a string".to_owned());
    }
    let hook_id = payload["hook_id"].as_u64();
    if hook_id.is_none() {
        problems.push("`hook_id` must be an integer".to_owned());
    }
    let hook = &payload["hook"];
    if hook["id"].as_u64() != hook_id {
        problems.push("`hook.id` must equal `hook_id`".to_owned());
    }
    if hook["type"] != "App" {
        problems.push("`hook.type` must be \"App\" (portcullis is a GitHub App)".to_owned());
    }
    if !hook["app_id"].is_u64() {
        problems.push("`hook.app_id` must be an integer".to_owned());
    }
    if hook["config"]["content_type"] != "json" {
        problems.push("`hook.config.content_type` must be \"json\"".to_owned());
    }
    let subscribed = hook["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e == "deployment_protection_rule"));
    if !subscribed {
        problems.push("`hook.events` must include \"deployment_protection_rule\"".to_owned());
    }
    problems
}

/// Every problem with one fixture, checked against its event's contract.
fn check_fixture(path: &Path, validator: &jsonschema::Validator) -> Vec<String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let event = name.split('.').next().unwrap_or_default();
    let payload = read_json(path);
    match event {
        "deployment_protection_rule" => schema_errors(validator, &payload),
        "ping" => ping_problems(&payload),
        other => vec![format!(
            "no contract for event `{other}`: add its schema to tests/contracts/ and to check_fixture"
        )],
    }
}

fn fixture_files() -> Vec<PathBuf> {
    let dir = manifest_path("tests/fixtures/github");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_github_fixture_matches_its_contract() {
    let validator = deployment_protection_rule_validator();
    let files = fixture_files();
    assert!(
        files
            .iter()
            .any(|p| p.ends_with("deployment_protection_rule.requested.json")),
        "the requested fixture is missing: {files:?}"
    );
    let mut failures = Vec::new();
    for path in &files {
        for problem in check_fixture(path, &validator) {
            failures.push(format!("{}: {problem}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures break their contract:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_requested_fixture_is_full_size_and_consistent() {
    let path = manifest_path("tests/fixtures/github/deployment_protection_rule.requested.json");
    let size = std::fs::metadata(&path).expect("fixture").len();
    assert!((8 * 1024..=12 * 1024).contains(&size), "{size} bytes");
    let payload = read_json(&path);
    assert_eq!(payload["action"], "requested");
    assert_eq!(payload["environment"], "production");
    assert_eq!(payload["event"], "push");
    assert_eq!(payload["pull_requests"], json!([]));
    let full_name = payload["repository"]["full_name"].as_str().expect("full_name");
    assert_eq!(full_name, "octo-org/payments");
    let callback = payload["deployment_callback_url"].as_str().expect("callback");
    let prefix = format!("https://api.github.com/repos/{full_name}/actions/runs/");
    let run = callback
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix("/deployment_protection_rule"))
        .expect("the callback URL is the run's review endpoint");
    assert!(run.parse::<u64>().is_ok(), "run id `{run}`");
    assert_eq!(payload["deployment"]["environment"], payload["environment"]);
    assert_eq!(payload["deployment"]["repository_url"], payload["repository"]["url"]);
    assert_eq!(
        payload["repository"]["owner"]["login"],
        payload["organization"]["login"]
    );
    let sha = payload["deployment"]["sha"].as_str().expect("sha");
    assert!(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");
    assert!(payload["installation"]["id"].is_u64());
}

/// The validator really checks: each broken copy of the fixture fails for
/// the named reason (a validator that resolved no `$ref` would pass them).
#[test]
fn the_schema_rejects_broken_payloads() {
    let validator = deployment_protection_rule_validator();
    let good = read_json(&manifest_path(
        "tests/fixtures/github/deployment_protection_rule.requested.json",
    ));
    assert!(schema_errors(&validator, &good).is_empty());

    type Breakage = fn(&mut Value);
    let cases: [(&str, Breakage, &str); 6] = [
        (
            "no repository",
            |p| drop(p.as_object_mut().map(|o| o.remove("repository"))),
            "repository",
        ),
        (
            "no sender",
            |p| drop(p.as_object_mut().map(|o| o.remove("sender"))),
            "sender",
        ),
        ("other action", |p| p["action"] = json!("completed"), "/action"),
        (
            "callback not a URI",
            |p| p["deployment_callback_url"] = json!("not a uri"),
            "/deployment_callback_url",
        ),
        (
            "owner without login",
            |p| drop(p["repository"]["owner"].as_object_mut().map(|o| o.remove("login"))),
            "/repository/owner",
        ),
        (
            "deployment id a string",
            |p| p["deployment"]["id"] = json!("2345678901"),
            "/deployment/id",
        ),
    ];
    for (name, breakage, expected) in cases {
        let mut broken = good.clone();
        breakage(&mut broken);
        let errors = schema_errors(&validator, &broken);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{name}: expected an error about `{expected}`, got {errors:?}"
        );
    }
}

#[test]
fn the_ping_fixture_is_an_app_ping() {
    let payload = read_json(&manifest_path("tests/fixtures/github/ping.json"));
    assert_eq!(ping_problems(&payload), Vec::<String>::new());
    let mut broken = payload.clone();
    broken["hook"]["type"] = json!("Repository");
    assert_eq!(ping_problems(&broken).len(), 1);
}
