//! The file audit log, through its public API, on real files.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis::audit::{
    AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, ChainError, EventKind, FileAudit, GENESIS, get_file,
    query_file, record_hash, verify_file,
};
use portcullis::decision::{Reason, ReasonCode};
use portcullis::domain::{Platform, SlackRef};
use serde_json::{Value, json};
use tempfile::TempDir;

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("var").join("audit.jsonl")
}

/// A realistic event; `i` varies environment, sha and actor.
fn event(i: usize) -> AuditEvent {
    let env = if i % 2 == 0 { "production" } else { "staging" };
    AuditEvent::new(EventKind::Decision)
        .request(format!("req_{i}"))
        .platform(Platform::Github)
        .repository("octo-org/app")
        .environment(env)
        .sha(format!("{:040x}", i % 3))
        .run(format!("{}", 1000 + i))
        .actor(if i % 5 == 0 { "hubot" } else { "octocat" })
        .token_sha256("ab".repeat(32))
        .decision("approved")
        .reasons(vec![Reason::new(ReasonCode::ActorApproved, "octocat may deploy")])
        .claims([("ref".to_string(), json!("refs/heads/main"))].into())
        .slack(SlackRef {
            channel: "C1".into(),
            ts: "1.2".into(),
            permalink: None,
        })
        .detail(json!({"delivery": format!("d-{i}")}))
}

