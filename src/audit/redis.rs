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
//! Appends go through one channel to one writer task per process, which
//! takes whatever is queued (up to [`MAX_BATCH`] records) and sends it in one
//! script call: concurrent decisions share one round trip. See
//! [`RedisAudit::stats`] and `tests/replicas.rs` for the measurement.
//!
//! # Failure
//! While Redis is unreachable (or refuses the write, e.g. out of memory), the
//! writer keeps the batch, logs, and retries with back-off until it is
//! stored; later records wait behind it, so order is kept and an
//! [`append_nowait`](AuditLog::append_nowait) record is not lost to a Redis
//! restart. [`ping`](AuditLog::ping) fails meanwhile, so readiness drops. An
//! [`append`](AuditLog::append) returns only once its record is stored.
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

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, MAX_LINE_BYTES, VerifyReport};
use super::{AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, GENESIS, new_id, record_time};
use crate::config::{AuditBackend, Config, StateBackend};
use crate::time_fmt::parse_rfc3339;

/// The most records one script call carries.
pub const MAX_BATCH: usize = 256;
/// The most bytes of records one script call carries (beyond the first).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Entries read per `XRANGE` when walking the stream.
const CHUNK: usize = 1000;
/// Back-off between attempts while Redis does not take a batch.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// KEYS: head, log, ids. ARGV: expected prev hash, record count, then per
/// record seq, id, hash, line; last the `at` of the last record.
/// Returns {1} appended, {2} already stored, {0, seq, hash, at} conflict.
const APPEND: &str = r#"
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {2} end
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

/// What `CONFIG GET appendonly/appendfsync` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// AOF on with this `appendfsync` (`always` or `everysec`).
    Aof { fsync: String },
    /// AOF off, or `appendfsync no`: acknowledged records may be lost.
    Insufficient { appendonly: String, appendfsync: String },
    /// `CONFIG` is not allowed (managed Redis): the operator answers for it.
    Unknown,
}

impl Persistence {
    /// The start-up verdict for `require`: an error naming the setting, or
    /// nothing (after logging a warning where one is due).
    pub fn enforce(&self, require: bool) -> Result<(), AuditError> {
        match self {
            Persistence::Aof { fsync } => {
                tracing::info!(appendfsync = %fsync, "the audit Redis persists (AOF)");
                Ok(())
            }
            Persistence::Insufficient {
                appendonly,
                appendfsync,
            } => {
                let what = format!(
                    "the Redis holding the audit trail does not persist it (appendonly = {appendonly:?}, appendfsync = \
                     {appendfsync:?}); set `appendonly yes` and `appendfsync everysec` (or `always`) on that Redis"
                );
                if require {
                    Err(AuditError::Invalid(format!(
                        "{what}, or set audit.require_persistence = false to accept losing audit records"
                    )))
                } else {
                    tracing::error!(
                        "{what}; audit.require_persistence = false, so starting anyway: a Redis restart may lose audit records"
                    );
                    Ok(())
                }
            }
            Persistence::Unknown => {
                tracing::error!(
                    "cannot check that the audit Redis persists: CONFIG is not allowed on it (managed Redis?); \
                     make sure it runs with AOF (`appendonly yes`, `appendfsync everysec` or `always`), or audit \
                     records may be lost when it restarts"
                );
                Ok(())
            }
        }
    }
}

/// The keys of one chain.
#[derive(Debug, Clone)]
struct Keys {
    head: String,
    log: String,
    ids: String,
    shown: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            head: format!("{prefix}audit:head"),
            log: format!("{prefix}audit:log"),
            ids: format!("{prefix}audit:ids"),
            shown: format!("redis {prefix}audit"),
        }
    }
}

/// The head of the chain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub at: Option<String>,
}

/// What [`RedisAuditReader::export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub records: u64,
    /// The head the export ran up to (read first).
    pub head: Head,
}

/// Read-side access to a Redis audit chain: export, query, get. Needs no
/// writer, so the CLI uses it while the service runs.
#[derive(Clone)]
pub struct RedisAuditReader {
    conn: ConnectionManager,
    keys: Keys,
}

