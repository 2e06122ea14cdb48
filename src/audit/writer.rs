//! The group-commit writer the file and Redis backends share.
//!
//! # Group commit
//! Appends go through one channel to one [`Writer`] per log. The writer takes
//! whatever is queued (up to `max_batch` records and, where set, about
//! `max_bytes` of encoded events), chains the records in arrival order after
//! the head it knows ([`chain::seal`]), hands the batch to its [`Sink`] in
//! one call, then answers each waiting [`Handle::append`]. Appends that
//! arrive meanwhile form the next batch, so concurrent decisions share one
//! write (one `fsync`, one Redis round trip) and no latency is added when the
//! log is idle. The sink is told whether anyone waits on the batch: a batch
//! of [`Handle::append_nowait`] records only may be written without being
//! made durable, as long as the next batch someone waits on (or
//! [`Sink::flush`] at close) covers it. So an `append` returns only once its
//! record, and every record before it, is durable.
//!
//! # What the sink answers
//! - [`Appended::Stored`]: every append of the batch gets its record.
//! - [`Appended::Conflict`]: another writer moved the head; the batch is
//!   sealed again after the new head (same ids, new times) and resent.
//! - [`SinkError::Retry`]: the batch is kept and resent unchanged after a
//!   back-off (50 ms doubling to 2 s), so a store that recognises a batch it
//!   already took does not take it twice; later records wait behind it, so
//!   order is kept, and [`Handle::failing`] says so meanwhile.
//! - [`SinkError::Stop`]: the sink has cut its store back to the last durable
//!   record. The log **stops**: the batch's appends fail with
//!   [`AuditError::WriteFailed`], every later one with [`AuditError::Stopped`]
//!   (the shared [`StopFlag`]). Going on could let a record that nobody waits
//!   on vanish while later records succeed.
//!
//! A record refused on its own (over [`MAX_LINE_BYTES`], or not encodable)
//! fails alone with [`AuditError::Invalid`]; the rest of its batch goes on.
//! An `append_nowait` record that fails is logged, having no caller to tell.
//!
//! # A bounded queue
//! The channel holds at most [`Grouping::queue`] jobs. [`Handle::append`]
//! waits for room (the decisions that await durability are slowed, never
//! refused); [`Handle::append_nowait`] does not wait: on a full queue it
//! refuses with [`QueueFull`] and its caller refuses its input.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, MAX_LINE_BYTES};
use super::{AuditError, AuditEvent, AuditRecord, GENESIS, QueueFull, StopFlag, new_id, record_time};

/// Back-off between attempts while a sink asks for a retry.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How many appends a log's queue holds by default.
pub(crate) const QUEUE_CAPACITY: usize = 8192;

type Reply = oneshot::Sender<Result<AuditRecord, AuditError>>;
type CloseReply = oneshot::Sender<Result<(), AuditError>>;

enum Job {
    // Boxed: an event is a few hundred bytes, a close request one pointer.
    Append {
        event: Box<AuditEvent>,
        reply: Option<Reply>,
    },
    Close(CloseReply),
}

/// The last record of the chain as a writer knows it: the next record is
/// `seq + 1` after `hash`, never earlier than `last_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) last_at: Option<OffsetDateTime>,
}

impl ChainHead {
    /// The head of an empty chain.
    pub(crate) fn genesis() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: GENESIS.to_string(),
            last_at: None,
        }
    }
}

/// A batch of records sealed after one head, in chain order.
pub(crate) struct Batch {
    prev_hash: String,
    records: Vec<AuditRecord>,
    /// The records' canonical lines, each ending in `\n`, back to back.
    lines: Vec<u8>,
    /// Where each record's line ends in `lines` (after its `\n`).
    ends: Vec<usize>,
    last_at: OffsetDateTime,
}

impl Batch {
    /// The hash the first record was sealed after.
    pub(crate) fn prev_hash(&self) -> &str {
        &self.prev_hash
    }

    /// Never empty.
    pub(crate) fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    /// Every line, `\n`-terminated, as a file holds them.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.lines
    }

    /// Each record with its line, without the `\n`.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (&AuditRecord, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.records
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(record, (start, end))| (record, &self.lines[start..end - 1]))
    }
}

/// What a sink did with a batch.
#[derive(Debug)]
pub(crate) enum Appended {
    /// The batch is stored (and durable, if the sink was asked for that).
    Stored,
    /// Nothing was stored: the chain's head is elsewhere (another writer
    /// appended first).
    Conflict(ChainHead),
}

