//! The Redis backend: one hash chain shared by every replica, appended with
//! compare-and-append.
//!
//! # Keys (under the state's key prefix `P`)
//! - `P audit:log`: a stream; record `seq` is entry `{seq}-0` with one field
//!   `r`, the record's canonical JSON line (exactly the file backend's line,
//!   without the newline). Explicit ids make Redis itself refuse a record
//!   out of order.
//! - `P audit:head`: a hash `{seq, hash, at}` of the last record.
//! - `P audit:ids`: a hash from record `id` to `seq`, for [`AuditLog::get`].
//!
//! # Compare-and-append
//! The chain hash is SHA-256, which Lua in Redis does not have, so records are
//! sealed here ([`record_hash`](super::record_hash), as the file backend does)
//! and a script appends a batch only if the chain head still equals the
//! `prev_hash` the batch was sealed after. On a conflict (another replica
//! appended first) the script answers the current head, and the batch is
//! sealed again after it and resent. The script also answers "already
//! stored" when the batch's first record id is in `audit:ids`: a batch whose
//! reply was lost (a dropped connection) is resent unchanged, and is not
//! appended twice.
//!
//! # Group commit
//! Appends go through the shared group-commit [`Writer`](super::writer), one
//! task per process, which takes whatever is queued (up to [`MAX_BATCH`]
//! records and about 4 MiB) and this backend's sink sends it in one script
//! call: concurrent decisions share one round trip. See
//! [`RedisAudit::stats`] and `tests/integration/replicas.rs` for the measurement.
//!
//! # Failure
//! While Redis is unreachable (or refuses the write, e.g. out of memory), the
//! writer keeps the batch, logs, and retries with back-off until it is
//! stored; later records wait behind it, so order is kept and an
//! [`append_nowait`](AuditLog::append_nowait) record is not lost to a Redis
//! restart. [`ping`](AuditLog::ping) fails meanwhile, so readiness drops. An
//! [`append`](AuditLog::append) returns only once its record is stored.
//!
//! # Acknowledgement by replicas
//! With `state.min_replicas = N` (N > 0), every script call is followed, in
//! the same pipeline, by `WAIT N` (up to 1 s), so a batch counts as stored
//! only once N replicas hold it, and a failover to one of them keeps it.
//! Every batch waits, the `append_nowait` ones too: a batch a dead master
//! never passed on would otherwise be lost while the writer's head moved
//! past it. Fewer acknowledgements than N never count as success: the sink
//! answers [`SinkError::Retry`], the writer sends the batch again after a
//! back-off (to the promoted master, after a failover: the script appends
//! it there, or recognises it and writes its id over itself so the new
//! `WAIT` counts it), `ping` fails meanwhile, and an
//! [`append`](AuditLog::append) that has waited
//! [`RedisAuditOptions::replicated_append_timeout`] (30 s) fails. Its record
//! stays queued and is stored once replicas acknowledge it, as after a lost
//! answer; the gate then decides again, and the trail may hold that
//! request's `decision` record twice, with one platform call.
//!
//! # Durability
//! A record is as durable as Redis makes it. Redis used for the audit trail
//! **must persist**: `appendonly yes` with `appendfsync everysec` (a crash of
//! the Redis host may lose up to about one second of acknowledged records)
//! or `appendfsync always` (none). At start (and before the first write),
//! the backend reads `CONFIG GET appendonly` / `appendfsync`: with
//! `audit.require_persistence = true` (the default) it refuses to start when
//! `appendonly` is not `yes` or `appendfsync` is `no`; where `CONFIG` is not
//! allowed (managed Redis), it logs a loud warning and goes on, and the
//! operator answers for persistence.
//!
//! # Reading
//! [`get`](AuditLog::get) is two O(log n) lookups. [`query`](AuditLog::query)
//! and [`RedisAuditReader::export`] walk the stream from the start in chunks
//! of 1000 entries: O(records) per call, as for the file backend, without
//! holding Redis for more than one chunk at a time. `portcullis audit verify`
//! exports to a temporary file and verifies it with the file backend's
//! [`verify_lines`](super::verify_lines).

