//! The hash-chained, append-only audit trail.
//!
//! Every record is one line of canonical JSON (see [`record_hash`]) holding a
//! `seq` (from 1), an `id`, the time `at`, the [`AuditEvent`] fields, the
//! previous record's hash `prev_hash` ([`GENESIS`] for the first) and its own
//! `hash`. Changing, removing, inserting or reordering a record breaks the
//! chain at that record, and [`verify_lines`] names it.
//!
//! Backends:
//! - [`FileAudit`]: a JSON-lines file with group commit (one `fsync` per batch
//!   of concurrent appends). The embedded default.
//! - [`RedisAudit`]: the same chain in Redis, shared by replicas, with group
//!   commit (one script call per batch).
//! - [`MemoryAudit`]: the same chain in memory, for tests and dry trials.
//!
//! Both group-commit backends run one writer (`writer.rs`) over a sink of
//! their own: the file sink writes and fsyncs, the Redis sink
//! compare-and-appends by script.
//!
//! [`anchor`] copies checkpoints and records to write-once S3 storage.
//!
//! Secrets never enter a record: callers pass a token's SHA-256
//! (`token_sha256`), never the token, and only non-secret claims. The log
//! does not scrub what it is given; an audit trail that must be kept for
//! years is the wrong place to discover a leaked credential.

pub mod anchor;
mod chain;
pub mod checkpoints;
mod file;
mod memory;
pub mod merkle;
pub mod receipt;
pub mod redis;
pub mod tlog;
mod writer;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Why a log stopped accepting records, once it has: shared by a backend's
/// handle and its writer. Set once; a poisoned lock still holds the reason.
#[derive(Debug, Default)]
pub(crate) struct StopFlag(std::sync::Mutex<Option<String>>);

impl StopFlag {
    pub(crate) fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn stop(&self, reason: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}

pub use chain::{ChainError, VerifyReport, record_hash, verify_lines};
pub use file::{FileAudit, get_file, query_file, verify_file};
pub use memory::MemoryAudit;
pub use redis::{RedisAudit, RedisAuditReader};

use crate::domain::Reason;
use crate::domain::{Platform, SlackRef};

/// The `prev_hash` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. Serialized in snake_case (`request_received`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RequestReceived,
    AttestationAccepted,
    AttestationRejected,
    VerdictRecorded,
    ReviewRecorded,
    Decision,
    PlatformResult,
    /// The first record of a trail started on purpose (`serve --new-trail`),
    /// naming the checkpoint of the trail it replaces.
    TrailStarted,
    /// A break-glass grant was asked for (who, why, how verified).
    BreakGlassRequested,
    /// A confirmer confirmed a grant (each confirmation is a record).
    BreakGlassConfirmed,
    /// A deployment was approved under a grant (before the platform call).
    BreakGlassUsed,
    /// A grant's window ended (or it lapsed unconfirmed).
    BreakGlassExpired,
    /// A confirmer reviewed a used grant afterwards, with notes.
    BreakGlassReviewed,
}

/// What a caller records; the log adds `seq`, `id`, `at`, `prev_hash` and
/// `hash`. Fields left `None` are omitted from the record.
///
/// Build one with [`AuditEvent::new`] and the builder methods, or with struct
/// update syntax: `AuditEvent { sha: Some(sha), ..AuditEvent::new(kind) }`.
/// There is no `Default`: every record names its event.
///
/// Never put a secret here: `token_sha256` holds the token's hash, `claims`
/// only the (non-secret) claims of a verified token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<Reason>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviews: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackRef>,
    /// Extra non-secret facts: a platform's HTTP status, an error code, a
    /// webhook delivery id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

macro_rules! string_setters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: impl Into<String>) -> Self {
                self.$name = Some(value.into());
                self
            }
        )*
    };
}

impl AuditEvent {
    /// An event of `kind` with every other field empty.
    pub fn new(kind: EventKind) -> Self {
        AuditEvent {
            event: kind,
            request: None,
            platform: None,
            repository: None,
            environment: None,
            sha: None,
            run: None,
            actor: None,
            claims: None,
            token_sha256: None,
            decision: None,
            reasons: None,
            verdict: None,
            reviews: None,
            slack: None,
            detail: None,
        }
    }

    string_setters!(
        request,
        repository,
        environment,
        sha,
        run,
        actor,
        /// The hex SHA-256 of a token, never the token.
        token_sha256,
        decision,
    );

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Claims of a verified token (none of them secret).
    pub fn claims(mut self, claims: BTreeMap<String, Value>) -> Self {
        self.claims = Some(claims);
        self
    }

