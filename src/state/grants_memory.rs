//! Break-glass grants in the embedded state backend.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::{StateError, StateResult};
use crate::domain::Grant;

#[derive(Default)]
struct Table {
    grants: HashMap<String, Grant>,
    /// Grant key → ids.
    by_key: HashMap<String, BTreeSet<String>>,
    /// Ids of grants not finished.
    open: BTreeSet<String>,
}

/// The grants of a [`super::MemoryStore`], under their own lock.
#[derive(Default)]
pub(super) struct MemoryGrants {
    table: Mutex<Table>,
}

impl MemoryGrants {
    fn lock(&self) -> StateResult<std::sync::MutexGuard<'_, Table>> {
        self.table
            .lock()
            .map_err(|_| StateError("memory state lock poisoned".into()))
    }

    pub(super) fn insert(&self, grant: &Grant) -> StateResult<bool> {
        let mut t = self.lock()?;
        if t.grants.contains_key(&grant.id) {
            return Ok(false);
        }
        t.by_key.entry(grant.key()).or_default().insert(grant.id.clone());
        if !grant.finished() {
            t.open.insert(grant.id.clone());
        }
        t.grants.insert(grant.id.clone(), grant.clone());
        Ok(true)
    }

    pub(super) fn get(&self, id: &str) -> StateResult<Option<Grant>> {
        Ok(self.lock()?.grants.get(id).cloned())
    }

    pub(super) fn update(&self, grant: &Grant) -> StateResult<bool> {
        let mut t = self.lock()?;
        match t.grants.get(&grant.id) {
            Some(stored) if stored.version == grant.version => {}
            _ => return Ok(false),
        }
        let mut next = grant.clone();
        next.version = grant.version + 1;
        if next.finished() {
            t.open.remove(&next.id);
        } else {
            t.open.insert(next.id.clone());
        }
        t.grants.insert(next.id.clone(), next);
        Ok(true)
    }

    pub(super) fn for_key(&self, key: &str) -> StateResult<Vec<Grant>> {
        let t = self.lock()?;
        Ok(t.by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| t.grants.get(id).cloned())
            .collect())
    }

    pub(super) fn open(&self) -> StateResult<Vec<Grant>> {
        let t = self.lock()?;
        Ok(t.open.iter().filter_map(|id| t.grants.get(id).cloned()).collect())
    }
}
