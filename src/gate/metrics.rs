//! The gate's counters, rendered by `/metrics`.

use std::sync::atomic::AtomicU64;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub webhooks_accepted: AtomicU64,
    pub webhooks_duplicate: AtomicU64,
    pub webhooks_rejected: AtomicU64,
    pub attestations_accepted: AtomicU64,
    pub attestations_rejected: AtomicU64,
    pub verdicts_recorded: AtomicU64,
    pub decisions_approved: AtomicU64,
    pub decisions_rejected: AtomicU64,
    pub platform_calls_ok: AtomicU64,
    pub platform_calls_failed: AtomicU64,
    pub internal_errors: AtomicU64,
}
