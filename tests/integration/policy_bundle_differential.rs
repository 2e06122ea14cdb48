//! Bundles agree with Go OPA: a signed bundle built here (a policy in
//! packages under its roots, data.json files at several depths) is read
//! and evaluated by portcullis and by Go OPA (tests/opa/bundle.py, through
//! the same Python bindings as the differential test), with the same
//! `allow` and `deny` over a corpus of inputs. Go OPA also verifies the
//! signature's JWT with its own io.jwt builtins and hashes the Rego files
//! with its own crypto.sha256, and the manifest's revision is the one both
//! report. The bindings cannot load a bundle archive themselves, so the
//! archive is unpacked by Python the way OPA's bundle reader places files.
//! And a bundle signed by Python alone (tests/opa/sign.py) verifies in
//! portcullis, so the signature format is not only checked against itself.

use std::collections::BTreeMap;
use std::process::Command;

use portcullis::verdict::{VerificationKey, build_input, compile_bundles, read_bundle};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::{python, require_opa_bindings, script};
use crate::support::bundle::{BundleBuilder, Signer, es256_public_pem_path, rs256_public_pem_path};

const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
const QUERY: &str = "data.acme.release.allow";

const POLICY: &str = r#"package acme.release

import rego.v1

default allow := false

allow if count(deny) == 0

max_age_ns := data.acme.release.limits.max_age_hours * 3600000000000

deny contains sprintf("%s: %d open findings", [s.tool, s.open]) if {
	some s in input.evidence.scanners
	s.open > data.acme.release.limits.open_allowed
}

deny contains sprintf("%s is not allowed", [s.tool]) if {
	some s in input.evidence.scanners
	s.tool in data.acme.release.blocked_tools
}

deny contains "no scanner ran" if count(input.evidence.scanners) == 0

deny contains "evidence is stale" if {
	time.now_ns() - time.parse_rfc3339_ns(input.evidence.finished_at) > max_age_ns
}

deny contains sprintf("%s may not deploy to %s", [input.context.actor, input.context.environment]) if {
	not data.acme.teams.release_managers[input.context.actor]
}
"#;

const TEAMS: &str = r#"package acme.teams

import rego.v1

release_managers[name] := true if some name in data.acme.teams.members
"#;

fn bundle() -> BundleBuilder {
    BundleBuilder::new("acme-release-2026.03.1", &["acme"])
        .file("acme/release/policy.rego", POLICY)
        .file("acme/teams/teams.rego", TEAMS)
        .file(
            "acme/release/limits/data.json",
            "{\n  \"open_allowed\": 0,\n  \"max_age_hours\": 2.0e0\n}\n",
        )
        .file(
            "acme/release/data.json",
            r#"{"blocked_tools": ["legacy-scan", "é<&>"]}"#,
        )
        .file("acme/teams/data.json", r#"{"members": ["octocat", "hubot"]}"#)
        .file("acme/README.md", "Carried and signed, not loaded.\n")
}

fn cases() -> Vec<Value> {
    let tools = ["snyk", "codeql", "trufflehog", "legacy-scan", "é<&>"];
    let ages = [
        "2026-03-01T11:50:00Z",
        "2026-03-01T09:59:59Z",
        "2026-03-01T10:00:00Z",
        "2026-03-01T12:30:00+01:00",
    ];
    let actors = ["octocat", "hubot", "mallory"];
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        for (j, age) in ages.iter().enumerate() {
            for (k, actor) in actors.iter().enumerate() {
                let open = (i + j + k) % 3;
                let scanners = if (i + j + k) % 7 == 0 {
                    json!([])
                } else {
                    json!([{"tool": tool, "open": open}, {"tool": "osv-scanner", "open": 0}])
                };
                let evidence = json!({"finished_at": age, "scanners": scanners, "extra": {"n": i}});
                out.push(build_input(
                    &evidence,
                    "production",
                    "0123456789abcdef0123456789abcdef01234567",
                    "octo-org/app",
                    actor,
                    &BTreeMap::new(),
                    &json!([]),
                    NOW,
                ));
            }
        }
    }
    out
}

fn approvers() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("production".to_owned(), vec!["octocat".to_owned()])])
}

