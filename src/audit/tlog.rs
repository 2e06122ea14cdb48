//! The trail as a transparency log: the Merkle tree over its records
//! ([`merkle`](super::merkle)), signed checkpoints, inclusion and consistency
//! proofs, and write-once anchoring of each checkpoint with the records it
//! covers.
//!
//! # Checkpoints
//! Every `checkpoint_every` when the trail has grown, and at shutdown, the
//! tree is brought up to date from the trail, its root signed as a C2SP
//! checkpoint ([`crate::signing`]) and stored beside the trail
//! ([`CheckpointStore`]). With Redis, every replica does this; the store
//! keeps only a checkpoint larger than the latest, and Ed25519 signatures
//! are deterministic, so replicas sign the same note for the same size.
//!
//! # Completeness
//! At start ([`Tlog::open`]) the tree is rebuilt from the trail and compared
//! with the latest checkpoint: a trail shorter than it (records cut off, a
//! deleted file) or whose first `size` records give another root (edited,
//! rewound, forked) stops the service with a message that names it. Starting
//! a new trail is explicit ([`Tlog::start_new_trail`], `serve --new-trail`)
//! and audited.
//!
//! # Anchoring
//! With an [`Anchor`], each stored checkpoint is written, with the segment of
//! records since the last anchored one, to write-once storage. Until a
//! record is anchored it counts toward the anchoring lag; past
//! `max_anchor_lag` the gate holds new decisions ([`Tlog::anchor_lagging`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio_util::sync::CancellationToken;

use super::checkpoints::{CheckpointStore, StoredCheckpoint};
use super::merkle::{Hash, ProofError, Tree};
use super::{AuditError, AuditEvent, AuditLog, EventKind};
use crate::signing::{PublicKey, SignError, SigningKey, verify_checkpoint};

/// Lines read from the trail per call while catching up.
const CHUNK: usize = 1000;

/// Why the log cannot vouch for its trail, or cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum TlogError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(
        "checkpoint covers {checkpoint} records; the trail holds {trail}: records are missing (cut off or deleted). \
         Restore the trail, or start a new one on purpose with `serve --new-trail`"
    )]
    Short { checkpoint: u64, trail: u64 },
    #[error(
        "the trail's first {size} records do not match the signed checkpoint of {size} records \
         (the checkpoint's root is {expected}, the trail's {actual}): the trail was edited, rewound or forked"
    )]
    Rewritten {
        size: u64,
        expected: String,
        actual: String,
    },
    #[error("the latest checkpoint does not verify: {0}")]
    BadCheckpoint(SignError),
    #[error("no audit signing key is configured ([audit] signing_key)")]
    NotConfigured,
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("no audit record {0}")]
    UnknownRecord(String),
    #[error("anchoring: {0}")]
    Anchor(String),
}

/// Write-once storage for checkpoints and the records they cover.
#[async_trait]
pub trait Anchor: Send + Sync + 'static {
    /// Writes `cp` and `segment` (the lines of records `from + 1 ..= cp.size`,
    /// each ending in `\n`), never overwriting. Writing what is already
    /// there, byte for byte, succeeds.
    async fn anchor(&self, cp: &StoredCheckpoint, from: u64, segment: &[u8]) -> Result<(), String>;
    /// The largest of `candidates` (stored checkpoint sizes, ascending)
    /// whose checkpoint is already anchored; 0 if none.
    async fn anchored_size(&self, candidates: &[u64]) -> Result<u64, String>;
}

/// What a fresh trail's first record says about the trail it replaces.
pub struct NewTrail {
    pub previous: Option<StoredCheckpoint>,
}

pub struct Tlog {
    audit: Arc<dyn AuditLog>,
    store: Arc<dyn CheckpointStore>,
    key: Option<SigningKey>,
    log_name: String,
    tree: tokio::sync::Mutex<Tree>,
    latest: Mutex<Option<StoredCheckpoint>>,
    anchor: Option<Arc<dyn Anchor>>,
    max_anchor_lag: Duration,
    anchored: AtomicU64,
    /// Since when some record has waited to be anchored.
    unanchored_since: Mutex<Option<Instant>>,
}