mod reader;

use std::io::Write;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

pub use reader::{ExportReport, Head, Persistence, RedisAuditReader};
use reader::{as_string, connect, redis_err};

use super::writer::{self, Appended, Batch, ChainHead, Grouping, Handle, Sink, SinkError};
use super::{AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, QueueFull};
use crate::redis_conn::{RedisConn, eval_and_wait};
use crate::time_fmt::parse_rfc3339;

/// The most records one script call carries.
pub(crate) const MAX_BATCH: usize = 256;
/// The most bytes of records one script call carries (beyond the first).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// KEYS: head, log, ids. ARGV: expected prev hash, record count, then per
/// record seq, id, hash, line; last the `at` of the last record.
/// Returns {1} appended, {2} already stored, {0, seq, hash, at} conflict.
/// "Already stored" writes the first id's entry over itself, so that a
/// `WAIT` after it covers the earlier store.
const APPEND: &str = r#"
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[4], redis.call('HGET', KEYS[3], ARGV[4]))
  return {2}
end
local head = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'at')
local seq = tonumber(head[1]) or 0
local hash = head[2] or '0000000000000000000000000000000000000000000000000000000000000000'
if hash ~= ARGV[1] then return {0, tostring(seq), hash, head[3] or ''} end
local n = tonumber(ARGV[2])
local last_seq, last_hash = seq, hash
for i = 0, n - 1 do
  local b = 3 + i * 4
  if tonumber(ARGV[b]) ~= seq + 1 + i then return redis.error_reply('ERR audit: records out of order') end
  redis.call('XADD', KEYS[2], ARGV[b] .. '-0', 'r', ARGV[b + 3])
  redis.call('HSET', KEYS[3], ARGV[b + 1], ARGV[b])
  last_seq, last_hash = ARGV[b], ARGV[b + 2]
end
redis.call('HSET', KEYS[1], 'seq', last_seq, 'hash', last_hash, 'at', ARGV[3 + n * 4])
return {1}
"#;

/// Counters of the writer, for tests and the measurement of grouping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisAuditStats {
    /// Records stored by this process.
    pub records: u64,
    /// Script calls that stored a batch.
    pub batches: u64,
    /// Script calls answered "the head moved" (another replica appended).
    pub conflicts: u64,
    /// Script calls that failed (Redis unreachable or refusing).
    pub failures: u64,
    pub largest_batch: u64,
}

/// The Redis-backed audit log. See the module documentation.
pub struct RedisAudit {
    reader: RedisAuditReader,
    writer: Handle,
    checkpoints: std::sync::Arc<super::checkpoints::RedisCheckpoints>,
    options: RedisAuditOptions,
}

/// Options of [`RedisAudit`].
#[derive(Debug, Clone, Copy)]
pub struct RedisAuditOptions {
    /// Stop taking records (before the first write) when Redis does not
    /// persist; see [`Persistence::enforce`].
    pub require_persistence: bool,
    /// The most records one script call carries (1 turns grouping off).
    pub max_batch: usize,
    /// Replicas that must acknowledge each batch (`state.min_replicas`).
    pub min_replicas: u32,
    /// With `min_replicas`, how long an awaited append waits for its
    /// record to be stored and acknowledged before it fails.
    pub replicated_append_timeout: Duration,
}

impl Default for RedisAuditOptions {
    fn default() -> Self {
        RedisAuditOptions {
            require_persistence: true,
            max_batch: MAX_BATCH,
            min_replicas: 0,
            replicated_append_timeout: Duration::from_secs(30),
        }
    }
}

impl RedisAudit {
    /// Connects (lazily) to `url` and starts the writer task on the current
    /// tokio runtime. Does not check persistence: [`RedisAudit::open`] does,
    /// and the writer checks again before its first write.
    pub fn connect(url: &str, prefix: &str, options: RedisAuditOptions) -> Result<RedisAudit, AuditError> {
        Ok(RedisAudit::with_connection(connect(url, prefix)?, prefix, options))
    }