/// Why a sink did not store a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// Nothing was stored, or the answer was lost: send the same batch again
    /// after a back-off.
    #[error(transparent)]
    Retry(AuditError),
    /// The log must stop. The sink has cut its store back to the last
    /// durable record; the text is the reason every later append is refused
    /// with.
    #[error("{0}")]
    Stop(String),
}

/// Where a [`Writer`] puts its batches. A sink's methods are called from the
/// writer alone, one at a time.
pub(crate) trait Sink: Send + 'static {
    /// Where the records go, for messages and logs (a path, `redis P audit`).
    fn shown(&self) -> &str;

    /// Called before each batch until it succeeds; a [`SinkError::Stop`]
    /// here refuses the batch with [`AuditError::Stopped`].
    fn prepare(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Appends `batch` after [`Batch::prev_hash`]. With `durable`, returns
    /// [`Appended::Stored`] only once the batch and everything stored before
    /// it is durable.
    fn append_batch(
        &mut self,
        batch: &Batch,
        durable: bool,
    ) -> impl Future<Output = Result<Appended, SinkError>> + Send;

    /// Makes everything stored so far durable; called at close.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// How a [`Writer`] groups appends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grouping {
    /// The most records one batch carries (at least 1).
    pub(crate) max_batch: usize,
    /// Stop taking records into a batch once their encoded events reach this
    /// many bytes (beyond the first record); `None` counts no bytes.
    pub(crate) max_bytes: Option<usize>,
    /// How many jobs the queue holds (at least 1).
    pub(crate) queue: usize,
}

/// Counters and flags shared by a [`Handle`] and its [`Writer`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Records stored by this writer.
    pub(crate) records: AtomicU64,
    /// Batches stored.
    pub(crate) batches: AtomicU64,
    /// The most records one stored batch carried.
    pub(crate) largest_batch: AtomicU64,
    /// Batches answered [`Appended::Conflict`].
    pub(crate) conflicts: AtomicU64,
    /// Batches answered [`SinkError::Retry`].
    pub(crate) failures: AtomicU64,
    /// The writer holds a batch its sink has not taken yet.
    failing: AtomicBool,
    closed: AtomicBool,
    stopped: StopFlag,
}

/// The appending side of a log: sends to its [`Writer`].
pub(crate) struct Handle {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    shown: String,
}

/// One record waiting to be stored. Its id is fixed when it is taken, so a
/// batch sealed again keeps its ids.
struct Pending {
    id: String,
    event: AuditEvent,
    reply: Option<Reply>,
}

/// The single writer of a log: owns the sink and the chain head. Run it
/// with [`Writer::run`] on a task or a thread of its own.
pub(crate) struct Writer<S> {
    sink: S,
    head: ChainHead,
    grouping: Grouping,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Job>,
}

/// A writer over `sink`, whose chain ends at `head`, and its handle.
pub(crate) fn writer<S: Sink>(sink: S, head: ChainHead, grouping: Grouping) -> (Handle, Writer<S>) {
    let (tx, rx) = mpsc::channel(grouping.queue.max(1));
    let shared = Arc::new(Shared::default());
    let handle = Handle {
        tx,
        shared: Arc::clone(&shared),
        shown: sink.shown().to_string(),
    };
    let grouping = Grouping {
        max_batch: grouping.max_batch.max(1),
        ..grouping
    };
    let writer = Writer {
        sink,
        head,
        grouping,
        shared,
        rx,
    };
    (handle, writer)
}

impl Handle {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Why appends are refused now: the log stopped or was closed.
    pub(crate) fn refusal(&self) -> Option<AuditError> {
        if let Some(reason) = self.shared.stopped.reason() {
            return Some(AuditError::Stopped(reason));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Some(AuditError::Closed);
        }
        None
    }

