//! The gate's metrics, kept with the `prometheus-client` crate and rendered
//! by `/metrics` in the OpenMetrics text format (which Prometheus scrapes
//! as it does its own text format).
//!
//! Counters and histograms live here, updated where things happen; what is
//! read at scrape time (requests not yet answered, per environment; the
//! audit checkpoint and anchoring lag) is passed to [`Metrics::render`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets, in seconds: 5 ms to about 80 s, doubling (a decision
/// may wait minutes for its inputs; those land in +Inf).
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

/// Time from a webhook to its final decision: inputs arriving late (a
/// verdict, reviews) count, so the tail is long.
fn decision_buckets() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformOutcome {
    platform: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabel {
    environment: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What `/metrics` reads at scrape time, besides the counters.
#[derive(Debug, Default)]
pub struct Scraped {
    /// Requests not yet answered (pending or being decided), when the
    /// store answered.
    pub open_requests: Option<u64>,
    /// Pending requests by environment, when the store answered.
    pub pending_by_environment: Option<BTreeMap<String, u64>>,
    /// Records covered by the latest signed checkpoint (0 without a
    /// signing key), when the trail keeps its Merkle tree.
    pub checkpoint_records: Option<u64>,
    /// Anchoring: the oldest unanchored record's wait, and the records the
    /// latest anchored checkpoint covers (with `[audit.anchor]`).
    pub anchor: Option<(Duration, u64)>,
    /// Used break-glass grants not yet reviewed, and those of them overdue.
    pub break_glass_unreviewed: Option<(u64, u64)>,
    /// Policy reloads (a new bundle revision, or SIGHUP): (ok, failed).
    pub policy_reloads: Option<(u64, u64)>,
}

/// Break-glass grants counted by step (each confirmation counts).
pub struct BreakGlassCounters {
    pub requested: Counter,
    pub confirmed: Counter,
    pub used: Counter,
    pub expired: Counter,
    pub reviewed: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The gate's metrics. Counter fields are handles into labelled families:
/// `inc()` them where the event happens.
pub struct Metrics {
    registry: Registry,
    pub webhooks_accepted: Counter,
    pub webhooks_duplicate: Counter,
    pub webhooks_rejected: Counter,
    pub attestations_accepted: Counter,
    pub attestations_rejected: Counter,
    pub verdicts_recorded: Counter,
    /// Verdict posts refused because their sha is not the posting token's.
    pub verdicts_sha_mismatch: Counter,
    pub decisions_approved: Counter,
    pub decisions_rejected: Counter,
    pub platform_calls_ok: Counter,
    pub platform_calls_failed: Counter,
    pub internal_errors: Counter,
    /// Tokens refused before their signature verified (garbage, unsigned,
    /// forged, of an unknown issuer): counted here, never audited one by one.
    pub tokens_refused_unverified: Counter,
    /// GitHub status reports posted while a request waits, by result.
    pub status_reports_ok: Counter,
    pub status_reports_failed: Counter,
    pub status_reports_skipped: Counter,
    reasons: Family<ReasonLabel, Counter>,
    webhook_to_decision: HistogramFamily<PlatformOutcome>,
    decision_to_call: HistogramFamily<PlatformOutcome>,
    platform_call: HistogramFamily<PlatformOutcome>,
    open_requests: Gauge,
    pending: Family<EnvironmentLabel, Gauge>,
    /// Break-glass grants by the step they took.
    pub break_glass: BreakGlassCounters,
    /// Lets one "token refused" log line through per second.
    pub(crate) token_log: LogBudget,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let mut labelled = |name: &str, help: &str, family: Family<_, Counter>| {
            registry.register(name, help, family.clone());
            family
        };
        let webhooks = labelled("webhooks", "Webhook deliveries by result", Family::default());
        let attestations = labelled("attestations", "OIDC attestations by result", Family::default());
        let verdicts = labelled("verdicts", "Verdicts by result", Family::default());
        let platform_calls = labelled("platform_calls", "Platform answers by result", Family::default());
        let status_reports = labelled(
            "status_reports",
            "GitHub status reports on waiting deployments, by result",
            Family::default(),
        );
        let with = |family: &Family<ResultLabel, Counter>, result| family.get_or_create_owned(&ResultLabel { result });
        let decisions: Family<OutcomeLabel, Counter> = Family::default();
        registry.register("decisions", "Final decisions by outcome", decisions.clone());
        let internal: Family<KindLabel, Counter> = Family::default();
        registry.register("internal_errors", "Evaluations that could not decide", internal.clone());
        let tokens_refused_unverified = Counter::default();
        registry.register(
            "tokens_refused_unverified",
            "Tokens refused before their signature verified (garbage, unsigned, forged, unknown issuer): counted, never audited",
            tokens_refused_unverified.clone(),
        );
        let reasons: Family<ReasonLabel, Counter> = Family::default();
        registry.register(
            "decision_reasons",
            "Reason codes of final decisions, by outcome (a decision counts once per reason)",
            reasons.clone(),
        );
        let histograms = |registry: &mut Registry, name: &str, help: &str| {
            let family: HistogramFamily<PlatformOutcome> = Family::new_with_constructor(latency_buckets);
            registry.register_with_unit(name, help, Unit::Seconds, family.clone());
            family
        };
        let webhook_to_decision: HistogramFamily<PlatformOutcome> = Family::new_with_constructor(decision_buckets);
        registry.register_with_unit(
            "webhook_to_decision",
            "From the webhook's arrival to the final decision, by platform and outcome",
            Unit::Seconds,
            webhook_to_decision.clone(),
        );
        let decision_to_call = histograms(
            &mut registry,
            "decision_to_platform_call",
            "From the final decision to the platform call (the decision's durable audit included), by platform and outcome",
        );
        let platform_call = histograms(
            &mut registry,
            "platform_call",
            "The platform call's latency, retries included, by platform and outcome",
        );
        let open_requests = Gauge::default();
        registry.register("open_requests", "Requests not yet answered", open_requests.clone());
        let pending: Family<EnvironmentLabel, Gauge> = Family::default();
        registry.register("pending_requests", "Pending requests by environment", pending.clone());
        let grants: Family<StateLabel, Counter> = Family::default();
        registry.register(
            "break_glass_grants",
            "Break-glass grant steps by state (each confirmation counts)",
            grants.clone(),
        );
        let step = |state| grants.get_or_create_owned(&StateLabel { state });
        let break_glass = BreakGlassCounters {
            requested: step("requested"),
            confirmed: step("confirmed"),
            used: step("used"),
            expired: step("expired"),
            reviewed: step("reviewed"),
        };
        Metrics {
            webhooks_accepted: with(&webhooks, "accepted"),
            webhooks_duplicate: with(&webhooks, "duplicate"),
            webhooks_rejected: with(&webhooks, "rejected"),
            attestations_accepted: with(&attestations, "accepted"),
            attestations_rejected: with(&attestations, "rejected"),
            verdicts_recorded: with(&verdicts, "recorded"),
            verdicts_sha_mismatch: with(&verdicts, "sha_mismatch"),
            decisions_approved: decisions.get_or_create_owned(&OutcomeLabel { outcome: "approved" }),
            decisions_rejected: decisions.get_or_create_owned(&OutcomeLabel { outcome: "rejected" }),
            platform_calls_ok: with(&platform_calls, "ok"),
            platform_calls_failed: with(&platform_calls, "failed"),
            status_reports_ok: with(&status_reports, "ok"),
            status_reports_failed: with(&status_reports, "failed"),
            status_reports_skipped: with(&status_reports, "skipped"),
            internal_errors: internal.get_or_create_owned(&KindLabel { kind: "evaluate" }),
            tokens_refused_unverified,
            reasons,
            webhook_to_decision,
            decision_to_call,
            platform_call,
            open_requests,
            pending,
            break_glass,
            registry,
            token_log: LogBudget::default(),
        }
    }
}

impl Metrics {
    /// A final decision: its outcome, each reason code, and how long after
    /// the webhook it came.
    pub fn decided(&self, platform: &'static str, outcome: &'static str, reasons: &[&str], since_webhook: Duration) {
        match outcome {
            "approved" => self.decisions_approved.inc(),
            _ => self.decisions_rejected.inc(),
        };
        for reason in reasons {
            self.reasons
                .get_or_create(&ReasonLabel {
                    outcome,
                    reason: (*reason).to_string(),
                })
                .inc();
        }
        self.webhook_to_decision
            .get_or_create(&PlatformOutcome { platform, outcome })
            .observe(since_webhook.as_secs_f64());
    }

    /// A platform call for a decision of `outcome`: the wait since the
    /// decision, and the call's own latency. `ok` is the call's result.
    pub fn platform_called(
        &self,
        platform: &'static str,
        outcome: &'static str,
        since_decision: Option<Duration>,
        call: Duration,
        ok: bool,
    ) {
        if ok {
            self.platform_calls_ok.inc();
        } else {
            self.platform_calls_failed.inc();
        }
        if let Some(wait) = since_decision {
            self.decision_to_call
                .get_or_create(&PlatformOutcome { platform, outcome })
                .observe(wait.as_secs_f64());
        }
        let result = if ok { "ok" } else { "failed" };
        self.platform_call
            .get_or_create(&PlatformOutcome {
                platform,
                outcome: result,
            })
            .observe(call.as_secs_f64());
    }

    /// The OpenMetrics text of every metric, with what was read at scrape
    /// time. The audit gauges appear only for what `scraped` holds.
    pub fn render(&self, scraped: &Scraped) -> String {
        if let Some(open) = scraped.open_requests {
            self.open_requests.set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        if let Some(by_env) = &scraped.pending_by_environment {
            self.pending.clear();
            for (environment, n) in by_env {
                self.pending
                    .get_or_create(&EnvironmentLabel {
                        environment: environment.clone(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        let mut audit = Registry::with_prefix("portcullis_audit");
        if let Some(size) = scraped.checkpoint_records {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(size).unwrap_or(i64::MAX));
            audit.register(
                "checkpoint_records",
                "Records covered by the latest signed checkpoint",
                g,
            );
        }
        if let Some((lag, anchored)) = scraped.anchor {
            let g: Gauge<f64, AtomicU64> = Gauge::default();
            g.set(lag.as_secs_f64());
            audit.register_with_unit(
                "anchor_lag",
                "How long the oldest record not yet in write-once storage has waited",
                Unit::Seconds,
                g,
            );
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(anchored).unwrap_or(i64::MAX));
            audit.register(
                "anchored_records",
                "Records covered by the latest anchored checkpoint",
                g,
            );
        }
        let mut scrape = Registry::with_prefix("portcullis");
        if let Some((unreviewed, overdue)) = scraped.break_glass_unreviewed {
            for (name, help, n) in [
                (
                    "break_glass_unreviewed",
                    "Used break-glass grants not yet reviewed",
                    unreviewed,
                ),
                (
                    "break_glass_reviews_overdue",
                    "Used break-glass grants not reviewed within review_within",
                    overdue,
                ),
            ] {
                let g: Gauge = Gauge::default();
                g.set(i64::try_from(n).unwrap_or(i64::MAX));
                scrape.register(name, help, g);
            }
        }
        if let Some((ok, failed)) = scraped.policy_reloads {
            let reloads: Family<ResultLabel, Counter> = Family::default();
            reloads.get_or_create(&ResultLabel { result: "ok" }).inc_by(ok);
            reloads.get_or_create(&ResultLabel { result: "failed" }).inc_by(failed);
            scrape.register(
                "policy_reloads",
                "Policy reloads (a new bundle revision, or SIGHUP) by result; a failed one keeps the running revision",
                reloads,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &audit))
            .and_then(|()| encode_registry(&mut out, &scrape))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    use super::{LogBudget, Metrics, Scraped};
    use std::time::Duration;

    #[test]
    fn one_line_per_second_with_the_count_held_back() {
        let budget = LogBudget::default();
        assert_eq!(budget.admit(100), Some(0));
        assert_eq!(budget.admit(100), None);
        assert_eq!(budget.admit(100), None);
        assert_eq!(budget.admit(101), Some(2));
        assert_eq!(budget.admit(101), None);
    }

    #[test]
    fn renders_counters_histograms_and_scraped_gauges() {
        let m = Metrics::default();
        m.webhooks_accepted.inc();
        m.decided(
            "github",
            "rejected",
            &["actor_not_approver", "verdict_denied"],
            Duration::from_millis(30),
        );
        m.platform_called(
            "github",
            "rejected",
            Some(Duration::from_millis(4)),
            Duration::from_millis(20),
            true,
        );
        let text = m.render(&Scraped {
            open_requests: Some(2),
            pending_by_environment: Some([("production".to_string(), 2)].into()),
            checkpoint_records: Some(7),
            anchor: Some((Duration::from_millis(1500), 5)),
            break_glass_unreviewed: Some((2, 1)),
            policy_reloads: Some((3, 1)),
        });
        m.break_glass.used.inc();
        let text = text + &m.render(&Scraped::default());
        for line in [
            "portcullis_break_glass_unreviewed 2",
            "portcullis_break_glass_reviews_overdue 1",
            "portcullis_policy_reloads_total{result=\"ok\"} 3",
            "portcullis_policy_reloads_total{result=\"failed\"} 1",
            "portcullis_break_glass_grants_total{state=\"used\"} 1",
            "portcullis_webhooks_total{result=\"accepted\"} 1",
            "portcullis_webhooks_total{result=\"duplicate\"} 0",
            "portcullis_decisions_total{outcome=\"rejected\"} 1",
            "portcullis_decision_reasons_total{outcome=\"rejected\",reason=\"actor_not_approver\"} 1",
            "portcullis_webhook_to_decision_seconds_count{platform=\"github\",outcome=\"rejected\"} 1",
            "portcullis_webhook_to_decision_seconds_bucket{le=\"0.05\",platform=\"github\",outcome=\"rejected\"} 1",
            "portcullis_decision_to_platform_call_seconds_count{platform=\"github\",outcome=\"rejected\"} 1",
            "portcullis_platform_call_seconds_count{platform=\"github\",outcome=\"ok\"} 1",
            "portcullis_platform_calls_total{result=\"ok\"} 1",
            "portcullis_open_requests 2",
            "portcullis_pending_requests{environment=\"production\"} 2",
            "portcullis_audit_checkpoint_records 7",
            "portcullis_audit_anchor_lag_seconds 1.5",
            "portcullis_audit_anchored_records 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Without the trail's tree, no audit gauges.
        let bare = m.render(&Scraped::default());
        assert!(!bare.contains("portcullis_audit_"), "{bare}");
    }
}
