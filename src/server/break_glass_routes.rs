//! `GET /v1/break-glass`: the grants not finished (asked for, confirmed, or
//! used and not reviewed), or with `?unreviewed=true` the used grants
//! whose review is still to come, each marked `overdue` past its review
//! date. Behind the read API's access rules. And the break-glass metrics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

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
pub(super) async fn render_metrics(gate: &Gate, out: &mut String) {
    let c = &gate.metrics.break_glass;
    let _ = writeln!(
        out,
        "# HELP portcullis_break_glass_grants_total Break-glass grant steps by state (each confirmation counts).\n# TYPE portcullis_break_glass_grants_total counter"
    );
    for (state, n) in [
        ("requested", &c.requested),
        ("confirmed", &c.confirmed),
        ("used", &c.used),
        ("expired", &c.expired),
        ("reviewed", &c.reviewed),
    ] {
        let _ = writeln!(
            out,
            "portcullis_break_glass_grants_total{{state=\"{state}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    if let Ok(open) = gate.store.open_grants().await {
        let now = OffsetDateTime::now_utc();
        let overdue = open.iter().filter(|g| g.overdue(now)).count();
        let unreviewed = open.iter().filter(|g| g.awaiting_review()).count();
        let _ = writeln!(
            out,
            "# HELP portcullis_break_glass_reviews_overdue Used break-glass grants not reviewed within review_within.\n# TYPE portcullis_break_glass_reviews_overdue gauge\nportcullis_break_glass_reviews_overdue {overdue}"
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_break_glass_unreviewed Used break-glass grants not yet reviewed.\n# TYPE portcullis_break_glass_unreviewed gauge\nportcullis_break_glass_unreviewed {unreviewed}"
        );
    }
}
