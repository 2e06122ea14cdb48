//! HTTP routes. Handlers are thin: authenticate, parse, hand to the gate,
//! map the result to the contract's answer.

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tracing::{Instrument, info, info_span};

use super::ApiError;
use super::access::{authorize_read, bearer};
use super::ingress::{header, once_per_delivery, read_body, refuse_when_overloaded};
use super::rate_limit::limit_v1;
use super::slack_routes::{SlackRoutes, slack_webhook};
use super::sso::{self, Sso};
use super::tlog_routes;
use crate::audit::AuditFilter;
use crate::domain::{ErrorCode, PlatformOutcome, VerdictBody};
use crate::gate::Gate;
use crate::webhook::github::{GithubEvent, parse as parse_github, verify_signature};

/// The application's route table: every route, and the per-worker state of
/// the Slack and SSO routes. `/reviews/callback` comes before
/// `/reviews/{request}`, which would otherwise match it. Everything under
/// `/v1` passes the per-source rate limit first.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(SlackRoutes::default()))
        .app_data(web::Data::new(Sso::default()))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/webhooks/github", web::post().to(github_webhook))
        .route("/webhooks/gitlab", web::post().to(gitlab_webhook))
        .service(
            web::scope("/v1")
                .wrap(from_fn(limit_v1))
                .route("/attestations", web::post().to(post_attestation))
                .route("/verdicts", web::post().to(post_verdict))
                .route("/requests/{id}", web::get().to(get_request))
                .route("/requests/{id}/receipt", web::get().to(tlog_routes::receipt))
                .route("/audit", web::get().to(list_audit))
                // Before `/audit/{id}`, which would match it.
                .route("/audit/checkpoint", web::get().to(tlog_routes::checkpoint))
                .route("/audit/proof/inclusion", web::get().to(tlog_routes::inclusion))
                .route("/audit/proof/consistency", web::get().to(tlog_routes::consistency))
                .route("/audit/{id}", web::get().to(get_audit))
                .route("/keys", web::get().to(tlog_routes::keys))
                .route("/break-glass", web::get().to(super::break_glass_routes::list)),
        )
        .route("/webhooks/slack", web::post().to(slack_webhook))
        .route("/reviews/callback", web::get().to(sso::callback))
        // Before `/reviews/{request}`, which would match `/reviews/break-glass`.
        .route("/reviews/break-glass", web::get().to(sso::break_glass::ask_page))
        .route("/reviews/break-glass", web::post().to(sso::break_glass::ask_submit))
        .route(
            "/reviews/break-glass/grants/{grant}",
            web::get().to(sso::break_glass::grant_page),
        )
        .route(
            "/reviews/break-glass/grants/{grant}",
            web::post().to(sso::break_glass::grant_submit),
        )
        .route("/reviews/{request}", web::get().to(sso::start))
        .route("/reviews/{request}", web::post().to(sso::submit))
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::NotFound, "no such route"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(gate: web::Data<Gate>) -> HttpResponse {
    let state = gate.store.ping().await;
    let audit = gate.audit.ping().await;
    let lagging = gate.tlog().is_some_and(|t| t.anchor_lagging());
    let mut body = json!({
        "state": if state.is_ok() { "ok" } else { "unavailable" },
        "audit": if audit.is_ok() { "ok" } else { "unavailable" },
    });
    if let Some(t) = gate.tlog().filter(|t| t.anchoring()) {
        body["anchor"] = json!({
            "status": if lagging { "lagging" } else { "ok" },
            "lag_seconds": t.anchor_lag().as_secs_f64(),
            "anchored_records": t.anchored_size(),
        });
    }
    let policies = gate.policies().status();
    if gate.policies().reloadable() {
        body["policies"] = json!({
            "status": match (policies.loaded, &policies.last_error) {
                (false, _) => "not_loaded",
                (true, Some(_)) => "reload_failed",
                (true, None) => "ok",
            },
            "revision": policies.revision,
            "error": policies.last_error,
        });
    }
    if state.is_ok() && audit.is_ok() && !lagging && policies.loaded {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    if gate.config.server.metrics_read_token {
        authorize_read(&req, &gate.config.server)?;
    }
    let scraped = crate::gate::Scraped {
        open_requests: gate.store.open_requests().await.ok(),
        pending_by_environment: gate.store.pending_by_environment().await.ok(),
        checkpoint_records: gate.tlog().map(|t| t.latest().map_or(0, |c| c.size)),
        anchor: gate
            .tlog()
            .filter(|t| t.anchoring())
            .map(|t| (t.anchor_lag(), t.anchored_size())),
        break_glass_unreviewed: super::break_glass_routes::unreviewed_counts(&gate).await,
        policy_reloads: {
            let p = gate.policies().status();
            Some((p.reloads_ok, p.reloads_failed))
        },
    };
    Ok(HttpResponse::Ok()
        .content_type(crate::gate::METRICS_CONTENT_TYPE)
        .body(gate.metrics.render(&scraped)))
}

async fn github_webhook(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    let Some(gh) = gate.config.github.as_ref() else {
        return Err(ApiError::new(
            ErrorCode::PlatformNotConfigured,
            "GitHub is not configured",
        ));
    };
    let body = read_body(&req, payload, gate.config.server.max_body_bytes).await?;
    if let Err(e) = verify_signature(&gh.webhook_secrets, header(&req, "x-hub-signature-256"), &body) {
        gate.metrics.webhooks_rejected.inc();
        info!(code = %e.code(), "github webhook refused");
        return Err(e.into());
    }
    refuse_when_overloaded(gate.audit.as_ref())?;
    let event = header(&req, "x-github-event")
        .ok_or_else(|| ApiError::new(ErrorCode::HeaderMissing, "X-GitHub-Event is required"))?;
    let delivery = header(&req, "x-github-delivery")
        .ok_or_else(|| ApiError::new(ErrorCode::HeaderMissing, "X-GitHub-Delivery is required"))?;
    if delivery.len() > 128 {
        return Err(ApiError::new(ErrorCode::HeaderInvalid, "X-GitHub-Delivery is too long"));
    }
    let span = info_span!("webhook", platform = "github", delivery = %delivery, event = %event);
    async {
        match parse_github(event, &body, &gh.api_url)? {
            GithubEvent::Ping => Ok(HttpResponse::Ok().json(json!({"status": "pong"}))),
            GithubEvent::Ignored(what) => {
                Ok(HttpResponse::Accepted().json(json!({"status": "ignored", "event": what})))
            }
            GithubEvent::ProtectionRule(p) => {
                let dedup_key = format!("github:{delivery}");
                once_per_delivery(&gate, Some(&dedup_key), async {
                    let timeout = gate.pending_timeout(&p.environment);
                    let request = crate::webhook::github::deployment_request(
                        &gh.issuer,
                        timeout,
                        delivery,
                        &p,
                        OffsetDateTime::now_utc(),
                    );
                    let span = info_span!("request", request = %request.id, environment = %request.environment);
                    let gate2 = gate.clone().into_inner();
                    let (id, _) = gate2.receive_request(request).instrument(span).await?;
                    gate.metrics.webhooks_accepted.inc();
                    Ok(HttpResponse::Accepted().json(json!({"status": "accepted", "request": id})))
                })
                .await
            }
        }
    }
    .instrument(span)
    .await
}

async fn gitlab_webhook(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    use crate::webhook::gitlab::{GitlabEvent, dedup_key, parse, verify};
    let Some(gl) = gate.config.gitlab.as_ref() else {
        return Err(ApiError::new(
            ErrorCode::PlatformNotConfigured,
            "GitLab is not configured",
        ));
    };
    let body = read_body(&req, payload, gate.config.server.max_body_bytes).await?;
    let headers = |name: &str| header(&req, name).map(str::to_string);
    let now = OffsetDateTime::now_utc();
    if let Err(e) = verify(gl, &headers, &body, now) {
        gate.metrics.webhooks_rejected.inc();
        info!(code = %e.code(), "gitlab webhook refused");
        return Err(e.into());
    }
    refuse_when_overloaded(gate.audit.as_ref())?;
    let delivery = dedup_key(&headers);
    let span = info_span!(
        "webhook",
        platform = "gitlab",
        delivery = delivery.as_deref().unwrap_or("-")
    );
    async {
        let hook = match parse(&body)? {
            GitlabEvent::Ignored(kind) => {
                return Ok(HttpResponse::Accepted().json(json!({"status": "ignored", "event": kind})));
            }
            GitlabEvent::Deployment(hook) => hook,
        };
        let dedup = delivery.as_ref().map(|d| format!("gitlab:{d}"));
        once_per_delivery(
            &gate,
            dedup.as_deref(),
            gitlab_hook(&gate, delivery.as_deref().unwrap_or("-"), &hook, now),
        )
        .await
    }
    .instrument(span)
    .await
}

async fn gitlab_hook(
    gate: &web::Data<Gate>,
    delivery: &str,
    hook: &crate::webhook::gitlab::DeploymentHook,
    now: OffsetDateTime,
) -> Result<HttpResponse, ApiError> {
    use crate::webhook::gitlab::DeploymentStatus;
    let gate = gate.clone().into_inner();
    if hook.status != DeploymentStatus::Blocked {
        gate.gitlab_status(hook).await?;
        return Ok(
            HttpResponse::Accepted().json(json!({"status": "recorded", "deployment_status": hook.status.as_str()}))
        );
    }
    let Some(api) = gate.gitlab_api() else {
        return Err(ApiError::new(
            ErrorCode::PlatformUnavailable,
            "gitlab.token is needed to read the deployment's full commit and pipeline",
        ));
    };
    // The hook carries only the short sha and no pipeline: ask the API.
    let info = api.deployment(hook.project_id, hook.deployment_id).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read the deployment from GitLab");
        ApiError::new(
            ErrorCode::PlatformUnavailable,
            "GitLab's deployments API did not answer; try again",
        )
    })?;
    let timeout = gate.pending_timeout(&hook.environment);
    let issuer = gate
        .config
        .gitlab
        .as_ref()
        .map(|g| g.issuer.clone())
        .unwrap_or_default();
    let request = crate::webhook::gitlab::deployment_request(&issuer, timeout, delivery, hook.deployment(), &info, now);
    let span = info_span!("request", request = %request.id, environment = %request.environment);
    let (id, _) = gate.receive_request(request).instrument(span).await?;
    gate.metrics.webhooks_accepted.inc();
    Ok(HttpResponse::Accepted().json(json!({"status": "accepted", "request": id})))
}