fn redis_err(keys: &Keys, what: &str, e: redis::RedisError) -> AuditError {
    AuditError::Io {
        path: keys.shown.clone(),
        message: format!("{what}: {e}"),
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Parses an `XRANGE` reply into (seq, line) pairs.
fn stream_entries(keys: &Keys, v: Value) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
    let corrupt = |why: &str| AuditError::Io {
        path: keys.shown.clone(),
        message: format!("unexpected stream entry: {why}"),
    };
    let Value::Array(items) = v else {
        return Err(corrupt("not an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(corrupt("entry is not an array"));
        };
        if pair.len() != 2 {
            return Err(corrupt("entry is not (id, fields)"));
        }
        let fields = pair.pop();
        let id = pair
            .pop()
            .as_ref()
            .and_then(as_string)
            .ok_or_else(|| corrupt("id is not a string"))?;
        let seq = id
            .split_once('-')
            .and_then(|(s, _)| s.parse::<u64>().ok())
            .ok_or_else(|| corrupt("id is not seq-0"))?;
        let line = match fields {
            Some(Value::Array(f)) => {
                let mut it = f.into_iter();
                match (it.next(), it.next()) {
                    (Some(name), Some(Value::BulkString(line))) if as_string(&name).as_deref() == Some("r") => line,
                    _ => return Err(corrupt("no `r` field")),
                }
            }
            Some(Value::Map(f)) => match f.into_iter().next() {
                Some((name, Value::BulkString(line))) if as_string(&name).as_deref() == Some("r") => line,
                _ => return Err(corrupt("no `r` field")),
            },
            _ => return Err(corrupt("fields are not an array")),
        };
        out.push((seq, line));
    }
    Ok(out)
}

impl RedisAuditReader {
    /// A reader over the chain under `prefix`, sharing `conn`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisAuditReader {
        RedisAuditReader {
            conn,
            keys: Keys::new(prefix),
        }
    }

    /// A reader for the configuration's Redis (`[state] url` and
    /// `key_prefix`), for the CLI. Connects lazily.
    pub fn from_config(config: &Config) -> Result<RedisAuditReader, AuditError> {
        let (url, prefix) = redis_location(config)?;
        Ok(RedisAuditReader::new(connect(url, prefix)?, prefix))
    }

    /// Where the records are, for messages: `redis <prefix>audit`.
    pub fn shown(&self) -> &str {
        &self.keys.shown
    }

    /// The stored head (seq 0 and [`GENESIS`] for an empty chain).
    pub async fn head(&self) -> Result<Head, AuditError> {
        let mut c = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&self.keys.head)
            .arg("seq")
            .arg("hash")
            .arg("at")
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.keys, "reading the chain head", e))?;
        let seq = v.first().cloned().flatten().and_then(|s| s.parse().ok()).unwrap_or(0);
        let hash = v.get(1).cloned().flatten().unwrap_or_else(|| GENESIS.to_string());
        let at = v.get(2).cloned().flatten().filter(|s| !s.is_empty());
        Ok(Head { seq, hash, at })
    }

    /// Entries `from..=to` (seqs), at most `CHUNK`.
    async fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let mut c = self.conn.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(&self.keys.log)
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.keys, "reading records", e))?;
        stream_entries(&self.keys, v)
    }

    /// Walks records `1..=upto` in chain order, handing each line to
    /// `visit` until it returns `false`. Checks only that seqs follow.
    async fn walk(
        &self,
        upto: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, AuditError>,
    ) -> Result<u64, AuditError> {
        let mut next = 1;
        let mut seen = 0;
        while next <= upto {
            let chunk = self.range(next, upto).await?;
            if chunk.is_empty() {
                break;
            }
            for (seq, line) in chunk {
                seen += 1;
                next = seq + 1;
                if !visit(seq, &line)? {
                    return Ok(seen);
                }
            }
        }
        Ok(seen)
    }

    /// Writes the chain, up to the head read when it starts, in the file
    /// backend's format (one canonical JSON line per record), so that
    /// [`verify_lines`](super::verify_lines) and the file tools work on it.
    /// Safe while replicas append: the chain only grows, and records appended
    /// during the export are left out. Fails if records up to the head are
    /// missing from the stream.
    pub async fn export(&self, out: &mut (impl Write + Send)) -> Result<ExportReport, AuditError> {
        let head = self.head().await?;
        let shown = self.keys.shown.clone();
        let io = |e: std::io::Error| AuditError::Io {
            path: shown.clone(),
            message: format!("writing the export: {e}"),
        };
        let records = self
            .walk(head.seq, |_, line| {
                out.write_all(line).and_then(|()| out.write_all(b"\n")).map_err(io)?;
                Ok(true)
            })
            .await?;
        out.flush().map_err(|e| AuditError::Io {
            path: self.keys.shown.clone(),
            message: format!("writing the export: {e}"),
        })?;
        if records != head.seq {
            return Err(AuditError::Io {
                path: self.keys.shown.clone(),
                message: format!(
                    "the head is at seq {} but the stream holds {records} record(s) up to it",
                    head.seq
                ),
            });
        }
        Ok(ExportReport { records, head })
    }

    /// Exports the chain to a temporary file and verifies it with the file
    /// backend's verifier; also checks that the last exported record is the
    /// stored head (so a cut-off tail does not verify). Removes the file.
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        let path = std::env::temp_dir().join(format!(
            "portcullis-audit-export-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let shown = self.keys.shown.clone();
        let result = async {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| AuditError::Io {
                    path: path.display().to_string(),
                    message: format!("creating: {e}"),
                })?;
            let mut out = std::io::BufWriter::new(file);
            let exported = self.export(&mut out).await?;
            drop(out);
            let report = super::verify_file(&path).map_err(|e| match e {
                AuditError::Chain { source, .. } => AuditError::Chain {
                    path: shown.clone(),
                    source,
                },
                other => other,
            })?;
            if report.records != exported.records || report.head_hash != exported.head.hash {
                return Err(AuditError::Io {
                    path: shown.clone(),
                    message: format!(
                        "the stored head (seq {}, hash {}) is not the last record's (seq {}, hash {})",
                        exported.head.seq, exported.head.hash, report.last_seq, report.head_hash
                    ),
                });
            }
            Ok(report)
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Records matching `filter`, oldest first (a walk of the whole chain).
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        if filter.limit == Some(0) {
            return Ok(out);
        }
        let head = self.head().await?;
        let shown = self.keys.shown.clone();
        self.walk(head.seq, |seq, line| {
            let record: AuditRecord = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
                path: shown.clone(),
                line: seq,
                why: e.to_string(),
            })?;
            let at = filter.since.and_then(|_| parse_rfc3339(&record.at));
            if filter.matches(&record, at) {
                out.push(record);
            }
            Ok(filter.limit.is_none_or(|limit| out.len() < limit))
        })
        .await?;
        Ok(out)
    }

    /// The record with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
        let mut c = self.conn.clone();
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(&self.keys.ids)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(&self.keys, "reading the id index", e))?;
        let Some(seq) = seq else { return Ok(None) };
        let Some((_, line)) = self.range(seq, seq).await?.into_iter().next() else {
            return Ok(None);
        };
        let record: AuditRecord = serde_json::from_slice(&line).map_err(|e| AuditError::Corrupt {
            path: self.keys.shown.clone(),
            line: seq,
            why: e.to_string(),
        })?;
        Ok(Some(record))
    }

    /// `appendonly` / `appendfsync` as Redis reports them.
    pub async fn persistence(&self) -> Result<Persistence, AuditError> {
        let answers = match config_get(&self.conn, "appendonly").await {
            Ok(aof) => config_get(&self.conn, "appendfsync").await.map(|fsync| (aof, fsync)),
            Err(e) => Err(e),
        };
        match answers {
            Ok((Some(aof), Some(fsync))) => {
                if aof == "yes" && fsync != "no" {
                    Ok(Persistence::Aof { fsync })
                } else {
                    Ok(Persistence::Insufficient {
                        appendonly: aof,
                        appendfsync: fsync,
                    })
                }
            }
            // An empty answer: the parameters are hidden from us.
            Ok(_) => Ok(Persistence::Unknown),
            Err(e) if unreachable(&e) => Err(redis_err(&self.keys, "checking persistence", e)),
            // NOPERM, or CONFIG renamed away (managed Redis).
            Err(_) => Ok(Persistence::Unknown),
        }
    }
}

