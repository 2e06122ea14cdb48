//! The same chain in memory: for tests and trials that need an [`AuditLog`]
//! without a file. Nothing survives the process.

use std::sync::Mutex;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::chain::seal;
use super::{AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, GENESIS, QueueFull, new_id, record_time};
use crate::time_fmt::parse_rfc3339;

#[derive(Default)]
struct Chain {
    records: Vec<AuditRecord>,
    last_at: Option<OffsetDateTime>,
}

/// An in-memory audit log. Every append is "durable" at once.
#[derive(Default)]
pub struct MemoryAudit {
    chain: Mutex<Chain>,
    checkpoints: std::sync::Arc<super::checkpoints::MemoryCheckpoints>,
}

impl MemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }

    /// The log as it would be written to a file: one canonical JSON line per
    /// record, for [`verify_lines`](super::verify_lines).
    pub fn to_lines(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for record in &self.lock().records {
            // A record that was sealed serializes again.
            if serde_json::to_writer(&mut out, &serde_json::to_value(record).unwrap_or_default()).is_ok() {
                out.push(b'\n');
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let mut chain = self.lock();
        let (at, at_text) = record_time(chain.last_at);
        let (seq, prev) = match chain.records.last() {
            Some(last) => (last.seq + 1, last.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let sealed = seal(seq, new_id(), at_text, event, &prev)
            .map_err(|e| AuditError::Invalid(format!("the event cannot be encoded: {e}")))?;
        chain.last_at = Some(at);
        chain.records.push(sealed.record.clone());
        Ok(sealed.record)
    }
}

#[async_trait]
impl AuditLog for MemoryAudit {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        self.push(event)
    }

    fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull> {
        if let Err(e) = self.push(event) {
            tracing::error!(error = %e, "audit record dropped");
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<AuditRecord>, AuditError> {
        Ok(self.lock().records.iter().find(|r| r.id == id).cloned())
    }

    async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        Ok(self
            .lock()
            .records
            .iter()
            .filter(|r| filter.matches(r, filter.since.and_then(|_| parse_rfc3339(&r.at))))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn lines(&self, start: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError> {
        let chain = self.lock();
        Ok(chain
            .records
            .iter()
            .skip(start as usize)
            .take(max)
            .map(|r| serde_json::to_vec(&serde_json::to_value(r).unwrap_or_default()).unwrap_or_default())
            .collect())
    }

    fn checkpoints(&self) -> std::sync::Arc<dyn super::checkpoints::CheckpointStore> {
        self.checkpoints.clone()
    }

    async fn ping(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventKind, verify_lines};

    #[tokio::test]
    async fn memory_chain_verifies_and_queries() {
        let log = MemoryAudit::new();
        for env in ["staging", "production", "production"] {
            log.append(AuditEvent::new(EventKind::Decision).environment(env))
                .await
                .unwrap();
        }
        log.append_nowait(AuditEvent::new(EventKind::PlatformResult))
            .expect("queued");
        let report = verify_lines(&log.to_lines()[..]).expect("verifies");
        assert_eq!(report.records, 4);
        let prod = AuditFilter {
            environment: Some("production".into()),
            limit: Some(1),
            ..Default::default()
        };
        let found = log.query(&prod).await.unwrap();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        let first = log.query(&AuditFilter::default()).await.unwrap()[0].clone();
        assert_eq!(log.get(&first.id).await.unwrap(), Some(first));
    }
}
