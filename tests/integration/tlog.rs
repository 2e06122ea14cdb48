//! The trail as a transparency log: signed checkpoints, inclusion and
//! consistency proofs, decision receipts, and a trail that was cut, rewound,
//! edited or deleted. Proofs, checkpoints and receipts are checked by an
//! independent verifier (`tests/support/tlog_verify.py`: RFC 9162 and DSSE
//! written from the specifications, Ed25519 from Python's `cryptography`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis::audit::tlog::Tlog;
use portcullis::audit::{AuditEvent, AuditLog, EventKind, FileAudit};
use portcullis::signing::SigningKey;
use serde_json::{Value, json};

use crate::e2e_github::{World, ci_claims, sha, world_in};
use crate::support::app::{App, Run};

const ORIGIN: &str = "portcullis.test/audit";

/// Writes a new signing key to `dir/audit-key.pem`; returns it.
fn write_key(dir: &Path) -> SigningKey {
    let pem = SigningKey::generate_pem().unwrap();
    std::fs::write(dir.join("audit-key.pem"), &pem).unwrap();
    SigningKey::from_pem(ORIGIN, &pem).unwrap()
}

fn audit_keys(every: &str) -> String {
    format!(
        "signing_key = {{ file = \"{{dir}}/audit-key.pem\" }}\nlog_name = \"{ORIGIN}\"\ncheckpoint_every = \"{every}\""
    )
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::Decision)
        .request(format!("req_{i}"))
        .repository("octo-org/app")
        .environment("production")
        .sha(format!("{i:040x}"))
        .decision(if i % 2 == 0 { "approved" } else { "rejected" })
}

/// A file trail of `n` records at `path`.
async fn trail(path: &Path, n: usize) {
    let log = FileAudit::open(path).await.unwrap();
    for i in 1..=n {
        log.append(event(i)).await.unwrap();
    }
    log.close().await.unwrap();
}

/// Runs the independent verifier over `request`; panics with its output
/// unless it verified.
fn independent_verify(request: &Value) -> String {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tlog_verify.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the independent verifier refused:\n{text}");
    text
}

/// Waits for a checkpoint of at least `size` records; returns its note.
async fn checkpoint_of(app: &App, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.http.get(app.url("/v1/audit/checkpoint")).send().await.unwrap();
        if r.status() == 200 {
            let note = r.text().await.unwrap();
            let have: u64 = note.lines().nth(1).unwrap().parse().unwrap();
            if have >= size {
                return note;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size} records; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn note_size(note: &str) -> u64 {
    note.lines().nth(1).unwrap().parse().unwrap()
}

async fn signed_world(dir: tempfile::TempDir, run: Run, every: &str) -> (World, SigningKey) {
    let key = write_key(dir.path());
    let w = world_in(dir, run, "rate_limit = false", &audit_keys(every), "").await;
    (w, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_a_1000_record_trail_and_a_consistency_proof_verify_independently() {
    let dir = tempfile::tempdir().unwrap();
    trail(&dir.path().join("audit.jsonl"), 1000).await;
    let (w, key) = signed_world(dir, Run::InProcess, "200ms").await;

    let first = checkpoint_of(&w.app, 1000).await;
    assert_eq!(note_size(&first), 1000);
    let lines: Vec<String> = std::fs::read_to_string(w.app.audit_path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut inclusions = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let id = serde_json::from_str::<Value>(line).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (code, proof) = w
            .app
            .get(&format!("/v1/audit/proof/inclusion?record={id}&size=1000"))
            .await;
        assert_eq!(code, 200, "{proof}");
        assert_eq!(
            (proof["leaf_index"].as_u64(), proof["tree_size"].as_u64()),
            (Some(index as u64), Some(1000))
        );
        inclusions.push(json!({"line": line, "index": index, "size": 1000, "hashes": proof["hashes"]}));
    }

    // The trail grows (attestations are records); the next checkpoint is
    // consistent with the first.
    for run in 1..=3 {
        let (code, body) = w.attest(ci_claims(run, &sha(run))).await;
        assert_eq!(code, 201, "{body}");
    }
    let second = checkpoint_of(&w.app, 1003).await;
    assert_eq!(note_size(&second), 1003);
    let (code, consistency) = w.app.get("/v1/audit/proof/consistency?from=1000&to=1003").await;
    assert_eq!(code, 200, "{consistency}");
    let (code, jwks) = w.app.get("/v1/keys").await;
    assert_eq!(code, 200);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(jwks["keys"][0]["kid"], key.public().kid());

    let verified = independent_verify(&json!({
        "public_key": base64::engine::general_purpose::STANDARD.encode(key.public().key),
        "origin": ORIGIN,
        "jwks": jwks,
        "checkpoints": [first.clone(), second.clone()],
        "inclusions": inclusions,
        "consistencies": [{"from": first, "to": second, "hashes": consistency["hashes"]}],
    }));
    assert!(
        verified.contains("2 checkpoint(s), 1000 inclusion proof(s), 1 consistency proof(s)"),
        "{verified}"
    );

    // A forged proof does not verify; out-of-range asks are the API's errors.
    let mut forged = inclusions[7].clone();
    forged["index"] = json!(8);
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tlog_verify.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            let req = json!({"public_key": base64::engine::general_purpose::STANDARD.encode(key.public().key),
                             "origin": ORIGIN, "checkpoints": [first], "inclusions": [forged]});
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), req.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "FAILED: inclusion of leaf 8 in 1000"
    );
    let (code, body) = w.app.get("/v1/audit/proof/consistency?from=1003&to=1000").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("proof_out_of_range"))
    );
    let (code, body) = w.app.get("/v1/audit/proof/inclusion?record=aud_nope").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("audit_record_not_found"))
    );
}

