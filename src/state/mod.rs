//! Shared state behind an async interface of atomic operations, so that the
//! memory backend (the embedded default) and the Redis backend (several
//! replicas) are interchangeable.
//!
//! The operations are the ones exactly-once decisions need:
//! insert-if-absent (delivery dedup, request creation), compare-and-set on a
//! request's `version`, and a lease with a fencing token, so that only one
//! replica makes the platform call for a request.

mod grants_memory;
mod grants_redis;
mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use memory::MemoryStore;

use crate::domain::{Attestation, DeploymentRequest, Grant, Verdict};

/// The state backend is unreachable or answered nonsense. Callers fail closed:
/// webhooks get 503 so the platform records a failed, redeliverable delivery.
#[derive(Debug, thiserror::Error)]
#[error("state backend unavailable: {0}")]
pub struct StateError(pub String);

pub type StateResult<T> = Result<T, StateError>;

/// A lease on a request: proof that this holder may act on it. `fence` grows
/// with every grant, so a holder whose lease expired and was granted to
/// another cannot pass [`Store::lease_valid`] any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub request: String,
    pub holder: String,
    pub fence: u64,
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub enum Cas {
    /// Written; the stored record now has this version.
    Written(u64),
    /// Someone else wrote first; here is what is stored now.
    Conflict(Option<Box<DeploymentRequest>>),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a delivery id; `true` if it was new (insert-if-absent with TTL).
    async fn mark_delivery(&self, id: &str, ttl: Duration) -> StateResult<bool>;

    /// Forgets a delivery id, so that a redelivery of a webhook that could not
    /// be stored is processed again.
    async fn forget_delivery(&self, id: &str) -> StateResult<()>;

    /// Whether a delivery id is recorded (read only; for the GitHub
    /// redelivery reconciler). `false` when the backend cannot tell: a
    /// redelivery is then deduplicated on arrival, as any delivery is.
    async fn delivery_seen(&self, _id: &str) -> StateResult<bool> {
        Ok(false)
    }

    /// Stores the attestation as the latest for its run.
    async fn put_attestation(&self, run_key: &str, att: &Attestation, ttl: Duration) -> StateResult<()>;
    async fn get_attestation(&self, run_key: &str) -> StateResult<Option<Attestation>>;
    /// Whether the run has an attestation now, without reading it.
    async fn has_attestation(&self, run_key: &str) -> StateResult<bool> {
        Ok(self.get_attestation(run_key).await?.is_some())
    }

    /// Stores the verdict as the latest for (repository, sha, environment).
    async fn put_verdict(&self, key: &str, verdict: &Verdict, ttl: Duration) -> StateResult<()>;
    async fn get_verdict(&self, key: &str) -> StateResult<Option<Verdict>>;
    /// Forgets the verdict for a key (its evidence could not be evaluated:
    /// no earlier verdict may stand in for it).
    async fn delete_verdict(&self, key: &str) -> StateResult<()>;

    /// Creates the request unless one with its id exists; `true` if created.
    /// Indexes it by run, by verdict key and by deadline.
    async fn insert_request(&self, req: &DeploymentRequest) -> StateResult<bool>;
    async fn get_request(&self, id: &str) -> StateResult<Option<DeploymentRequest>>;

    /// Writes `req` if the stored version equals `req.version`; the stored
    /// copy gets `req.version + 1`. A request leaving `Pending` leaves the
    /// pending indexes. The same write sent again (its answer was lost)
    /// finds itself stored and answers [`Cas::Written`].
    async fn update_request(&self, req: &DeploymentRequest) -> StateResult<Cas>;

    /// [`Store::update_request`], returning only once the write is as safe
    /// from a failover as configured: with `state.min_replicas`, the Redis
    /// backend fails (a [`StateError`]) unless that many replicas
    /// acknowledged it, and with it every write before it (the lease, the
    /// `Deciding` status). The gate uses it for the last write before a
    /// platform call and the write that closes the request after it. Sending
    /// the same write again after a failure is safe: a store that already
    /// holds it answers [`Cas::Written`].
    async fn update_request_replicated(&self, req: &DeploymentRequest) -> StateResult<Cas> {
        self.update_request(req).await
    }

    /// Pending requests of a run (for a newly arrived attestation).
    async fn requests_for_run(&self, run_key: &str) -> StateResult<Vec<String>>;
    /// Pending requests of a verdict key (for a newly arrived verdict).
    async fn requests_for_verdict(&self, verdict_key: &str) -> StateResult<Vec<String>>;
    /// Requests to re-drive: pending past their deadline, or deciding with
    /// no live lease (a replica died mid-decision). At most `limit`.
    async fn due_requests(&self, now: OffsetDateTime, limit: usize) -> StateResult<Vec<String>>;
    /// Number of requests not yet done.
    async fn open_requests(&self) -> StateResult<u64>;
    /// Pending requests by environment (for `/metrics`; at most the first
    /// 10000 pending requests are read).
    async fn pending_by_environment(&self) -> StateResult<std::collections::BTreeMap<String, u64>>;

    /// Takes the lease on a request if nobody holds a live one.
    async fn acquire_lease(&self, request: &str, holder: &str, ttl: Duration) -> StateResult<Option<Lease>>;
    /// Is this still the live lease (same holder and fence)?
    async fn lease_valid(&self, lease: &Lease) -> StateResult<bool>;
    async fn release_lease(&self, lease: &Lease) -> StateResult<()>;

    /// Creates a break-glass grant unless one with its id exists; `true` if
    /// created. Indexes it by its (repository, sha, environment) key and,
    /// unless finished, as open.
    async fn insert_grant(&self, grant: &Grant) -> StateResult<bool>;
    async fn get_grant(&self, id: &str) -> StateResult<Option<Grant>>;
    /// Writes `grant` if the stored version equals `grant.version` (the
    /// stored copy gets `version + 1`); `true` when written. A finished
    /// grant leaves the open index.
    async fn update_grant(&self, grant: &Grant) -> StateResult<bool>;
    /// Every grant held for a [`crate::domain::grant_key`].
    async fn grants_for(&self, key: &str) -> StateResult<Vec<Grant>>;
    /// Grants not finished: asked for, confirmed, or used and not reviewed.
    async fn open_grants(&self) -> StateResult<Vec<Grant>>;

    /// Readiness probe.
    async fn ping(&self) -> StateResult<()>;
}

pub type SharedStore = Arc<dyn Store>;

#[cfg(test)]
mod tests;
