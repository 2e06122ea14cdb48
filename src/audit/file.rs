//! The file backend: one JSON-lines file, appended by one writer thread with
//! group commit.
//!
//! # Group commit
//! Appends go through the shared group-commit [`Writer`](super::writer),
//! run on a dedicated thread: it takes whatever is queued (up to
//! [`MAX_BATCH`] records), and this backend's sink writes the batch with one
//! `write_all` and makes it durable with one `fsync` (`File::sync_data`)
//! before each waiting [`append`](AuditLog::append) is answered. Appends that
//! arrive while an `fsync` runs form the next batch, so concurrent decisions
//! share the cost of one `fsync` and no latency is added when the log is
//! idle. A batch of [`append_nowait`](AuditLog::append_nowait) records only
//! (nobody waits on them) is written without an `fsync`: the next batch
//! someone waits on, or closing the log, covers it, which keeps the promise
//! that a durable append implies every earlier record is durable while
//! sparing a decision the wait for the webhook's own `request_received`
//! fsync. A thread of its own rather than a tokio task: the sink's work is
//! blocking file I/O from start to end.
//!
//! # Failure
//! If the write or the `fsync` of a batch fails, every append of that batch
//! fails, the file is cut back (`set_len`) to the end of the last record
//! written whole, and the log **stops**: every later append fails with
//! [`AuditError::Stopped`] and [`ping`](AuditLog::ping) fails, so readiness
//! drops and an operator (or the orchestrator's restart) looks at the disk. It
//! does not retry in place, because after a failed `fsync` the kernel may have
//! dropped the dirty pages and the state on disk is unknown, and because
//! going on would let an [`append_nowait`](AuditLog::append_nowait) record
//! vanish while later records succeed. A restart re-verifies the whole file.
//!
//! # One writer per file
//! The writer holds an exclusive `flock` on the file (on Unix), so a second
//! process (or a second `FileAudit` in this one) configured with the same path
//! refuses to start instead of forking the chain. Readers take no lock. The
//! file must not be rotated or moved while the service runs: the sink checks
//! before each batch that the path still names its file, and stops if not.
//!
//! # Reading
//! [`get`](AuditLog::get), [`query`](AuditLog::query) and the free functions
//! [`get_file`], [`query_file`], [`verify_file`] read the file from the start
//! through a separate handle: O(records) per call, fine for the volumes of a
//! deploy gate (thousands of records a day); an index is the next step if
//! that changes. They ignore an unterminated last line (a batch being
//! written), so the CLI's `audit verify` and `audit query` work while the
//! service runs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;

use super::chain::{Lines, VerifyReport, verify_lines};
use super::writer::{self, Appended, Batch, ChainHead, Grouping, Handle, Sink, SinkError};
use super::{AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, QueueFull};
use crate::time_fmt::parse_rfc3339;

const MOVED: &str = "the path no longer names the file this log writes (moved or replaced?)";

/// The most records one `write_all` + `fsync` carries.
pub(crate) const MAX_BATCH: usize = 512;

/// The file-backed audit log. See the module documentation for group commit,
/// failure handling and the cost of reads.
pub struct FileAudit {
    path: PathBuf,
    writer: Handle,
    /// Successful `fsync`s, counted by the sink.
    fsyncs: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// (device, inode) of the file the writer holds, on Unix.
    identity: Option<(u64, u64)>,
    checkpoints: Arc<super::checkpoints::FileCheckpoints>,
    /// Where [`AuditLog::lines`] stopped: (leaf index, byte offset), so that
    /// the tree's catch-up reads only what is new.
    cursor: Arc<Mutex<(u64, u64)>>,
}