    /// The writer holds a batch its sink has not taken yet (and retries).
    pub(crate) fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// The queue has no room now.
    pub(crate) fn queue_full(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// The writer has ended (closed, or its handle's task or thread is gone).
    pub(crate) fn writer_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// Appends and returns once the record is durable, first waiting for
    /// room in the queue. Dropping the future once the record is queued does
    /// not withdraw it.
    pub(crate) async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if let Some(err) = self.refusal() {
            return Err(err);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Append {
                event: Box::new(event),
                reply: Some(reply),
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Enqueues without waiting. A full queue gives the record back in
    /// [`QueueFull`]; any other refusal (the log stopped or
    /// closed) is logged, as the awaited appends after it fail anyway.
    pub(crate) fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull> {
        let kind = event.event;
        if let Some(err) = self.refusal() {
            tracing::error!(log = %self.shown, event = ?kind, error = %err, "audit record dropped");
            return Ok(());
        }
        let job = Job::Append {
            event: Box::new(event),
            reply: None,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                tracing::warn!(log = %self.shown, event = ?kind, "audit queue full");
                match job {
                    Job::Append { event, .. } => Err(QueueFull(event)),
                    Job::Close(_) => unreachable!("append_nowait sends appends only"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(log = %self.shown, event = ?kind, "audit record dropped: the writer is gone");
                Ok(())
            }
        }
    }

    /// Has the writer store what was enqueued before, flush its sink, release
    /// it and end; later appends fail with [`AuditError::Closed`]. `Ok` if
    /// the writer is already gone.
    pub(crate) async fn close(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Job::Close(reply)).await.is_err() {
            return Ok(()); // already closed
        }
        answer.await.unwrap_or(Ok(()))
    }
}

impl<S: Sink> Writer<S> {
    /// Takes batches until closed, or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let (batch, close) = self.take(first);
            self.commit(batch).await;
            if let Some(reply) = close {
                self.close(reply).await;
                return;
            }
        }
    }

    /// `first` and whatever else is queued, up to the grouping's limits or a
    /// close request.
    fn take(&mut self, first: Job) -> (Vec<Pending>, Option<CloseReply>) {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append { event, reply } => {
                    if self.grouping.max_bytes.is_some() {
                        // A rough size: the encoded event, without what sealing adds.
                        bytes += serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(0);
                    }
                    batch.push(Pending {
                        id: new_id(),
                        event: *event,
                        reply,
                    });
                }
                Job::Close(reply) => return (batch, Some(reply)),
            }
            if batch.len() < self.grouping.max_batch && self.grouping.max_bytes.is_none_or(|max| bytes < max) {
                next = self.rx.try_recv().ok();
            }
        }
        (batch, None)
    }

    /// Stores one batch: retries while the sink asks to, stops the log when
    /// it says so, then answers each append.
    async fn commit(&mut self, mut pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let mut delay = RETRY_MIN;
        loop {
            match self.sink.prepare().await {
                Ok(()) => break,
                Err(SinkError::Stop(reason)) => {
                    self.stop(reason);
                    break;
                }
                Err(SinkError::Retry(e)) => self.failed(&e, &mut delay).await,
            }
        }
        self.shared.failing.store(false, Ordering::Release);
        if let Some(reason) = self.shared.stopped.reason() {
            for p in pending {
                refuse(self.sink.shown(), p.event, p.reply, AuditError::Stopped(reason.clone()));
            }
            return;
        }
        let mut resend = None;
        loop {
            let (batch, replies) = match resend.take() {
                Some(sealed) => sealed,
                None => match self.seal(pending) {
                    Some(sealed) => sealed,
                    None => return,
                },
            };
            let durable = replies.iter().any(Option::is_some);
            match self.sink.append_batch(&batch, durable).await {
                Ok(Appended::Stored) => {
                    self.shared.failing.store(false, Ordering::Release);
                    let n = batch.records.len() as u64;
                    self.shared.records.fetch_add(n, Ordering::Relaxed);
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    self.shared.largest_batch.fetch_max(n, Ordering::Relaxed);
                    if let Some(last) = batch.records.last() {
                        self.head = ChainHead {
                            seq: last.seq,
                            hash: last.hash.clone(),
                            last_at: Some(batch.last_at),
                        };
                    }
                    for (record, reply) in batch.records.into_iter().zip(replies) {
                        if let Some(reply) = reply {
                            // The caller may have gone away; the record's fate is the same.
                            let _ = reply.send(Ok(record));
                        }
                    }
                    return;
                }
                Ok(Appended::Conflict(head)) => {
                    self.shared.failing.store(false, Ordering::Release);
                    self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.head = head;
                    // Sealed again after the new head, on the next turn.
                    pending = unseal(batch, replies);
                }
                Err(SinkError::Retry(e)) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    self.failed(&e, &mut delay).await;
                    // The answer may have been lost after the sink stored the
                    // batch: resend it unchanged, so the sink recognises it.
                    resend = Some((batch, replies));
                    pending = Vec::new();
                }
                Err(SinkError::Stop(reason)) => {
                    self.stop(reason.clone());
                    for (record, reply) in batch.records.into_iter().zip(replies) {
                        refuse(
                            self.sink.shown(),
                            record.event,
                            reply,
                            AuditError::WriteFailed(reason.clone()),
                        );
                    }
                    return;
                }
            }
        }
    }

    /// Seals `pending` after the known head. Records refused on their own
    /// are answered here; `None` if none is left.
    fn seal(&self, pending: Vec<Pending>) -> Option<(Batch, Vec<Option<Reply>>)> {
        let ChainHead {
            mut seq,
            hash: prev_hash,
            mut last_at,
        } = self.head.clone();
        let mut head = prev_hash.clone();
        let mut records = Vec::with_capacity(pending.len());
        let mut replies = Vec::with_capacity(pending.len());
        let mut lines = Vec::with_capacity(pending.len() * 1024);
        let mut ends = Vec::with_capacity(pending.len());
        for p in pending {
            let (at, at_text) = record_time(last_at);
            let kind = p.event.event;
            match chain::seal(seq + 1, p.id, at_text, p.event, &head) {
                Ok(s) if s.line.len() <= MAX_LINE_BYTES => {
                    seq += 1;
                    head.clone_from(&s.record.hash);
                    last_at = Some(at);
                    lines.extend_from_slice(&s.line);
                    ends.push(lines.len());
                    records.push(s.record);
                    replies.push(p.reply);
                }
                Ok(s) => {
                    let err = AuditError::Invalid(format!(
                        "the record is {} bytes, over the {MAX_LINE_BYTES}-byte limit",
                        s.line.len()
                    ));
                    refuse(self.sink.shown(), s.record.event, p.reply, err);
                }
                Err(e) => {
                    let err = AuditError::Invalid(format!("{kind:?} event cannot be encoded: {e}"));
                    refuse(self.sink.shown(), AuditEvent::new(kind), p.reply, err);
                }
            }
        }
        let last_at = last_at.filter(|_| !records.is_empty())?;
        let batch = Batch {
            prev_hash,
            records,
            lines,
            ends,
            last_at,
        };
        Some((batch, replies))
    }

    /// Stops the log for `reason`.
    fn stop(&self, reason: String) {
        tracing::error!(log = %self.sink.shown(), error = %reason, "audit log stopped");
        self.shared.stopped.stop(reason);
    }

    /// Notes a failed attempt (logging the first of a run) and waits before
    /// the next.
    async fn failed(&self, e: &AuditError, delay: &mut Duration) {
        if !self.shared.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(log = %self.sink.shown(), error = %e, "the audit log does not take records; retrying until it does");
        } else {
            tracing::debug!(log = %self.sink.shown(), error = %e, "the audit log still does not take records");
        }
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(RETRY_MAX);
    }

    /// Flushes the sink (unless the log stopped), releases it, refuses what
    /// is still queued and answers the close.
    async fn close(mut self, reply: CloseReply) {
        if self.shared.stopped.reason().is_none()
            && let Err(e) = self.sink.flush().await
        {
            self.stop(e.to_string());
        }
        self.shared.closed.store(true, Ordering::Release);
        let Writer {
            sink, shared, mut rx, ..
        } = self;
        let shown = sink.shown().to_string();
        // Release the store (the file and its lock) before answering, so a
        // caller may reopen it at once.
        drop(sink);
        rx.close();
        while let Ok(job) = rx.try_recv() {
            match job {
                Job::Append { event, reply } => refuse(&shown, *event, reply, AuditError::Closed),
                Job::Close(r) => {
                    let _ = r.send(Ok(()));
                }
            }
        }
        let outcome = match shared.stopped.reason() {
            Some(reason) => Err(AuditError::Stopped(reason)),
            None => Ok(()),
        };
        let _ = reply.send(outcome);
    }
}

/// The batch's records back as pending appends, ids kept, to seal again.
fn unseal(batch: Batch, replies: Vec<Option<Reply>>) -> Vec<Pending> {
    batch
        .records
        .into_iter()
        .zip(replies)
        .map(|(record, reply)| Pending {
            id: record.id,
            event: record.event,
            reply,
        })
        .collect()
}

/// Fails one append; an `append_nowait` has no one to tell, so it is logged.
fn refuse(shown: &str, event: AuditEvent, reply: Option<Reply>, err: AuditError) {
    match reply {
        Some(reply) => {
            let _ = reply.send(Err(err));
        }
        None => tracing::error!(
            log = %shown,
            event = ?event.event,
            request = event.request.as_deref().unwrap_or(""),
            error = %err,
            "audit record dropped"
        ),
    }
}

#[cfg(test)]
mod tests;
