//! Reading a Redis audit chain: its head, export (the file backend's
//! format), verification, query and get, and the persistence check. Needs no
//! writer, so the CLI reads while the service runs.

use std::io::Write;

use redis::Value;

use crate::audit::chain::VerifyReport;
use crate::audit::{AuditError, AuditFilter, AuditRecord, GENESIS};
use crate::config::{AuditBackend, Config, StateBackend};
use crate::redis_conn::RedisConn;
use crate::time_fmt::parse_rfc3339;

/// Entries read per `XRANGE` when walking the stream.
const CHUNK: usize = 1000;

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
    pub(crate) fn enforce(&self, require: bool) -> Result<(), AuditError> {
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
pub(super) struct Keys {
    pub(super) head: String,
    pub(super) log: String,
    pub(super) ids: String,
    pub(super) shown: String,
    pub(super) prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            head: format!("{prefix}audit:head"),
            log: format!("{prefix}audit:log"),
            ids: format!("{prefix}audit:ids"),
            shown: format!("redis {prefix}audit"),
            prefix: prefix.to_string(),
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
    pub(super) conn: RedisConn,
    pub(super) keys: Keys,
}

pub(super) fn redis_err(keys: &Keys, what: &str, e: redis::RedisError) -> AuditError {
    AuditError::Io {
        path: keys.shown.clone(),
        message: format!("{what}: {e}"),
    }
}

pub(super) fn as_string(v: &Value) -> Option<String> {
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
    pub fn new(conn: RedisConn, prefix: &str) -> RedisAuditReader {
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
    /// The checkpoints kept beside this trail.
    pub fn checkpoints(&self) -> crate::audit::checkpoints::RedisCheckpoints {
        crate::audit::checkpoints::RedisCheckpoints::new(self.conn.clone(), &self.keys.prefix)
    }

    pub fn shown(&self) -> &str {
        &self.keys.shown
    }

    /// The stored head (seq 0 and [`GENESIS`] for an empty chain).
    pub(crate) async fn head(&self) -> Result<Head, AuditError> {
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
    pub(super) async fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
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
    /// [`verify_lines`](crate::audit::verify_lines) and the file tools work on it.
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
            let report = crate::audit::verify_file(&path).map_err(|e| match e {
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
    pub(crate) async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
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

async fn config_get(conn: &RedisConn, name: &str) -> Result<Option<String>, redis::RedisError> {
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
pub(super) fn connect(url: &str, prefix: &str) -> Result<RedisConn, AuditError> {
    crate::redis_conn::connect(url).map_err(|e| AuditError::Io {
        path: format!("redis {prefix}audit"),
        message: e.to_string(),
    })
}