fn token_of(req: &HttpRequest) -> Result<&str, ApiError> {
    bearer(req).ok_or_else(|| {
        ApiError::new(
            ErrorCode::TokenMalformed,
            "an `Authorization: Bearer <OIDC ID token>` header is required",
        )
    })
}

async fn post_attestation(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    let token = token_of(&req)?;
    refuse_when_overloaded(gate.audit.as_ref())?;
    if token.len() > 16 * 1024 {
        return Err(ApiError::new(ErrorCode::TokenMalformed, "the token is too long"));
    }
    let att = gate.clone().into_inner().attest(token).await?;
    Ok(HttpResponse::Created().json(json!({
        "attestation_id": att.id,
        "issuer": att.issuer,
        "subject": att.subject,
        "actor": att.actor,
        "repository": att.repository,
        "run": att.run,
        "expires_at": crate::time_fmt::rfc3339(att.expires_at),
    })))
}

async fn post_verdict(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    let token = token_of(&req)?.to_string();
    refuse_when_overloaded(gate.audit.as_ref())?;
    let body = read_body(&req, payload, gate.config.server.max_body_bytes).await?;
    let body: VerdictBody = serde_json::from_slice(&body).map_err(|e| {
        let msg: String = e.to_string().chars().take(200).collect();
        ApiError::new(
            ErrorCode::InvalidVerdict,
            format!("the verdict body is malformed: {msg}"),
        )
    })?;
    let verdict = gate.clone().into_inner().record_verdict(&token, body).await?;
    Ok(HttpResponse::Created().json(json!({
        "repository": verdict.repository,
        "sha": verdict.sha,
        "environment": verdict.environment,
        "allow": verdict.allow,
        "source": verdict.source,
        "policy": verdict.policy,
        "policy_revision": verdict.policy_revision,
        "evidence_digest": verdict.evidence_digest,
        "reasons": verdict.reasons,
        "recorded_at": crate::time_fmt::rfc3339(verdict.recorded_at),
    })))
}