impl FileAudit {
    /// Opens (creating it and its parent directories if needed) the log at
    /// `path` and starts its writer.
    ///
    /// The existing file is verified from the first line; if it does not
    /// verify, opening fails with [`AuditError::Chain`] naming the first
    /// broken record, and nothing is written. An unterminated last line (a
    /// batch cut short by a crash, which no caller was told was durable) is
    /// cut off, with a warning, and the chain resumes after the last complete
    /// record. Fails with [`AuditError::Locked`] if another writer holds the
    /// file.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        let path = path.to_path_buf();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || open_blocking(path))
            .await
            .map_err(|e| AuditError::Io {
                path: shown,
                message: format!("opening task failed: {e}"),
            })?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Successful `fsync`s so far: one per committed batch someone waited on.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Records made durable by this handle.
    pub fn records_written(&self) -> u64 {
        self.writer.shared().records.load(Ordering::Relaxed)
    }

    /// The most records one batch (one `fsync`) carried.
    pub fn largest_batch(&self) -> u64 {
        self.writer.shared().largest_batch.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl AuditLog for FileAudit {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        self.writer.append(event).await
    }

    fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull> {
        self.writer.append_nowait(event)
    }

    fn queue_full(&self) -> bool {
        self.writer.queue_full()
    }

    async fn lines(&self, start: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError> {
        let (path, cursor) = (self.path.clone(), self.cursor.clone());
        blocking(&self.path, move || {
            let mut at = cursor.lock().unwrap_or_else(|e| e.into_inner());
            let from = if at.0 == start { Some(at.1) } else { None };
            let (lines, next) = read_lines_from(&path, start, max, from)?;
            *at = next;
            Ok(lines)
        })
        .await
    }

    fn checkpoints(&self) -> Arc<dyn super::checkpoints::CheckpointStore> {
        self.checkpoints.clone()
    }

    async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
        let (path, id) = (self.path.clone(), id.to_string());
        blocking(&self.path, move || get_file(&path, &id)).await
    }

    async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let (path, filter) = (self.path.clone(), filter.clone());
        blocking(&self.path, move || query_file(&path, &filter)).await
    }

    async fn ping(&self) -> Result<(), AuditError> {
        if let Some(err) = self.writer.refusal() {
            return Err(err);
        }
        let finished = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(JoinHandle::is_finished);
        if finished {
            return Err(AuditError::Closed);
        }
        let (path, identity) = (self.path.clone(), self.identity);
        blocking(&self.path, move || match path_identity(&path) {
            Ok(id) if id == identity => Ok(()),
            Ok(_) => Err(AuditError::Io {
                path: path.display().to_string(),
                message: MOVED.into(),
            }),
            Err(e) => Err(io_error(&path, "the log file is gone", e)),
        })
        .await
    }

    async fn close(&self) -> Result<(), AuditError> {
        let result = self.writer.close().await;
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // The writer has answered and is returning; joining is immediate.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AuditError::Io {
        path: path.display().to_string(),
        message: format!("reading task failed: {e}"),
    })?
}

fn io_error(path: &Path, what: &str, e: io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

fn open_blocking(path: PathBuf) -> Result<FileAudit, AuditError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_error(&path, "creating its directory", e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| io_error(&path, "opening", e))?;
    lock_exclusive(&file, &path)?;

    let report = verify_lines(BufReader::new(&file)).map_err(|source| AuditError::Chain {
        path: path.display().to_string(),
        source,
    })?;
    if report.partial_tail_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            bytes = report.partial_tail_bytes,
            after_seq = report.last_seq,
            "cutting off an unterminated last line (a write interrupted by a crash)"
        );
        file.set_len(report.complete_bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(&path, "cutting off an unterminated last line", e))?;
    }
    sync_parent_dir(&path);

    let file_identity = identity(&file).map_err(|e| io_error(&path, "reading metadata", e))?;
    let fsyncs = Arc::new(AtomicU64::new(0));
    let sink = FileSink {
        identity: file_identity,
        file,
        shown: path.display().to_string(),
        path: path.clone(),
        seq: report.last_seq,
        good_len: report.complete_bytes,
        unsynced: false,
        fsyncs: Arc::clone(&fsyncs),
    };
    let head = ChainHead {
        seq: report.last_seq,
        hash: report.head_hash.clone(),
        last_at: report.last_at.as_deref().and_then(parse_rfc3339),
    };
    let grouping = Grouping {
        max_batch: MAX_BATCH,
        max_bytes: None,
        queue: writer::QUEUE_CAPACITY,
    };
    let (handle, writer) = writer::writer(sink, head, grouping);
    // The writer's own runtime: one thread, no I/O driver (the sink's I/O
    // blocks), a timer for back-off.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| io_error(&path, "starting the writer thread", e))?;
    let thread = std::thread::Builder::new()
        .name("portcullis-audit".into())
        .spawn(move || runtime.block_on(writer.run()))
        .map_err(|e| io_error(&path, "starting the writer thread", e))?;
    tracing::info!(path = %path.display(), records = report.records, "audit log open");
    Ok(FileAudit {
        checkpoints: Arc::new(super::checkpoints::FileCheckpoints::beside(&path)),
        path,
        writer: handle,
        fsyncs,
        thread: Mutex::new(Some(thread)),
        identity: file_identity,
        cursor: Arc::new(Mutex::new((0, 0))),
    })
}

