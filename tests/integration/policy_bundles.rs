//! A user's own policy over their own evidence, and OPA bundles: signed
//! (verified against `[policies] verification_key`), tampered or unsigned
//! (refused at start), served (polled with If-None-Match, a new revision
//! swapped in without a restart, a broken one kept out) and local (reloaded
//! on SIGHUP).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::e2e_policy::{World, sha, world_with, world_with_dir};
use crate::support::app::Run;
use crate::support::bundle::{BundleBuilder, BundleServer, Signer, es256_public_pem_path};

/// A policy of the user's own over their own evidence shape: scanners the
/// shipped schema does not list (Snyk, CodeQL), a `finished_at` it does not
/// know, and a limit from the bundle's own data.
const OWN_POLICY: &str = r#"package acme.release

import rego.v1

default allow := false

allow if count(deny) == 0

max_age_ns := data.acme.release.limits.max_age_hours * 3600000000000

deny contains sprintf("%s: %d open findings", [s.tool, s.open]) if {
	some s in input.evidence.scanners
	s.open > 0
}

deny contains "no scanner ran" if count(input.evidence.scanners) == 0

deny contains "evidence is stale" if {
	time.now_ns() - time.parse_rfc3339_ns(input.evidence.finished_at) > max_age_ns
}
"#;

const LIMITS: &str = r#"{"max_age_hours": 2}"#;

const VERDICT: &str = "mode = \"evaluated\"\npolicy = \"data.acme.release.allow\"";

fn ago(minutes: i64) -> String {
    portcullis::time_fmt::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes))
}

fn own_evidence(snyk_open: u64) -> Value {
    json!({
        "finished_at": ago(10),
        "scanners": [{"tool": "snyk", "open": snyk_open}, {"tool": "codeql", "open": 0}],
        "build": {"provenance": "slsa-l3"}
    })
}

fn own_bundle(revision: &str) -> BundleBuilder {
    BundleBuilder::new(revision, &["acme"])
        .file("acme/release/policy.rego", OWN_POLICY)
        .file("acme/release/limits/data.json", LIMITS)
}

async fn review_comment(w: &World, run: u64) -> String {
    let path = crate::support::github_mock::review_path("octo-org", "payments", run);
    let review =
        w.gh.reviews()
            .into_iter()
            .find(|r| r.path == path)
            .expect("the deployment was answered");
    let comment = review.body.unwrap()["comment"].as_str().unwrap().to_owned();
    comment.split("\nAudit: ").next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_policy_over_own_evidence_allows_and_denies_with_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies/limits")).unwrap();
    std::fs::write(dir.path().join("policies/release.rego"), OWN_POLICY).unwrap();
    std::fs::write(
        dir.path().join("policies/limits.json"),
        r#"{"acme": {"release": {"limits": {"max_age_hours": 2}}}}"#,
    )
    .unwrap();
    let w = world_with_dir(Run::InProcess, dir, VERDICT, "[policies]\npaths = [\"{dir}/policies\"]").await;

    // Evidence the shipped schema would refuse: no schema, so it goes to the policy as it is.
    let s = sha(7101);
    let (code, v) = w.post_evidence(&s, own_evidence(0)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (v["allow"].as_bool(), v["reasons"].clone()),
        (Some(true), json!([])),
        "{v}"
    );
    let req = w.run(7101, &s).await;
    assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    assert_eq!(
        review_comment(&w, 7101).await,
        format!(
            "portcullis approved the deployment of {} to production.\n- attestation_verified: octocat attested by ci (repo:octo-org/octo-repo:environment:production)\n- actor_approved: octocat may deploy to production\n- verdict_allowed: data.acme.release.allow allowed {s}",
            &s[..12]
        )
    );

    // Its own deny messages become the rejection's reasons and the comment.
    let s = sha(7102);
    let (code, v) = w.post_evidence(&s, own_evidence(3)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["allow"], false);
    assert_eq!(v["reasons"], json!(["snyk: 3 open findings"]));
    let req = w.run(7102, &s).await;
    assert_eq!(req["decision"]["outcome"], "rejected", "{req}");
    assert_eq!(
        review_comment(&w, 7102).await,
        format!(
            "portcullis rejected the deployment of {} to production.\n- verdict_denied: data.acme.release.allow denied: snyk: 3 open findings",
            &s[..12]
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_schema_refuses_evidence_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("release.rego"), OWN_POLICY).unwrap();
    std::fs::write(
        dir.path().join("limits.json"),
        r#"{"acme": {"release": {"limits": {"max_age_hours": 2}}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("evidence.schema.json"),
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": ["finished_at", "scanners"],
            "properties": {"finished_at": {"type": "string", "format": "date-time"},
                           "scanners": {"type": "array", "items": {"type": "object", "required": ["tool", "open"]}}}}"#,
    )
    .unwrap();
    let w = world_with_dir(
        Run::InProcess,
        dir,
        &format!("{VERDICT}\nevidence_schema = \"{{dir}}/evidence.schema.json\""),
        "[policies]\npaths = [\"{dir}/release.rego\", \"{dir}/limits.json\"]",
    )
    .await;
    let s = sha(7201);
    let mut bad = own_evidence(0);
    bad["scanners"][1] = json!({"tool": "codeql"});
    let (code, err) = w.post_evidence(&s, bad).await;
    assert_eq!(
        (code, err["error"]["code"].as_str(), err["error"]["message"].as_str()),
        (
            400,
            Some("invalid_evidence"),
            Some("evidence/scanners/1/open: is required")
        ),
        "{err}"
    );
    let (code, v) = w.post_evidence(&s, own_evidence(0)).await;
    assert_eq!((code, v["allow"].as_bool()), (201, Some(true)), "{v}");
}

