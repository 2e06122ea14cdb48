//! portcullis: a deploy authorizer between CI pipelines and protected
//! environments.
//!
//! The flow, module by module, lowest layer first (a module uses only the
//! ones above it in this list; `tests/integration/architecture.rs` checks
//! that the module graph has no cycles):
//! - [`crypto`], [`time_fmt`], [`outbound`]: SHA-256, HMAC, constant-time
//!   comparison, Standard Webhooks keys; RFC 3339 times; the HTTP client for
//!   discovery, JWKS and OPA (no redirects).
//! - [`signing`]: the audit key (Ed25519): signed-note checkpoints, DSSE
//!   receipts, the JWKS of `/v1/keys`.
//! - `redis_conn` (crate-internal): the one Redis connection builder (direct,
//!   or through Redis Sentinel), used by the Redis store and the Redis audit
//!   trail; `[state] url` is checked with it.
//! - [`domain`]: the values that flow through the gate (requests,
//!   attestations, verdicts, reviews, run attempts), the decision's reason
//!   codes and the HTTP API's error codes.
//! - [`config`]: strict TOML configuration, validated as a whole into typed
//!   settings; secrets only from the environment or files.
//! - [`decision`]: the pure engine. Each contract rule is one function
//!   (`decision::rules`, and `decision::reviews` for reviews and reviewer
//!   eligibility); the gate, the Slack buttons and the SSO pages ask them.
//! - [`state`]: memory and Redis stores behind one async interface
//!   (insert-if-absent, compare-and-set, fenced leases).
//! - [`audit`]: the hash-chained, append-only audit trail: one group-commit
//!   writer over file, Redis and memory sinks; the Merkle tree over it,
//!   signed checkpoints and proofs (`audit::tlog`).
//! - [`identity`]: OIDC ID tokens of CI jobs, verified against trusted
//!   issuers into attestations; reviewer aliases for Slack and SSO.
//! - [`verdict`]: Rego policies (regorus, or an OPA server) evaluated over
//!   posted evidence, checked first against the environment's evidence
//!   schema; policies from loose files and OPA bundles (signed, polled,
//!   swapped atomically); `verdict::evaluate_evidence` serves `serve` and
//!   `decide` alike.
//! - [`platform`]: GitHub and GitLab API calls through one retrying send with
//!   typed failures; the answer comment; GitHub's redelivery reconciler.
//! - [`webhook`]: GitHub and GitLab ingress: signatures, parsing, and the
//!   [`domain::DeploymentRequest`] each delivery asks for.
//! - [`gate`]: the orchestration: takes inputs, re-evaluates the requests
//!   they may unblock, and acts on final decisions under a lease: audit
//!   durably, answer the platform, audit the answer.
//! - [`slack`]: the living Slack message of each request and its review
//!   buttons.
//! - [`server`]: the actix-web application: one route table, error codes to
//!   HTTP statuses, the read API's access rules, rate limits, SSO review pages.
//! - [`cli`]: the binary's commands (`serve`, `check-config`, `decide`,
//!   `policy test`/`eval`, `audit verify`/`query`, `keygen`, `receipt
//!   verify`), and those CI jobs run: `attest`, `evidence` (scanner
//!   reports read into the evidence bundle), `verdict`.

pub mod audit;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod decision;
pub mod domain;
pub mod gate;
pub mod identity;
pub mod outbound;
pub mod platform;
pub(crate) mod redis_conn;
pub mod server;
pub mod signing;
pub mod slack;
pub mod state;
pub mod time_fmt;
pub mod verdict;
pub mod webhook;
