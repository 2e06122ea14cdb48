//! Tests of the policy engine, the shipped `deploy.hipaa` policy, the
//! evidence schema and digest. The clock is always fixed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const QUERY: &str = "data.deploy.hipaa.allow";
const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PROD_SIGNER: &str = "awskms:///alias/hipaa-production-cosign";

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/policies")
}

fn approvers() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("production".to_owned(), vec!["octocat".to_owned(), "hubot".to_owned()]),
        ("staging".to_owned(), vec!["octocat".to_owned()]),
    ])
}

fn shipped() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::load(&[policies_dir()], &approvers()).expect("the shipped policy loads"))
}

fn evidence() -> Value {
    json!({
        "scans": {
            "sast": {"tool": "semgrep", "timestamp": "2026-03-01T10:00:00Z", "critical": 0, "high": 2},
            "container": {"tool": "trivy", "timestamp": "2026-03-01T10:05:00Z", "image_digest": DIGEST, "critical": 0, "high": 1},
            "iac": {"tools": ["tfsec", "checkov"], "timestamp": "2026-03-01T10:10:00Z", "critical": 0, "high": 0},
            "secrets": {"tool": "gitleaks", "timestamp": "2026-03-01T10:00:00Z", "findings": 0},
            "dependencies": {"tool": "osv-scanner", "timestamp": "2026-03-01T09:00:00Z", "critical": 1, "high": 4}
        },
        "artifact": {
            "digest": DIGEST,
            "cosign_verified": true,
            "signed_by": PROD_SIGNER,
            "target_environment": "production"
        }
    })
}

fn input_for(evidence: &Value, environment: &str, actor: &str) -> Value {
    let claims = BTreeMap::from([("ref".to_owned(), json!("refs/heads/main"))]);
    build_input(
        evidence,
        environment,
        "0123456789abcdef0123456789abcdef01234567",
        "octo-org/app",
        actor,
        &claims,
        &json!([]),
        NOW,
    )
}

/// Sets the field at `pointer`, adding it to its object if absent.
fn set(value: &mut Value, pointer: &str, new: Value) {
    if let Some(slot) = value.pointer_mut(pointer) {
        *slot = new;
        return;
    }
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = value.pointer_mut(parent).and_then(Value::as_object_mut);
    parent
        .unwrap_or_else(|| panic!("no parent of {pointer} in the fixture"))
        .insert(key.to_owned(), new);
}

fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
}

// --- the shipped policy, condition by condition ------------------------------

#[test]
fn the_happy_path_allows_with_no_reasons() {
    let evidence = evidence();
    validate_evidence(&evidence).unwrap();
    let got = shipped()
        .evaluate(QUERY, &input_for(&evidence, "production", "octocat"), NOW)
        .unwrap();
    assert_eq!(
        got,
        Evaluation {
            allow: true,
            reasons: vec![]
        }
    );
}

