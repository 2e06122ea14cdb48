//! Audit append throughput: one durable append at a time (one fsync per
//! record) against bursts of concurrent appends (group commit), and the cost
//! of verifying a chain.
//!
//! `cargo bench --bench audit`. The file goes to the system temp directory,
//! so the numbers are that disk's fsync latency.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::audit::{AuditEvent, AuditLog, EventKind, FileAudit, MemoryAudit, verify_lines};
use portcullis::domain::Platform;

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::Decision)
        .request(format!("req_{i}"))
        .platform(Platform::Github)
        .repository("octo-org/app")
        .environment("production")
        .sha("0123456789abcdef0123456789abcdef01234567")
        .actor("octocat")
        .decision("approved")
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let log = Arc::new(
        rt.block_on(FileAudit::open(&dir.path().join("audit.jsonl")))
            .expect("open"),
    );

    let mut group = c.benchmark_group("audit_append");
    group.sample_size(10).measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter(|| rt.block_on(log.append(event(0))).expect("append"))
    });

    for burst in [16usize, 128] {
        group.throughput(Throughput::Elements(burst as u64));
        group.bench_function(format!("concurrent_{burst}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..burst)
                        .map(|i| {
                            let log = Arc::clone(&log);
                            tokio::spawn(async move { log.append(event(i)).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("append");
                    }
                })
            })
        });
    }
    group.finish();
    eprintln!(
        "audit bench: {} records in {} fsyncs ({:.1} per fsync)",
        log.records_written(),
        log.fsync_count(),
        log.records_written() as f64 / log.fsync_count().max(1) as f64
    );
}

/// The same 128-append bursts with the transparency log on: a Merkle tree
/// kept up with the trail and a signed checkpoint every 10 ms (the default is
/// every 10 s; this is a thousand times the work), and the tree read for a
/// root at the last record after each burst.
fn appends_with_checkpoints(c: &mut Criterion) {
    use portcullis::audit::tlog::Tlog;
    use portcullis::signing::SigningKey;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let log: Arc<dyn AuditLog> = Arc::new(
        rt.block_on(FileAudit::open(&dir.path().join("audit.jsonl")))
            .expect("open"),
    );
    let key = SigningKey::from_pem("bench/audit", &SigningKey::generate_pem().expect("key")).expect("key");
    let tlog = Arc::new(
        rt.block_on(Tlog::open(log.clone(), Some(key), "bench/audit"))
            .expect("tlog"),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    rt.spawn(tlog.clone().run(Duration::from_millis(10), stop.clone()));

    let mut group = c.benchmark_group("audit_append_tlog");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let burst = 128usize;
    group.throughput(Throughput::Elements(burst as u64));
    group.bench_function("concurrent_128_checkpoint_10ms", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..burst)
                    .map(|i| {
                        let log = Arc::clone(&log);
                        tokio::spawn(async move { log.append(event(i)).await })
                    })
                    .collect();
                let mut last = None;
                for t in tasks {
                    last = Some(t.await.expect("task").expect("append"));
                }
                let last = last.expect("a record");
                black_box(tlog.root(last.seq).await.expect("root"));
            })
        })
    });
    group.finish();
    stop.cancel();
    let checkpoints = rt.block_on(log.checkpoints().sizes()).expect("sizes");
    eprintln!(
        "audit bench with checkpoints: {} checkpoints signed, the last of {} records",
        checkpoints.len(),
        checkpoints.last().copied().unwrap_or(0)
    );
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let log = MemoryAudit::new();
    rt.block_on(async {
        for i in 0..10_000 {
            log.append(event(i)).await.expect("append");
        }
    });
    let lines = log.to_lines();
    let mut group = c.benchmark_group("audit_verify");
    group.sample_size(10).throughput(Throughput::Elements(10_000));
    group.bench_function("10k_records", |b| {
        b.iter(|| verify_lines(black_box(&lines[..])).expect("verifies"))
    });
    group.finish();
}

criterion_group!(benches, appends, appends_with_checkpoints, verify);
criterion_main!(benches);
