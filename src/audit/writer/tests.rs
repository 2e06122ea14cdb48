//! The group-commit writer against a scripted in-memory sink.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::audit::{EventKind, verify_lines};

/// What the sink answers to its next calls, before it starts storing.
enum Answer {
    Retry,
    Stop,
}

/// One call of `append_batch`, as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    prev_hash: String,
    ids: Vec<String>,
    hashes: Vec<String>,
    lines: Vec<Vec<u8>>,
    durable: bool,
}

#[derive(Default)]
struct Store {
    /// The chain as stored: `\n`-terminated lines.
    bytes: Vec<u8>,
    head: Option<ChainHead>,
    calls: Vec<Call>,
    flushes: usize,
}

/// Stores a batch only after the head it holds (answering a conflict
/// otherwise), after answering `script` first.
struct TestSink {
    store: Arc<Mutex<Store>>,
    script: VecDeque<Answer>,
}

impl Sink for TestSink {
    fn shown(&self) -> &str {
        "test"
    }

    async fn append_batch(&mut self, batch: &Batch, durable: bool) -> Result<Appended, SinkError> {
        let mut store = self.store.lock().unwrap();
        store.calls.push(Call {
            prev_hash: batch.prev_hash().to_string(),
            ids: batch.records().iter().map(|r| r.id.clone()).collect(),
            hashes: batch.records().iter().map(|r| r.hash.clone()).collect(),
            lines: batch.lines().map(|(_, line)| line.to_vec()).collect(),
            durable,
        });
        match self.script.pop_front() {
            Some(Answer::Retry) => {
                return Err(SinkError::Retry(AuditError::Io {
                    path: "test".into(),
                    message: "unreachable".into(),
                }));
            }
            Some(Answer::Stop) => return Err(SinkError::Stop("disk full; cut back".into())),
            None => {}
        }
        let head = store.head.clone().unwrap_or_else(ChainHead::genesis);
        if head.hash != batch.prev_hash() {
            return Ok(Appended::Conflict(head));
        }
        store.bytes.extend_from_slice(batch.bytes());
        let last = batch.records().last().expect("never empty");
        store.head = Some(ChainHead {
            seq: last.seq,
            hash: last.hash.clone(),
            last_at: crate::time_fmt::parse_rfc3339(&last.at),
        });
        Ok(Appended::Stored)
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.store.lock().unwrap().flushes += 1;
        Ok(())
    }
}

fn start(script: Vec<Answer>) -> (Handle, Arc<Mutex<Store>>) {
    start_on(Store::default(), script)
}

fn start_on(store: Store, script: Vec<Answer>) -> (Handle, Arc<Mutex<Store>>) {
    start_with(store, script, QUEUE_CAPACITY)
}

fn start_with(store: Store, script: Vec<Answer>, queue: usize) -> (Handle, Arc<Mutex<Store>>) {
    let store = Arc::new(Mutex::new(store));
    let sink = TestSink {
        store: Arc::clone(&store),
        script: script.into(),
    };
    let grouping = Grouping {
        max_batch: 8,
        max_bytes: None,
        queue,
    };
    let (handle, writer) = writer(sink, ChainHead::genesis(), grouping);
    tokio::spawn(writer.run());
    (handle, store)
}

fn event(request: &str) -> AuditEvent {
    AuditEvent::new(EventKind::Decision).request(request)
}

fn calls(store: &Mutex<Store>) -> Vec<Call> {
    store.lock().unwrap().calls.clone()
}

#[tokio::test]
async fn a_full_queue_refuses_nowait_appends_and_makes_awaited_ones_wait() {
    // The sink holds the first batch (retrying), so the queue fills.
    let script = (0..20).map(|_| Answer::Retry).collect();
    let (log, store) = start_with(Store::default(), script, 2);
    log.append_nowait(event("held")).expect("queued");
    while calls(&store).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.append_nowait(event("q1")).expect("queued");
    assert!(!log.queue_full());
    log.append_nowait(event("q2")).expect("queued");
    assert!(log.queue_full());
    match log.append_nowait(event("q3")) {
        Err(QueueFull(back)) => assert_eq!(back.request.as_deref(), Some("q3")),
        Ok(()) => panic!("a full queue took a record"),
    }
    let waiting = tokio::time::timeout(Duration::from_millis(100), log.append(event("waits"))).await;
    assert!(waiting.is_err(), "an awaited append waits for room");
}

#[tokio::test]
async fn batch_lines_are_its_bytes_without_the_newlines() {
    let (log, store) = start(vec![]);
    let record = log.append(event("a")).await.unwrap();
    let store = store.lock().unwrap();
    let call = &store.calls[0];
    assert_eq!(call.ids, [record.id]);
    let mut line = call.lines[0].clone();
    line.push(b'\n');
    assert_eq!(line, store.bytes);
}