#[test]
fn each_condition_failing_alone_gives_its_own_reason() {
    type Mutation = fn(&mut Value, &mut String, &mut String);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "stale container",
            |e, _, _| set(e, "/scans/container/timestamp", json!("2026-02-28T11:59:59Z")),
            "container: scan is older than 24h",
        ),
        (
            "stale sast",
            |e, _, _| set(e, "/scans/sast/timestamp", json!("2026-02-27T12:00:00Z")),
            "sast: scan is older than 24h",
        ),
        (
            "stale iac",
            |e, _, _| set(e, "/scans/iac/timestamp", json!("2026-02-28T11:59:59.999999999Z")),
            "iac: scan is older than 24h",
        ),
        (
            "stale secrets",
            |e, _, _| set(e, "/scans/secrets/timestamp", json!("2026-01-01T00:00:00Z")),
            "secrets: scan is older than 24h",
        ),
        (
            "stale dependencies",
            |e, _, _| set(e, "/scans/dependencies/timestamp", json!("2026-02-28T12:00:00+00:01")),
            "dependencies: scan is older than 24h",
        ),
        (
            "scan from the future",
            |e, _, _| set(e, "/scans/sast/timestamp", json!("2026-03-01T12:05:00.000000001Z")),
            "sast: scan timestamp is in the future",
        ),
        (
            "container criticals",
            |e, _, _| set(e, "/scans/container/critical", json!(2)),
            "container: 2 critical CVEs",
        ),
        (
            "one container critical",
            |e, _, _| set(e, "/scans/container/critical", json!(1)),
            "container: 1 critical CVE",
        ),
        (
            "sast criticals",
            |e, _, _| set(e, "/scans/sast/critical", json!(3)),
            "sast: 3 critical findings",
        ),
        (
            "iac criticals",
            |e, _, _| set(e, "/scans/iac/critical", json!(1)),
            "iac: 1 critical misconfiguration",
        ),
        (
            "secrets",
            |e, _, _| set(e, "/scans/secrets/findings", json!(1)),
            "secrets: 1 secret found",
        ),
        (
            "several secrets",
            |e, _, _| set(e, "/scans/secrets/findings", json!(5)),
            "secrets: 5 secrets found",
        ),
        (
            "scanned image is not the artifact",
            |e, _, _| {
                set(
                    e,
                    "/scans/container/image_digest",
                    json!(format!("sha256:{}", "2".repeat(64))),
                )
            },
            "container: scanned image sha256:2222222222222222222222222222222222222222222222222222222222222222 is not the artifact sha256:1111111111111111111111111111111111111111111111111111111111111111",
        ),
        (
            "not cosign verified",
            |e, _, _| set(e, "/artifact/cosign_verified", json!(false)),
            "artifact: not verified by cosign",
        ),
        (
            "wrong signer",
            |e, _, _| set(e, "/artifact/signed_by", json!("awskms:///alias/hipaa-staging-cosign")),
            "artifact: signed by awskms:///alias/hipaa-staging-cosign, expected awskms:///alias/hipaa-production-cosign",
        ),
        (
            "actor not an approver",
            |_, _, actor| *actor = "mallory".to_owned(),
            "approver: mallory is not an approver for production",
        ),
        (
            "approver of another environment only",
            |e, env, actor| {
                *env = "staging".to_owned();
                *actor = "hubot".to_owned();
                set(e, "/artifact/target_environment", json!("staging"));
                set(e, "/artifact/signed_by", json!("awskms:///alias/hipaa-staging-cosign"));
            },
            "approver: hubot is not an approver for staging",
        ),
        (
            "artifact built for another environment",
            |e, _, _| set(e, "/artifact/target_environment", json!("staging")),
            "artifact: built for staging, not production",
        ),
        (
            "no expected signer for the environment",
            |e, env, _| {
                *env = "sandbox".to_owned();
                set(e, "/artifact/target_environment", json!("sandbox"));
            },
            // sandbox has neither a signer nor approvers: two conditions fail.
            "artifact: no expected signer configured for sandbox|approver: octocat is not an approver for sandbox",
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut evidence = evidence();
        let mut environment = "production".to_owned();
        let mut actor = "octocat".to_owned();
        mutate(&mut evidence, &mut environment, &mut actor);
        validate_evidence(&evidence).unwrap_or_else(|e| panic!("{name}: the case's evidence is schema-valid: {e}"));
        let got = shipped()
            .evaluate(QUERY, &input_for(&evidence, &environment, &actor), NOW)
            .unwrap();
        let mut expected: Vec<String> = expected.split('|').map(str::to_owned).collect();
        expected.sort();
        assert_eq!(
            got,
            Evaluation {
                allow: false,
                reasons: expected
            },
            "{name}"
        );
    }
}

#[test]
fn the_shipped_policy_runs_compiled_and_agrees_with_the_interpreter() {
    assert!(
        shipped().compiled(),
        "the shipped policy should run on regorus's compiled form"
    );
    let interpreted = PolicyEngine::load(&[policies_dir()], &approvers())
        .unwrap()
        .interpreted();
    let mut cases = vec![evidence()];
    for (pointer, value) in [
        ("/scans/container/critical", json!(3)),
        ("/scans/sast/timestamp", json!("2026-02-01T00:00:00Z")),
        ("/artifact/signed_by", json!("someone")),
        ("/scans/secrets/findings", json!(1)),
    ] {
        let mut e = evidence();
        set(&mut e, pointer, value);
        cases.push(e);
    }
    for (i, e) in cases.iter().enumerate() {
        for actor in ["octocat", "mallory"] {
            let input = input_for(e, "production", actor);
            assert_eq!(
                shipped().evaluate(QUERY, &input, NOW).unwrap(),
                interpreted.evaluate(QUERY, &input, NOW).unwrap(),
                "case {i}, {actor}"
            );
        }
    }
}