async fn log_with(dir: &TempDir, n: usize) -> (FileAudit, Vec<AuditRecord>) {
    let log = FileAudit::open(&log_path(dir)).await.expect("open");
    let mut records = Vec::new();
    for i in 1..=n {
        records.push(log.append(event(i)).await.expect("append"));
    }
    (log, records)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn chain_error(path: &Path) -> ChainError {
    match verify_file(path) {
        Err(AuditError::Chain { source, .. }) => source,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_chain_of_records_verifies_and_links() {
    let dir = TempDir::new().unwrap();
    let (log, records) = log_with(&dir, 25).await;

    let report = verify_file(log.path()).expect("verifies");
    assert_eq!(report.records, 25);
    assert_eq!(report.last_seq, 25);
    assert_eq!(report.head_hash, records[24].hash);
    assert_eq!(report.partial_tail_bytes, 0);
    assert_eq!(records[0].prev_hash, GENESIS);
    for (i, pair) in records.windows(2).enumerate() {
        assert_eq!(pair[0].seq, i as u64 + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // What append returned is what the file holds.
    assert_eq!(
        get_file(log.path(), &records[9].id).unwrap().as_ref(),
        Some(&records[9])
    );
}

#[tokio::test]
async fn a_record_line_holds_the_contract_s_fields_and_no_empty_ones() {
    let dir = TempDir::new().unwrap();
    let log = FileAudit::open(&log_path(&dir)).await.unwrap();
    log.append(event(1)).await.unwrap();
    log.append(AuditEvent::new(EventKind::RequestReceived).request("req_2"))
        .await
        .unwrap();

    let lines = lines(log.path());
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: BTreeSet<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "seq",
        "id",
        "at",
        "event",
        "request",
        "platform",
        "repository",
        "environment",
        "sha",
        "run",
        "actor",
        "claims",
        "token_sha256",
        "decision",
        "reasons",
        "slack",
        "detail",
        "prev_hash",
        "hash",
    ]
    .into();
    assert_eq!(keys, expected);
    assert!(first["id"].as_str().unwrap().starts_with("aud_"));
    assert!(portcullis::time_fmt::parse_rfc3339(first["at"].as_str().unwrap()).is_some());
    // The documented hash: SHA-256 over prev_hash then the canonical JSON without `hash`.
    let mut without = first.clone();
    let hash = without.as_object_mut().unwrap().remove("hash").unwrap();
    assert_eq!(hash, record_hash(GENESIS, &without));

    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    let keys: BTreeSet<&str> = second.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["at", "event", "hash", "id", "prev_hash", "request", "seq"].into()
    );
}

#[tokio::test]
async fn tampering_with_a_field_names_that_record() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 10).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut all = lines(&path);
    assert!(all[6].contains("\"decision\":\"approved\""));
    all[6] = all[6].replace("\"decision\":\"approved\"", "\"decision\":\"rejected\"");
    write_lines(&path, &all);

    let err = chain_error(&path);
    assert!(matches!(err, ChainError::BadHash { seq: 7, line: 7, .. }), "{err}");
    assert!(err.to_string().starts_with("record seq 7 (line 7)"), "{err}");

    // The service refuses to start on it, naming the record.
    let refused = FileAudit::open(&path).await.err().expect("refuses");
    assert!(refused.to_string().contains("record seq 7"), "{refused}");
}

#[tokio::test]
async fn resealing_a_tampered_record_breaks_the_next_link() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 6).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut all = lines(&path);
    // Change record 3 and recompute its own hash: record 4 no longer links.
    let mut v: Value = serde_json::from_str(&all[2]).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("hash");
    obj.insert("actor".into(), json!("mallory"));
    let prev = obj["prev_hash"].as_str().unwrap().to_string();
    let hash = record_hash(&prev, &v);
    v["hash"] = json!(hash);
    all[2] = serde_json::to_string(&v).unwrap();
    write_lines(&path, &all);

    let err = chain_error(&path);
    assert!(
        matches!(err, ChainError::PrevHashMismatch { seq: 4, line: 4, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn deleting_a_line_names_the_gap() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 8).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut all = lines(&path);
    all.remove(3); // seq 4
    write_lines(&path, &all);

    let err = chain_error(&path);
    assert!(
        matches!(
            err,
            ChainError::SeqGap {
                seq: 5,
                expected: 4,
                line: 4
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn deleting_the_last_lines_keeps_a_valid_prefix() {
    // A chain alone cannot tell a cut tail from a short log; the head hash
    // can, and so does the signed checkpoint (tests/integration/tlog.rs).
    let dir = TempDir::new().unwrap();
    let (log, records) = log_with(&dir, 5).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let all = lines(&path);
    write_lines(&path, &all[..3]);
    let report = verify_file(&path).unwrap();
    assert_eq!(report.records, 3);
    assert_ne!(report.head_hash, records[4].hash);
}

#[tokio::test]
async fn reordering_lines_is_detected() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 6).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut all = lines(&path);
    all.swap(2, 3);
    write_lines(&path, &all);

    let err = chain_error(&path);
    assert!(
        matches!(
            err,
            ChainError::SeqGap {
                seq: 4,
                expected: 3,
                line: 3
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_is_a_clear_error_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 2).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\xff\xfe not json \x00\n");
    fs::write(&path, &bytes).unwrap();

    let err = chain_error(&path);
    assert!(matches!(err, ChainError::Unparsable { line: 3, .. }), "{err}");
    assert!(matches!(
        query_file(&path, &AuditFilter::default()),
        Err(AuditError::Corrupt { line: 3, .. })
    ));
    assert!(matches!(FileAudit::open(&path).await, Err(AuditError::Chain { .. })));
}

#[tokio::test]
async fn an_unterminated_last_line_is_ignored_by_readers_and_cut_on_reopen() {
    let dir = TempDir::new().unwrap();
    let (log, records) = log_with(&dir, 5).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    // A crash in the middle of writing record 6.
    let mut bytes = fs::read(&path).unwrap();
    let tail = b"{\"at\":\"2026-01-01T00:00:00Z\",\"event\":\"deci";
    bytes.extend_from_slice(tail);
    fs::write(&path, &bytes).unwrap();

    let report = verify_file(&path).unwrap();
    assert_eq!((report.records, report.partial_tail_bytes), (5, tail.len() as u64));
    assert_eq!(query_file(&path, &AuditFilter::default()).unwrap().len(), 5);

    let log = FileAudit::open(&path)
        .await
        .expect("resumes after the last complete line");
    let sixth = log.append(event(6)).await.unwrap();
    assert_eq!(sixth.seq, 6);
    assert_eq!(sixth.prev_hash, records[4].hash);
    let report = verify_file(&path).unwrap();
    assert_eq!((report.records, report.partial_tail_bytes), (6, 0));
}

#[tokio::test]
async fn reopening_resumes_the_chain() {
    let dir = TempDir::new().unwrap();
    let (log, first) = log_with(&dir, 3).await;
    log.close().await.unwrap();

    let log = FileAudit::open(&log_path(&dir)).await.unwrap();
    let fourth = log.append(event(4)).await.unwrap();
    let fifth = log.append(event(5)).await.unwrap();
    assert_eq!((fourth.seq, fifth.seq), (4, 5));
    assert_eq!(fourth.prev_hash, first[2].hash);
    assert!(fourth.at >= first[2].at, "time follows the chain");
    assert_eq!(verify_file(log.path()).unwrap().records, 5);
}

#[tokio::test]
async fn a_record_from_a_later_version_with_unknown_fields_verifies_and_resumes() {
    let dir = TempDir::new().unwrap();
    let (log, records) = log_with(&dir, 1).await;
    log.close().await.unwrap();
    let path = log_path(&dir);
    let mut line = json!({
        "seq": 2, "id": "aud_future", "at": "2030-01-01T00:00:00Z", "event": "decision",
        "prev_hash": records[0].hash, "policy_revision": "r42",
    });
    let hash = record_hash(&records[0].hash, &line);
    line["hash"] = json!(hash);
    let mut all = lines(&path);
    all.push(line.to_string());
    write_lines(&path, &all);

    assert_eq!(verify_file(&path).unwrap().records, 2);
    let log = FileAudit::open(&path).await.unwrap();
    let third = log.append(event(3)).await.unwrap();
    assert_eq!((third.seq, third.prev_hash.as_str()), (3, hash.as_str()));
    assert_eq!(
        portcullis::time_fmt::parse_rfc3339(&third.at),
        portcullis::time_fmt::parse_rfc3339("2030-01-01T00:00:00Z"),
        "never earlier than the previous record"
    );
    let future = log.get("aud_future").await.unwrap().expect("readable");
    assert_eq!(future.event.event, EventKind::Decision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs_and_keep_one_chain() {
    let dir = TempDir::new().unwrap();
    let log = Arc::new(FileAudit::open(&log_path(&dir)).await.unwrap());
    let start = Arc::new(tokio::sync::Barrier::new(200));

    let tasks: Vec<_> = (1..=200)
        .map(|i| {
            let (log, start) = (Arc::clone(&log), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                log.append(event(i)).await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        let record = task.await.unwrap().expect("durable");
        // Durable means in the file by the time append returns.
        assert!(get_file(log.path(), &record.id).unwrap().is_some());
        seqs.push(record.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert_eq!(verify_file(log.path()).unwrap().records, 200);

    let fsyncs = log.fsync_count();
    println!(
        "200 concurrent appends: {fsyncs} fsyncs, {:.1} records per fsync, largest batch {}",
        200.0 / fsyncs as f64,
        log.largest_batch()
    );
    assert!(fsyncs < 200, "appends were not batched: {fsyncs} fsyncs");
    assert_eq!(log.records_written(), 200);
}

#[tokio::test]
async fn append_nowait_keeps_order_with_durable_appends() {
    let dir = TempDir::new().unwrap();
    let log = FileAudit::open(&log_path(&dir)).await.unwrap();
    log.append_nowait(AuditEvent::new(EventKind::RequestReceived).request("req_a"))
        .expect("queued");
    log.append_nowait(AuditEvent::new(EventKind::AttestationAccepted).request("req_a"))
        .expect("queued");
    let decision = log
        .append(AuditEvent::new(EventKind::Decision).request("req_a"))
        .await
        .unwrap();
    assert_eq!(decision.seq, 3);
    // The durable append implies the earlier ones are on disk.
    let on_disk = query_file(log.path(), &AuditFilter::default()).unwrap();
    let kinds: Vec<EventKind> = on_disk.iter().map(|r| r.event.event).collect();
    assert_eq!(
        kinds,
        [
            EventKind::RequestReceived,
            EventKind::AttestationAccepted,
            EventKind::Decision
        ]
    );
}

#[tokio::test]
async fn query_filters_and_get_by_id() {
    let dir = TempDir::new().unwrap();
    let (log, records) = log_with(&dir, 12).await;
    let seqs = |found: Vec<AuditRecord>| found.iter().map(|r| r.seq).collect::<Vec<_>>();
    let q = |f: AuditFilter| {
        let log = &log;
        async move { log.query(&f).await.unwrap() }
    };

    assert_eq!(q(AuditFilter::default()).await.len(), 12);
    let prod = AuditFilter {
        environment: Some("production".into()),
        ..Default::default()
    };
    assert_eq!(seqs(q(prod.clone()).await), [2, 4, 6, 8, 10, 12]);
    let sha = format!("{:040X}", 1); // case-insensitive
    assert_eq!(
        seqs(
            q(AuditFilter {
                sha: Some(sha),
                ..prod.clone()
            })
            .await
        ),
        [4, 10]
    );
    assert_eq!(
        seqs(
            q(AuditFilter {
                actor: Some("HUBOT".into()),
                ..Default::default()
            })
            .await
        ),
        [5, 10]
    );
    assert_eq!(
        seqs(
            q(AuditFilter {
                request: Some("req_7".into()),
                ..Default::default()
            })
            .await
        ),
        [7]
    );
    assert_eq!(
        seqs(
            q(AuditFilter {
                limit: Some(2),
                ..prod.clone()
            })
            .await
        ),
        [2, 4],
        "oldest first, limit keeps the first"
    );
    assert!(
        q(AuditFilter {
            limit: Some(0),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    let at = |r: &AuditRecord| portcullis::time_fmt::parse_rfc3339(&r.at).unwrap();
    let since = at(&records[8]);
    let found = q(AuditFilter {
        since: Some(since),
        ..Default::default()
    })
    .await;
    assert!(found.iter().all(|r| at(r) >= since));
    assert!(found.first().is_some_and(|r| r.seq <= 9) && found.last().is_some_and(|r| r.seq == 12));
    let later = since + time::Duration::days(1);
    assert!(
        q(AuditFilter {
            since: Some(later),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    assert_eq!(log.get(&records[3].id).await.unwrap(), Some(records[3].clone()));
    assert_eq!(log.get("aud_00000000000000000000").await.unwrap(), None);
}

#[tokio::test]
async fn one_writer_per_file() {
    let dir = TempDir::new().unwrap();
    let path = log_path(&dir);
    let log = FileAudit::open(&path).await.unwrap();
    let second = FileAudit::open(&path).await;
    assert!(matches!(second, Err(AuditError::Locked { .. })), "{:?}", second.err());

    log.close().await.unwrap();
    assert!(matches!(log.append(event(1)).await, Err(AuditError::Closed)));
    assert!(log.ping().await.is_err());
    let reopened = FileAudit::open(&path).await.expect("the lock is released on close");
    reopened.ping().await.unwrap();
}

#[tokio::test]
async fn readers_verify_and_query_while_the_service_writes() {
    let dir = TempDir::new().unwrap();
    let log = Arc::new(FileAudit::open(&log_path(&dir)).await.unwrap());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for i in 0..100 {
                    log.append(event(w * 100 + i)).await.unwrap();
                }
            })
        })
        .collect();
    let path = log.path().to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let mut seen = 0;
        while seen < 400 {
            let report = verify_file(&path).expect("a live log verifies");
            assert!(report.records >= seen);
            seen = report.records;
            query_file(&path, &AuditFilter::default()).expect("a live log reads");
        }
    });
    for w in writers {
        w.await.unwrap();
    }
    reader.await.unwrap();
}

#[tokio::test]
async fn a_failed_write_fails_the_append_and_stops_the_log() {
    let dir = TempDir::new().unwrap();
    let (log, _) = log_with(&dir, 2).await;
    let moved = dir.path().join("moved.jsonl");
    fs::rename(log.path(), &moved).unwrap();
    // Readiness notices before any write does.
    assert!(matches!(log.ping().await, Err(AuditError::Io { .. })));

    let err = log.append(event(3)).await.expect_err("not durable where it belongs");
    assert!(matches!(err, AuditError::WriteFailed(_)), "{err}");
    assert!(matches!(log.append(event(4)).await, Err(AuditError::Stopped(_))));
    assert!(matches!(log.ping().await, Err(AuditError::Stopped(_))));
    // No half chain was left behind.
    assert_eq!(verify_file(&moved).unwrap().records, 2);
}

#[tokio::test]
async fn open_creates_parent_directories_and_an_empty_log_verifies() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a/b/c/audit.jsonl");
    let log = FileAudit::open(&path).await.unwrap();
    log.ping().await.unwrap();
    let report = verify_file(&path).unwrap();
    assert_eq!((report.records, report.head_hash.as_str()), (0, GENESIS));
    assert!(matches!(
        verify_file(&dir.path().join("nope.jsonl")),
        Err(AuditError::Io { .. })
    ));
}

#[tokio::test]
async fn only_batches_someone_waits_on_are_fsynced_and_they_cover_the_rest() {
    let dir = TempDir::new().unwrap();
    let log = FileAudit::open(&log_path(&dir)).await.expect("open");
    log.append_nowait(event(1)).expect("queued");
    // The nowait record is written (readers see it) without an fsync.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lines(&log_path(&dir)).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the nowait record was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(log.fsync_count(), 0);
    // A durable append fsyncs, covering the nowait record before it.
    let second = log.append(event(2)).await.expect("append");
    assert_eq!((second.seq, log.fsync_count()), (2, 1));
    // Closing makes a trailing nowait record durable.
    log.append_nowait(event(3)).expect("queued");
    log.close().await.expect("close");
    assert_eq!(log.fsync_count(), 2);
    assert_eq!(verify_file(&log_path(&dir)).expect("verifies").records, 3);
}

/// A trail written by an earlier build of this code (the committed fixture)
/// still verifies, reads back, and the file backend resumes its chain.
#[tokio::test]
async fn a_trail_written_by_an_earlier_version_verifies_and_resumes() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit/trail.jsonl");
    let report = verify_file(&fixture).expect("the committed trail verifies");
    assert_eq!(
        (report.records, report.last_seq, report.head_hash.as_str()),
        (8, 8, "b2fcdda47cefa2630f839fa54d8669fedeadf146a916b9cd332cae0991570856")
    );
    let old = query_file(&fixture, &AuditFilter::default()).unwrap();
    assert_eq!(old.len(), 8);
    let full = &old[5];
    assert_eq!(full.event.event, EventKind::Decision);
    assert_eq!(full.event.slack.as_ref().map(|s| s.channel.as_str()), Some("C1"));
    assert_eq!(full.event.reasons.as_ref().map(Vec::len), Some(2));

    let dir = TempDir::new().unwrap();
    let path = log_path(&dir);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::copy(&fixture, &path).unwrap();
    let log = FileAudit::open(&path).await.expect("opens the old trail");
    let next = log.append(event(9)).await.unwrap();
    assert_eq!((next.seq, next.prev_hash.as_str()), (9, report.head_hash.as_str()));
    log.close().await.unwrap();
    assert_eq!(verify_file(&path).unwrap().records, 9);
    // The old lines are untouched, byte for byte.
    let (before, after) = (fs::read(&fixture).unwrap(), fs::read(&path).unwrap());
    assert_eq!(&after[..before.len()], &before[..]);
}