/// Go OPA's reading of the bundle at `path`.
fn opa(path: &std::path::Path, public_key: &str, cases: &[Value]) -> Value {
    require_opa_bindings();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.json");
    std::fs::write(
        &corpus,
        json!({
            "bundle": path,
            "public_key": public_key,
            "approvers": approvers(),
            "query": QUERY,
            "now_ns": NOW.unix_timestamp_nanos() as i64,
            "cases": cases,
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(python())
        .arg(script("bundle.py"))
        .arg(&corpus)
        .current_dir(script(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_signed_bundle_decides_as_in_go_opa() {
    for (signer, key_path) in [
        (Signer::Es256, es256_public_pem_path()),
        (Signer::Rs256, rs256_public_pem_path()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.tar.gz");
        let built = bundle().signed(signer);
        built.write_to(&path);
        let pem = std::fs::read_to_string(&key_path).unwrap();
        let cases = cases();
        let go = opa(&path, &pem, &cases);

        // Go OPA verifies the JWT and every listed hash; every file is listed.
        assert_eq!(
            go["signature"],
            json!({
                "jwt_verified": true,
                "alg": format!("{signer:?}").to_uppercase(),
                "listed": [".manifest", "acme/README.md", "acme/release/data.json", "acme/release/limits/data.json",
                           "acme/release/policy.rego", "acme/teams/data.json", "acme/teams/teams.rego"],
                "mismatched": [],
                "unlisted": [],
            }),
            "{signer:?}"
        );

        let key = VerificationKey::from_pem(&pem).unwrap();
        let read = read_bundle(&path.display().to_string(), &built.build(), Some(&key)).unwrap();
        assert!(read.signed);
        assert_eq!(
            (json!(read.revision), json!(read.roots)),
            (go["revision"].clone(), go["roots"].clone())
        );
        let engine = compile_bundles(vec![read], &approvers()).unwrap();
        assert_eq!(engine.revision(), "acme-release-2026.03.1");

        let results = go["results"].as_array().unwrap();
        assert_eq!(results.len(), cases.len());
        let (mut allowed, mut denied) = (0, 0);
        for (input, go) in cases.iter().zip(results) {
            assert!(go.get("error").is_none(), "Go OPA failed on {input}: {go}");
            let ours = engine.evaluate(QUERY, input, NOW).unwrap();
            let go_allow = go["allow"]["value"] == json!(true);
            let mut go_deny: Vec<String> = go["deny"]["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            go_deny.sort();
            let mut our_deny = ours.reasons.clone();
            our_deny.sort();
            assert_eq!((ours.allow, &our_deny), (go_allow, &go_deny), "{input}");
            if ours.allow {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
        assert!(
            allowed >= 5 && denied >= 20,
            "the corpus covers both: {allowed} allowed, {denied} denied"
        );
    }
}

#[test]
fn a_tampered_bundle_fails_go_opas_hashes_and_portcullis_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release.tar.gz");
    let mut tampered = bundle().signed(Signer::Es256);
    for (name, bytes) in &mut tampered.files {
        if name == "acme/teams/data.json" {
            // Same JSON meaning with other whitespace is not tampering; another member is.
            *bytes = br#"{ "members" : ["octocat", "hubot", "mallory"] }"#.to_vec();
        }
    }
    tampered.write_to(&path);
    let pem = std::fs::read_to_string(es256_public_pem_path()).unwrap();
    let go = opa(&path, &pem, &[]);
    assert_eq!(go["signature"]["jwt_verified"], true);
    assert_eq!(go["signature"]["mismatched"], json!(["acme/teams/data.json"]));
    let key = VerificationKey::from_pem(&pem).unwrap();
    let err = read_bundle("release.tar.gz", &tampered.build(), Some(&key)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle release.tar.gz: signature refused: acme/teams/data.json: digest mismatch"
    );

    // Reformatted but equal JSON keeps its signature, in both.
    let mut reformatted = bundle().signed(Signer::Es256);
    for (name, bytes) in &mut reformatted.files {
        if name == "acme/teams/data.json" {
            *bytes = b"{\n    \"members\": [\n        \"octocat\",\n        \"hubot\"\n    ]\n}".to_vec();
        }
    }
    reformatted.write_to(&path);
    let go = opa(&path, &pem, &[]);
    assert_eq!(go["signature"]["mismatched"], json!([]));
    read_bundle("release.tar.gz", &reformatted.build(), Some(&key)).unwrap();
}

/// A bundle signed by Python alone (tarfile and `cryptography`, as
/// `opa sign` would: none of portcullis's bundle code) verifies and loads in
/// portcullis with both algorithms, and one changed file is refused.
#[test]
fn a_bundle_signed_outside_portcullis_verifies_and_a_changed_one_does_not() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundles");
    for (alg, private, public) in [
        ("ES256", "test-only-bundle-es256-private.pem", es256_public_pem_path()),
        ("RS256", "test-only-bundle-rs256-private.pem", rs256_public_pem_path()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let files: BTreeMap<String, String> = bundle()
            .files
            .iter()
            .map(|(n, b)| (n.clone(), String::from_utf8(b.clone()).unwrap()))
            .collect();
        let spec = dir.path().join("spec.json");
        std::fs::write(
            &spec,
            json!({"files": files, "alg": alg, "private_key": format!("{fixtures}/{private}")}).to_string(),
        )
        .unwrap();
        let out_path = dir.path().join("python.tar.gz");
        let out = Command::new(python())
            .arg(script("sign.py"))
            .arg(&spec)
            .arg(&out_path)
            .current_dir(script(""))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let key = VerificationKey::from_pem(&std::fs::read_to_string(&public).unwrap()).unwrap();
        let bytes = std::fs::read(&out_path).unwrap();
        let read = read_bundle("python.tar.gz", &bytes, Some(&key)).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(read.revision, "acme-release-2026.03.1");
        compile_bundles(vec![read], &approvers()).unwrap();

        // The same archive with one byte of the policy changed.
        let gz = flate2::read::GzDecoder::new(bytes.as_slice());
        let mut archive = tar::Archive::new(gz);
        let mut changed = BundleBuilder::default();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches('/')
                .to_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if name == "acme/release/policy.rego" {
                data = String::from_utf8(data)
                    .unwrap()
                    .replace("open_allowed", "open_alowed")
                    .into_bytes();
            }
            changed = changed.file(&name, data);
        }
        assert_eq!(
            read_bundle("python.tar.gz", &changed.build(), Some(&key))
                .unwrap_err()
                .to_string(),
            "bundle python.tar.gz: signature refused: acme/release/policy.rego: digest mismatch",
            "{alg}"
        );
    }
}
