//! Where signed checkpoints are kept, beside the trail they cover: for the
//! file backend a JSON-lines file `<trail>.checkpoints`, for Redis a list
//! `P audit:checkpoints`, in memory a vector. Checkpoints are not trail
//! records: the trail is what they sign.
//!
//! Each entry names the size, the signed note and the signer's public key, so
//! that `/v1/keys` keeps serving a key after rotation and old checkpoints
//! still verify. A store only grows: a checkpoint no larger than the latest
//! is not stored. [`CheckpointStore::supersede`] sets the entries aside when
//! an operator starts a new trail (`serve --new-trail`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::redis_conn::RedisConn;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::AuditError;

/// One stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// Records covered.
    pub size: u64,
    /// The signed note (C2SP `tlog-checkpoint`).
    pub note: String,
    /// The signer's Ed25519 public key, standard base64 of 32 bytes.
    pub key: String,
}

#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The largest stored checkpoint.
    async fn latest(&self) -> Result<Option<StoredCheckpoint>, AuditError>;
    /// Every public key that signed a stored checkpoint, oldest first.
    async fn keys(&self) -> Result<Vec<String>, AuditError>;
    /// The sizes of the stored checkpoints, ascending.
    async fn sizes(&self) -> Result<Vec<u64>, AuditError>;
    /// Stores `cp` if it is larger than the latest; `Ok(false)` if not.
    async fn put(&self, cp: &StoredCheckpoint) -> Result<bool, AuditError>;
    /// Sets every entry aside (kept, renamed) and returns the latest.
    async fn supersede(&self) -> Result<Option<StoredCheckpoint>, AuditError>;
}

/// `<trail>.checkpoints`.
pub struct FileCheckpoints {
    path: PathBuf,
    /// Serialises writers in this process (the trail's own lock keeps other
    /// processes out), and holds the latest stored size once read.
    lock: Mutex<Option<u64>>,
}

impl FileCheckpoints {
    pub fn beside(trail: &std::path::Path) -> FileCheckpoints {
        let mut name = trail.as_os_str().to_owned();
        name.push(".checkpoints");
        FileCheckpoints {
            path: PathBuf::from(name),
            lock: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn io(&self, what: &str, e: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.display().to_string(),
            message: format!("{what}: {e}"),
        }
    }

    fn read_all(&self) -> Result<Vec<StoredCheckpoint>, AuditError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("reading", e)),
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| self.io("reading", e))?;
            if line.is_empty() {
                continue;
            }
            let cp = serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
                path: self.path.display().to_string(),
                line: n as u64 + 1,
                why: e.to_string(),
            })?;
            out.push(cp);
        }
        Ok(out)
    }
}

#[async_trait]
impl CheckpointStore for FileCheckpoints {
    async fn latest(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        Ok(self.read_all()?.into_iter().max_by_key(|c| c.size))
    }

    async fn sizes(&self) -> Result<Vec<u64>, AuditError> {
        Ok(self.read_all()?.iter().map(|c| c.size).collect())
    }

    async fn keys(&self) -> Result<Vec<String>, AuditError> {
        let mut keys: Vec<String> = Vec::new();
        for cp in self.read_all()? {
            if !keys.contains(&cp.key) {
                keys.push(cp.key);
            }
        }
        Ok(keys)
    }

    async fn put(&self, cp: &StoredCheckpoint) -> Result<bool, AuditError> {
        let mut latest = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let have = match *latest {
            Some(size) => size,
            None => self.read_all()?.iter().map(|c| c.size).max().unwrap_or(0),
        };
        *latest = Some(have);
        if cp.size <= have {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(cp).map_err(|e| AuditError::Invalid(e.to_string()))?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io("opening", e))?;
        file.write_all(&line).map_err(|e| self.io("writing", e))?;
        file.sync_data().map_err(|e| self.io("syncing", e))?;
        *latest = Some(cp.size);
        Ok(true)
    }

    async fn supersede(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        let mut cached = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        *cached = None;
        let latest = self.read_all()?.into_iter().max_by_key(|c| c.size);
        if latest.is_some() {
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut aside = self.path.as_os_str().to_owned();
            aside.push(format!(".superseded-{stamp}"));
            std::fs::rename(&self.path, aside).map_err(|e| self.io("setting aside", e))?;
        }
        Ok(latest)
    }
}