async fn config_get(conn: &ConnectionManager, name: &str) -> Result<Option<String>, redis::RedisError> {
    let mut c = conn.clone();
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut c).await?;
    Ok(v.get(1).cloned())
}

/// The error says Redis did not answer (as opposed to answering "no").
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// `[state] url` and `key_prefix`, which `audit.backend = "redis"` uses.
fn redis_location(config: &Config) -> Result<(&str, &str), AuditError> {
    match (&config.audit.backend, &config.state.backend) {
        (AuditBackend::Redis, StateBackend::Redis { url, key_prefix }) => Ok((url.expose(), key_prefix)),
        _ => Err(AuditError::Invalid(
            "audit.backend = \"redis\" needs state.backend = \"redis\" and its url".into(),
        )),
    }
}

/// A lazily connecting connection to `url`, for the chain under `prefix`.
fn connect(url: &str, prefix: &str) -> Result<ConnectionManager, AuditError> {
    crate::redis_conn::connect(url).map_err(|e| AuditError::Io {
        path: format!("redis {prefix}audit"),
        message: e.to_string(),
    })
}

type Reply = oneshot::Sender<Result<AuditRecord, AuditError>>;

enum Job {
    Append {
        event: Box<AuditEvent>,
        reply: Option<Reply>,
    },
    Close(oneshot::Sender<Result<(), AuditError>>),
}

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

