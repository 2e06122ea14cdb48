//! The transparency-log read API: the latest signed checkpoint, inclusion
//! and consistency proofs, the audit keys, and decision receipts. Every route
//! follows the read-API rules (`read_token`, or a local peer without one).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use super::access::authorize_read;
use crate::audit::EventKind;
use crate::audit::receipt::{self, ReceiptSubject};
use crate::audit::tlog::{Tlog, TlogError};
use crate::domain::{ErrorCode, Target};
use crate::gate::Gate;

fn tlog(gate: &Gate) -> Result<&std::sync::Arc<Tlog>, ApiError> {
    gate.tlog()
        .ok_or_else(|| ApiError::new(ErrorCode::CheckpointNotFound, "the audit trail has no transparency log"))
}

fn api_error(e: TlogError) -> ApiError {
    match e {
        TlogError::Proof(p) => ApiError::new(ErrorCode::ProofOutOfRange, p.to_string()),
        TlogError::UnknownRecord(id) => {
            ApiError::new(ErrorCode::AuditRecordNotFound, format!("no audit record `{id}`"))
        }
        TlogError::NotConfigured => ApiError::new(ErrorCode::CheckpointNotFound, e.to_string()),
        other => {
            tracing::error!(error = %other, "the transparency log could not answer");
            ApiError::new(ErrorCode::AuditUnavailable, "the audit trail is unavailable; try again")
        }
    }
}

fn hexes(hashes: Vec<[u8; 32]>) -> Vec<String> {
    hashes.into_iter().map(hex::encode).collect()
}

pub(super) async fn checkpoint(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    match tlog(&gate)?.latest() {
        Some(cp) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(cp.note)),
        None => Err(ApiError::new(
            ErrorCode::CheckpointNotFound,
            "no checkpoint has been signed yet",
        )),
    }
}

#[derive(Deserialize)]
pub(super) struct InclusionQuery {
    record: String,
    size: Option<u64>,
}

pub(super) async fn inclusion(
    req: HttpRequest,
    query: web::Query<InclusionQuery>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let (index, size, proof) = tlog(&gate)?
        .inclusion(&query.record, query.size)
        .await
        .map_err(api_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "leaf_index": index,
        "tree_size": size,
        "hashes": hexes(proof),
    })))
}

#[derive(Deserialize)]
pub(super) struct ConsistencyQuery {
    from: u64,
    to: u64,
}

pub(super) async fn consistency(
    req: HttpRequest,
    query: web::Query<ConsistencyQuery>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let proof = tlog(&gate)?
        .consistency(query.from, query.to)
        .await
        .map_err(api_error)?;
    Ok(HttpResponse::Ok().json(json!({ "hashes": hexes(proof) })))
}

pub(super) async fn keys(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let keys = tlog(&gate)?.keys().await.map_err(api_error)?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })))
}

pub(super) async fn receipt(
    req: HttpRequest,
    path: web::Path<String>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let id = path.into_inner();
    let tlog = tlog(&gate)?;
    let key = tlog.signing_key().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ReceiptNotFound,
            "receipts need an audit signing key ([audit] signing_key)",
        )
    })?;
    let request = gate
        .store
        .get_request(&id)
        .await
        .map_err(|e| ApiError::from(crate::gate::GateError::from(e)))?
        .ok_or_else(|| ApiError::new(ErrorCode::RequestNotFound, format!("no request `{id}`")))?;
    let not_yet = || {
        ApiError::new(
            ErrorCode::ReceiptNotFound,
            format!("request `{id}` has no final decision yet"),
        )
    };
    let record_id = request.decision_record.as_deref().ok_or_else(not_yet)?;
    let record = gate
        .audit
        .get(record_id)
        .await
        .map_err(|e| api_error(e.into()))?
        .filter(|r| r.event.event == EventKind::Decision)
        .ok_or_else(not_yet)?;
    let resource = match &request.target {
        Target::Github { callback_url, .. } => callback_url.clone(),
        Target::Gitlab {
            project_id,
            deployment_id,
            ..
        } => {
            let base = gate
                .config
                .gitlab
                .as_ref()
                .map_or("https://gitlab.com".to_string(), |g| {
                    g.url.as_str().trim_end_matches('/').to_string()
                });
            format!("{base}/api/v4/projects/{project_id}/deployments/{deployment_id}")
        }
    };
    let verifier = gate.config.server.public_url.as_str().trim_end_matches('/').to_string();
    let statement = receipt::statement(
        &record,
        &ReceiptSubject {
            verifier_id: &verifier,
            resource_uri: &resource,
            policy_uri: None,
        },
    );
    Ok(HttpResponse::Ok().json(receipt::sign(key, &statement)))
}
