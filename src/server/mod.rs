//! The actix-web application: one place that binds the listener, builds the
//! shared state and serves the route table of [`routes::configure`], so
//! tests run the real thing.
//!
//! - `routes`: the route table, and the health, metrics, GitHub and GitLab
//!   webhook, attestation, verdict and read handlers.
//! - `ingress`: body limit, header reading and webhook dedup, shared by the
//!   webhook routes.
//! - `slack_routes`: Slack interactivity (the review buttons).
//! - `sso`: reviews through the organisation's OpenID Provider.
//! - `break_glass_routes`: `GET /v1/break-glass` and the break-glass metrics.
//! - `access`: who may use the read API.
//! - `rate_limit`: per-source token buckets on `/v1/*`.
//! - `error`: the one error body.

mod access;
mod break_glass_routes;
mod error;
mod ingress;
mod rate_limit;
mod routes;
mod slack_routes;
mod sso;
mod tlog_routes;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub(crate) use error::ApiError;

use crate::audit::AuditLog;
use crate::config::{AuditBackend, Config, StateBackend};
use crate::gate::{Gate, Platforms};
use crate::identity::Verifier;
use crate::state::SharedStore;

/// Why the service could not start. Printed as one line by the CLI.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot open the audit trail: {0}")]
    Audit(String),
    #[error("cannot reach the state backend: {0}")]
    State(String),
    #[error("{0}")]
    Platform(String),
    #[error("policy: {0}")]
    Policy(String),
}

/// Loads the policies at start: evidence schemas, loose Rego files and OPA
/// bundles (verified when a key is set). A module that does not compile,
/// a data file that does not parse or a bundle that fails verification
/// stops the start, naming its file and line; so does an evaluated
/// environment whose query names no rule.
pub async fn load_policies(config: &Config, http: reqwest::Client) -> Result<crate::verdict::PolicySet, StartError> {
    let opa = crate::verdict::OpaClient::new(http.clone());
    crate::verdict::PolicySet::load(config, http, opa)
        .await
        .map_err(|e| StartError::Policy(e.to_string()))
}

/// A built, bound application: `port()` is known before `run`.
///
/// [`Application::build`] gives the one the binary serves: SIGTERM (and
/// SIGINT) stop it. [`Application::build_without_signals`] gives one that
/// leaves the process's signals alone, for a program that runs it inside
/// itself (the integration tests) and stops it through
/// [`Application::server_handle`].
pub struct Application {
    addr: SocketAddr,
    server: Server,
    gate: Arc<Gate>,
    stop: CancellationToken,
    /// Re-read local policy sources on SIGHUP (the binary; not in tests
    /// that run the application inside their own process).
    reload_on_hup: bool,
}

