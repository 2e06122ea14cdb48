//! A Redis failover under load: portcullis with Redis state and audit
//! reached through Redis Sentinel (`redis+sentinel://…`) and
//! `state.min_replicas = 1`, a stream of GitHub deployments, and the primary
//! killed (SIGKILL) while deployments are in flight. Also: what too few
//! replica acknowledgements do to an audit append and a replicated write.
//!
//! Real parts: a primary `redis-server`, two replicas (so that the promoted
//! one still has a replica to acknowledge), three sentinels, the
//! application in process, the OpenID Provider, the recording GitHub API
//! mock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::replicas::join_all;
use crate::support::app::{App, WEBHOOK_SECRET};
use crate::support::github_mock::{GithubMock, Recorded, TEST_APP_ID, test_app_private_key};
use crate::support::oidc::{OidcProvider, TestKey, forge, github_claims, with_registered};
use crate::support::redis::{RedisServer, SentinelGroup};
use portcullis::audit::redis::{RedisAuditOptions, RedisAuditReader};
use portcullis::audit::{AuditEvent, AuditLog, EventKind, RedisAudit};
use portcullis::config::Config;
use portcullis::state::redis::RedisStore;
use portcullis::state::{Cas, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const PREFIX: &str = "fo:";
/// The fixture's deployment id.
const DEPLOYMENT_ID: u64 = 2345678901;
/// How long a deployment's HTTP calls are retried on 503 (as a CI job and
/// GitHub's redelivery would), and how long an outcome is waited for.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a deployment sent after the kill may take to be answered: the
/// failover itself, then a decision that failed on the promoted primary
/// before its second replica was attached waits out its lease (10 s) and is
/// re-driven; on a loaded machine (the whole suite at once) that has taken
/// past 20 s. What this test asserts is that nothing is lost or called
/// twice, not how fast.
const AFTER_KILL: Duration = Duration::from_secs(60);

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn request_id(run: u64) -> String {
    portcullis::webhook::github::request_id(REPO, run, Some(DEPLOYMENT_ID), "production")
}

/// The run a review call answers, from its path.
fn run_of(review: &Recorded) -> u64 {
    review
        .path
        .split('/')
        .nth(6)
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("unexpected review path {}", review.path))
}

/// The decision record a review call links to (`…/v1/audit/{id}`).
fn record_of(review: &Recorded) -> String {
    let comment = review
        .body
        .as_ref()
        .and_then(|b| b["comment"].as_str())
        .unwrap_or_default();
    comment
        .rsplit("/v1/audit/")
        .next()
        .filter(|id| id.starts_with("aud_"))
        .unwrap_or_else(|| panic!("no audit link in {comment:?}"))
        .trim()
        .to_string()
}

struct World {
    group: SentinelGroup,
    oidc: OidcProvider,
    gh: GithubMock,
    app: App,
}