    /// Like [`RedisAudit::connect`], then checks persistence now when Redis
    /// answers: refuses (naming the setting) when it does not persist and
    /// `require_persistence` is set. When Redis does not answer, starts
    /// anyway (readiness reports it) and the writer checks before its
    /// first write.
    pub async fn open(url: &str, prefix: &str, options: RedisAuditOptions) -> Result<RedisAudit, AuditError> {
        let audit = RedisAudit::connect(url, prefix, options)?;
        match audit.reader.persistence().await {
            Ok(p) => p.enforce(options.require_persistence)?,
            Err(e) => {
                tracing::warn!(error = %e, "the audit Redis does not answer; persistence is checked before the first record")
            }
        }
        Ok(audit)
    }

    /// Uses an existing connection (shared with the state backend).
    pub(crate) fn with_connection(conn: RedisConn, prefix: &str, options: RedisAuditOptions) -> RedisAudit {
        let reader = RedisAuditReader::new(conn.clone(), prefix);
        let checkpoints = std::sync::Arc::new(super::checkpoints::RedisCheckpoints::new(conn, prefix));
        let sink = RedisSink {
            reader: reader.clone(),
            persistence_checked: false,
            require_persistence: options.require_persistence,
            min_replicas: options.min_replicas,
        };
        let grouping = Grouping {
            max_batch: options.max_batch,
            max_bytes: Some(MAX_BATCH_BYTES),
            queue: writer::QUEUE_CAPACITY,
        };
        // The head is learnt from the first answer: a batch sealed after
        // genesis on a non-empty chain is a conflict that names the head.
        let (handle, writer) = writer::writer(sink, ChainHead::genesis(), grouping);
        tokio::spawn(writer.run());
        RedisAudit {
            reader,
            writer: handle,
            checkpoints,
            options,
        }
    }

    pub fn reader(&self) -> &RedisAuditReader {
        &self.reader
    }

    /// See [`RedisAuditReader::export`].
    pub async fn export(&self, out: &mut (impl Write + Send)) -> Result<ExportReport, AuditError> {
        self.reader.export(out).await
    }

    pub fn stats(&self) -> RedisAuditStats {
        let s = self.writer.shared();
        RedisAuditStats {
            records: s.records.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl AuditLog for RedisAudit {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if self.options.min_replicas == 0 {
            return self.writer.append(event).await;
        }
        let limit = self.options.replicated_append_timeout;
        match tokio::time::timeout(limit, self.writer.append(event)).await {
            Ok(result) => result,
            Err(_) => Err(AuditError::Io {
                path: self.reader.keys.shown.clone(),
                message: format!(
                    "the record was not stored and acknowledged by {} replica(s) (state.min_replicas) within {limit:?}; \
                     it stays queued and is stored once they acknowledge it",
                    self.options.min_replicas
                ),
            }),
        }
    }

    fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull> {
        self.writer.append_nowait(event)
    }

    fn queue_full(&self) -> bool {
        self.writer.queue_full()
    }

    async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
        self.reader.get(id).await
    }

    async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        self.reader.query(filter).await
    }

    async fn lines(&self, start: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let entries = self.reader.range(start + 1, start + max as u64).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (seq, line)) in entries.into_iter().enumerate() {
            if seq != start + 1 + i as u64 {
                return Err(AuditError::Corrupt {
                    path: self.reader.keys.shown.clone(),
                    line: seq,
                    why: format!("expected record {}, found {seq}", start + 1 + i as u64),
                });
            }
            out.push(line);
        }
        Ok(out)
    }

    fn checkpoints(&self) -> std::sync::Arc<dyn super::checkpoints::CheckpointStore> {
        self.checkpoints.clone()
    }

    async fn ping(&self) -> Result<(), AuditError> {
        if let Some(err) = self.writer.refusal() {
            return Err(err);
        }
        if self.writer.writer_gone() {
            return Err(AuditError::Closed);
        }
        if self.writer.failing() {
            return Err(AuditError::Io {
                path: self.reader.keys.shown.clone(),
                message: "records are waiting for Redis to take them".into(),
            });
        }
        let mut c = self.reader.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.reader.keys, "ping", e))?;
        Ok(())
    }

    async fn close(&self) -> Result<(), AuditError> {
        self.writer.close().await
    }
}