/// Runs `portcullis serve` expecting it to refuse to start; returns stderr.
fn serve_refuses(app_dir: &Path, config: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(app_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve exited 0");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a trail it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify_fails(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "audit verify passed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A checkpointed trail of 20 records and a configuration for it.
async fn checkpointed(dir: &Path) -> std::path::PathBuf {
    let key = write_key(dir);
    let path = dir.join("audit.jsonl");
    trail(&path, 20).await;
    let log: Arc<dyn AuditLog> = Arc::new(FileAudit::open(&path).await.unwrap());
    let tlog = Tlog::open(log.clone(), Some(key), ORIGIN).await.unwrap();
    assert_eq!(tlog.checkpoint().await.unwrap().map(|c| c.size), Some(20));
    log.close().await.unwrap();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://portcullis.example\"\ndry_run = true\n\
             [audit]\npath = \"{}\"\n{}\n",
            path.display(),
            audit_keys("1h").replace("{dir}", &dir.display().to_string())
        ),
    )
    .unwrap();
    config
}

fn keep(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    std::fs::write(path, kept).unwrap();
}

#[tokio::test]
async fn a_trail_cut_rewound_edited_or_deleted_fails_verify_and_serve_names_it() {
    // Cut one record off the end: the chain alone still verifies, the
    // checkpoint does not.
    let dir = tempfile::tempdir().unwrap();
    let config = checkpointed(dir.path()).await;
    let trail_path = dir.path().join("audit.jsonl");
    keep(&trail_path, 19);
    assert!(portcullis::audit::verify_file(&trail_path).is_ok());
    let want = "checkpoint covers 20 records; the trail holds 19";
    let err = verify_fails(&config);
    assert!(err.contains(want), "{err}");
    let err = serve_refuses(dir.path(), &config);
    assert!(err.contains(want), "{err}");

    // Rewound: cut back to 17 and grown again to 20 with other records. The
    // chain verifies; the first 20 records are not the signed ones.
    let dir = tempfile::tempdir().unwrap();
    let config = checkpointed(dir.path()).await;
    let trail_path = dir.path().join("audit.jsonl");
    keep(&trail_path, 17);
    let log = FileAudit::open(&trail_path).await.unwrap();
    for i in 100..103 {
        log.append(event(i)).await.unwrap();
    }
    log.close().await.unwrap();
    assert_eq!(portcullis::audit::verify_file(&trail_path).unwrap().records, 20);
    let want = "the trail's first 20 records do not match the signed checkpoint of 20 records";
    let err = verify_fails(&config);
    assert!(err.contains(want), "{err}");
    let err = serve_refuses(dir.path(), &config);
    assert!(err.contains(want), "{err}");

    // Edited: one record's field changed. The chain names the record.
    let dir = tempfile::tempdir().unwrap();
    let config = checkpointed(dir.path()).await;
    let trail_path = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&trail_path).unwrap();
    let edited = text.replacen("\"decision\":\"rejected\"", "\"decision\":\"approved\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&trail_path, edited).unwrap();
    let err = verify_fails(&config);
    assert!(
        err.contains("audit chain broken") && err.contains("record seq 1 (line 1)"),
        "{err}"
    );
    let err = serve_refuses(dir.path(), &config);
    assert!(
        err.contains("does not verify") && err.contains("record seq 1 (line 1)"),
        "{err}"
    );

    // Deleted: verify names the missing trail, serve refuses to start a new
    // one silently, and `serve --new-trail` starts one on purpose, audited.
    let dir = tempfile::tempdir().unwrap();
    let config = checkpointed(dir.path()).await;
    let trail_path = dir.path().join("audit.jsonl");
    std::fs::remove_file(&trail_path).unwrap();
    let err = verify_fails(&config);
    assert!(err.contains("is missing; checkpoint covers 20 records"), "{err}");
    let err = serve_refuses(dir.path(), &config);
    assert!(err.contains("checkpoint covers 20 records; the trail holds 0"), "{err}");
    std::fs::remove_file(&trail_path).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--new-trail", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Ok(text) = std::fs::read_to_string(&trail_path)
            && let Some(line) = text.lines().next()
        {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(child.try_wait().unwrap().is_none(), "serve --new-trail exited");
        assert!(Instant::now() < deadline, "no first record in the new trail");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!(first["event"], "trail_started");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["detail"]["superseded_checkpoint"]["size"], 20);
    // The old checkpoints were set aside, not deleted.
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.jsonl.checkpoints.superseded-")
        })
        .count();
    assert_eq!(aside, 1);
    // The shutdown checkpoint covers the new trail, and it verifies.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("checkpoint OK: 1 record(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_say_passed_and_failed_and_verify_independently_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (w, key) = signed_world(dir, Run::Binary, "1h").await;

    let (ok_run, bad_run) = (8101, 8102);
    for run in [ok_run, bad_run] {
        let (code, body) = w.attest(ci_claims(run, &sha(run))).await;
        assert_eq!(code, 201, "{body}");
    }
    let (code, _) = w.verdict(&sha(ok_run), "production", true, &[]).await;
    assert_eq!(code, 201);
    let (code, _) = w
        .verdict(&sha(bad_run), "production", false, &["2 critical CVEs in the image"])
        .await;
    assert_eq!(code, 201);
    let approved = w.webhook("d-8101", ok_run, "production", &sha(ok_run)).await;
    let rejected = w.webhook("d-8102", bad_run, "production", &sha(bad_run)).await;
    let wait = Duration::from_secs(15);
    w.app.wait_request(&approved, "done", wait).await;
    w.app.wait_request(&rejected, "done", wait).await;

    let (code, pass) = w.app.get(&format!("/v1/requests/{approved}/receipt")).await;
    assert_eq!(code, 200, "{pass}");
    let (code, fail) = w.app.get(&format!("/v1/requests/{rejected}/receipt")).await;
    assert_eq!(code, 200, "{fail}");
    let statement = |env: &Value| -> Value {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let failed = statement(&fail);
    assert_eq!(failed["subject"][0]["digest"]["gitCommit"], sha(bad_run));
    assert_eq!(failed["subject"][0]["name"], "octo-org/payments");
    assert_eq!(failed["predicate"]["verifier"]["id"], "https://portcullis.example");
    let reasons: Vec<&str> = failed["predicate"]["portcullis"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"verdict_denied"), "{reasons:?}");
    let passed = statement(&pass);
    let record = passed["predicate"]["portcullis"]["record"].as_str().unwrap();
    let (_, req) = w.app.get(&format!("/v1/requests/{approved}")).await;
    assert_eq!(req["decision_record"], record);
    assert_eq!(pass["signatures"][0]["keyid"], key.public().kid());

    let verified = independent_verify(&json!({
        "public_key": base64::engine::general_purpose::STANDARD.encode(key.public().key),
        "origin": ORIGIN,
        "receipts": [{"envelope": pass, "expect": "PASSED"}, {"envelope": fail, "expect": "FAILED"}],
    }));
    assert!(verified.contains("2 receipt(s)"), "{verified}");

    // Offline, with the JWKS the service serves.
    let (_, jwks) = w.app.get("/v1/keys").await;
    let keys = w.app.dir.path().join("keys.json");
    std::fs::write(&keys, jwks.to_string()).unwrap();
    let file = w.app.dir.path().join("receipt.json");
    std::fs::write(&file, pass.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["receipt", "verify"])
        .arg(&file)
        .arg("--keys")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.starts_with(&format!(
            "receipt OK: PASSED for octo-org/payments@{} (production), record {record}",
            sha(ok_run)
        )),
        "{shown}"
    );
    let mut tampered = pass.clone();
    let mut st = passed.clone();
    st["predicate"]["verificationResult"] = json!("PASSED ");
    tampered["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(st.to_string()));
    std::fs::write(&file, tampered.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["receipt", "verify"])
        .arg(&file)
        .arg("--keys")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the signature does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A request still pending has no receipt.
    let pending = w.webhook("d-8103", 8103, "production", &sha(8103)).await;
    let (code, body) = w.app.get(&format!("/v1/requests/{pending}/receipt")).await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("receipt_not_found")));

    // Decisions through the binary → a checkpoint at SIGTERM covering every record.
    let mut app = w.app;
    let status = app.terminate();
    assert!(status.success());
    let records = std::fs::read_to_string(app.audit_path()).unwrap().lines().count() as u64;
    let checkpoints = std::fs::read_to_string(app.dir.path().join("audit.jsonl.checkpoints")).unwrap();
    let latest: Value = serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(latest["size"], records);
    let out = app.cli(&["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("checkpoint OK: {records} record(s)")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_replicas_share_checkpoints_and_a_trimmed_stream_is_refused() {
    use portcullis::audit::RedisAudit;
    use portcullis::audit::redis::RedisAuditOptions;
    let redis = crate::support::redis::RedisServer::start();
    let key_pem = SigningKey::generate_pem().unwrap();
    let key = || Some(SigningKey::from_pem(ORIGIN, &key_pem).unwrap());
    let open = || async {
        let log: Arc<dyn AuditLog> = Arc::new(
            RedisAudit::open(&redis.url(), "tl:", RedisAuditOptions::default())
                .await
                .unwrap(),
        );
        log
    };
    let (a, b) = (open().await, open().await);
    for i in 0..30 {
        let log = if i % 2 == 0 { &a } else { &b };
        log.append(event(i)).await.unwrap();
    }
    let (ta, tb) = (
        Tlog::open(a.clone(), key(), ORIGIN).await.unwrap(),
        Tlog::open(b.clone(), key(), ORIGIN).await.unwrap(),
    );
    let made = ta.checkpoint().await.unwrap().expect("a checkpoint");
    assert_eq!(made.size, 30);
    // The other replica signs the same note for the same size; the store
    // keeps one.
    assert_eq!(tb.checkpoint().await.unwrap(), None);
    assert_eq!(tb.latest().map(|c| c.note), Some(made.note.clone()));
    let (index, size, proof) = tb
        .inclusion(&a.query(&Default::default()).await.unwrap()[12].id, None)
        .await
        .unwrap();
    assert_eq!((index, size, proof.len()), (12, 30, 5));

    // A stream trimmed below the checkpoint stops a new replica's start.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("XDEL")
        .arg("tl:audit:log")
        .arg("30-0")
        .query_async(&mut c)
        .await
        .unwrap();
    match Tlog::open(open().await, key(), ORIGIN).await {
        Err(e) => assert!(
            e.to_string()
                .contains("checkpoint covers 30 records; the trail holds 29"),
            "{e}"
        ),
        Ok(_) => panic!("a trail shorter than its checkpoint was accepted"),
    }
}

#[tokio::test]
async fn after_a_key_rotation_both_keys_are_served_and_old_checkpoints_still_verify() {
    use portcullis::audit::MemoryAudit;
    use portcullis::signing::verify_checkpoint;
    let log: Arc<dyn AuditLog> = Arc::new(MemoryAudit::new());
    let pem = |()| SigningKey::from_pem(ORIGIN, &SigningKey::generate_pem().unwrap()).unwrap();
    let (old, new) = (pem(()), pem(()));
    let (old_public, new_public) = (old.public().clone(), new.public().clone());
    for i in 0..5 {
        log.append(event(i)).await.unwrap();
    }
    let first = Tlog::open(log.clone(), Some(old), ORIGIN).await.unwrap();
    let old_note = first.checkpoint().await.unwrap().unwrap().note;

    // Restarted with a new key: the old checkpoint still verifies at start.
    let second = Tlog::open(log.clone(), Some(new), ORIGIN).await.unwrap();
    log.append(event(5)).await.unwrap();
    let new_note = second.checkpoint().await.unwrap().unwrap().note;
    let keys = second.keys().await.unwrap();
    assert_eq!(keys, [new_public.clone(), old_public.clone()]);
    assert_eq!(verify_checkpoint(&old_note, ORIGIN, &keys).unwrap().size, 5);
    assert_eq!(verify_checkpoint(&new_note, ORIGIN, &keys).unwrap().size, 6);
    // Each note is signed by its own key only.
    assert!(verify_checkpoint(&old_note, ORIGIN, &[new_public]).is_err());
    assert!(verify_checkpoint(&new_note, ORIGIN, &[old_public]).is_err());
}