impl Application {
    /// Builds and binds the application; it stops on SIGTERM or SIGINT.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        Self::build_with(config, true).await
    }

    /// Builds and binds the application without handling any OS signal:
    /// it stops only through [`Application::server_handle`].
    pub async fn build_without_signals(config: Config) -> Result<Application, StartError> {
        Self::build_with(config, false).await
    }

    async fn build_with(config: Config, os_signals: bool) -> Result<Application, StartError> {
        let config = Arc::new(config);
        let store = build_store(&config).await?;
        let audit = build_audit(&config, &store).await?;
        let http = crate::outbound::client()
            .map_err(|e| StartError::Platform(format!("cannot build the HTTP client: {e}")))?;
        let verifier = Arc::new(Verifier::new(config.issuers.clone(), http.clone()));
        let platforms = build_platforms(&config)?;
        let policies = Arc::new(load_policies(&config, http.clone()).await?);
        let gate = Gate::with_policies(
            config.clone(),
            store,
            audit,
            verifier,
            platforms,
            tokio::runtime::Handle::current(),
            policies,
        );
        gate.set_tlog(build_tlog(&config, &gate.audit).await?);
        if let Some(slack) = &config.slack {
            let notifier = crate::slack::SlackNotifier::from_config(slack).map_err(StartError::Platform)?;
            gate.set_notifier(notifier);
        }

        let listener = TcpListener::bind(config.server.listen).map_err(|source| StartError::Bind {
            addr: config.server.listen.to_string(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen.to_string(),
            source,
        })?;
        let data = web::Data::from(gate.clone());
        let limit = config.server.max_body_bytes;
        // Abuse limits: one rate limiter shared by every worker.
        let rate_limiter = web::Data::new(rate_limit::RateLimiter::new(&config.server));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(rate_limiter.clone())
                .app_data(web::PayloadConfig::new(limit))
                .app_data(web::JsonConfig::default().limit(limit))
                .configure(routes::configure)
        })
        .shutdown_timeout(config.server.shutdown_timeout.as_secs())
        // Abuse limits: slow clients cannot hold connections open.
        .client_request_timeout(config.server.client_request_timeout)
        .client_disconnect_timeout(config.server.client_disconnect_timeout)
        .keep_alive(config.server.keep_alive)
        .listen(listener)
        .map_err(|source| StartError::Bind {
            addr: config.server.listen.to_string(),
            source,
        })?;
        let server = if os_signals { server } else { server.disable_signals() }.run();
        Ok(Application {
            addr,
            server,
            gate,
            stop: CancellationToken::new(),
            reload_on_hup: os_signals,
        })
    }

    /// The port actually bound (the configured one, or the one the system
    /// chose for port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Stops the server from inside the process: `stop(true)` as SIGTERM
    /// does (graceful), `stop(false)` as SIGINT does (open connections
    /// closed at once). Either way [`Application::run_until_stopped`] then
    /// lets the decisions in flight finish and returns.
    pub fn server_handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM/SIGINT, or [`Application::server_handle`]);
    /// then stops taking requests, lets the requests and decisions in flight
    /// finish, and returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let sweeper = tokio::spawn(self.gate.clone().run_sweeper(self.stop.clone()));
        let tlog = self.gate.tlog().cloned();
        let checkpointer = tlog.as_ref().filter(|t| t.signing_key().is_some()).map(|t| {
            tokio::spawn(
                t.clone()
                    .run(self.gate.config.audit.checkpoint_every, self.stop.clone()),
            )
        });
        if let Some(gl) = &self.gate.config.gitlab {
            for poll in gl.poll.clone() {
                tokio::spawn(self.gate.clone().run_gitlab_poller(poll, self.stop.clone()));
            }
        }
        if let Some(gh) = &self.gate.config.github {
            tokio::spawn(crate::platform::redeliver::run_redeliver(
                self.gate.store.clone(),
                gh.clone(),
                gh.redeliver.clone(),
                self.gate.config.server.dry_run,
                self.stop.clone(),
            ));
        }
        let policies = self.gate.policies().clone();
        tokio::spawn(policies.clone().run_pollers(self.stop.clone()));
        if self.reload_on_hup && policies.reloadable() {
            // Registered before the listening line: a SIGHUP from then on reloads.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hup) => {
                    tokio::spawn(reload_on_sighup(policies, hup, self.stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP: policies reload only from bundle servers")
                }
            }
        }
        info!(port = self.addr.port(), "listening on {}", self.addr);
        let result = self.server.await;
        info!("shutting down: finishing decisions in flight");
        self.stop.cancel();
        let _ = sweeper.await;
        self.gate.drain(self.gate.config.server.shutdown_timeout).await;
        // Records queued without waiting become durable before the exit.
        if let Err(e) = self.gate.audit.close().await {
            tracing::error!(error = %e, "the audit trail could not be closed cleanly");
        }
        // The last checkpoint covers every record, and is anchored.
        if let Some(task) = checkpointer {
            let _ = task.await;
            if let Some(t) = &tlog
                && let Err(e) = t.checkpoint().await
            {
                tracing::error!(error = %e, "the final checkpoint failed");
            }
        }
        info!("stopped");
        result
    }
}

/// Re-reads the local policy sources on each SIGHUP until `stop`.
async fn reload_on_sighup(
    policies: Arc<crate::verdict::PolicySet>,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                info!("SIGHUP: reloading the local policy files and bundles");
                let _ = policies.reload_local().await;
            }
        }
    }
}

