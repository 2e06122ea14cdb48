//! `GET /v1/break-glass`: the grants not finished (asked for, confirmed, or
//! used and not reviewed), or with `?unreviewed=true` the used grants
//! whose review is still to come, each marked `overdue` past its review
//! date. Behind the read API's access rules. And the break-glass metrics.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::ApiError;
use super::access::authorize_read;
use crate::domain::ErrorCode;
use crate::gate::{Gate, GateError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    unreviewed: Option<bool>,
}

pub(super) async fn list(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.to_string()))?
        .into_inner();
    let now = OffsetDateTime::now_utc();
    let mut grants = gate.store.open_grants().await.map_err(GateError::from)?;
    if q.unreviewed == Some(true) {
        grants.retain(|g| g.awaiting_review());
    }
    grants.sort_by_key(|g| g.requested_at);
    let listed: Vec<serde_json::Value> = grants
        .iter()
        .map(|g| {
            let mut v = serde_json::to_value(g).unwrap_or_else(|_| json!({}));
            if let Some(o) = v.as_object_mut() {
                o.remove("version");
                o.remove("reminded_at");
                o.insert("used".into(), json!(g.used()));
                o.insert("overdue".into(), json!(g.overdue(now)));
            }
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "grants": listed })))
}

/// Appends the break-glass metrics: grants by step (counters of this
/// process) and the used grants whose review is overdue (a gauge read
/// from the shared state, the same on every replica).
/// Used grants not yet reviewed, and those of them overdue, for `/metrics`
/// (`None` when the store does not answer).
pub(super) async fn unreviewed_counts(gate: &Gate) -> Option<(u64, u64)> {
    let open = gate.store.open_grants().await.ok()?;
    let now = OffsetDateTime::now_utc();
    let overdue = open.iter().filter(|g| g.overdue(now)).count() as u64;
    let unreviewed = open.iter().filter(|g| g.awaiting_review()).count() as u64;
    Some((unreviewed, overdue))
}