    pub fn reasons(mut self, reasons: Vec<Reason>) -> Self {
        self.reasons = Some(reasons);
        self
    }

    pub fn verdict(mut self, verdict: Value) -> Self {
        self.verdict = Some(verdict);
        self
    }

    pub fn reviews(mut self, reviews: Value) -> Self {
        self.reviews = Some(reviews);
        self
    }

    pub fn slack(mut self, slack: SlackRef) -> Self {
        self.slack = Some(slack);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// One record of the trail, as stored: the event plus what the log added.
///
/// Reading a record written by a later version drops fields this version does
/// not know; [`verify_lines`] still covers them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// `aud_` and 20 random hex digits.
    pub id: String,
    /// When the log chained the record: RFC 3339 in UTC with six fraction
    /// digits (fixed width, so the texts sort as the times do); never earlier
    /// than the previous record's `at`.
    pub at: String,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// Which records [`AuditLog::query`] returns: those matching every field that
/// is set. `sha` and `actor` compare ASCII case-insensitively (commit ids and
/// platform logins are case-insensitive); `environment` and `request`
/// exactly. `since` keeps records with `at >= since`. Results are in chain
/// order (oldest first), and `limit` keeps the first (oldest) that many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub environment: Option<String>,
    pub sha: Option<String>,
    pub actor: Option<String>,
    pub request: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// Whether `record` matches; `at` is the record's parsed time, `None` when
    /// it does not parse (which never matches a `since`).
    fn matches(&self, record: &AuditRecord, at: Option<OffsetDateTime>) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>, ci: bool) -> bool {
            match (want, have) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(w), Some(h)) if ci => w.eq_ignore_ascii_case(h),
                (Some(w), Some(h)) => w == h,
            }
        }
        let e = &record.event;
        eq(&self.environment, &e.environment, false)
            && eq(&self.sha, &e.sha, true)
            && eq(&self.actor, &e.actor, true)
            && eq(&self.request, &e.request, false)
            && match self.since {
                None => true,
                Some(since) => at.is_some_and(|at| at >= since),
            }
    }
}

/// Why the audit trail could not record or read. A caller that cannot audit
/// a decision must not act on it.
/// [`AuditLog::append_nowait`] did not take a record because the log's
/// bounded queue is full; the record comes back. The caller either waits
/// with [`AuditLog::append`] or refuses its input (503 `overloaded`), never
/// goes on without the record.
#[derive(Debug, thiserror::Error)]
#[error("the audit queue is full; try again")]
pub struct QueueFull(pub Box<AuditEvent>);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit log {path} does not verify: {source}")]
    Chain {
        path: String,
        #[source]
        source: ChainError,
    },
    #[error("audit log {path}: line {line} is not an audit record: {why}")]
    Corrupt { path: String, line: u64, why: String },
    #[error("audit log {path} is in use by another writer (another portcullis process?)")]
    Locked { path: String },
    /// The write or fsync of the batch holding this record failed; the record
    /// is not in the log.
    #[error("audit record not stored: {0}")]
    WriteFailed(String),
    /// A previous write failed, and the log refuses records until restarted.
    #[error("audit log stopped accepting records after a failed write: {0}")]
    Stopped(String),
    #[error("audit record not stored: {0}")]
    Invalid(String),
    #[error("audit log is closed")]
    Closed,
}