impl World {
    async fn start() -> World {
        let group = SentinelGroup::start(2);
        let oidc = OidcProvider::start().await;
        let gh = GithubMock::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
shutdown_timeout = "5s"
rate_limit = false

[state]
backend = "redis"
url = "{url}"
key_prefix = "{PREFIX}"
min_replicas = 1
lease_ttl = "10s"

[audit]
backend = "redis"

[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "10s"

[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"

[environments.production]
approvers = ["octocat"]
require_claims = {{ ref = "refs/heads/main" }}
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]
"#,
            url = group.url(),
            api = gh.url(),
            issuer = oidc.issuer(),
        );
        let app = App::start_in(dir, &config, &[("GH_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
        World { group, oidc, gh, app }
    }

    fn token(&self, claims: Value) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        forge(
            TestKey::ProviderRs256,
            &with_registered(claims, &self.oidc.issuer(), "portcullis", now, 600),
        )
    }

    fn payload(&self, run: u64) -> Vec<u8> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/github/deployment_protection_rule.requested.json"
        ))
        .unwrap();
        let mut p: Value = serde_json::from_str(&text).unwrap();
        p["deployment_callback_url"] = json!(self.gh.callback_url("octo-org", "payments", run));
        p["environment"] = json!("production");
        p["deployment"]["sha"] = json!(sha(run));
        p["deployment"]["environment"] = json!("production");
        serde_json::to_vec(&p).unwrap()
    }

    /// One deployment of run `run`: its attestation, its allowing verdict,
    /// then GitHub's webhook; each sent again on 503 (Redis unavailable) for
    /// up to [`PATIENCE`], as a CI job's retry and GitHub's redelivery
    /// would. `true` once the webhook was accepted.
    async fn deploy(&self, run: u64) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let mut attest = github_claims(&sha(run));
        attest["repository"] = json!(REPO);
        attest["run_id"] = json!(run.to_string());
        attest["sub"] = json!(format!("repo:{REPO}:environment:production"));
        let mut gate = github_claims(&sha(run));
        gate["repository"] = json!(REPO);
        gate["job_workflow_ref"] = json!(GATE_WORKFLOW);
        gate["sub"] = json!(format!("repo:{REPO}:ref:refs/heads/main"));
        let verdict = json!({"environment": "production", "sha": sha(run), "allow": true});
        let body = self.payload(run);
        let delivery = format!("d-{run}");
        loop {
            let (code, body) = self
                .app
                .post_bearer("/v1/attestations", &self.token(attest.clone()), None)
                .await;
            match code {
                201 => break,
                503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("run {run}: attestation answered {code} {body}"),
            }
        }
        loop {
            let (code, body) = self
                .app
                .post_bearer("/v1/verdicts", &self.token(gate.clone()), Some(&verdict))
                .await;
            match code {
                201 => break,
                503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("run {run}: verdict answered {code} {body}"),
            }
        }
        loop {
            let (code, answer) = self
                .app
                .post_webhook("deployment_protection_rule", &delivery, &body)
                .await;
            match (code, answer["status"].as_str()) {
                (202, Some("accepted")) => return true,
                // Taken before Redis failed; its outcome is what it is.
                (202, Some("duplicate")) => return false,
                (503, _) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("run {run}: webhook answered {code} {answer}"),
            }
        }
    }

    /// Review calls by run.
    fn reviews_by_run(&self) -> BTreeMap<u64, Vec<Recorded>> {
        let mut out: BTreeMap<u64, Vec<Recorded>> = BTreeMap::new();
        for r in self.gh.reviews() {
            out.entry(run_of(&r)).or_default().push(r);
        }
        out
    }

    /// Waits until every run in `runs` has a review call, for up to `patience`.
    async fn wait_reviewed(&self, runs: impl Iterator<Item = u64> + Clone, what: &str, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let reviewed = self.reviews_by_run();
            let missing: Vec<u64> = runs.clone().filter(|r| !reviewed.contains_key(r)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: runs {missing:?} were not reviewed in {patience:?}; logs:\n{}",
                self.app.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The requests' statuses (`None`: no such request); a pending request
    /// not evaluated yet is `unevaluated`.
    async fn statuses(&self, runs: impl Iterator<Item = u64>) -> BTreeMap<u64, Option<String>> {
        let mut out = BTreeMap::new();
        for run in runs {
            let (code, body) = self.app.get(&format!("/v1/requests/{}", request_id(run))).await;
            let status = match (code, body["status"].as_str()) {
                (200, Some("pending")) if body["decision"].is_null() => Some("unevaluated".to_string()),
                (200, Some(status)) => Some(status.to_string()),
                (404, _) => None,
                _ => panic!("run {run}: GET answered {code} {body}"),
            };
            out.insert(run, status);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_under_load_loses_no_decision_record_and_calls_nobody_twice() {
    let began = Instant::now();
    let w = World::start().await;
    let old_master = w.group.primary.port;
    let started = began.elapsed();

    // Before: deployments decided and answered with the primary up.
    let before: Vec<u64> = (1_000..1_016).collect();
    for wave in before.chunks(8) {
        let accepted = join_all(wave.iter().map(|&run| w.deploy(run)).collect()).await;
        assert!(
            accepted.iter().all(|a| *a),
            "every delivery is accepted with the primary up"
        );
    }
    w.wait_reviewed(before.iter().copied(), "before the kill", PATIENCE)
        .await;

    // During: a wave in flight when the primary is killed, and after the
    // kill, new deployments at once (they meet the failover and retry).
    let during: Vec<u64> = (2_000..2_012).collect();
    let after: Vec<u64> = (3_000..3_012).collect();
    let reviews_before = w.gh.reviews().len();
    let mut killed_at = None;
    let mut failover = Duration::ZERO;
    let mut new_master = 0;
    let in_flight = join_all(during.iter().map(|&run| w.deploy(run)).collect());
    let kill_then_deploy = async {
        // Some of the wave answered, the rest in flight.
        let deadline = Instant::now() + PATIENCE;
        while w.gh.reviews().len() < reviews_before + 3 {
            assert!(Instant::now() < deadline, "the wave is not being decided");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.group.primary.sigkill();
        let at = Instant::now();
        killed_at = Some(at);
        let watch = async {
            let deadline = at + PATIENCE;
            loop {
                let named: Vec<Option<u16>> = w.group.sentinels.iter().map(|s| s.master_port(&w.group.name)).collect();
                if let Some(p) = named[0].filter(|p| *p != old_master && named.iter().all(|n| *n == Some(*p))) {
                    new_master = p;
                    failover = at.elapsed();
                    return;
                }
                assert!(Instant::now() < deadline, "no failover in {PATIENCE:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (accepted, ()) = tokio::join!(join_all(after.iter().map(|&run| w.deploy(run)).collect()), watch);
        accepted
    };
    let (during_accepted, after_accepted) = tokio::join!(in_flight, kill_then_deploy);
    let killed_at = killed_at.expect("killed");
    assert!(
        after_accepted.iter().all(|a| *a),
        "deliveries sent after the kill are accepted once the replica is promoted: {after_accepted:?}"
    );

    // The service kept deciding: every deployment sent after the kill is
    // approved, through the promoted replica.
    w.wait_reviewed(after.iter().copied(), "after the kill", AFTER_KILL)
        .await;
    let all_after = killed_at.elapsed();
    for run in &after {
        let req = w.app.wait_request(&request_id(*run), "done", AFTER_KILL).await;
        assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    }

    // Settle: nothing left `deciding` (a request abandoned mid-decision is
    // re-driven once its lease lapses) or unevaluated (an evaluation that
    // failed on Redis runs again 2 s later), so no further call can come. A
    // request may stay pending if an input it waits for was taken by the
    // old primary and lost with it: Redis replicates asynchronously.
    let all: Vec<u64> = before.iter().chain(&during).chain(&after).copied().collect();
    let deadline = Instant::now() + AFTER_KILL;
    let statuses = loop {
        let statuses = w.statuses(all.iter().copied()).await;
        if statuses
            .values()
            .all(|s| !matches!(s.as_deref(), Some("deciding" | "unevaluated")))
        {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "requests still deciding: {statuses:?}; logs:\n{}",
            w.app.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // No request got two review calls; every one approved.
    let reviews = w.reviews_by_run();
    for (run, calls) in &reviews {
        assert_eq!(calls.len(), 1, "run {run}: one review call, got {calls:?}");
        assert_eq!(calls[0].body.as_ref().unwrap()["state"], "approved");
        assert!(all.contains(run), "a review call for an unknown run {run}");
    }
    // Every request reported done was answered, and every answered one is done.
    for (run, status) in &statuses {
        assert_eq!(
            status.as_deref() == Some("done"),
            reviews.contains_key(run),
            "run {run}: status {status:?}, reviewed: {}",
            reviews.contains_key(run)
        );
    }

    // Every approval GitHub received has its decision record on the
    // promoted replica, read there directly.
    let promoted = format!("redis://127.0.0.1:{new_master}/0");
    let reader = RedisAuditReader::new(RedisStore::connect(&promoted, PREFIX).unwrap().connection(), PREFIX);
    let records = reader.query(&Default::default()).await.unwrap();
    let by_id: HashMap<&str, _> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    for (run, calls) in &reviews {
        let id = record_of(&calls[0]);
        let record = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("run {run}: decision record {id} is not on the promoted replica"));
        assert_eq!(record.event.event, EventKind::Decision, "{record:?}");
        assert_eq!(record.event.request.as_deref(), Some(request_id(*run).as_str()));
        assert_eq!(record.event.decision.as_deref(), Some("approved"));
    }

    // The chain still verifies: on the promoted replica, and through the
    // sentinel URL of the app's configuration, as `portcullis audit verify`
    // reads it.
    let report = reader
        .verify()
        .await
        .expect("the chain verifies on the promoted replica");
    assert_eq!(report.records, records.len() as u64);
    let text = std::fs::read_to_string(&w.app.config_path).unwrap();
    let config = Config::from_toml(&text, &|_| Some(WEBHOOK_SECRET.to_string())).unwrap();
    let through_sentinels = RedisAuditReader::from_config(&config).unwrap();
    assert_eq!(
        through_sentinels
            .verify()
            .await
            .expect("the chain verifies through the sentinels"),
        report
    );

    let count = |runs: &[u64]| runs.iter().filter(|r| reviews.contains_key(r)).count();
    let unanswered: Vec<(u64, Option<String>)> = during
        .iter()
        .filter(|r| !reviews.contains_key(r))
        .map(|r| (*r, statuses[r].clone()))
        .collect();
    eprintln!(
        "failover: setup {started:?}; {} approved before the kill; of {} in flight at the kill, {} accepted, {} approved \
         (unanswered, with their status: {unanswered:?}); {} of {} sent after the kill approved, all within \
         {all_after:?} of the kill; sentinels agreed on the promoted replica {failover:?} after the kill; {} audit \
         records; wall time {:?}",
        count(&before),
        during.len(),
        during_accepted.iter().filter(|a| **a).count(),
        count(&during),
        count(&after),
        after.len(),
        records.len(),
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replica_acknowledgements_fail_and_nothing_succeeds_silently() {
    let primary = RedisServer::start_in_group(None);
    let url = primary.url();
    let options = RedisAuditOptions {
        min_replicas: 1,
        replicated_append_timeout: Duration::from_millis(2500),
        ..Default::default()
    };
    let log = RedisAudit::open(&url, "ack:", options).await.unwrap();
    let store = RedisStore::connect(&url, "ack:").unwrap().with_min_replicas(1);

    // No replica: the append fails after its timeout, naming the setting,
    // and the log is not ready meanwhile.
    let started = Instant::now();
    let err = log
        .append(AuditEvent::new(EventKind::Decision).request("r1"))
        .await
        .expect_err("not acknowledged");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(err.to_string().contains("state.min_replicas"), "{err}");
    assert!(log.ping().await.is_err(), "not ready while records wait for replicas");
    let mut req = crate::state::request("req_ack", "77", OffsetDateTime::now_utc() + time::Duration::minutes(5));
    assert!(store.insert_request(&req).await.unwrap());
    let err = store
        .update_request_replicated(&req)
        .await
        .expect_err("not acknowledged");
    assert_eq!(
        err.to_string(),
        "state backend unavailable: redis: request req_ack written, but acknowledged by 0 of the 1 replica(s) \
         state.min_replicas asks for"
    );

    // A replica joins: the record that failed is stored first, the next one
    // after it, and the same write sent again is found written.
    let replica = RedisServer::start_in_group(Some(primary.port));
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        log.append(AuditEvent::new(EventKind::PlatformResult).request("r2")),
    )
    .await
    .expect("acknowledged once a replica is there")
    .unwrap();
    assert_eq!(second.seq, 2, "the failed append's record stayed queued and came first");
    log.ping().await.unwrap();
    assert_eq!(store.update_request_replicated(&req).await.unwrap(), Cas::Written(1));
    req.version = 1;
    assert_eq!(store.update_request_replicated(&req).await.unwrap(), Cas::Written(2));

    // The replica holds both records.
    let on_replica = RedisAuditReader::new(
        RedisStore::connect(&replica.url(), "ack:").unwrap().connection(),
        "ack:",
    );
    let records = on_replica.query(&Default::default()).await.unwrap();
    let requests: Vec<Option<&str>> = records.iter().map(|r| r.event.request.as_deref()).collect();
    assert_eq!(requests, [Some("r1"), Some("r2")]);
}