#[test]
fn boundaries_of_freshness_are_exact() {
    // Exactly 24 h old is fresh; one nanosecond more is stale. 5 min ahead is
    // tolerated skew; one nanosecond more is the future.
    let cases = [
        ("2026-02-28T12:00:00Z", true),
        ("2026-02-28T11:59:59.999999999Z", false),
        ("2026-03-01T12:05:00Z", true),
        ("2026-03-01T12:05:00.000000001Z", false),
        ("2026-03-01T14:00:00+02:00", true),
        ("2026-02-28T13:59:59.999999999+02:00", false),
    ];
    for (timestamp, allowed) in cases {
        let mut evidence = evidence();
        set(&mut evidence, "/scans/container/timestamp", json!(timestamp));
        let got = shipped()
            .evaluate(QUERY, &input_for(&evidence, "production", "octocat"), NOW)
            .unwrap();
        assert_eq!(got.allow, allowed, "{timestamp}: {:?}", got.reasons);
    }
}

#[test]
fn the_clock_is_the_one_given_not_the_machines() {
    let evidence = evidence();
    let input = input_for(&evidence, "production", "octocat");
    let a_week_later = NOW + time::Duration::days(7);
    let got = shipped().evaluate(QUERY, &input, a_week_later).unwrap();
    assert!(!got.allow);
    assert_eq!(
        got.reasons.len(),
        5,
        "every scan is stale a week later: {:?}",
        got.reasons
    );
    assert!(got.reasons.iter().all(|r| r.ends_with(": scan is older than 24h")));
}

#[test]
fn the_reference_defect_is_fixed_stale_evidence_with_zero_counts_denies() {
    let mut evidence = evidence();
    set(
        &mut evidence,
        "/scans/container/timestamp",
        json!("2026-02-20T00:00:00Z"),
    );
    set(&mut evidence, "/scans/container/critical", json!(0));
    let input = input_for(&evidence, "production", "octocat");
    let got = shipped().evaluate(QUERY, &input, NOW).unwrap();
    assert!(!got.allow);
    let valid = shipped()
        .evaluate("data.deploy.hipaa.scan_evidence_valid", &input, NOW)
        .unwrap();
    assert!(
        !valid.allow,
        "scan_evidence_valid must require freshness and zero criticals together"
    );
}

#[test]
fn the_shipped_rego_tests_pass() {
    let engine = PolicyEngine::load_with_tests(&[policies_dir()], &approvers()).unwrap();
    let results = engine.run_tests(NOW);
    assert!(results.len() >= 30, "found {} test_ rules", results.len());
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "failing Rego tests: {failed:#?}");
    // The service's engine does not carry them, and they do not change its revision.
    assert!(shipped().test_rules().is_empty());
    assert_eq!(engine.test_rules().len(), results.len());
    assert_ne!(engine.revision(), shipped().revision());
}

// --- loading -----------------------------------------------------------------

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn load_error(files: &[(&str, &str)]) -> (tempfile::TempDir, PolicyError) {
    let dir = dir_with(files);
    let err = PolicyEngine::load(&[dir.path().to_path_buf()], &approvers()).unwrap_err();
    (dir, err)
}

