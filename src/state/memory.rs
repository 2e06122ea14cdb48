//! The embedded state backend: one process, one mutex. Fine for a single
//! replica; everything it holds is lost on restart, which the README says.
//!
//! A std `Mutex` (not tokio's): no lock is held across an `.await`, and
//! every critical section is a few map operations.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Cas, Lease, StateError, StateResult, Store};
use crate::domain::{Attestation, DeploymentRequest, Grant, RequestStatus, Verdict};

/// foldhash, seeded per process: several times faster than SipHash on these
/// short keys. Every key here comes from a signed webhook or a verified
/// token, so the weaker flooding resistance is not exposed to strangers.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<T> = HashSet<T, foldhash::fast::RandomState>;

/// A request id, held once and shared by the map and every index.
type Id = Arc<str>;

/// Memory per stored request is what bounds this store (100 000 pending
/// requests are the benchmark). A request is kept as its JSON, as the Redis
/// store keeps it: about 750 bytes for a pending GitHub request, where the
/// struct and its dozen heap strings take about 1 250. Ids are shared by the
/// map and every index, and the counts `/metrics` asks for are kept, not
/// counted.
#[derive(Default)]
struct Inner {
    deliveries: Map<Box<str>, Instant>,
    attestations: Map<Box<str>, (Attestation, Instant)>,
    verdicts: Map<Box<str>, (Verdict, Instant)>,
    requests: Map<Id, Stored>,
    /// Pending requests of a run: almost always one, so a vector.
    by_run: Map<Box<str>, Vec<Id>>,
    /// Pending requests of a verdict key: every run of one commit, so a set.
    by_verdict: Map<Box<str>, Set<Id>>,
    /// (deadline unix seconds, request id), pending requests only.
    deadlines: BTreeSet<(i64, Id)>,
    /// Requests in `Deciding`, for the sweeper (never a walk of every request).
    deciding: Set<Id>,
    /// Pending requests by environment.
    pending_by_env: BTreeMap<String, u64>,
    leases: Map<Box<str>, (Lease, Instant)>,
    fence: u64,
    sweeps: u64,
}

/// A stored request: its JSON, and what compare-and-set and the indexes
/// need without decoding it.
struct Stored {
    status: RequestStatus,
    version: u64,
    json: Box<[u8]>,
}

fn encode(req: &DeploymentRequest) -> StateResult<Box<[u8]>> {
    serde_json::to_vec(req)
        .map(Vec::into_boxed_slice)
        .map_err(|e| StateError(format!("cannot encode request {}: {e}", req.id)))
}

fn decode(json: &[u8]) -> StateResult<DeploymentRequest> {
    serde_json::from_slice(json).map_err(|e| StateError(format!("cannot decode a stored request: {e}")))
}

/// In-process state. `Default` gives an empty store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    grants: super::grants_memory::MemoryGrants,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> StateResult<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StateError("memory state lock poisoned".into()))
    }
}

impl Inner {
    /// Drops expired entries now and then, so the maps do not grow without
    /// bound under a steady stream of deliveries.
    fn maybe_sweep(&mut self) {
        self.sweeps += 1;
        if self.sweeps % 1024 != 0 {
            return;
        }
        let now = Instant::now();
        self.deliveries.retain(|_, exp| *exp > now);
        self.attestations.retain(|_, (_, exp)| *exp > now);
        self.verdicts.retain(|_, (_, exp)| *exp > now);
        self.leases.retain(|_, (_, exp)| *exp > now);
    }

    /// Enters a request with `status` into the indexes of that status.
    fn index(&mut self, id: &Id, req: &DeploymentRequest, status: RequestStatus) {
        match status {
            RequestStatus::Pending => {
                self.by_run
                    .entry(req.run_ref().key().into())
                    .or_default()
                    .push(id.clone());
                self.by_verdict
                    .entry(req.verdict_key().into())
                    .or_default()
                    .insert(id.clone());
                self.deadlines.insert((req.deadline.unix_timestamp(), id.clone()));
                *self.pending_by_env.entry(req.environment.clone()).or_insert(0) += 1;
            }
            RequestStatus::Deciding => {
                self.deciding.insert(id.clone());
            }
            RequestStatus::Done | RequestStatus::Superseded => {}
        }
    }

