//! The embedded state backend: one process, one mutex. Fine for a single
//! replica; everything it holds is lost on restart, which the README says.
//!
//! A std `Mutex` (not tokio's): no lock is held across an `.await`, and
//! every critical section is a few map operations.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Cas, Lease, StateError, StateResult, Store};
use crate::domain::{Attestation, DeploymentRequest, Grant, RequestStatus, Verdict};

#[derive(Default)]
struct Inner {
    deliveries: HashMap<String, Instant>,
    attestations: HashMap<String, (Attestation, Instant)>,
    verdicts: HashMap<String, (Verdict, Instant)>,
    requests: HashMap<String, DeploymentRequest>,
    by_run: HashMap<String, HashSet<String>>,
    by_verdict: HashMap<String, HashSet<String>>,
    /// (deadline unix seconds, request id), pending requests only.
    deadlines: BTreeSet<(i64, String)>,
    leases: HashMap<String, (Lease, Instant)>,
    fence: u64,
    sweeps: u64,
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

    fn unindex(&mut self, req: &DeploymentRequest) {
        let run_key = req.run_ref().key();
        if let Some(set) = self.by_run.get_mut(&run_key) {
            set.remove(&req.id);
            if set.is_empty() {
                self.by_run.remove(&run_key);
            }
        }
        let vkey = req.verdict_key();
        if let Some(set) = self.by_verdict.get_mut(&vkey) {
            set.remove(&req.id);
            if set.is_empty() {
                self.by_verdict.remove(&vkey);
            }
        }
        self.deadlines.remove(&(req.deadline.unix_timestamp(), req.id.clone()));
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
                g.deliveries.insert(id.to_string(), now + ttl);
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
            .insert(run_key.to_string(), (att.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn get_attestation(&self, run_key: &str) -> StateResult<Option<Attestation>> {
        let g = self.lock()?;
        Ok(g.attestations
            .get(run_key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(a, _)| a.clone()))
    }

    async fn put_verdict(&self, key: &str, verdict: &Verdict, ttl: Duration) -> StateResult<()> {
        let mut g = self.lock()?;
        g.maybe_sweep();
        g.verdicts
            .insert(key.to_string(), (verdict.clone(), Instant::now() + ttl));
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
        let mut g = self.lock()?;
        if g.requests.contains_key(&req.id) {
            return Ok(false);
        }
        if req.status == RequestStatus::Pending {
            g.by_run.entry(req.run_ref().key()).or_default().insert(req.id.clone());
            g.by_verdict
                .entry(req.verdict_key())
                .or_default()
                .insert(req.id.clone());
            g.deadlines.insert((req.deadline.unix_timestamp(), req.id.clone()));
        }
        g.requests.insert(req.id.clone(), req.clone());
        Ok(true)
    }

    async fn get_request(&self, id: &str) -> StateResult<Option<DeploymentRequest>> {
        Ok(self.lock()?.requests.get(id).cloned())
    }

    async fn update_request(&self, req: &DeploymentRequest) -> StateResult<Cas> {
        let mut g = self.lock()?;
        let Some(stored) = g.requests.get(&req.id) else {
            return Ok(Cas::Conflict(None));
        };
        let mut next = req.clone();
        next.version = req.version + 1;
        if *stored == next {
            // The same write, sent again: it is stored.
            return Ok(Cas::Written(next.version));
        }
        if stored.version != req.version {
            return Ok(Cas::Conflict(Some(Box::new(stored.clone()))));
        }
        let was_pending = stored.status == RequestStatus::Pending;
        if was_pending && next.status != RequestStatus::Pending {
            g.unindex(&next);
        }
        let v = next.version;
        g.requests.insert(next.id.clone(), next);
        Ok(Cas::Written(v))
    }

    async fn requests_for_run(&self, run_key: &str) -> StateResult<Vec<String>> {
        Ok(self
            .lock()?
            .by_run
            .get(run_key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn requests_for_verdict(&self, verdict_key: &str) -> StateResult<Vec<String>> {
        Ok(self
            .lock()?
            .by_verdict
            .get(verdict_key)
            .map(|s| s.iter().cloned().collect())
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
            .map(|(_, id)| id.clone())
            .collect();
        let live = Instant::now();
        for (id, req) in &g.requests {
            if out.len() >= limit {
                break;
            }
            if req.status == RequestStatus::Deciding && g.leases.get(id).is_none_or(|(_, exp)| *exp <= live) {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    async fn open_requests(&self) -> StateResult<u64> {
        let g = self.lock()?;
        Ok(g.requests
            .values()
            .filter(|r| matches!(r.status, RequestStatus::Pending | RequestStatus::Deciding))
            .count() as u64)
    }

    async fn pending_by_environment(&self) -> StateResult<std::collections::BTreeMap<String, u64>> {
        let g = self.lock()?;
        let mut out = std::collections::BTreeMap::new();
        for r in g.requests.values().filter(|r| r.status == RequestStatus::Pending) {
            *out.entry(r.environment.clone()).or_insert(0) += 1;
        }
        Ok(out)
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
        g.leases.insert(request.to_string(), (lease.clone(), now + ttl));
        Ok(Some(lease))
    }

    async fn lease_valid(&self, lease: &Lease) -> StateResult<bool> {
        let g = self.lock()?;
        Ok(g.leases
            .get(&lease.request)
            .is_some_and(|(l, exp)| l == lease && *exp > Instant::now()))
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<()> {
        let mut g = self.lock()?;
        if g.leases.get(&lease.request).is_some_and(|(l, _)| l == lease) {
            g.leases.remove(&lease.request);
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
