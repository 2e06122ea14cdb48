//! The actix-web application: one place that binds the listener, builds the
//! shared state and registers every route, so tests run the real thing.

mod error;
mod routes;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::ApiError;

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
}

/// A built, bound application: `port()` is known before `run`.
pub struct Application {
    port: u16,
    server: Server,
    gate: Arc<Gate>,
    stop: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let config = Arc::new(config);
        let store = build_store(&config).await?;
        let audit = build_audit(&config, &store).await?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::Platform(format!("cannot build the HTTP client: {e}")))?;
        let verifier = Arc::new(Verifier::new(config.issuers.clone(), http));
        let platforms = build_platforms(&config)?;
        let gate = Gate::new(
            config.clone(),
            store,
            audit,
            verifier,
            platforms,
            tokio::runtime::Handle::current(),
        );

        let listener = TcpListener::bind(config.server.listen).map_err(|source| StartError::Bind {
            addr: config.server.listen.to_string(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.server.listen.to_string(),
                source,
            })?
            .port();
        let data = web::Data::from(gate.clone());
        let limit = config.server.max_body_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(limit))
                .app_data(web::JsonConfig::default().limit(limit))
                .configure(routes::configure)
        })
        .shutdown_timeout(config.server.shutdown_timeout.as_secs())
        .listen(listener)
        .map_err(|source| StartError::Bind {
            addr: config.server.listen.to_string(),
            source,
        })?
        .run();
        Ok(Application {
            port,
            server,
            gate,
            stop: CancellationToken::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Serves until SIGTERM/SIGINT; then stops taking requests, lets the
    /// requests and decisions in flight finish, and returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let sweeper = tokio::spawn(self.gate.clone().run_sweeper(self.stop.clone()));
        if let Some(gl) = &self.gate.config.gitlab {
            for poll in gl.poll.clone() {
                tokio::spawn(self.gate.clone().run_gitlab_poller(poll, self.stop.clone()));
            }
        }
        info!(port = self.port, "listening on 127.0.0.1:{}", self.port);
        let result = self.server.await;
        info!("shutting down: finishing decisions in flight");
        self.stop.cancel();
        let _ = sweeper.await;
        self.gate.drain(self.gate.config.server.shutdown_timeout).await;
        info!("stopped");
        result
    }
}

async fn build_store(config: &Config) -> Result<SharedStore, StartError> {
    match &config.state.backend {
        StateBackend::Memory => Ok(Arc::new(crate::state::MemoryStore::new())),
        StateBackend::Redis { .. } => Err(StartError::State("the redis state backend is not built yet".into())),
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
        AuditBackend::Redis => Err(StartError::Audit("the redis audit backend is not built yet".into())),
    }
}

fn build_platforms(config: &Config) -> Result<Platforms, StartError> {
    let mut p = Platforms::default();
    if let Some(gh) = &config.github
        && !config.server.dry_run
    {
        let client =
            crate::platform::github::GithubClient::new(gh).map_err(|e| StartError::Platform(format!("github: {e}")))?;
        p.github = Some(Arc::new(client));
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