async fn get_request(
    req: HttpRequest,
    path: web::Path<String>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let id = path.into_inner();
    match gate
        .store
        .get_request(&id)
        .await
        .map_err(|e| ApiError::from(crate::gate::GateError::from(e)))?
    {
        Some(r) => {
            let audit = r.decision_record.as_ref().map(|id| gate.audit_link(id));
            let mut body = serde_json::to_value(&r).unwrap_or_else(|_| json!({}));
            if let Some(obj) = body.as_object_mut() {
                obj.insert("audit_url".into(), json!(audit));
                if let Some(result) = &r.platform_result
                    && let Some(shown) = obj.get_mut("platform_result").and_then(|v| v.as_object_mut())
                {
                    shown.insert("detail".into(), json!(PlatformOutcome::public_detail(result)));
                }
            }
            Ok(HttpResponse::Ok().json(body))
        }
        None => Err(ApiError::new(ErrorCode::RequestNotFound, format!("no request `{id}`"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    environment: Option<String>,
    sha: Option<String>,
    actor: Option<String>,
    request: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn list_audit(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let q: AuditQuery = web::Query::<AuditQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.to_string()))?
        .into_inner();
    let since = match q.since.as_deref() {
        Some(s) => Some(
            crate::time_fmt::parse_rfc3339(s)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, "since must be an RFC 3339 time"))?,
        ),
        None => None,
    };
    let filter = AuditFilter {
        environment: q.environment,
        sha: q.sha,
        actor: q.actor,
        request: q.request,
        since,
        limit: Some(q.limit.unwrap_or(100).min(1000)),
    };
    let records = gate.audit.query(&filter).await.map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        ApiError::new(ErrorCode::AuditUnavailable, "the audit trail is unavailable; try again")
    })?;
    Ok(HttpResponse::Ok().json(json!({"records": records})))
}

async fn get_audit(req: HttpRequest, path: web::Path<String>, gate: web::Data<Gate>) -> Result<HttpResponse, ApiError> {
    authorize_read(&req, &gate.config.server)?;
    let id = path.into_inner();
    match gate.audit.get(&id).await.map_err(|e| {
        tracing::error!(error = %e, "audit read failed");
        ApiError::new(ErrorCode::AuditUnavailable, "the audit trail is unavailable; try again")
    })? {
        Some(r) => Ok(HttpResponse::Ok().json(r)),
        None => Err(ApiError::new(
            ErrorCode::AuditRecordNotFound,
            format!("no audit record `{id}`"),
        )),
    }
}