async fn build_store(config: &Config) -> Result<SharedStore, StartError> {
    match &config.state.backend {
        StateBackend::Memory => Ok(Arc::new(crate::state::MemoryStore::new())),
        StateBackend::Redis { url, key_prefix } => {
            // Connects lazily: the service starts while Redis is down, and
            // `/readyz` (503) and webhooks (503) say so until it is back.
            let store = crate::state::redis::RedisStore::connect(url.expose(), key_prefix)
                .map_err(|e| StartError::State(e.to_string()))?
                .with_min_replicas(config.state.min_replicas);
            Ok(Arc::new(store))
        }
    }
}

async fn build_audit(config: &Config, _store: &SharedStore) -> Result<Arc<dyn AuditLog>, StartError> {
    match &config.audit.backend {
        AuditBackend::File { path } => {
            let log = crate::audit::FileAudit::open(path)
                .await
                .map_err(|e| StartError::Audit(e.to_string()))?;
            Ok(Arc::new(log))
        }
        AuditBackend::Redis => {
            let StateBackend::Redis { url, key_prefix } = &config.state.backend else {
                return Err(StartError::Audit(
                    "audit.backend = \"redis\" needs state.backend = \"redis\"".into(),
                ));
            };
            let options = crate::audit::redis::RedisAuditOptions {
                require_persistence: config.audit.require_persistence,
                min_replicas: config.state.min_replicas,
                ..Default::default()
            };
            let log = crate::audit::RedisAudit::open(url.expose(), key_prefix, options)
                .await
                .map_err(|e| StartError::Audit(e.to_string()))?;
            Ok(Arc::new(log))
        }
    }
}

/// The Merkle tree over the trail, checked against the latest checkpoint:
/// a trail cut short, rewritten or missing stops the start here.
async fn build_tlog(config: &Config, audit: &Arc<dyn AuditLog>) -> Result<Arc<crate::audit::tlog::Tlog>, StartError> {
    use crate::audit::tlog::Tlog;
    let key = match &config.audit.signing_key {
        Some(pem) => Some(
            crate::signing::SigningKey::from_pem(&config.audit.log_name, pem.expose())
                .map_err(|e| StartError::Audit(format!("audit.signing_key: {e}")))?,
        ),
        None => None,
    };
    if config.audit.new_trail {
        let started = Tlog::start_new_trail(audit)
            .await
            .map_err(|e| StartError::Audit(e.to_string()))?;
        tracing::warn!(
            superseded = started.previous.as_ref().map(|c| c.size),
            "a new trail was started on purpose (--new-trail); the earlier checkpoints are set aside"
        );
    }
    let mut tlog = Tlog::open(audit.clone(), key, &config.audit.log_name)
        .await
        .map_err(|e| StartError::Audit(e.to_string()))?;
    if let Some(anchor) = &config.audit.anchor {
        if tlog.signing_key().is_none() {
            return Err(StartError::Audit(
                "audit.anchor: anchoring writes signed checkpoints; set audit.signing_key too".into(),
            ));
        }
        let s3 = crate::audit::anchor::S3TrailAnchor::new(anchor)
            .map_err(|e| StartError::Audit(format!("audit.anchor: {e}")))?;
        tlog = tlog
            .with_anchor(Arc::new(s3), anchor.max_anchor_lag)
            .await
            .map_err(|e| StartError::Audit(e.to_string()))?;
    }
    Ok(Arc::new(tlog))
}

fn build_platforms(config: &Config) -> Result<Platforms, StartError> {
    let mut p = Platforms::default();
    if let Some(gh) = &config.github {
        // The App reads workflow runs whenever it has credentials (dry run
        // too); it answers only outside dry run, where they are required.
        let has_credentials = gh.app_id.is_some() && gh.private_key.is_some();
        if has_credentials || !config.server.dry_run {
            let client = Arc::new(
                crate::platform::github::GithubClient::new(gh)
                    .map_err(|e| StartError::Platform(format!("github: {e}")))?,
            );
            p.github_api = Some(client.clone());
            if !config.server.dry_run {
                p.github = Some(client);
            }
        }
    }
    if let Some(gl) = &config.gitlab
        && gl.token.is_some()
    {
        let client = Arc::new(
            crate::platform::gitlab::GitlabClient::new(gl).map_err(|e| StartError::Platform(format!("gitlab: {e}")))?,
        );
        p.gitlab_api = Some(client.clone());
        if !config.server.dry_run {
            p.gitlab = Some(client);
        }
    }
    Ok(p)
}
