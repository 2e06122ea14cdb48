//! Lost GitHub deliveries: GitHub never retries a webhook delivery, so a
//! `deployment_protection_rule` delivery that failed (portcullis answered
//! 503 while Redis was down, or was unreachable) would leave the deployment
//! waiting until its timeout. This reconciler finds such deliveries and asks
//! GitHub to deliver them again.
//!
//! Each run, on one replica at a time (the holder of the store lease
//! [`LEASE`], which lasts most of an interval and is not released, so the
//! cluster runs about once per `interval` whatever the replica count):
//! 1. lists the App's deliveries (`GET /app/hook/deliveries`, as the App,
//!    newest first, 100 a page, at most [`MAX_PAGES`] pages), back to
//!    `lookback`;
//! 2. groups them by `guid` (a redelivery keeps its event's guid) and keeps
//!    the `deployment_protection_rule` events none of whose attempts
//!    succeeded (a failure: `status_code` >= 400, or a `status` other than
//!    `OK`, such as a timeout), that were attempted at most
//!    [`MAX_ATTEMPTS`] times, and whose guid the gate has not processed
//!    (it records `github:{X-GitHub-Delivery}`, which is the guid);
//! 3. asks for the newest failed attempt of each to be delivered again
//!    (`POST /app/hook/deliveries/{id}/attempts`), oldest event first, at
//!    most `max_per_run`, checking before each that it still holds the lease.
//!
//! A redelivery that arrives twice, or after all, is deduplicated by the
//! webhook route like any delivery, so a wasted request costs nothing else.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::github::GithubClient;
use super::http::CallFailure;
use crate::config::{GithubConfig, RedeliverConfig};
use crate::state::{SharedStore, StateError};
use crate::time_fmt::parse_rfc3339;

/// The store lease that makes one replica at a time run the reconciler.
pub(crate) const LEASE: &str = "redeliver";
/// Pages of 100 deliveries read per run, at most.
pub(crate) const MAX_PAGES: usize = 10;
/// An event attempted this many times (first delivery and redeliveries) is
/// not asked for again: it fails for a reason a redelivery does not fix.
pub(crate) const MAX_ATTEMPTS: usize = 5;
const PER_PAGE: &str = "100";
const EVENT: &str = "deployment_protection_rule";
/// A page of 100 deliveries is about 40 KiB.
const MAX_BODY: usize = 1024 * 1024;

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedeliverReport {
    /// `false`: another replica ran (holds the lease); nothing else was done.
    pub ran: bool,
    /// Deliveries read within the lookback (every event).
    pub listed: usize,
    /// `deployment_protection_rule` events with no successful attempt.
    pub failed: usize,
    /// Of those, already processed by the gate (the reply was lost).
    pub already_processed: usize,
    /// Of those, attempted [`MAX_ATTEMPTS`] times already.
    pub given_up: usize,
    /// Delivery ids GitHub was asked to deliver again (and accepted).
    pub requested: Vec<u64>,
    /// Redelivery requests GitHub refused or that failed.
    pub request_failures: usize,
    /// Left for a later run by `max_per_run`.
    pub deferred: usize,
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("listing the App's webhook deliveries failed: {0}")]
    List(#[from] CallFailure),
    #[error("listing the App's webhook deliveries failed: GitHub answered {0} instead of 200")]
    ListStatus(u16),
    #[error("listing the App's webhook deliveries failed: the answer is not a list of deliveries: {0}")]
    ListMalformed(#[source] serde_json::Error),
}

/// One item of `GET /app/hook/deliveries` (the fields used).
#[derive(Debug, Deserialize)]
struct Delivery {
    id: u64,
    guid: String,
    delivered_at: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    status_code: i64,
    #[serde(default)]
    event: String,
}

impl Delivery {
    fn succeeded(&self) -> bool {
        (200..400).contains(&self.status_code) && self.status.eq_ignore_ascii_case("ok")
    }
}

/// The attempts of one event (one guid).
struct Event {
    ok: bool,
    attempts: usize,
    oldest: OffsetDateTime,
    /// The newest failed attempt: the one to redeliver.
    newest_failed: Option<(OffsetDateTime, u64)>,
}

/// Runs the reconciler every `config.interval` until `stop`, with the
/// leases and processed deliveries of `store` and an App client built from
/// `github`; returns at once when it is disabled, when `dry_run` (no
/// platform call is ever made), or without a usable App configuration
/// (logged).
pub async fn run_redeliver(
    store: SharedStore,
    github: GithubConfig,
    config: RedeliverConfig,
    dry_run: bool,
    stop: CancellationToken,
) {
    if !config.enabled {
        return;
    }
    if dry_run {
        info!("github.redeliver: not running in dry-run mode (it would call GitHub)");
        return;
    }
    let client = match GithubClient::new(&github) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "github.redeliver: not running");
            return;
        }
    };
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match redeliver_once(&store, &client, &config, OffsetDateTime::now_utc()).await {
            Ok(r) if r.ran && (r.failed > 0 || r.request_failures > 0) => info!(
                listed = r.listed,
                failed = r.failed,
                already_processed = r.already_processed,
                given_up = r.given_up,
                requested = r.requested.len(),
                request_failures = r.request_failures,
                deferred = r.deferred,
                "github.redeliver: run done"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "github.redeliver: run failed; retrying at the next interval"),
        }
    }
}

