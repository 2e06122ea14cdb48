//! What every webhook route does on the way in: read the body within the
//! configured limit, read a header, and process a delivery at most once.

use std::future::Future;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use tracing::info;

use super::ApiError;
use crate::audit::AuditLog;
use crate::domain::ErrorCode;
use crate::gate::{DELIVERY_TTL, Gate, GateError};

/// Reads the whole body, refusing more than the configured limit with 413.
pub(super) async fn read_body(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, format!("the body exceeds {limit} bytes"));
    if let Some(len) = header(req, "content-length").and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::PayloadUnreadable,
            "the body could not be read",
        )),
        Err(_) => Err(too_large()),
    }
}

/// Refuses new work with 503 `overloaded` while the audit trail's bounded
/// queue is full, before the input takes effect.
pub(super) fn refuse_when_overloaded(audit: &dyn AuditLog) -> Result<(), ApiError> {
    if audit.queue_full() {
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            "portcullis is overloaded; try again",
        ));
    }
    Ok(())
}

/// A header's value, if present and visible ASCII. Names are matched
/// case-insensitively.
pub(super) fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Runs `process` for a delivery not seen before. `key` names the delivery
/// (`platform:delivery-id`); a delivery seen within [`DELIVERY_TTL`] is
/// answered 202 `{"status": "duplicate"}` without processing it again. When
/// `process` fails, the delivery is forgotten so that a redelivery is
/// processed: it is the only copy. Without a key, `process` always runs.
pub(super) async fn once_per_delivery<F>(gate: &Gate, key: Option<&str>, process: F) -> Result<HttpResponse, ApiError>
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    if let Some(key) = key {
        let first = gate
            .store
            .mark_delivery(key, DELIVERY_TTL)
            .await
            .map_err(|e| ApiError::from(GateError::from(e)))?;
        if !first {
            gate.metrics.webhooks_duplicate.inc();
            info!("duplicate delivery ignored");
            return Ok(HttpResponse::Accepted().json(json!({"status": "duplicate"})));
        }
    }
    let result = process.await;
    if result.is_err()
        && let Some(key) = key
    {
        let _ = gate.store.forget_delivery(key).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;

    use super::*;
    use crate::audit::{AuditError, AuditEvent, AuditFilter, AuditRecord, MemoryAudit, QueueFull};

    /// An audit log whose queue is always full.
    struct Full;

    #[async_trait::async_trait]
    impl AuditLog for Full {
        async fn append(&self, _: AuditEvent) -> Result<AuditRecord, AuditError> {
            Err(AuditError::Closed)
        }
        fn append_nowait(&self, event: AuditEvent) -> Result<(), QueueFull> {
            Err(QueueFull(Box::new(event)))
        }
        async fn get(&self, _: &str) -> Result<Option<AuditRecord>, AuditError> {
            Ok(None)
        }
        async fn query(&self, _: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
            Ok(vec![])
        }
        async fn ping(&self) -> Result<(), AuditError> {
            Ok(())
        }
        fn queue_full(&self) -> bool {
            true
        }
        async fn lines(&self, _: u64, _: usize) -> Result<Vec<Vec<u8>>, AuditError> {
            Ok(vec![])
        }
        fn checkpoints(&self) -> std::sync::Arc<dyn crate::audit::checkpoints::CheckpointStore> {
            std::sync::Arc::new(crate::audit::checkpoints::MemoryCheckpoints::default())
        }
    }

    #[test]
    fn a_full_audit_queue_is_503_overloaded() {
        let e = refuse_when_overloaded(&Full).unwrap_err();
        assert_eq!((e.status_code().as_u16(), e.code().as_str()), (503, "overloaded"));
        assert!(refuse_when_overloaded(&MemoryAudit::new()).is_ok());
    }
}