#[track_caller]
fn assert_compile_error(files: &[(&str, &str)], file: &str, line: u32, message_part: &str) {
    let (dir, err) = load_error(files);
    let expected_file = dir.path().join(file).display().to_string();
    match &err {
        PolicyError::Compile {
            file: got_file,
            line: got_line,
            message,
            ..
        } => {
            assert_eq!(got_file, &expected_file);
            assert_eq!(*got_line, line, "{err}");
            assert!(
                message.contains(message_part),
                "{message:?} should mention {message_part:?}"
            );
            assert!(
                err.to_string().starts_with(&format!("{expected_file}:{line}:")),
                "{err}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

const GOOD: &str = "package ok\n\nimport rego.v1\n\nallow if input.x == 1\n";

#[test]
fn a_syntax_error_names_the_file_and_line() {
    assert_compile_error(
        &[
            ("a_ok.rego", GOOD),
            (
                "nested/broken.rego",
                "package broken\n\nimport rego.v1\n\nallow if {\n  x := \n}\n",
            ),
        ],
        "nested/broken.rego",
        6,
        "",
    );
}

#[test]
fn rego_v0_syntax_is_a_compile_error() {
    assert_compile_error(
        &[("old.rego", "package old\n\nallow {\n  input.x\n}\n")],
        "old.rego",
        3,
        "`if` keyword is required",
    );
}

#[test]
fn an_unsafe_variable_names_the_file_and_line() {
    assert_compile_error(
        &[(
            "unsafe.rego",
            "package unsafe\n\nimport rego.v1\n\nallow if {\n  input.x\n  y > 1\n}\n",
        )],
        "unsafe.rego",
        7,
        "unsafe",
    );
}

#[test]
fn an_unknown_function_names_the_file_and_line() {
    // regorus itself would only notice on the deploy that takes this branch.
    assert_compile_error(
        &[(
            "typo.rego",
            "package typo\n\nimport rego.v1\n\nallow if {\n  input.rare_branch\n  count_of(input.xs) == 0\n}\n",
        )],
        "typo.rego",
        7,
        "unknown function count_of",
    );
}

#[test]
fn a_builtin_left_out_of_this_build_is_a_compile_error() {
    assert_compile_error(
        &[(
            "semver.rego",
            "package s\n\nimport rego.v1\n\nallow if semver.compare(input.v, \"1.0.0\") >= 0\n",
        )],
        "semver.rego",
        5,
        "unknown function semver.compare",
    );
}

#[test]
fn a_wrong_argument_count_is_a_compile_error() {
    assert_compile_error(
        &[(
            "arity.rego",
            "package a\n\nimport rego.v1\n\nf(x) := x + 1\n\nallow if {\n  count(input.xs, 1, 2)\n}\n",
        )],
        "arity.rego",
        8,
        "count takes 1 arguments",
    );
    assert_compile_error(
        &[(
            "arity.rego",
            "package a\n\nimport rego.v1\n\nf(x) := x + 1\n\nallow if {\n  f(1, 2, 3) == 2\n}\n",
        )],
        "arity.rego",
        8,
        "function f takes 1 arguments",
    );
}

#[test]
fn calls_resolve_through_packages_imports_and_output_arguments() {
    let dir = dir_with(&[
        ("lib.rego", "package lib.util\n\nimport rego.v1\n\ndouble(x) := x * 2\n"),
        (
            "main.rego",
            "package main\n\nimport rego.v1\nimport data.lib.util\nimport data.lib.util as u\n\n\
             inc(x) := x + 1\n\
             allow if {\n  util.double(2) == 4\n  u.double(1) == 2\n  data.lib.util.double(3) == 6\n  inc(1) == 2\n  count([1], n)\n  n == 1\n  print(\"ok\", n)\n}\n",
        ),
    ]);
    let engine = PolicyEngine::load(&[dir.path().to_path_buf()], &approvers()).unwrap();
    assert!(engine.evaluate("data.main.allow", &json!({}), NOW).unwrap().allow);
}

#[test]
fn data_files_merge_at_the_root_beside_the_approvers() {
    let dir = dir_with(&[
        (
            "p.rego",
            "package p\n\nimport rego.v1\n\nallow if {\n  data.signers[input.env] == \"k\"\n  \"octocat\" in data.approvers[input.env]\n}\n",
        ),
        ("data.json", r#"{"signers": {"production": "k"}}"#),
    ]);
    let engine = PolicyEngine::load(&[dir.path().to_path_buf()], &approvers()).unwrap();
    assert!(
        engine
            .evaluate("data.p.allow", &json!({"env": "production"}), NOW)
            .unwrap()
            .allow
    );
}

#[test]
fn a_path_may_name_a_file_and_a_boolean_deny_counts() {
    let dir = dir_with(&[
        (
            "p.rego",
            "package p\n\nimport rego.v1\n\nallow := true\ndeny if input.bad\n",
        ),
        ("ignored.txt", "not a policy"),
    ]);
    let engine = PolicyEngine::load(&[dir.path().join("p.rego")], &approvers()).unwrap();
    assert!(engine.evaluate("data.p.allow", &json!({}), NOW).unwrap().allow);
    assert_eq!(
        engine.evaluate("data.p.allow", &json!({"bad": true}), NOW).unwrap(),
        Evaluation {
            allow: false,
            reasons: vec!["data.p's deny rule holds".to_owned()]
        }
    );
}

#[test]
fn bad_data_files_are_named() {
    let (dir, err) = load_error(&[("p.rego", GOOD), ("d.json", "[1, 2]")]);
    assert!(
        matches!(&err, PolicyError::Data { file, .. } if *file == dir.path().join("d.json").display().to_string()),
        "{err:?}"
    );

    let (dir, err) = load_error(&[("p.rego", GOOD), ("d.json", "{\"a\": ")]);
    assert!(
        matches!(&err, PolicyError::Data { file, .. } if *file == dir.path().join("d.json").display().to_string()),
        "{err:?}"
    );

    // A data file may not redefine the configured approvers.
    let (dir, err) = load_error(&[
        ("p.rego", GOOD),
        ("d.json", r#"{"approvers": {"production": ["mallory"]}}"#),
    ]);
    assert!(
        matches!(&err, PolicyError::Data { file, .. } if *file == dir.path().join("d.json").display().to_string()),
        "{err:?}"
    );
}

#[test]
fn a_missing_path_is_a_read_error() {
    let err = PolicyEngine::load(&[PathBuf::from("/nonexistent/policies")], &approvers()).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Read { path, .. } if path == "/nonexistent/policies"),
        "{err:?}"
    );
}

#[test]
fn the_revision_hashes_modules_data_and_approvers_but_not_their_location() {
    let files = [
        ("p.rego", GOOD),
        ("d.json", r#"{"k": 1}"#),
        ("p_test.rego", "package ok\n\ntest_x if true\n"),
    ];
    let a = dir_with(&files);
    let b = dir_with(&files);
    let load = |dir: &tempfile::TempDir, approvers: &BTreeMap<String, Vec<String>>| {
        PolicyEngine::load(&[dir.path().to_path_buf()], approvers)
            .unwrap()
            .revision()
            .to_owned()
    };
    let rev = load(&a, &approvers());
    assert!(rev.starts_with("sha256:") && rev.len() == 7 + 64, "{rev}");
    assert_eq!(rev, load(&b, &approvers()), "same content elsewhere, same revision");

    std::fs::write(b.path().join("d.json"), r#"{"k": 2}"#).unwrap();
    assert_ne!(rev, load(&b, &approvers()), "data changed");

    let c = dir_with(&files);
    std::fs::write(c.path().join("p.rego"), format!("{GOOD}\n# a comment\n")).unwrap();
    assert_ne!(rev, load(&c, &approvers()), "module changed");

    let mut more = approvers();
    more.insert("sandbox".to_owned(), vec!["octocat".to_owned()]);
    assert_ne!(rev, load(&a, &more), "approvers changed");

    // A test file changes nothing for the service.
    std::fs::write(a.path().join("p_test.rego"), "package ok\n\ntest_y if true\n").unwrap();
    assert_eq!(rev, load(&a, &approvers()));
}

// --- evaluation semantics ------------------------------------------------------

fn engine_with(rego: &str) -> (tempfile::TempDir, PolicyEngine) {
    let dir = dir_with(&[("p.rego", rego)]);
    let engine = PolicyEngine::load(&[dir.path().to_path_buf()], &approvers()).unwrap();
    (dir, engine)
}

#[test]
fn only_exactly_true_allows() {
    let (_dir, engine) = engine_with(
        "package p\n\nimport rego.v1\n\nyes := true\nno := false\nnumber := 1\ntext := \"true\"\nmaybe if input.never\n",
    );
    let eval = |q: &str| engine.evaluate(q, &json!({}), NOW).unwrap();
    assert_eq!(
        eval("data.p.yes"),
        Evaluation {
            allow: true,
            reasons: vec![]
        }
    );
    assert_eq!(
        eval("data.p.no"),
        Evaluation {
            allow: false,
            reasons: vec!["denied by data.p.no".to_owned()]
        }
    );
    assert_eq!(
        eval("data.p.number"),
        Evaluation {
            allow: false,
            reasons: vec!["data.p.number is not a boolean".to_owned()]
        }
    );
    assert_eq!(
        eval("data.p.text"),
        Evaluation {
            allow: false,
            reasons: vec!["data.p.text is not a boolean".to_owned()]
        }
    );
    assert_eq!(
        eval("data.p.maybe"),
        Evaluation {
            allow: false,
            reasons: vec!["data.p.maybe is undefined".to_owned()]
        }
    );
    assert_eq!(
        eval("data.nowhere.allow"),
        Evaluation {
            allow: false,
            reasons: vec!["data.nowhere.allow is undefined".to_owned()]
        }
    );
}

#[test]
fn reasons_come_from_deny_or_else_reasons() {
    let (_dir, with_reasons) = engine_with(
        "package p\n\nimport rego.v1\n\ndefault allow := false\nallow if input.ok\nreasons contains \"not ok\" if not input.ok\n",
    );
    assert_eq!(
        with_reasons
            .evaluate("data.p.allow", &json!({"ok": false}), NOW)
            .unwrap(),
        Evaluation {
            allow: false,
            reasons: vec!["not ok".to_owned()]
        }
    );
    assert!(
        with_reasons
            .evaluate("data.p.allow", &json!({"ok": true}), NOW)
            .unwrap()
            .allow
    );

    // A deny entry overrides an allow: the policy contradicts itself, and a
    // contradiction is never an approval.
    let (_dir, contradictory) = engine_with(
        "package p\n\nimport rego.v1\n\nallow := true\ndeny contains {\"msg\": \"conftest style\"} if input.bad\n",
    );
    assert_eq!(
        contradictory
            .evaluate("data.p.allow", &json!({"bad": true}), NOW)
            .unwrap(),
        Evaluation {
            allow: false,
            reasons: vec!["conftest style".to_owned()]
        }
    );
}

#[test]
fn builtin_errors_and_conflicts_never_allow_in_either_form() {
    for compiled in [true, false] {
        let (_dir, engine) =
            engine_with("package p\n\nimport rego.v1\n\nallow if time.parse_rfc3339_ns(input.t) > 0\n");
        let engine = if compiled { engine } else { engine.interpreted() };
        assert_eq!(engine.compiled(), compiled);
        // As in an OPA server (non-strict builtin errors): undefined, so denied.
        assert_eq!(
            engine
                .evaluate("data.p.allow", &json!({"t": "not a time"}), NOW)
                .unwrap(),
            Evaluation {
                allow: false,
                reasons: vec!["data.p.allow is undefined".to_owned()]
            },
            "compiled: {compiled}"
        );

        let (_dir, engine) = engine_with("package p\n\nimport rego.v1\n\nallow := input.a\nallow := input.b\n");
        let engine = if compiled { engine } else { engine.interpreted() };
        // Conflicting values: OPA and the interpreter raise an error, the
        // compiled form leaves the rule undefined. Never an allow.
        let got = engine.evaluate("data.p.allow", &json!({"a": true, "b": false}), NOW);
        match got {
            Err(PolicyError::Evaluation { .. }) => assert!(!compiled),
            Ok(e) => assert!(
                compiled && !e.allow && e.reasons == ["data.p.allow is undefined"],
                "{e:?}"
            ),
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_policy_reading_the_clock_too_often_fails_closed() {
    let (_dir, engine) = engine_with(
        "package p\n\nimport rego.v1\n\nallow if count([t | some i in numbers.range(1, 300); t := time.now_ns() + i]) == 300\n",
    );
    assert!(engine.compiled());
    // Past the queued answers the rule goes undefined (or errs): never an allow.
    let got = engine.evaluate("data.p.allow", &json!({}), NOW);
    assert!(
        matches!(
            &got,
            Err(PolicyError::Evaluation { .. }) | Ok(Evaluation { allow: false, .. })
        ),
        "{got:?}"
    );
    let (_dir, engine) = engine_with(
        "package p\n\nimport rego.v1\n\nallow if count([t | some i in numbers.range(1, 100); t := time.now_ns() + i]) == 100\n",
    );
    assert!(engine.evaluate("data.p.allow", &json!({}), NOW).unwrap().allow);
}

#[test]
fn a_policy_the_compiler_does_not_support_runs_interpreted() {
    let (_dir, engine) = engine_with(
        "package p\n\nimport rego.v1\n\ninner if input.x == 1\nallow if inner with input as {\"x\": 1}\ndeny contains \"no\" if not allow\n",
    );
    assert!(!engine.compiled());
    assert_eq!(
        engine.evaluate("data.p.allow", &json!({}), NOW).unwrap(),
        Evaluation {
            allow: true,
            reasons: vec![]
        }
    );
}

#[test]
fn only_rule_paths_are_queries() {
    for bad in [
        "",
        "data",
        "data.allow",
        "input.allow",
        "data.p.allow with input as {}",
        "data.p[\"x\"]",
        "data.p.allow; true",
        "data.p..x",
    ] {
        assert!(
            matches!(
                shipped().evaluate(bad, &json!({}), NOW),
                Err(PolicyError::InvalidQuery { .. })
            ),
            "{bad:?}"
        );
        assert!(validate_query(bad).is_err(), "{bad:?}");
    }
    validate_query(QUERY).unwrap();
}

#[test]
fn the_engine_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
    let engine = shipped();
    std::thread::scope(|s| {
        for i in 0..8 {
            s.spawn(move || {
                for j in 0..20 {
                    let mut evidence = evidence();
                    let critical = (i + j) % 3;
                    set(&mut evidence, "/scans/container/critical", json!(critical));
                    let got = engine
                        .evaluate(QUERY, &input_for(&evidence, "production", "octocat"), NOW)
                        .unwrap();
                    assert_eq!(got.allow, critical == 0);
                }
            });
        }
    });
}

// --- evidence -------------------------------------------------------------------

#[test]
fn malformed_evidence_names_the_field() {
    type Mutation = fn(&mut Value);
    let cases: Vec<(Mutation, &str)> = vec![
        (
            |e| set(e, "/scans/container/critical", json!("2")),
            "/scans/container/critical: expected integer",
        ),
        (
            |e| set(e, "/scans/container/critical", json!(1.5)),
            "/scans/container/critical: expected integer",
        ),
        (
            |e| set(e, "/scans/sast/high", json!(-1)),
            "/scans/sast/high: must be at least 0",
        ),
        (|e| remove(e, "/scans/iac"), "/scans/iac: is required"),
        (|e| remove(e, "/artifact/signed_by"), "/artifact/signed_by: is required"),
        (
            |e| set(e, "/scans/sast/tool", json!("bandit")),
            "/scans/sast/tool: expected one of [\"semgrep\",\"codeql\"]",
        ),
        (
            |e| set(e, "/scans/secrets/tool", json!("detect-secrets")),
            "/scans/secrets/tool: expected one of [\"gitleaks\",\"trufflehog\",\"trivy\"]",
        ),
        (
            |e| set(e, "/scans/sast/timestamp", json!("yesterday")),
            "/scans/sast/timestamp: expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z",
        ),
        (
            |e| set(e, "/scans/sast/timestamp", json!("2026-02-30T10:00:00Z")),
            "/scans/sast/timestamp: expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z",
        ),
        (
            |e| set(e, "/scans/sast/timestamp", json!("2026-03-01t10:00:00z")),
            "/scans/sast/timestamp: expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z",
        ),
        (
            |e| set(e, "/artifact/digest", json!("sha256:ABC")),
            "/artifact/digest: expected sha256: and 64 lower-case hex digits",
        ),
        (
            |e| set(e, "/artifact/cosign_verified", json!("true")),
            "/artifact/cosign_verified: expected boolean",
        ),
        (
            |e| set(e, "/artifact/target_environment", json!("")),
            "/artifact/target_environment: must not be empty",
        ),
        (
            |e| set(e, "/scans/container/tool", json!("Clair Scanner")),
            "/scans/container/tool: expected one of [\"trivy\",\"grype\"]",
        ),
        (
            |e| set(e, "/scans/iac/tools", json!([])),
            "/scans/iac/tools: must have at least 1 items",
        ),
        (
            |e| set(e, "/scans/iac/tools/1", json!("tfsec")),
            "/scans/iac/tools: must not repeat items",
        ),
        (|e| *e = json!([]), "/: expected object"),
    ];
    for (mutate, expected) in cases {
        let mut evidence = evidence();
        mutate(&mut evidence);
        let err = validate_evidence(&evidence).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn evidence_errors_never_echo_the_posted_value() {
    let mut evidence = evidence();
    set(
        &mut evidence,
        "/scans/container/critical",
        json!("s3cr3t-looking-value"),
    );
    let err = validate_evidence(&evidence).unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[test]
fn input_values_keep_their_types() {
    let (_dir, engine) = engine_with(
        "package p\n\nimport rego.v1\n\nallow if {\n  input.i == 3\n  input.big == 18446744073709551615\n  input.neg == -9007199254740993\n  input.f == 1.5\n  input.n == null\n  input.b == false\n  input.s == \"é\"\n  input.a == [1, {\"k\": \"v\"}]\n  is_object(input.o)\n}\n",
    );
    let input = json!({"i": 3, "big": u64::MAX, "neg": -9_007_199_254_740_993_i64, "f": 1.5, "n": null, "b": false, "s": "é", "a": [1, {"k": "v"}], "o": {}});
    assert!(engine.evaluate("data.p.allow", &input, NOW).unwrap().allow);
    assert!(
        engine
            .interpreted()
            .evaluate("data.p.allow", &input, NOW)
            .unwrap()
            .allow
    );
}

#[test]
fn the_digest_is_of_canonical_json() {
    let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é\n"}], "a": true}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{ "a" : true , "b" : [1, {"x": "é\n", "y": 2}] }"#).unwrap();
    let canonical = r#"{"a":true,"b":[1,{"x":"é\n","y":2}]}"#;
    assert_eq!(evidence::canonical(&a), canonical);
    let expected = format!("sha256:{}", crate::crypto::sha256_hex(canonical.as_bytes()));
    assert_eq!(evidence_digest(&a), expected);
    assert_eq!(evidence_digest(&b), expected);
    assert_ne!(evidence_digest(&a), evidence_digest(&json!({"a": false})));
}

#[test]
fn the_input_has_the_contracts_shape() {
    let input = input_for(&json!({"k": 1}), "production", "octocat");
    assert_eq!(
        input,
        json!({
            "evidence": {"k": 1},
            "context": {
                "environment": "production",
                "sha": "0123456789abcdef0123456789abcdef01234567",
                "repository": "octo-org/app",
                "actor": "octocat",
                "claims": {"ref": "refs/heads/main"},
                "reviews": [],
                "now_ns": 1_772_366_400_000_000_000_i64
            }
        })
    );
}

// --- evidence schemas ----------------------------------------------------------

#[test]
fn the_shipped_schema_takes_every_tool_the_pipeline_allows_and_extra_fields() {
    let mut e = evidence();
    set(&mut e, "/scans/sast/tool", json!("codeql"));
    set(&mut e, "/scans/container/tool", json!("grype"));
    set(&mut e, "/scans/iac/tools", json!(["checkov"]));
    set(&mut e, "/scans/secrets/tool", json!("trufflehog"));
    set(&mut e, "/scans/dependencies/tool", json!("dependabot"));
    set(&mut e, "/scans/sast/finished_at", json!("2026-03-01T10:00:00Z"));
    set(&mut e, "/pipeline", json!({"id": 42}));
    validate_evidence(&e).unwrap();
    set(&mut e, "/scans/iac/tools", json!(["tfsec"]));
    validate_evidence(&e).unwrap();
}

#[test]
fn without_a_schema_any_object_goes_through_and_nothing_else() {
    assert_eq!(check_evidence(None, &json!({"anything": [1, 2]})), Ok(()));
    assert_eq!(
        check_evidence(None, &json!([1])).unwrap_err().to_string(),
        "/: expected object"
    );
}

#[test]
fn an_own_schema_names_the_failing_field() {
    let schema = EvidenceSchema::from_text(
        "own.json",
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["finished_at"], "properties": {"finished_at": {"type": "string", "format": "date-time"}}}"#,
    )
    .unwrap();
    assert_eq!(
        check_evidence(Some(&schema), &json!({})).unwrap_err().to_string(),
        "/finished_at: is required"
    );
    assert_eq!(
        check_evidence(Some(&schema), &json!({"finished_at": "soon"}))
            .unwrap_err()
            .to_string(),
        "/finished_at: expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z"
    );
    assert_eq!(
        check_evidence(Some(&schema), &json!({"finished_at": "2026-03-01T10:00:00Z", "x": 1})),
        Ok(())
    );
}

#[test]
fn a_schema_that_is_not_one_is_refused_naming_the_file_and_line() {
    let err = EvidenceSchema::from_text("s.json", "{\n  \"type\": \"object\",\n  oops\n}").unwrap_err();
    assert_eq!(err.to_string(), "s.json:3:3: not JSON: key must be a string");
    let err = EvidenceSchema::from_text("s.json", r#"{"type": 5}"#).unwrap_err();
    assert!(
        err.to_string().starts_with("s.json: not a valid JSON Schema: "),
        "{err}"
    );
}