#[tokio::test]
async fn a_retried_batch_is_resent_unchanged_and_later_records_wait_behind_it() {
    let (log, store) = start(vec![Answer::Retry, Answer::Retry]);
    log.append_nowait(event("first")).expect("queued");
    let second = log.append(event("second")).await.unwrap();
    assert_eq!(second.seq, 2, "the record enqueued first is stored first");
    assert!(!log.failing(), "stored: no longer failing");
    assert_eq!(log.shared().failures.load(Ordering::Relaxed), 2);

    let calls = calls(&store);
    // The first batch (which may or may not hold both records) went out
    // three times, unchanged: same ids, same hashes, same lines.
    assert!(calls.len() >= 3, "{calls:?}");
    assert_eq!(calls[0], calls[1]);
    assert_eq!(calls[1], calls[2]);
    let bytes = store.lock().unwrap().bytes.clone();
    let report = verify_lines(&bytes[..]).expect("one chain");
    assert_eq!((report.records, report.head_hash), (2, second.hash));
}

#[tokio::test]
async fn a_conflict_reseals_the_batch_after_the_new_head_with_the_same_ids() {
    // Another writer already stored two records.
    let (other, store) = start(vec![]);
    other.append(event("a")).await.unwrap();
    let theirs = other.append(event("b")).await.unwrap();
    let taken = std::mem::take(&mut *store.lock().unwrap());
    let (log, store) = start_on(
        Store {
            calls: Vec::new(),
            ..taken
        },
        vec![],
    );

    let mine = log.append(event("c")).await.unwrap();
    assert_eq!((mine.seq, mine.prev_hash.as_str()), (3, theirs.hash.as_str()));
    assert_eq!(log.shared().conflicts.load(Ordering::Relaxed), 1);
    let calls = calls(&store);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].prev_hash, GENESIS);
    assert_eq!(calls[1].prev_hash, theirs.hash);
    assert_eq!(calls[0].ids, calls[1].ids, "ids are kept");
    assert_ne!(calls[0].hashes, calls[1].hashes, "sealed again");
    let bytes = store.lock().unwrap().bytes.clone();
    assert_eq!(verify_lines(&bytes[..]).expect("one chain").records, 3);

    // Once it knows the head, the next batch is stored first time.
    log.append(event("d")).await.unwrap();
    assert_eq!(log.shared().conflicts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stopping_sink_fails_its_batch_and_the_log_refuses_everything_after() {
    let (log, store) = start(vec![Answer::Stop]);
    let err = log.append(event("a")).await.unwrap_err();
    assert!(
        matches!(&err, AuditError::WriteFailed(r) if r == "disk full; cut back"),
        "{err}"
    );
    let err = log.append(event("b")).await.unwrap_err();
    assert!(
        matches!(&err, AuditError::Stopped(r) if r == "disk full; cut back"),
        "{err}"
    );
    assert!(matches!(log.refusal(), Some(AuditError::Stopped(_))));
    log.append_nowait(event("c")).expect("queued"); // logged, not stored
    let closed = log.close().await;
    assert!(matches!(closed, Err(AuditError::Stopped(_))), "{closed:?}");
    let store = store.lock().unwrap();
    assert_eq!(store.calls.len(), 1, "nothing was sent after the stop");
    assert_eq!(store.flushes, 0, "a stopped log is not flushed");
    assert!(store.bytes.is_empty());
}

#[tokio::test]
async fn only_batches_someone_waits_on_ask_for_durability_and_close_flushes() {
    let (log, store) = start(vec![]);
    log.append_nowait(event("a")).expect("queued");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while calls(&store).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the nowait record was never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.append(event("b")).await.unwrap();
    let durable: Vec<bool> = calls(&store).iter().map(|c| c.durable).collect();
    assert_eq!(durable, [false, true]);

    log.append_nowait(event("c")).expect("queued");
    log.close().await.unwrap();
    {
        let store = store.lock().unwrap();
        assert_eq!(store.flushes, 1);
        assert_eq!(
            verify_lines(&store.bytes[..]).unwrap().records,
            3,
            "close stored what was queued"
        );
    }
    assert!(matches!(log.append(event("d")).await, Err(AuditError::Closed)));
    assert!(log.writer_gone());
    log.close().await.expect("closing again is fine");
}

#[tokio::test]
async fn an_oversized_record_fails_alone() {
    let (log, store) = start(vec![]);
    let big = event("big").detail(serde_json::Value::String("x".repeat(MAX_LINE_BYTES)));
    let err = log.append(big).await.unwrap_err();
    assert!(
        matches!(&err, AuditError::Invalid(m) if m.contains("-byte limit")),
        "{err}"
    );
    let next = log.append(event("small")).await.unwrap();
    assert_eq!(next.seq, 1, "the refused record took no seq");
    assert_eq!(calls(&store).len(), 1, "a batch of refused records sends nothing");
}

#[tokio::test]
async fn appends_are_grouped_up_to_max_batch() {
    let (log, store) = start(vec![]);
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.append(event(&format!("r{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let calls = calls(&store);
    assert!(calls.iter().all(|c| (1..=8).contains(&c.ids.len())), "{calls:?}");
    assert_eq!(calls.iter().map(|c| c.ids.len()).sum::<usize>(), 40);
    assert_eq!(log.shared().records.load(Ordering::Relaxed), 40);
    assert_eq!(
        log.shared().largest_batch.load(Ordering::Relaxed),
        calls.iter().map(|c| c.ids.len() as u64).max().unwrap()
    );
}