/// Makes the file's directory entry durable (a new log would otherwise be
/// able to vanish in a crash). Best effort: some filesystems refuse to sync a
/// directory.
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
            tracing::warn!(path = %path.display(), error = %e, "could not sync the audit log's directory");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(unix)]
fn lock_exclusive(file: &File, path: &Path) -> Result<(), AuditError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes a file descriptor that `file` keeps open for the
    // duration of the call; it touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Err(AuditError::Locked {
            path: path.display().to_string(),
        })
    } else {
        Err(io_error(path, "locking", e))
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_file: &File, _path: &Path) -> Result<(), AuditError> {
    Ok(())
}

/// Which file a handle or a path refers to, to notice the path being moved
/// or deleted under the writer.
#[cfg(unix)]
fn identity(file: &File) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok(Some((m.dev(), m.ino())))
}

#[cfg(not(unix))]
fn identity(_file: &File) -> io::Result<Option<(u64, u64)>> {
    Ok(None)
}

#[cfg(unix)]
fn path_identity(path: &Path) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(Some((m.dev(), m.ino())))
}

#[cfg(not(unix))]
fn path_identity(_path: &Path) -> io::Result<Option<(u64, u64)>> {
    Ok(None)
}

/// Why a batch did not reach the disk.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{}", MOVED)]
    Moved,
    #[error("the log file is gone ({0})")]
    Gone(#[source] io::Error),
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    #[error("fsync failed: {0}")]
    Fsync(#[source] io::Error),
}

/// The writer's sink: the file (holding its lock) and its durable length.
struct FileSink {
    file: File,
    path: PathBuf,
    shown: String,
    identity: Option<(u64, u64)>,
    /// The seq of the last record written whole, for messages.
    seq: u64,
    /// The end of the last record written whole: where the file is cut back
    /// to if a batch fails.
    good_len: u64,
    /// Records were written that no fsync covers yet (a batch of
    /// `append_nowait` records only: nobody waits on them, so their fsync is
    /// left to the next batch someone waits on, or to close).
    unsynced: bool,
    fsyncs: Arc<AtomicU64>,
}

impl Sink for FileSink {
    fn shown(&self) -> &str {
        &self.shown
    }

    async fn append_batch(&mut self, batch: &Batch, durable: bool) -> Result<Appended, SinkError> {
        // Only a batch someone waits on is fsynced; its fsync also covers any
        // earlier batch written without one.
        match self.write(batch.bytes(), durable) {
            Ok(()) => {
                self.good_len += batch.bytes().len() as u64;
                self.seq = batch.records().last().map_or(self.seq, |r| r.seq);
                Ok(Appended::Stored)
            }
            Err(e) => Err(SinkError::Stop(self.cut_back(&e))),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if !self.unsynced {
            return Ok(());
        }
        self.sync().map_err(|e| SinkError::Stop(self.cut_back(&e)))
    }
}

impl FileSink {
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), WriteError> {
        match path_identity(&self.path) {
            Ok(id) if id == self.identity => {}
            Ok(_) => return Err(WriteError::Moved),
            Err(e) => return Err(WriteError::Gone(e)),
        }
        self.file.write_all(buf).map_err(WriteError::Write)?;
        if sync {
            self.sync()
        } else {
            self.unsynced = true;
            Ok(())
        }
    }

    fn sync(&mut self) -> Result<(), WriteError> {
        self.file.sync_data().map_err(WriteError::Fsync)?;
        self.unsynced = false;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the file back to the last record written whole. Returns the
    /// reason every later append is refused with.
    fn cut_back(&mut self, failure: &WriteError) -> String {
        let cut = self.file.set_len(self.good_len).and_then(|()| self.file.sync_data());
        match cut {
            Ok(()) => format!(
                "{failure}; the log was cut back to its last durable record (seq {}); restart to resume",
                self.seq
            ),
            Err(e) => format!(
                "{failure}; cutting the log back to its last durable record (seq {}) also failed ({e}); \
                 run `portcullis audit verify` before restarting",
                self.seq
            ),
        }
    }
}

fn open_for_reading(path: &Path) -> Result<BufReader<File>, AuditError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(64 * 1024, f))
        .map_err(|e| io_error(path, "opening for reading", e))
}