impl Tlog {
    /// Builds the tree from the trail and checks it against the latest
    /// checkpoint (see the module docs).
    pub async fn open(audit: Arc<dyn AuditLog>, key: Option<SigningKey>, log_name: &str) -> Result<Tlog, TlogError> {
        let store = audit.checkpoints();
        let log = Tlog {
            audit,
            store,
            key,
            log_name: log_name.to_string(),
            tree: tokio::sync::Mutex::new(Tree::new()),
            latest: Mutex::new(None),
            anchor: None,
            max_anchor_lag: Duration::from_secs(300),
            anchored: AtomicU64::new(0),
            unanchored_since: Mutex::new(None),
        };
        log.sync().await?;
        if let Some(cp) = log.store.latest().await? {
            let keys = log.keys().await?;
            let checkpoint = verify_checkpoint(&cp.note, &log.log_name, &keys).map_err(TlogError::BadCheckpoint)?;
            check_tree(&*log.tree.lock().await, checkpoint.size, &checkpoint.root)?;
            *log.lock_latest() = Some(cp);
        }
        Ok(log)
    }

    /// Anchors checkpoints to `anchor`; past `max_lag` unanchored, decisions wait.
    pub async fn with_anchor(mut self, anchor: Arc<dyn Anchor>, max_lag: Duration) -> Result<Tlog, TlogError> {
        let candidates = self.store.sizes().await?;
        let size = anchor.anchored_size(&candidates).await.map_err(TlogError::Anchor)?;
        self.anchored.store(size, Ordering::Relaxed);
        self.anchor = Some(anchor);
        self.max_anchor_lag = max_lag;
        Ok(self)
    }

    /// Sets the checkpoints aside and appends the audited first record of a
    /// new trail, naming the checkpoint it replaces. For `serve --new-trail`,
    /// before [`Tlog::open`].
    pub async fn start_new_trail(audit: &Arc<dyn AuditLog>) -> Result<NewTrail, TlogError> {
        let previous = audit.checkpoints().supersede().await?;
        let detail = match &previous {
            Some(cp) => serde_json::json!({"superseded_checkpoint": {"size": cp.size, "note": cp.note}}),
            None => serde_json::json!({"superseded_checkpoint": null}),
        };
        audit
            .append(AuditEvent::new(EventKind::TrailStarted).detail(detail))
            .await?;
        Ok(NewTrail { previous })
    }