/// One run at `now` (see the module documentation), on `store`. Public so
/// tests drive it step by step.
pub async fn redeliver_once(
    store: &SharedStore,
    client: &GithubClient,
    config: &RedeliverConfig,
    now: OffsetDateTime,
) -> Result<RedeliverReport, RedeliverError> {
    let mut report = RedeliverReport::default();
    let holder = format!("redeliver-{}", uuid::Uuid::new_v4().simple());
    // Most of an interval, so that the next tick of any replica finds it expired.
    let ttl = config.interval.mul_f64(0.9).max(Duration::from_millis(100));
    let Some(lease) = store.acquire_lease(LEASE, &holder, ttl).await? else {
        return Ok(report);
    };
    report.ran = true;

    let cutoff = now - time::Duration::try_from(config.lookback).unwrap_or(time::Duration::HOUR);
    let events = list_failed(client, cutoff, &mut report).await?;

    let mut candidates: Vec<(String, Event)> = events.into_iter().filter(|(_, e)| !e.ok).collect();
    candidates.sort_by_key(|(_, e)| e.oldest);
    report.failed = candidates.len();
    for (guid, event) in candidates {
        let Some((_, delivery_id)) = event.newest_failed else {
            continue;
        };
        if event.attempts >= MAX_ATTEMPTS {
            report.given_up += 1;
            continue;
        }
        if store.delivery_seen(&format!("github:{guid}")).await? {
            report.already_processed += 1;
            continue;
        }
        if report.requested.len() >= config.max_per_run as usize {
            report.deferred += 1;
            continue;
        }
        if !store.lease_valid(&lease).await? {
            warn!("github.redeliver: the lease expired during the run; another replica goes on");
            break;
        }
        let url = client.endpoint(&["app", "hook", "deliveries", &delivery_id.to_string(), "attempts"]);
        match client.app_call(Method::POST, url, MAX_BODY).await {
            Ok(_) => {
                info!(guid = %guid, delivery = delivery_id, "github.redeliver: asked GitHub to deliver again");
                report.requested.push(delivery_id);
            }
            Err(f) if f.status.is_some() => {
                report.request_failures += 1;
                let message = f.message.unwrap_or_default();
                warn!(guid = %guid, delivery = delivery_id, status = f.status, message = %message, "github.redeliver: GitHub refused the redelivery");
            }
            Err(e) => {
                report.request_failures += 1;
                warn!(guid = %guid, delivery = delivery_id, error = %e, "github.redeliver: the redelivery request failed");
            }
        }
    }
    Ok(report)
}

/// Reads deliveries newest first back to `cutoff`, grouped by guid
/// (`deployment_protection_rule` events only).
async fn list_failed(
    client: &GithubClient,
    cutoff: OffsetDateTime,
    report: &mut RedeliverReport,
) -> Result<HashMap<String, Event>, RedeliverError> {
    let mut events: HashMap<String, Event> = HashMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = client.endpoint(&["app", "hook", "deliveries"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("per_page", PER_PAGE);
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
        }
        let answer = client.app_call(Method::GET, url, MAX_BODY).await?;
        if answer.status != reqwest::StatusCode::OK {
            return Err(RedeliverError::ListStatus(answer.status.as_u16()));
        }
        let page: Vec<Delivery> = serde_json::from_slice(&answer.body).map_err(RedeliverError::ListMalformed)?;
        let mut reached_cutoff = page.is_empty();
        for d in page {
            let Some(at) = parse_rfc3339(&d.delivered_at) else {
                continue;
            };
            if at < cutoff {
                reached_cutoff = true;
                continue;
            }
            report.listed += 1;
            if d.event != EVENT {
                continue;
            }
            let e = events.entry(d.guid.clone()).or_insert(Event {
                ok: false,
                attempts: 0,
                oldest: at,
                newest_failed: None,
            });
            e.attempts += 1;
            e.oldest = e.oldest.min(at);
            if d.succeeded() {
                e.ok = true;
            } else if e.newest_failed.is_none_or(|(t, _)| at > t) {
                e.newest_failed = Some((at, d.id));
            }
        }
        cursor = answer
            .headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_cursor);
        if reached_cutoff || cursor.is_none() {
            break;
        }
    }
    Ok(events)
}

/// The `cursor` of the `rel="next"` link. Only the cursor is taken: the
/// next URL is built from `github.api_url`, so a `Link` header cannot send
/// the App JWT elsewhere.
fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.split(';').any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\"")) {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let url = url::Url::parse(target).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == "cursor")
            .map(|(_, v)| v.into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_cursor_comes_from_the_next_link_only() {
        let link = r#"<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_12077215967>; rel="next", <https://api.github.com/app/hook/deliveries?per_page=2>; rel="first""#;
        assert_eq!(next_cursor(link).as_deref(), Some("v1_12077215967"));
        assert_eq!(next_cursor(r#"<https://api.github.com/x?cursor=a>; rel="prev""#), None);
        assert_eq!(next_cursor("garbage"), None);
    }

    #[test]
    fn success_needs_a_2xx_or_3xx_and_ok() {
        let d = |status: &str, code: i64| Delivery {
            id: 1,
            guid: "g".into(),
            delivered_at: String::new(),
            status: status.into(),
            status_code: code,
            event: EVENT.into(),
        };
        assert!(d("OK", 202).succeeded());
        assert!(!d("Invalid HTTP Response: 503", 503).succeeded());
        assert!(!d("timed out", 0).succeeded());
        assert!(!d("OK", 401).succeeded());
    }
}