/// `P audit:checkpoints` (a list of JSON entries) and `P audit:checkpoint_size`.
pub struct RedisCheckpoints {
    conn: RedisConn,
    list: String,
    size: String,
}

/// KEYS: list, size. ARGV: size, entry. Appends only past the stored size.
const PUT: &str = r#"
local have = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= have then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"#;

impl RedisCheckpoints {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> RedisCheckpoints {
        RedisCheckpoints {
            conn,
            list: format!("{prefix}audit:checkpoints"),
            size: format!("{prefix}audit:checkpoint_size"),
        }
    }

    fn err(&self, what: &str, e: redis::RedisError) -> AuditError {
        AuditError::Io {
            path: format!("redis {}", self.list),
            message: format!("{what}: {e}"),
        }
    }

    async fn all(&self) -> Result<Vec<StoredCheckpoint>, AuditError> {
        let mut c = self.conn.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.list)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("reading checkpoints", e))?;
        raw.iter()
            .enumerate()
            .map(|(n, s)| {
                serde_json::from_str(s).map_err(|e| AuditError::Corrupt {
                    path: format!("redis {}", self.list),
                    line: n as u64 + 1,
                    why: e.to_string(),
                })
            })
            .collect()
    }
}

#[async_trait]
impl CheckpointStore for RedisCheckpoints {
    async fn latest(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = redis::cmd("LINDEX")
            .arg(&self.list)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("reading the latest checkpoint", e))?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| AuditError::Corrupt {
                path: format!("redis {}", self.list),
                line: 0,
                why: e.to_string(),
            })
        })
        .transpose()
    }

    async fn sizes(&self) -> Result<Vec<u64>, AuditError> {
        Ok(self.all().await?.iter().map(|c| c.size).collect())
    }

    async fn keys(&self) -> Result<Vec<String>, AuditError> {
        let mut keys: Vec<String> = Vec::new();
        for cp in self.all().await? {
            if !keys.contains(&cp.key) {
                keys.push(cp.key);
            }
        }
        Ok(keys)
    }

    async fn put(&self, cp: &StoredCheckpoint) -> Result<bool, AuditError> {
        let entry = serde_json::to_string(cp).map_err(|e| AuditError::Invalid(e.to_string()))?;
        let mut c = self.conn.clone();
        let stored: i64 = redis::Script::new(PUT)
            .key(&self.list)
            .key(&self.size)
            .arg(cp.size)
            .arg(entry)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err("storing a checkpoint", e))?;
        Ok(stored == 1)
    }

    async fn supersede(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        let latest = self.latest().await?;
        if latest.is_some() {
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut c = self.conn.clone();
            let _: () = redis::pipe()
                .atomic()
                .cmd("RENAME")
                .arg(&self.list)
                .arg(format!("{}:superseded-{stamp}", self.list))
                .cmd("DEL")
                .arg(&self.size)
                .query_async(&mut c)
                .await
                .map_err(|e| self.err("setting checkpoints aside", e))?;
        }
        Ok(latest)
    }
}

/// In memory, for tests and dry trials.
#[derive(Default)]
pub struct MemoryCheckpoints(Mutex<Vec<StoredCheckpoint>>);

#[async_trait]
impl CheckpointStore for MemoryCheckpoints {
    async fn latest(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).last().cloned())
    }

    async fn sizes(&self) -> Result<Vec<u64>, AuditError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.size)
            .collect())
    }

    async fn keys(&self) -> Result<Vec<String>, AuditError> {
        let mut keys: Vec<String> = Vec::new();
        for cp in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !keys.contains(&cp.key) {
                keys.push(cp.key.clone());
            }
        }
        Ok(keys)
    }

    async fn put(&self, cp: &StoredCheckpoint) -> Result<bool, AuditError> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.last().is_some_and(|c| c.size >= cp.size) {
            return Ok(false);
        }
        all.push(cp.clone());
        Ok(true)
    }

    async fn supersede(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        Ok(std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner())).pop())
    }
}