/// The writer's sink: compare-and-append by script.
struct RedisSink {
    reader: RedisAuditReader,
    persistence_checked: bool,
    require_persistence: bool,
    min_replicas: u32,
}

impl Sink for RedisSink {
    fn shown(&self) -> &str {
        self.reader.shown()
    }

    /// Checks persistence once, before the first record: retried while Redis
    /// does not answer, and stops the log if it does not persist (and that
    /// is required).
    async fn prepare(&mut self) -> Result<(), SinkError> {
        if self.persistence_checked {
            return Ok(());
        }
        let persistence = self.reader.persistence().await.map_err(SinkError::Retry)?;
        self.persistence_checked = true;
        persistence
            .enforce(self.require_persistence)
            .map_err(|e| SinkError::Stop(e.to_string()))
    }

    /// Every acknowledged script call is as durable as Redis makes it, so
    /// `durable` asks nothing more (with `min_replicas`, every batch waits
    /// for the replicas). A failed call, or one too few replicas
    /// acknowledged, is retried by the writer with the batch unchanged; the
    /// script recognises a batch it already stored.
    async fn append_batch(&mut self, batch: &Batch, _durable: bool) -> Result<Appended, SinkError> {
        self.send(batch).await.map_err(SinkError::Retry)
    }
}

impl RedisSink {
    async fn send(&self, batch: &Batch) -> Result<Appended, AuditError> {
        let keys = &self.reader.keys;
        let mut eval = redis::cmd("EVAL");
        eval.arg(APPEND)
            .arg(3)
            .arg(&keys.head)
            .arg(&keys.log)
            .arg(&keys.ids)
            .arg(batch.prev_hash())
            .arg(batch.records().len());
        for (record, line) in batch.lines() {
            eval.arg(record.seq).arg(&record.id).arg(&record.hash).arg(line);
        }
        eval.arg(batch.records().last().map(|r| r.at.as_str()).unwrap_or_default());
        let mut c = self.reader.conn.clone();
        let (reply, acks) = if self.min_replicas == 0 {
            (eval.query_async(&mut c).await, None)
        } else {
            match eval_and_wait(&mut c, eval, self.min_replicas).await {
                Ok((reply, acks)) => (Ok(reply), Some(acks)),
                Err(e) => (Err(e), None),
            }
        };
        let bad = || AuditError::Io {
            path: keys.shown.clone(),
            message: "unexpected answer to the append script".into(),
        };
        let Value::Array(reply) = reply.map_err(|e| redis_err(keys, "appending records", e))? else {
            return Err(bad());
        };
        match reply.first() {
            Some(Value::Int(1 | 2)) => match acks {
                Some(acks) if acks < self.min_replicas => Err(AuditError::Io {
                    path: keys.shown.clone(),
                    message: format!(
                        "records stored but acknowledged by {acks} of the {} replica(s) state.min_replicas asks for; \
                         sending them again",
                        self.min_replicas
                    ),
                }),
                _ => Ok(Appended::Stored),
            },
            Some(Value::Int(0)) => {
                let field = |i: usize| reply.get(i).and_then(as_string);
                let seq = field(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let hash = field(2).ok_or_else(bad)?;
                let last_at = field(3).filter(|s| !s.is_empty()).as_deref().and_then(parse_rfc3339);
                Ok(Appended::Conflict(ChainHead { seq, hash, last_at }))
            }
            _ => Err(bad()),
        }
    }
}