#[derive(Default)]
struct Shared {
    records: AtomicU64,
    batches: AtomicU64,
    conflicts: AtomicU64,
    failures: AtomicU64,
    largest_batch: AtomicU64,
    /// The writer holds a batch Redis has not taken yet.
    failing: AtomicBool,
    closed: AtomicBool,
    stopped: super::StopFlag,
}

impl Shared {
    fn stopped(&self) -> Option<String> {
        self.stopped.reason()
    }

    fn stop(&self, reason: String) {
        self.stopped.stop(reason);
    }
}

/// The Redis-backed audit log. See the module documentation.
pub struct RedisAudit {
    reader: RedisAuditReader,
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

/// Options of [`RedisAudit`].
#[derive(Debug, Clone, Copy)]
pub struct RedisAuditOptions {
    /// Stop taking records (before the first write) when Redis does not
    /// persist; see [`Persistence::enforce`].
    pub require_persistence: bool,
    /// The most records one script call carries (1 turns grouping off).
    pub max_batch: usize,
}

impl Default for RedisAuditOptions {
    fn default() -> Self {
        RedisAuditOptions {
            require_persistence: true,
            max_batch: MAX_BATCH,
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
    pub fn with_connection(conn: ConnectionManager, prefix: &str, options: RedisAuditOptions) -> RedisAudit {
        let reader = RedisAuditReader::new(conn, prefix);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            reader: reader.clone(),
            script: Script::new(APPEND),
            head: None,
            persistence_checked: false,
            options: RedisAuditOptions {
                max_batch: options.max_batch.max(1),
                ..options
            },
            shared: Arc::clone(&shared),
        };
        tokio::spawn(writer.run(rx));
        RedisAudit { reader, tx, shared }
    }

    pub fn reader(&self) -> &RedisAuditReader {
        &self.reader
    }

    /// See [`RedisAuditReader::export`].
    pub async fn export(&self, out: &mut (impl Write + Send)) -> Result<ExportReport, AuditError> {
        self.reader.export(out).await
    }

    pub fn stats(&self) -> RedisAuditStats {
        let s = &self.shared;
        RedisAuditStats {
            records: s.records.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
        }
    }

    fn refusal(&self) -> Option<AuditError> {
        if let Some(reason) = self.shared.stopped() {
            return Some(AuditError::Stopped(reason));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Some(AuditError::Closed);
        }
        None
    }
}

#[async_trait]
impl AuditLog for RedisAudit {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if let Some(err) = self.refusal() {
            return Err(err);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Append {
                event: Box::new(event),
                reply: Some(reply),
            })
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    fn append_nowait(&self, event: AuditEvent) {
        let kind = event.event;
        if let Some(err) = self.refusal() {
            tracing::error!(log = %self.reader.keys.shown, event = ?kind, error = %err, "audit record dropped");
            return;
        }
        if self
            .tx
            .send(Job::Append {
                event: Box::new(event),
                reply: None,
            })
            .is_err()
        {
            tracing::error!(log = %self.reader.keys.shown, event = ?kind, "audit record dropped: the writer is gone");
        }
    }