    /// Takes a request with `status` out of the indexes of that status.
    fn unindex(&mut self, id: &Id, req: &DeploymentRequest, status: RequestStatus) {
        match status {
            RequestStatus::Pending => {
                let run_key = req.run_ref().key();
                if let Some(ids) = self.by_run.get_mut(run_key.as_str()) {
                    ids.retain(|i| i != id);
                    if ids.is_empty() {
                        self.by_run.remove(run_key.as_str());
                    }
                }
                let vkey = req.verdict_key();
                if let Some(set) = self.by_verdict.get_mut(vkey.as_str()) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_verdict.remove(vkey.as_str());
                    }
                }
                self.deadlines.remove(&(req.deadline.unix_timestamp(), id.clone()));
                if let Some(n) = self.pending_by_env.get_mut(&req.environment) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.pending_by_env.remove(&req.environment);
                    }
                }
            }
            RequestStatus::Deciding => {
                self.deciding.remove(id);
            }
            RequestStatus::Done | RequestStatus::Superseded => {}
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn mark_delivery(&self, id: &str, ttl: Duration) -> StateResult<bool> {
        let mut g = self.lock()?;
        g.maybe_sweep();
        let now = Instant::now();
        match g.deliveries.get(id) {
            Some(exp) if *exp > now => Ok(false),
            _ => {
                g.deliveries.insert(id.into(), now + ttl);
                Ok(true)
            }
        }
    }

    async fn forget_delivery(&self, id: &str) -> StateResult<()> {
        self.lock()?.deliveries.remove(id);
        Ok(())
    }

    async fn put_attestation(&self, run_key: &str, att: &Attestation, ttl: Duration) -> StateResult<()> {
        let mut g = self.lock()?;
        g.maybe_sweep();
        g.attestations
            .insert(run_key.into(), (att.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn get_attestation(&self, run_key: &str) -> StateResult<Option<Attestation>> {
        let g = self.lock()?;
        Ok(g.attestations
            .get(run_key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(a, _)| a.clone()))
    }

    async fn has_attestation(&self, run_key: &str) -> StateResult<bool> {
        let g = self.lock()?;
        Ok(g.attestations
            .get(run_key)
            .is_some_and(|(_, exp)| *exp > Instant::now()))
    }

    async fn put_verdict(&self, key: &str, verdict: &Verdict, ttl: Duration) -> StateResult<()> {
        let mut g = self.lock()?;
        g.maybe_sweep();
        g.verdicts.insert(key.into(), (verdict.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn get_verdict(&self, key: &str) -> StateResult<Option<Verdict>> {
        let g = self.lock()?;
        Ok(g.verdicts
            .get(key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(v, _)| v.clone()))
    }

    async fn delete_verdict(&self, key: &str) -> StateResult<()> {
        self.lock()?.verdicts.remove(key);
        Ok(())
    }

    async fn insert_request(&self, req: &DeploymentRequest) -> StateResult<bool> {
        let json = encode(req)?;
        let mut g = self.lock()?;
        if g.requests.contains_key(req.id.as_str()) {
            return Ok(false);
        }
        let id: Id = req.id.as_str().into();
        g.index(&id, req, req.status);
        let stored = Stored {
            status: req.status,
            version: req.version,
            json,
        };
        g.requests.insert(id, stored);
        Ok(true)
    }

    async fn get_request(&self, id: &str) -> StateResult<Option<DeploymentRequest>> {
        let json = match self.lock()?.requests.get(id) {
            Some(stored) => stored.json.clone(),
            None => return Ok(None),
        };
        decode(&json).map(Some)
    }

    async fn update_request(&self, req: &DeploymentRequest) -> StateResult<Cas> {
        let mut next = req.clone();
        next.version = req.version + 1;
        let json = encode(&next)?;
        let mut g = self.lock()?;
        let Some((id, stored)) = g.requests.get_key_value(req.id.as_str()) else {
            return Ok(Cas::Conflict(None));
        };
        if stored.json == json {
            // The same write, sent again: it is stored.
            return Ok(Cas::Written(next.version));
        }
        if stored.version != req.version {
            let current = stored.json.clone();
            drop(g);
            return Ok(Cas::Conflict(Some(Box::new(decode(&current)?))));
        }
        let id = id.clone();
        let was = stored.status;
        if was != next.status {
            g.unindex(&id, &next, was);
            g.index(&id, &next, next.status);
        }
        if let Some(slot) = g.requests.get_mut(id.as_ref()) {
            *slot = Stored {
                status: next.status,
                version: next.version,
                json,
            };
        }
        Ok(Cas::Written(next.version))
    }

    async fn requests_for_run(&self, run_key: &str) -> StateResult<Vec<String>> {
        Ok(self
            .lock()?
            .by_run
            .get(run_key)
            .map(|ids| ids.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default())
    }

    async fn requests_for_verdict(&self, verdict_key: &str) -> StateResult<Vec<String>> {
        Ok(self
            .lock()?
            .by_verdict
            .get(verdict_key)
            .map(|s| s.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default())
    }

    async fn due_requests(&self, now: OffsetDateTime, limit: usize) -> StateResult<Vec<String>> {
        let g = self.lock()?;
        let cutoff = now.unix_timestamp();
        let mut out: Vec<String> = g
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= cutoff)
            .take(limit)
            .map(|(_, id)| id.to_string())
            .collect();
        let live = Instant::now();
        for id in &g.deciding {
            if out.len() >= limit {
                break;
            }
            if g.leases.get(id.as_ref()).is_none_or(|(_, exp)| *exp <= live) {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }

    async fn open_requests(&self) -> StateResult<u64> {
        let g = self.lock()?;
        Ok(g.pending_by_env.values().sum::<u64>() + g.deciding.len() as u64)
    }

    async fn pending_by_environment(&self) -> StateResult<BTreeMap<String, u64>> {
        Ok(self.lock()?.pending_by_env.clone())
    }

    async fn acquire_lease(&self, request: &str, holder: &str, ttl: Duration) -> StateResult<Option<Lease>> {
        let mut g = self.lock()?;
        let now = Instant::now();
        if let Some((_, exp)) = g.leases.get(request)
            && *exp > now
        {
            return Ok(None);
        }
        g.fence += 1;
        let lease = Lease {
            request: request.to_string(),
            holder: holder.to_string(),
            fence: g.fence,
        };
        g.leases.insert(request.into(), (lease.clone(), now + ttl));
        Ok(Some(lease))
    }

    async fn lease_valid(&self, lease: &Lease) -> StateResult<bool> {
        let g = self.lock()?;
        Ok(g.leases
            .get(lease.request.as_str())
            .is_some_and(|(l, exp)| l == lease && *exp > Instant::now()))
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<()> {
        let mut g = self.lock()?;
        if g.leases.get(lease.request.as_str()).is_some_and(|(l, _)| l == lease) {
            g.leases.remove(lease.request.as_str());
        }
        Ok(())
    }

    async fn insert_grant(&self, grant: &Grant) -> StateResult<bool> {
        self.grants.insert(grant)
    }

    async fn get_grant(&self, id: &str) -> StateResult<Option<Grant>> {
        self.grants.get(id)
    }

    async fn update_grant(&self, grant: &Grant) -> StateResult<bool> {
        self.grants.update(grant)
    }

    async fn grants_for(&self, key: &str) -> StateResult<Vec<Grant>> {
        self.grants.for_key(key)
    }

    async fn open_grants(&self) -> StateResult<Vec<Grant>> {
        self.grants.open()
    }

    async fn ping(&self) -> StateResult<()> {
        self.lock().map(|_| ())
    }
}