fn signed_policies() -> String {
    format!(
        "[policies]\nbundles = [\"{{dir}}/app.tar.gz\"]\nverification_key = {{ file = \"{}\" }}",
        es256_public_pem_path()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_is_loaded_and_its_revision_recorded_on_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    own_bundle("acme-2026.03.1")
        .signed(Signer::Es256)
        .write_to(&dir.path().join("app.tar.gz"));
    let w = world_with_dir(Run::InProcess, dir, VERDICT, &signed_policies()).await;
    let s = sha(7301);
    let (code, v) = w.post_evidence(&s, own_evidence(1)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (v["allow"].clone(), v["reasons"].clone(), v["policy_revision"].clone()),
        (json!(false), json!(["snyk: 1 open findings"]), json!("acme-2026.03.1")),
        "{v}"
    );
    let recorded = w.app.audited("verdict_recorded").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["verdict"]["policy_revision"], "acme-2026.03.1");
    let (_, ready) = w.app.get("/readyz").await;
    assert_eq!(
        ready["policies"],
        json!({"status": "ok", "revision": "acme-2026.03.1", "error": null})
    );
}

/// The configuration of a world whose bundle is `bundle`, for starts that fail.
fn start_error(bundle: &BundleBuilder, key: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.tar.gz");
    bundle.write_to(&path);
    let key = if key {
        format!("verification_key = {{ file = \"{}\" }}", es256_public_pem_path())
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = \"{d}/audit.jsonl\"\n[environments.production]\napprovers = [\"octocat\"]\n[environments.production.verdict]\n{VERDICT}\nproducers = [{{ job_workflow_ref = \"x\" }}]\n[policies]\nbundles = [\"{p}\"]\n{key}\n",
        d = dir.path().display(),
        p = path.display()
    );
    std::fs::write(dir.path().join("portcullis.toml"), &text).unwrap();
    let config = portcullis::config::Config::from_toml(&text, &|_| None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = rt.block_on(portcullis::server::Application::build_without_signals(config));
    let error = match built {
        Ok(_) => panic!("the service started with {}", path.display()),
        Err(e) => e.to_string(),
    };
    // check-config refuses it alike, naming the same problem.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config"])
        .arg(dir.path().join("portcullis.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = error
        .strip_prefix("policy: ")
        .unwrap()
        .replace(&path.display().to_string(), "BUNDLE");
    assert_eq!(
        stderr.replace(&path.display().to_string(), "BUNDLE"),
        format!(
            "portcullis: invalid configuration {}:\n  {expected}\n",
            dir.path().join("portcullis.toml").display()
        )
    );
    error.replace(&path.display().to_string(), "BUNDLE")
}

#[test]
fn a_tampered_unsigned_or_unverifiable_bundle_is_refused_at_start() {
    // A module changed after signing.
    let mut tampered = own_bundle("v1").signed(Signer::Es256);
    for (name, bytes) in &mut tampered.files {
        if name == "acme/release/policy.rego" {
            *bytes = OWN_POLICY.replace("s.open > 0", "s.open > 100").into_bytes();
        }
    }
    assert_eq!(
        start_error(&tampered, true),
        "policy: bundle BUNDLE: signature refused: acme/release/policy.rego: digest mismatch"
    );
    // A file added after signing.
    let added = own_bundle("v1").signed(Signer::Es256).file(
        "acme/release/extra.rego",
        "package acme.release\n\nimport rego.v1\n\nallow := true\n",
    );
    assert_eq!(
        start_error(&added, true),
        "policy: bundle BUNDLE: signature refused: acme/release/extra.rego is not included in the bundle signature"
    );
    // Unsigned, while a key is configured.
    assert_eq!(
        start_error(&own_bundle("v1"), true),
        "policy: bundle BUNDLE: unsigned, but [policies] verification_key requires a signature"
    );
    // Signed by another key (the RSA one), checked against the EC key.
    assert_eq!(
        start_error(&own_bundle("v1").signed(Signer::Rs256), true),
        "policy: bundle BUNDLE: signature refused: the signature is RS256, but the verification key is for ES256"
    );
    // A package outside the manifest's roots.
    let outside = own_bundle("v1").file("other/p.rego", "package other\n\nimport rego.v1\n\nx := 1\n");
    assert_eq!(
        start_error(&outside, false),
        "policy: bundle BUNDLE: BUNDLE/other/p.rego: package other is outside the manifest's roots [\"acme\"]"
    );
}

/// Posts evidence until the verdict's revision is `revision` (a poll takes
/// a second or so), returning that verdict.
async fn verdict_with_revision(w: &World, s: &str, revision: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, v) = w.post_evidence(s, own_evidence(2)).await;
        assert_eq!(code, 201, "{v}");
        if v["policy_revision"] == revision {
            return v;
        }
        assert!(Instant::now() < deadline, "still {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_bundle_is_polled_and_a_new_revision_replaces_it_and_a_broken_one_does_not() {
    let server = BundleServer::start(own_bundle("r1").signed(Signer::Es256).build(), "etag-r1").await;
    let policies = format!(
        "[policies]\nbundles = [\"{}\"]\nverification_key = {{ file = \"{}\" }}\npolling_interval = \"1s\"",
        server.url,
        es256_public_pem_path()
    );
    let w = world_with(VERDICT, &policies).await;
    let s = sha(7401);
    let v = verdict_with_revision(&w, &s, "r1").await;
    assert_eq!(v["reasons"], json!(["snyk: 2 open findings"]));

    // A new revision with another message: it takes effect without a restart.
    let r2 = own_bundle("r2").file(
        "acme/release/policy.rego",
        OWN_POLICY.replace("%s: %d open findings", "%s has %d open findings"),
    );
    server.publish(r2.signed(Signer::Es256).build(), "etag-r2");
    let v = verdict_with_revision(&w, &s, "r2").await;
    assert_eq!(v["reasons"], json!(["snyk has 2 open findings"]));

    // A revision that does not compile is refused; r2 keeps deciding.
    let broken = own_bundle("r3").file("acme/release/policy.rego", "package acme.release\n\nallow if {\n");
    server.publish(broken.signed(Signer::Es256).build(), "etag-r3");
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let (code, ready) = w.app.get("/readyz").await;
        if ready["policies"]["status"] == "reload_failed" {
            assert_eq!(code, 200, "the running revision still serves: {ready}");
            break ready;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ready["policies"]["revision"], "r2");
    let error = ready["policies"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}/acme/release/policy.rego:", server.url)),
        "{error}"
    );
    let (code, v) = w.post_evidence(&s, own_evidence(2)).await;
    assert_eq!((code, v["policy_revision"].as_str()), (201, Some("r2")), "{v}");
    let metrics = w.app.metrics_text().await;
    assert!(
        metrics.contains("portcullis_policy_reloads_total{result=\"failed\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_policy_reloads_total{result=\"ok\"} 1\n"),
        "{metrics}"
    );

    // The server saw conditional requests only with the ETags it gave, 304s
    // in between, and the broken revision fetched once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.violations(), Vec::<String>::new());
    let seen = server.seen();
    assert_eq!(seen[0].if_none_match, None);
    assert!(seen.iter().any(|r| r.status == 304), "{seen:?}");
    let fetched: Vec<Option<&str>> = seen
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.if_none_match.as_deref())
        .collect();
    assert_eq!(fetched, [None, Some("\"etag-r1\""), Some("\"etag-r2\"")]);
    assert!(
        seen.iter()
            .rev()
            .take_while(|r| r.status == 304)
            .all(|r| r.if_none_match.as_deref() == Some("\"etag-r3\"")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_bundle_reloads_on_sighup_and_a_tampered_one_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.tar.gz");
    own_bundle("l1").signed(Signer::Es256).write_to(&path);
    let w = world_with_dir(Run::Binary, dir, VERDICT, &signed_policies()).await;
    let s = sha(7501);
    verdict_with_revision(&w, &s, "l1").await;

    let l2 = own_bundle("l2").file(
        "acme/release/policy.rego",
        OWN_POLICY.replace("%s: %d open findings", "%s: %d findings open"),
    );
    l2.signed(Signer::Es256).write_to(&path);
    // Nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = w.post_evidence(&s, own_evidence(2)).await;
    assert_eq!(v["policy_revision"], "l1");
    w.app.signal("HUP");
    let v = verdict_with_revision(&w, &s, "l2").await;
    assert_eq!(v["reasons"], json!(["snyk: 2 findings open"]));

    // Tampered after signing: refused on SIGHUP, l2 stays.
    let mut tampered = own_bundle("l3").signed(Signer::Es256);
    tampered.files[1].1 = OWN_POLICY.replace("s.open > 0", "false").into_bytes();
    tampered.write_to(&w.app.dir.path().join("app.tar.gz"));
    w.app.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, ready) = w.app.get("/readyz").await;
        if ready["policies"]["status"] == "reload_failed" {
            assert_eq!(
                ready["policies"]["error"],
                format!(
                    "bundle {}: signature refused: acme/release/policy.rego: digest mismatch",
                    w.app.dir.path().join("app.tar.gz").display()
                )
            );
            assert_eq!(ready["policies"]["revision"], "l2");
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = w.post_evidence(&s, own_evidence(2)).await;
    assert_eq!(v["policy_revision"], "l2");
}