/// The audit trail. Implementations keep one chain in `seq` order.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends and returns once the record is durable (fsynced, for the file
    /// backend). An `Err` means the record is not in the log.
    ///
    /// Dropping the returned future does not withdraw the record: once
    /// called, it is written.
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError>;

    /// Enqueues without waiting for durability. Order is kept, so a later
    /// successful [`append`](AuditLog::append) implies this record is durable
    /// too: no backend lets a later record succeed past a failed write (the
    /// file backend stops, the Redis backend retries until stored). Failures
    /// are logged, having no caller to tell; so is a record refused on its
    /// own (over [`MAX_LINE_BYTES`](chain::MAX_LINE_BYTES)), the one case where a later append may
    /// succeed without it. The queue is bounded: when it is full the record
    /// is not taken and the answer is [`QueueFull`].
    fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull>;

    /// The record with this `id`.
    async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError>;

    /// Records matching `filter`, oldest first (see [`AuditFilter`]).
    async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError>;

    /// Whether the log can take records now (for readiness).
    async fn ping(&self) -> Result<(), AuditError>;

    /// The stored lines of records `start + 1 ..` (0-based leaf `start`
    /// onwards), at most `max`, each exactly as stored without its newline:
    /// the Merkle tree's leaves. A batch being written is not returned.
    async fn lines(&self, start: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError>;

    /// Where this trail's signed checkpoints are kept.
    fn checkpoints(&self) -> std::sync::Arc<dyn checkpoints::CheckpointStore>;

    /// The bounded queue has no room now: new inputs should be refused
    /// (503 `overloaded`) before they take effect.
    fn queue_full(&self) -> bool {
        false
    }

    /// Makes every record enqueued so far durable, then stops taking records
    /// and releases the backend (the file lock). For graceful shutdown.
    async fn close(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// A new record id: `aud_` and 20 random hex digits (80 bits).
fn new_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("aud_{}", &hex[..20])
}

/// The time of a new record: now in UTC to the microsecond, but never
/// before `last`, so record times follow chain order even if the wall clock
/// steps back. Returns the time and its text, RFC 3339 with exactly six
/// fraction digits (`2026-11-28T15:23:49.120000Z`): fixed width, so the texts
/// of records sort as their times do.
fn record_time(last: Option<OffsetDateTime>) -> (OffsetDateTime, String) {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000).unwrap_or(now);
    let at = match last {
        Some(last) if last > now => last,
        _ => now,
    };
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    let text = at
        .to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| crate::time_fmt::rfc3339(at));
    (at, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReasonCode;

    #[test]
    fn none_fields_are_omitted_and_names_are_the_contract_s() {
        let event = AuditEvent::new(EventKind::PlatformResult)
            .request("req_1")
            .platform(Platform::Github)
            .reasons(vec![Reason::new(ReasonCode::ActorApproved, "ok")]);
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event": "platform_result",
                "request": "req_1",
                "platform": "github",
                "reasons": [{"code": "actor_approved", "message": "ok"}],
            })
        );
    }

    #[test]
    fn record_flattens_the_event_and_round_trips() {
        let record = AuditRecord {
            seq: 7,
            id: "aud_x".into(),
            at: "2026-01-01T00:00:00Z".into(),
            event: AuditEvent::new(EventKind::Decision).decision("approved"),
            prev_hash: GENESIS.into(),
            hash: "h".into(),
        };
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["event"], "decision");
        assert_eq!(value["decision"], "approved");
        assert!(value.get("sha").is_none());
        let back: AuditRecord = serde_json::from_value(value).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn filter_matches_case_insensitively_on_sha_and_actor_only() {
        let record = AuditRecord {
            seq: 1,
            id: "aud_x".into(),
            at: "2026-01-01T00:00:00Z".into(),
            event: AuditEvent::new(EventKind::Decision)
                .environment("production")
                .sha("ABCDEF")
                .actor("OctoCat"),
            prev_hash: GENESIS.into(),
            hash: "h".into(),
        };
        let at = crate::time_fmt::parse_rfc3339(&record.at);
        let f = |f: AuditFilter| f.matches(&record, at);
        assert!(f(AuditFilter::default()));
        assert!(f(AuditFilter {
            sha: Some("abcdef".into()),
            actor: Some("octocat".into()),
            ..Default::default()
        }));
        assert!(!f(AuditFilter {
            environment: Some("Production".into()),
            ..Default::default()
        }));
        assert!(!f(AuditFilter {
            request: Some("req_1".into()),
            ..Default::default()
        }));
        assert!(f(AuditFilter {
            since: at,
            ..Default::default()
        }));
        assert!(!f(AuditFilter {
            since: at.map(|t| t + time::Duration::SECOND),
            ..Default::default()
        }));
    }

    #[test]
    fn record_times_are_fixed_width_utc_and_never_go_back() {
        let (at, text) = record_time(None);
        assert_eq!(text.len(), "2026-11-28T15:23:49.120000Z".len(), "{text}");
        assert!(text.ends_with('Z'));
        assert_eq!(crate::time_fmt::parse_rfc3339(&text), Some(at));
        let future = at + time::Duration::hours(1);
        let (later, text) = record_time(Some(future));
        assert_eq!(later, future);
        assert_eq!(crate::time_fmt::parse_rfc3339(&text), Some(future));
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id();
        assert!(a.starts_with("aud_") && a.len() == 24, "{a}");
        assert_ne!(a, new_id());
    }
}
