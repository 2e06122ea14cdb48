//! portcullis: a deploy authorizer between CI pipelines and protected
//! environments.
//!
//! The flow, module by module:
//! - [`webhook`]: GitHub, GitLab and Slack ingress; signatures, dedup, parsing
//!   into a [`domain::DeploymentRequest`].
//! - [`identity`]: OIDC ID tokens of CI jobs, verified against trusted issuers
//!   into [`domain::Attestation`]s.
//! - [`verdict`]: Rego policies (regorus, or an OPA server) evaluated over
//!   posted scan evidence into verdicts.
//! - [`decision`]: the pure engine: policy, request, attestation, verdict,
//!   reviews and time in; approved, rejected or pending with reasons out.
//! - [`gate`]: the orchestration: re-evaluates requests as inputs arrive,
//!   takes the lease, audits durably, then answers the platform.
//! - [`platform`]: GitHub and GitLab API calls.
//! - [`audit`]: the hash-chained, append-only audit trail (file or Redis).
//! - [`slack`]: the living Slack message of each request and its reviews.
//! - [`state`]: memory and Redis backends behind one async interface.
//! - [`config`]: strict TOML configuration, validated as a whole.
//! - [`server`]: the actix-web application and its routes.

pub mod audit;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod decision;
pub mod domain;
pub mod gate;
pub mod identity;
pub mod platform;
pub(crate) mod redis_conn;
pub mod server;
pub mod slack;
pub mod state;
pub mod time_fmt;
pub mod verdict;
pub mod webhook;