    fn lock_latest(&self) -> std::sync::MutexGuard<'_, Option<StoredCheckpoint>> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log_name(&self) -> &str {
        &self.log_name
    }

    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }

    /// Brings the tree up to the trail; returns its size.
    pub async fn sync(&self) -> Result<u64, TlogError> {
        let mut tree = self.tree.lock().await;
        loop {
            let lines = self.audit.lines(tree.size(), CHUNK).await?;
            for line in &lines {
                tree.push_line(line);
            }
            if lines.len() < CHUNK {
                break;
            }
        }
        let size = tree.size();
        if self.anchor.is_some() && size > self.anchored.load(Ordering::Relaxed) {
            self.unanchored_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(Instant::now);
        }
        Ok(size)
    }

    /// The latest stored checkpoint.
    pub fn latest(&self) -> Option<StoredCheckpoint> {
        self.lock_latest().clone()
    }

    /// Signs and stores a checkpoint of the trail as it is now, if it grew
    /// since the latest; then anchors it. `Ok(None)`: nothing new.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, TlogError> {
        let key = self.key.as_ref().ok_or(TlogError::NotConfigured)?;
        let size = self.sync().await?;
        let have = self.lock_latest().as_ref().map_or(0, |c| c.size);
        let made = if size > have {
            let root = self.tree.lock().await.root(size)?;
            let cp = StoredCheckpoint {
                size,
                note: key.sign_checkpoint(size, &root),
                key: STANDARD.encode(key.public().key),
            };
            if self.store.put(&cp).await? {
                *self.lock_latest() = Some(cp.clone());
                Some(cp)
            } else {
                // Another replica stored one at least as large: take it.
                let latest = self.store.latest().await?;
                *self.lock_latest() = latest;
                None
            }
        } else {
            None
        };
        self.anchor_pending().await?;
        Ok(made)
    }

    /// Anchors the latest checkpoint if the anchor does not hold it yet.
    async fn anchor_pending(&self) -> Result<(), TlogError> {
        let Some(anchor) = &self.anchor else { return Ok(()) };
        let Some(cp) = self.latest() else { return Ok(()) };
        let from = self.anchored.load(Ordering::Relaxed);
        if cp.size <= from {
            return Ok(());
        }
        let mut segment = Vec::new();
        let mut at = from;
        while at < cp.size {
            let lines = self.audit.lines(at, CHUNK.min((cp.size - at) as usize)).await?;
            if lines.is_empty() {
                return Err(TlogError::Short {
                    checkpoint: cp.size,
                    trail: at,
                });
            }
            for line in &lines {
                segment.extend_from_slice(line);
                segment.push(b'\n');
            }
            at += lines.len() as u64;
        }
        anchor.anchor(&cp, from, &segment).await.map_err(TlogError::Anchor)?;
        self.anchored.store(cp.size, Ordering::Relaxed);
        let size = self.tree.lock().await.size();
        let mut since = self.unanchored_since.lock().unwrap_or_else(|e| e.into_inner());
        *since = if size > cp.size { Some(Instant::now()) } else { None };
        Ok(())
    }

    /// How long the oldest unanchored record has waited (zero when all are
    /// anchored, or without an anchor).
    pub fn anchor_lag(&self) -> Duration {
        self.unanchored_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether checkpoints are anchored at all.
    pub fn anchoring(&self) -> bool {
        self.anchor.is_some()
    }

    /// Records anchored so far (the size of the latest anchored checkpoint).
    pub fn anchored_size(&self) -> u64 {
        self.anchored.load(Ordering::Relaxed)
    }

    /// Whether anchoring is behind by more than `max_anchor_lag`: new
    /// decisions wait until it catches up.
    pub fn anchor_lagging(&self) -> bool {
        self.anchor.is_some() && self.anchor_lag() > self.max_anchor_lag
    }

    /// Checkpoints every `every` until `stop`, then once more.
    pub async fn run(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(error = %e, "checkpoint or anchoring failed; retrying at the next tick");
            }
        }
    }

    /// Every public key that signed a stored checkpoint, and the current one.
    pub async fn keys(&self) -> Result<Vec<PublicKey>, TlogError> {
        let mut keys: Vec<PublicKey> = Vec::new();
        if let Some(k) = &self.key {
            keys.push(k.public().clone());
        }
        for raw in self.store.keys().await? {
            let Ok(bytes) = STANDARD.decode(&raw) else { continue };
            if let Ok(key) = PublicKey::new(&self.log_name, &bytes)
                && !keys.contains(&key)
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// The leaf index of record `id` and an inclusion proof for it in the
    /// tree of `size` records (default: the latest checkpoint's size).
    pub async fn inclusion(&self, id: &str, size: Option<u64>) -> Result<(u64, u64, Vec<Hash>), TlogError> {
        let record = self
            .audit
            .get(id)
            .await?
            .ok_or_else(|| TlogError::UnknownRecord(id.to_string()))?;
        let index = record.seq - 1;
        let size = match size {
            Some(s) => s,
            None => self.latest().map_or(record.seq, |c| c.size.max(record.seq)),
        };
        self.sync().await?;
        let proof = self.tree.lock().await.inclusion_proof(index, size)?;
        Ok((index, size, proof))
    }

    /// A consistency proof between the trees of `from` and `to` records.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, TlogError> {
        self.sync().await?;
        Ok(self.tree.lock().await.consistency_proof(from, to)?)
    }

    /// The root of the tree of `size` records.
    pub async fn root(&self, size: u64) -> Result<Hash, TlogError> {
        self.sync().await?;
        Ok(self.tree.lock().await.root(size)?)
    }
}

/// Checks that `tree` holds at least `size` records and that its first
/// `size` give `root`.
pub fn check_tree(tree: &Tree, size: u64, root: &Hash) -> Result<(), TlogError> {
    if tree.size() < size {
        return Err(TlogError::Short {
            checkpoint: size,
            trail: tree.size(),
        });
    }
    let actual = tree.root(size)?;
    if actual != *root {
        return Err(TlogError::Rewritten {
            size,
            expected: hex::encode(root),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// The tree over a file's (or an export's) complete lines.
pub fn tree_of_lines(lines: &[u8]) -> Tree {
    let mut tree = Tree::new();
    let mut rest = lines;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        tree.push_line(&rest[..end]);
        rest = &rest[end + 1..];
    }
    tree
}
