//! The gate's counters, rendered by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Tokens refused before their signature verified (garbage, unsigned,
    /// forged, of an unknown issuer): counted here, never audited one by one.
    pub tokens_refused_unverified: AtomicU64,
    /// Verdict posts refused because their sha is not the posting token's.
    pub verdicts_sha_mismatch: AtomicU64,
    /// Break-glass grants by the step they took.
    pub break_glass: BreakGlassCounters,
    /// Lets one "token refused" log line through per second.
    pub(crate) token_log: LogBudget,
}

/// Break-glass grants counted by step (each confirmation counts).
#[derive(Default)]
pub struct BreakGlassCounters {
    pub requested: AtomicU64,
    pub confirmed: AtomicU64,
    pub used: AtomicU64,
    pub expired: AtomicU64,
    pub reviewed: AtomicU64,
}

/// One log line per second for a noisy event, and how many were held back
/// since the last one: a flood of bad input cannot flood the log.
#[derive(Default)]
pub(crate) struct LogBudget {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// `Some(held back since the last line)` when a line may be written now.
    pub(crate) fn admit(&self, now_unix: u64) -> Option<u64> {
        let last = self.last_second.load(Ordering::Relaxed);
        if now_unix > last
            && self
                .last_second
                .compare_exchange(last, now_unix, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    #[test]
    fn one_line_per_second_with_the_count_held_back() {
        let budget = LogBudget::default();
        assert_eq!(budget.admit(100), Some(0));
        assert_eq!(budget.admit(100), None);
        assert_eq!(budget.admit(100), None);
        assert_eq!(budget.admit(101), Some(2));
        assert_eq!(budget.admit(101), None);
    }
}