/// Where a read stopped: (next line index, its byte offset).
pub(crate) type ReadCursor = (u64, u64);

/// Lines `start..start + max` (0-based) of the file at `path`, without their
/// newlines, and where reading stopped (next index, byte offset). `offset`,
/// when known, is the byte offset of line `start`. An unterminated last line
/// (a batch being written) is not returned.
pub(crate) fn read_lines_from(
    path: &Path,
    start: u64,
    max: usize,
    offset: Option<u64>,
) -> Result<(Vec<Vec<u8>>, ReadCursor), AuditError> {
    use std::io::{BufRead, Seek, SeekFrom};
    let mut reader = open_for_reading(path)?;
    let (mut index, mut pos) = (0u64, 0u64);
    if let Some(offset) = offset {
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(path, "seeking", e))?;
        (index, pos) = (start, offset);
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while out.len() < max {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(path, "reading", e))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        if index >= start {
            buf.pop();
            out.push(std::mem::take(&mut buf));
        }
        index += 1;
        pos += n as u64;
    }
    Ok((out, (index, pos)))
}

/// Verifies the log at `path` (see [`verify_lines`]). Safe while a writer
/// appends: an unterminated last line is ignored.
pub fn verify_file(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_lines(open_for_reading(path)?).map_err(|source| AuditError::Chain {
        path: path.display().to_string(),
        source,
    })
}

/// Reads records in chain order, handing each to `visit` until it returns
/// `false`. Does not check hashes (that is [`verify_file`]'s job).
fn scan(path: &Path, mut visit: impl FnMut(AuditRecord) -> Result<bool, AuditError>) -> Result<(), AuditError> {
    let mut lines = Lines::new(open_for_reading(path)?);
    let corrupt = |line: u64, why: String| AuditError::Corrupt {
        path: path.display().to_string(),
        line,
        why,
    };
    loop {
        let (line, bytes) = match lines.next_line() {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(()),
            Err(e) => return Err(corrupt(e.line(), e.to_string())),
        };
        let record: AuditRecord = serde_json::from_slice(bytes).map_err(|e| corrupt(line, e.to_string()))?;
        if !visit(record)? {
            return Ok(());
        }
    }
}

/// Records of the log at `path` matching `filter`, oldest first, at most
/// `filter.limit`. Reads the whole file (stopping early at the limit).
pub fn query_file(path: &Path, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    if filter.limit == Some(0) {
        return Ok(out);
    }
    scan(path, |record| {
        let at = filter.since.and_then(|_| parse_rfc3339(&record.at));
        if filter.matches(&record, at) {
            out.push(record);
        }
        Ok(filter.limit.is_none_or(|limit| out.len() < limit))
    })?;
    Ok(out)
}

/// The record with `id` in the log at `path`. Reads the file up to it.
pub fn get_file(path: &Path, id: &str) -> Result<Option<AuditRecord>, AuditError> {
    let mut found = None;
    scan(path, |record| {
        if record.id == id {
            found = Some(record);
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(found)
}
