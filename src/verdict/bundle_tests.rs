//! Bundles read from archives: manifest, roots, data placement, paths,
//! and the signature rules that do not need a key pair (the signed ones
//! are in tests/integration/policy_bundles.rs and the Go OPA comparison).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use time::macros::datetime;

use super::bundle::{BundleError, check_overlap, read_bundle, read_bundle_unverified};
use super::{PolicySet, VerificationKey, compile_bundles};

fn archive(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        tar.append(&header, text.as_bytes()).unwrap();
    }
    let mut gz = tar.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

const POLICY: &str = "package acme.release\n\nimport rego.v1\n\nallow if data.acme.release.limits.max == 2\n";

#[test]
fn data_is_placed_by_its_directory_and_the_revision_is_the_manifests() {
    let bytes = archive(&[
        ("/.manifest", r#"{"revision": "r7", "roots": ["acme"]}"#),
        ("/acme/release/policy.rego", POLICY),
        ("./acme/release/limits/data.json", r#"{"max": 2}"#),
        ("acme/notes.json", r#"{"not": "data"}"#),
    ]);
    let bundle = read_bundle("b.tar.gz", &bytes, None).unwrap();
    assert_eq!(
        (bundle.revision.as_str(), bundle.roots.clone()),
        ("r7", vec!["acme".to_owned()])
    );
    assert!(!bundle.signed);
    let engine = compile_bundles(vec![bundle], &BTreeMap::new()).unwrap();
    assert_eq!(engine.revision(), "r7");
    let now = datetime!(2026-03-01 12:00:00 UTC);
    assert!(
        engine
            .evaluate("data.acme.release.allow", &json!({}), now)
            .unwrap()
            .allow
    );
}

#[test]
fn without_a_manifest_the_roots_are_everything_and_the_revision_a_hash() {
    let bytes = archive(&[("p.rego", POLICY), ("acme/release/limits/data.json", r#"{"max": 2}"#)]);
    let bundle = read_bundle("b.tar.gz", &bytes, None).unwrap();
    assert_eq!(
        (bundle.revision.as_str(), bundle.roots.clone()),
        ("", vec![String::new()])
    );
    let engine = compile_bundles(vec![bundle], &BTreeMap::new()).unwrap();
    assert!(engine.revision().starts_with("sha256:"), "{}", engine.revision());
}

#[test]
fn data_outside_the_roots_is_refused() {
    let bytes = archive(&[
        ("/.manifest", r#"{"revision": "r1", "roots": ["acme/release"]}"#),
        ("/data.json", r#"{"acme": {"release": {"x": 1}, "other": 2}}"#),
    ]);
    assert_eq!(
        read_bundle("b.tar.gz", &bytes, None).unwrap_err(),
        BundleError::Roots {
            bundle: "b.tar.gz".into(),
            message: "b.tar.gz/data.json: data.acme.other is outside the manifest's roots [\"acme/release\"]".into(),
        }
    );
}

#[test]
fn overlapping_roots_of_two_bundles_are_refused() {
    let a = read_bundle("a.tar.gz", &archive(&[("/.manifest", r#"{"roots": ["acme"]}"#)]), None).unwrap();
    let b = read_bundle(
        "b.tar.gz",
        &archive(&[("/.manifest", r#"{"roots": ["acme/release"]}"#)]),
        None,
    )
    .unwrap();
    let c = read_bundle("c.tar.gz", &archive(&[("/.manifest", r#"{"roots": ["acmex"]}"#)]), None).unwrap();
    assert_eq!(check_overlap(&[&a, &c]), Ok(()));
    assert_eq!(
        check_overlap(&[&a, &b]).unwrap_err().to_string(),
        "bundle b.tar.gz: root \"acme/release\" overlaps root \"acme\" of bundle a.tar.gz"
    );
}

#[test]
fn unsafe_paths_and_non_archives_are_refused() {
    assert_eq!(
        read_bundle("b.tar.gz", &archive(&[("../x.rego", POLICY)]), None)
            .unwrap_err()
            .to_string(),
        "bundle b.tar.gz: not a bundle archive (.tar.gz): unsafe path \"../x.rego\""
    );
    let err = read_bundle("b.tar.gz", b"not gzip at all", None).unwrap_err();
    assert!(matches!(err, BundleError::Archive { .. }), "{err}");
}

#[test]
fn a_signed_bundle_needs_the_key_and_the_key_needs_a_signature() {
    let signed = archive(&[
        ("/.manifest", r#"{"revision": "r1"}"#),
        ("/.signatures.json", r#"{"signatures": ["a.b.c"]}"#),
    ]);
    assert_eq!(
        read_bundle("b.tar.gz", &signed, None).unwrap_err().to_string(),
        "bundle b.tar.gz: signed, but [policies] verification_key is not set to verify it"
    );
    // `policy test` reads it without looking at the signature.
    assert_eq!(read_bundle_unverified("b.tar.gz", &signed).unwrap().revision, "r1");
    let key = VerificationKey::from_pem(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bundles/test-only-bundle-es256-public.pem"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        read_bundle("b.tar.gz", &signed, Some(&key)).unwrap_err().to_string(),
        "bundle b.tar.gz: signature refused: the signature is not a JWT: Base64 error: Invalid input length: 1"
    );
    let two = archive(&[("/.signatures.json", r#"{"signatures": ["a.b.c", "d.e.f"]}"#)]);
    assert_eq!(
        read_bundle("b.tar.gz", &two, Some(&key)).unwrap_err().to_string(),
        "bundle b.tar.gz: signature refused: .signatures.json: several JWTs (expected exactly one)"
    );
}

#[test]
fn an_empty_policy_set_has_nothing_to_reload() {
    let set = PolicySet::empty(super::OpaClient::new(reqwest::Client::new()));
    assert!(!set.reloadable());
    assert!(set.engine().is_none());
    assert!(set.status().loaded);
}

#[tokio::test]
async fn a_revision_without_the_environments_rule_is_refused_and_the_running_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.gz");
    let with_rule = |revision: &str, rule: &str| {
        archive(&[
            (
                "/.manifest",
                &format!(r#"{{"revision": "{revision}", "roots": ["acme"]}}"#),
            ),
            (
                "/acme/release/policy.rego",
                &format!("package acme.release\n\nimport rego.v1\n\n{rule} if input.ok\n"),
            ),
        ])
    };
    std::fs::write(&path, with_rule("r1", "allow")).unwrap();
    let text = format!(
        "[environments.production]\napprovers = [\"octocat\"]\n[environments.production.verdict]\nmode = \"evaluated\"\npolicy = \"data.acme.release.allow\"\nproducers = [{{ job_workflow_ref = \"x\" }}]\n[policies]\nbundles = [\"{}\"]\n",
        path.display()
    );
    let config = crate::config::Config::from_toml(&text, &|_| None).unwrap();
    let opa = || super::OpaClient::new(reqwest::Client::new());
    let set = PolicySet::load(&config, reqwest::Client::new(), opa()).await.unwrap();
    assert_eq!(set.engine().unwrap().revision(), "r1");

    std::fs::write(&path, with_rule("r2", "permit")).unwrap();
    assert_eq!(
        set.reload_local().await.unwrap_err().to_string(),
        "environments.production.verdict.policy: data.acme.release.allow names no rule of the loaded policies"
    );
    let status = set.status();
    assert_eq!(
        (status.revision.as_deref(), status.reloads_ok, status.reloads_failed),
        (Some("r1"), 0, 1)
    );
    // At start it is refused outright.
    let err = PolicySet::load(&config, reqwest::Client::new(), opa())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "environments.production.verdict.policy: data.acme.release.allow names no rule of the loaded policies"
    );
    std::fs::write(&path, with_rule("r3", "allow")).unwrap();
    set.reload_local().await.unwrap();
    assert_eq!(set.status().revision.as_deref(), Some("r3"));
    assert_eq!(set.status().last_error, None);
}
