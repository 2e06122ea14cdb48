//! The integration tests, in one test binary (one compile and one link for
//! all of them). Each module is one area; `support` holds the real parts
//! they run (an OpenID Provider, API mocks, Redis servers, the application).

#[path = "../support/mod.rs"]
mod support;

#[path = "../opa/common.rs"]
mod common;

mod anchor_s3;
mod architecture;
mod audit;
mod break_glass;
mod config_files;
mod decision_props;
mod e2e_github;
mod e2e_gitlab;
mod e2e_policy;
mod failover;
mod github_api;
mod gitlab_api;
mod harness;
mod identity;
mod metrics;
mod openapi_conformance;
mod pipeline_cli;
mod policy_bundle_differential;
mod policy_bundles;
mod policy_cli;
mod policy_differential;
mod policy_opa_mode;
mod replicas;
mod server_limits;
mod slack;
mod sso_browser;
mod state;
mod status_reports;
mod tlog;
mod tlog_anchor;
mod webhook_fixtures;
