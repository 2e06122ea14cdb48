//! `audit bench`: how many records a second the audit trail takes on a given
//! disk, with everything the service does per record: the hash chain, the
//! group-committed fsync each append waits for, the Merkle tree kept up
//! with the trail and a signed checkpoint every `--checkpoint-every`. Run it
//! on the volume the trail will live on before choosing that volume.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::runtime;
use crate::audit::tlog::Tlog;
use crate::audit::{AuditEvent, AuditLog, EventKind, FileAudit};
use crate::domain::{Platform, Reason, ReasonCode};
use crate::signing::SigningKey;

/// What `audit bench` is asked to do.
pub(super) struct BenchArgs<'a> {
    pub dir: &'a Path,
    pub records: u64,
    pub concurrency: u32,
    pub checkpoint_every: Duration,
}

/// A `decision` record of the size the service writes (reasons, a detail).
fn decision_record(i: u64) -> AuditEvent {
    AuditEvent::new(EventKind::Decision)
        .request(format!("gh-octo-org-payments-{}-production-{i}", 9_000_000_000u64 + i))
        .platform(Platform::Github)
        .repository("octo-org/payments")
        .environment("production")
        .sha("0123456789abcdef0123456789abcdef01234567")
        .actor("octocat")
        .decision("approved")
        .reasons(vec![
            Reason::new(
                ReasonCode::AttestationVerified,
                "attestation verified for run 9000000000",
            ),
            Reason::new(ReasonCode::ActorApproved, "octocat is an approver of production"),
            Reason::new(ReasonCode::VerdictAllowed, "verdict allowed by data.deploy.hipaa.allow"),
        ])
        .detail(json!({ "run_attempt": 1, "triggering_actor": "octocat" }))
}

pub(super) fn bench(args: BenchArgs<'_>) -> Result<ExitCode, String> {
    if args.checkpoint_every.is_zero() {
        return Err("--checkpoint-every must be longer than zero".into());
    }
    let work = args.dir.join(format!("portcullis-audit-bench-{}", std::process::id()));
    std::fs::create_dir(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = runtime()?.block_on(run(&work, &args));
    let _ = std::fs::remove_dir_all(&work);
    let out = result?;
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

async fn run(work: &Path, args: &BenchArgs<'_>) -> Result<serde_json::Value, String> {
    let file = Arc::new(
        FileAudit::open(&work.join("audit.jsonl"))
            .await
            .map_err(|e| e.to_string())?,
    );
    let log: Arc<dyn AuditLog> = file.clone();
    let pem = SigningKey::generate_pem().map_err(|e| e.to_string())?;
    let key = SigningKey::from_pem("portcullis/audit-bench", &pem).map_err(|e| e.to_string())?;
    let tlog = Arc::new(
        Tlog::open(log.clone(), Some(key), "portcullis/audit-bench")
            .await
            .map_err(|e| e.to_string())?,
    );
    let stop = CancellationToken::new();
    let ticker = tokio::spawn(tlog.clone().run(args.checkpoint_every, stop.clone()));

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut appenders = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (log, next, records) = (log.clone(), next.clone(), args.records);
        appenders.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    return Ok::<(), String>(());
                }
                log.append(decision_record(i)).await.map_err(|e| e.to_string())?;
            }
        });
    }
    while let Some(joined) = appenders.join_next().await {
        joined.map_err(|e| format!("an appender failed: {e}"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = ticker.await;
    // The last records, checkpointed as at shutdown: the tree must hold them all.
    tlog.checkpoint().await.map_err(|e| e.to_string())?;
    let tree_size = tlog.sync().await.map_err(|e| e.to_string())?;
    if tree_size != args.records {
        return Err(format!(
            "the tree holds {tree_size} records, {} were appended",
            args.records
        ));
    }
    let checkpoints = log.checkpoints().sizes().await.map_err(|e| e.to_string())?;
    let fsyncs = file.fsync_count();
    Ok(json!({
        "records": args.records,
        "concurrency": args.concurrency,
        "checkpoint_every": humantime::format_duration(args.checkpoint_every).to_string(),
        "seconds": seconds,
        "records_per_s": args.records as f64 / seconds,
        "fsyncs": fsyncs,
        "records_per_fsync": args.records as f64 / fsyncs.max(1) as f64,
        "checkpoints": checkpoints.len(),
        "tree_size": tree_size,
    }))
}