    async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
        self.reader.get(id).await
    }

    async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        self.reader.query(filter).await
    }

    async fn ping(&self) -> Result<(), AuditError> {
        if let Some(err) = self.refusal() {
            return Err(err);
        }
        if self.tx.is_closed() {
            return Err(AuditError::Closed);
        }
        if self.shared.failing.load(Ordering::Acquire) {
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
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Job::Close(reply)).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

/// One record waiting to be stored: its id is fixed at first sealing, so a
/// resent batch is recognised.
struct Pending {
    id: String,
    event: AuditEvent,
    reply: Option<Reply>,
}

/// A batch sealed after a given head.
struct SealedBatch {
    prev_hash: String,
    records: Vec<(AuditRecord, Vec<u8>)>,
    last_at: OffsetDateTime,
}

enum Outcome {
    Stored,
    Conflict(Head),
}

struct Writer {
    reader: RedisAuditReader,
    script: Script,
    /// The last head this writer knows of; `None` until the first answer.
    head: Option<(Head, Option<OffsetDateTime>)>,
    persistence_checked: bool,
    options: RedisAuditOptions,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut close = None;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append { event, reply } => {
                        // A rough size: the encoded event, without what sealing adds.
                        bytes += serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(0);
                        batch.push(Pending {
                            id: new_id(),
                            event: *event,
                            reply,
                        });
                    }
                    Job::Close(reply) => {
                        close = Some(reply);
                        break;
                    }
                }
                if batch.len() < self.options.max_batch && bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(batch).await;
            if let Some(reply) = close {
                self.shared.closed.store(true, Ordering::Release);
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    match job {
                        Job::Append { reply, .. } => answer(reply, Err(AuditError::Closed)),
                        Job::Close(r) => {
                            let _ = r.send(Ok(()));
                        }
                    }
                }
                let outcome = match self.shared.stopped() {
                    Some(reason) => Err(AuditError::Stopped(reason)),
                    None => Ok(()),
                };
                let _ = reply.send(outcome);
                return;
            }
        }
    }

    /// Stores one batch, retrying until Redis takes it (or the log stops).
    async fn commit(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let mut delay = RETRY_MIN;
        let mut pending = batch;
        // The persistence check runs once, before the first record.
        while !self.persistence_checked {
            match self.reader.persistence().await {
                Ok(p) => {
                    self.shared.failing.store(false, Ordering::Release);
                    if let Err(e) = p.enforce(self.options.require_persistence) {
                        let reason = e.to_string();
                        tracing::error!(error = %reason, "audit log stopped");
                        self.shared.stop(reason);
                    }
                    self.persistence_checked = true;
                }
                Err(e) => {
                    self.failed(&e, &mut delay).await;
                }
            }
        }
        if let Some(reason) = self.shared.stopped() {
            for p in pending {
                refuse(p.event, p.reply, AuditError::Stopped(reason.clone()));
            }
            return;
        }
        let mut sealed: Option<SealedBatch> = None;
        loop {
            let batch = match sealed.take() {
                Some(b) => b,
                None => {
                    let (b, kept) = self.seal(pending);
                    pending = kept;
                    match b {
                        Some(b) => b,
                        None => return,
                    }
                }
            };
            match self.send(&batch).await {
                Ok(Outcome::Stored) => {
                    self.shared.failing.store(false, Ordering::Release);
                    let n = batch.records.len() as u64;
                    self.shared.records.fetch_add(n, Ordering::Relaxed);
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    self.shared.largest_batch.fetch_max(n, Ordering::Relaxed);
                    if let Some((last, _)) = batch.records.last() {
                        self.head = Some((
                            Head {
                                seq: last.seq,
                                hash: last.hash.clone(),
                                at: Some(last.at.clone()),
                            },
                            Some(batch.last_at),
                        ));
                    }
                    for ((record, _), p) in batch.records.into_iter().zip(pending) {
                        answer(p.reply, Ok(record));
                    }
                    return;
                }
                Ok(Outcome::Conflict(head)) => {
                    self.shared.failing.store(false, Ordering::Release);
                    self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
                    let at = head.at.as_deref().and_then(parse_rfc3339);
                    self.head = Some((head, at));
                    // Sealed again after the new head, on the next turn.
                }
                Err(e) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    self.failed(&e, &mut delay).await;
                    // The reply may have been lost after Redis stored the
                    // batch: resend it unchanged, so the script recognises it.
                    sealed = Some(batch);
                }
            }
        }
    }

    async fn failed(&self, e: &AuditError, delay: &mut Duration) {
        if !self.shared.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "the audit Redis does not take records; retrying until it does");
        } else {
            tracing::debug!(error = %e, "the audit Redis still does not take records");
        }
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(RETRY_MAX);
    }

    /// Seals `pending` after the known head. Records that cannot be encoded
    /// are refused here; the rest are returned alongside, in order.
    fn seal(&self, pending: Vec<Pending>) -> (Option<SealedBatch>, Vec<Pending>) {
        let (mut seq, mut head, mut last_at) = match &self.head {
            Some((h, at)) => (h.seq, h.hash.clone(), *at),
            None => (0, GENESIS.to_string(), None),
        };
        let prev_hash = head.clone();
        let mut records = Vec::with_capacity(pending.len());
        let mut kept = Vec::with_capacity(pending.len());
        for p in pending {
            let (at, at_text) = record_time(last_at);
            let kind = p.event.event;
            match chain::seal(seq + 1, p.id.clone(), at_text, p.event.clone(), &head) {
                Ok(s) if s.line.len() <= MAX_LINE_BYTES => {
                    seq += 1;
                    head.clone_from(&s.record.hash);
                    last_at = Some(at);
                    let mut line = s.line;
                    line.pop(); // the newline: the stream stores the line alone
                    records.push((s.record, line));
                    kept.push(p);
                }
                Ok(s) => {
                    let err = AuditError::Invalid(format!(
                        "the record is {} bytes, over the {MAX_LINE_BYTES}-byte limit",
                        s.line.len()
                    ));
                    refuse(p.event, p.reply, err);
                }
                Err(e) => refuse(
                    p.event,
                    p.reply,
                    AuditError::Invalid(format!("{kind:?} event cannot be encoded: {e}")),
                ),
            }
        }
        match last_at {
            Some(last_at) if !records.is_empty() => (
                Some(SealedBatch {
                    prev_hash,
                    records,
                    last_at,
                }),
                kept,
            ),
            _ => (None, kept),
        }
    }

    async fn send(&self, batch: &SealedBatch) -> Result<Outcome, AuditError> {
        let keys = &self.reader.keys;
        let mut inv = self.script.prepare_invoke();
        inv.key(&keys.head)
            .key(&keys.log)
            .key(&keys.ids)
            .arg(&batch.prev_hash)
            .arg(batch.records.len());
        for (record, line) in &batch.records {
            inv.arg(record.seq)
                .arg(&record.id)
                .arg(&record.hash)
                .arg(line.as_slice());
        }
        inv.arg(batch.records.last().map(|(r, _)| r.at.as_str()).unwrap_or_default());
        let mut c = self.reader.conn.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut c)
            .await
            .map_err(|e| redis_err(keys, "appending records", e))?;
        let bad = || AuditError::Io {
            path: keys.shown.clone(),
            message: "unexpected answer to the append script".into(),
        };
        match reply.first() {
            Some(Value::Int(1 | 2)) => Ok(Outcome::Stored),
            Some(Value::Int(0)) => {
                let field = |i: usize| reply.get(i).and_then(as_string);
                let seq = field(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let hash = field(2).ok_or_else(bad)?;
                let at = field(3).filter(|s| !s.is_empty());
                Ok(Outcome::Conflict(Head { seq, hash, at }))
            }
            _ => Err(bad()),
        }
    }
}

fn answer(reply: Option<Reply>, result: Result<AuditRecord, AuditError>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

fn refuse(event: AuditEvent, reply: Option<Reply>, err: AuditError) {
    match reply {
        Some(reply) => {
            let _ = reply.send(Err(err));
        }
        None => tracing::error!(
            event = ?event.event,
            request = event.request.as_deref().unwrap_or(""),
            error = %err,
            "audit record dropped"
        ),
    }
}
