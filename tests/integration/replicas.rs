//! Several replicas sharing one Redis (state and audit): exactly one
//! platform call per request, a replica killed mid-decision, a Redis
//! restart, lost GitHub deliveries, and a property test over random
//! interleavings of inputs across in-process gates.
//!
//! Real parts: a `redis-server` per test, the replicas (in process; the
//! `portcullis` binary where one is killed with SIGKILL), the OpenID
//! Provider, the recording GitHub API mock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::app::{App, Run, WEBHOOK_SECRET};
use crate::support::github_mock::{GithubMock, Reply, TEST_APP_ID, delivery_item, review_path, test_app_private_key};
use crate::support::oidc::{OidcProvider, TestKey, forge, github_claims, with_registered};
use crate::support::redis::RedisServer;
use portcullis::audit::redis::{RedisAuditOptions, RedisAuditReader};
use portcullis::audit::{AuditEvent, AuditLog, EventKind, RedisAudit, verify_lines};
use portcullis::config::Config;
use portcullis::domain::{DeploymentRequest, Platform, RequestStatus};
use portcullis::gate::{Gate, Platforms, VerdictBody};
use portcullis::platform::redeliver::{RedeliverReport, redeliver_once};
use portcullis::platform::{CallResult, PlatformClient};
use portcullis::state::redis::RedisStore;
use serde_json::{Value, json};
use time::OffsetDateTime;

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "pc:";

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn config_text(redis: &str, issuer: &str, api: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
shutdown_timeout = "5s"

[state]
backend = "redis"
url = "{redis}"
key_prefix = "{PREFIX}"
lease_ttl = "3s"

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
{extra}
"#
    )
}

/// Redis, the OpenID Provider, the GitHub mock and `n` replicas.
struct Cluster {
    redis: RedisServer,
    oidc: OidcProvider,
    gh: GithubMock,
    run: Run,
    apps: Vec<Option<App>>,
}

impl Cluster {
    /// `n` replicas in process.
    async fn start(n: usize) -> Cluster {
        Self::start_on(Run::InProcess, n).await
    }

    async fn start_on(run: Run, n: usize) -> Cluster {
        let redis = RedisServer::start();
        let oidc = OidcProvider::start().await;
        let gh = GithubMock::start().await;
        let mut cluster = Cluster {
            redis,
            oidc,
            gh,
            run,
            apps: Vec::new(),
        };
        for _ in 0..n {
            let app = cluster.start_replica("").await;
            cluster.apps.push(Some(app));
        }
        cluster
    }

    async fn start_replica(&self, extra: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
        let config = config_text(&self.redis.url(), &self.oidc.issuer(), &self.gh.url(), extra);
        App::launch_in(self.run, dir, &config, &[("GH_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await
    }

    fn app(&self, i: usize) -> &App {
        self.apps[i].as_ref().expect("replica is running")
    }

    fn live(&self) -> impl Iterator<Item = &App> {
        self.apps.iter().flatten()
    }

    /// Kills replica `i` with SIGKILL (dropping a binary `App` kills it).
    fn kill(&mut self, i: usize) {
        assert_eq!(self.run, Run::Binary, "SIGKILL needs the replicas as processes");
        self.apps[i] = None;
    }

    fn payload(&self, run: u64, sha: &str) -> Vec<u8> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/github/deployment_protection_rule.requested.json"
        ))
        .unwrap();
        let mut p: Value = serde_json::from_str(&text).unwrap();
        p["deployment_callback_url"] = json!(self.gh.callback_url("octo-org", "payments", run));
        p["environment"] = json!("production");
        p["deployment"]["sha"] = json!(sha);
        p["deployment"]["environment"] = json!("production");
        serde_json::to_vec(&p).unwrap()
    }

    fn token(&self, claims: Value) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        forge(
            TestKey::ProviderRs256,
            &with_registered(claims, &self.oidc.issuer(), "portcullis", now, 600),
        )
    }

    async fn attest(&self, app: &App, run: u64, sha: &str) {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["run_id"] = json!(run.to_string());
        c["sub"] = json!(format!("repo:{REPO}:environment:production"));
        let (code, body) = app.post_bearer("/v1/attestations", &self.token(c), None).await;
        assert_eq!(code, 201, "{body}");
    }

    async fn verdict(&self, app: &App, sha: &str, allow: bool) -> (u16, Value) {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["job_workflow_ref"] = json!(GATE_WORKFLOW);
        c["sub"] = json!(format!("repo:{REPO}:ref:refs/heads/main"));
        let body = json!({"environment": "production", "sha": sha, "allow": allow});
        app.post_bearer("/v1/verdicts", &self.token(c), Some(&body)).await
    }

    fn reviews_for(&self, run: u64) -> Vec<crate::support::github_mock::Recorded> {
        let path = review_path("octo-org", "payments", run);
        self.gh.reviews().into_iter().filter(|r| r.path == path).collect()
    }

    async fn wait_reviews(&self, run: u64, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.reviews_for(run).len() < n {
            assert!(
                Instant::now() < deadline,
                "run {run}: fewer than {n} review call(s); logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        self.apps
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| format!("--- replica {i}\n{}", a.logs())))
            .collect()
    }

    /// `portcullis audit verify` on the Redis chain, through a live replica's
    /// configuration; returns the record count it reports.
    fn verify_audit(&self) -> u64 {
        let app = self.live().next().expect("a live replica");
        let out = app.cli(&["audit", "verify"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "audit verify failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let count = stdout
            .strip_prefix("audit chain OK: ")
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok());
        count.unwrap_or_else(|| panic!("unexpected verify output: {stdout}"))
    }

    fn audit_query(&self, args: &[&str]) -> Vec<Value> {
        let app = self.live().next().expect("a live replica");
        let mut all = vec!["audit", "query"];
        all.extend_from_slice(args);
        let out = app.cli(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The fixture's deployment id: every delivery here is a first attempt.
const DEPLOYMENT_ID: u64 = 2345678901;

fn request_id(run: u64) -> String {
    portcullis::webhook::github::request_id(REPO, run, Some(DEPLOYMENT_ID), "production")
}

async fn wait_done(app: &App, run: u64) -> Value {
    app.wait_request(&request_id(run), "done", WAIT).await
}

// ----- concurrent replicas -------------------------------------------------

async fn every_replica_gets_every_delivery(replicas: usize, runs: u64) {
    let c = Cluster::start(replicas).await;
    let base = 10_000 * replicas as u64;
    // Inputs land on different replicas: any replica takes any input.
    for k in 0..runs {
        let run = base + k;
        c.attest(c.app(k as usize % replicas), run, &sha(run)).await;
        assert_eq!(
            c.verdict(c.app((k as usize + 1) % replicas), &sha(run), true).await.0,
            201
        );
    }
    // The same delivery (body and id) to every replica at once.
    let mut sends = Vec::new();
    for k in 0..runs {
        let run = base + k;
        let body = c.payload(run, &sha(run));
        for app in c.live() {
            let (body, delivery) = (body.clone(), format!("d-{run}"));
            sends.push(async move { app.post_webhook("deployment_protection_rule", &delivery, &body).await });
        }
    }
    let answers = join_all(sends).await;
    let mut accepted = 0;
    for (code, body) in &answers {
        assert_eq!(*code, 202, "{body}");
        match body["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => {}
            other => panic!("unexpected answer {other:?}: {body}"),
        }
    }
    assert_eq!(accepted, runs, "each delivery is accepted once");
    for k in 0..runs {
        let run = base + k;
        let req = wait_done(c.app(k as usize % replicas), run).await;
        assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    }
    // Let any duplicate call show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..runs {
        let reviews = c.reviews_for(base + k);
        assert_eq!(
            reviews.len(),
            1,
            "run {}: exactly one review call; logs:\n{}",
            base + k,
            c.logs()
        );
        assert_eq!(reviews[0].body.as_ref().unwrap()["state"], "approved");
    }
    // attestation, verdict, request, decision, platform result per run.
    assert_eq!(c.verify_audit(), 5 * runs);
    let decisions = c
        .audit_query(&[])
        .into_iter()
        .filter(|r| r["event"] == "decision")
        .count();
    assert_eq!(decisions as u64, runs, "one decision record per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_receive_the_same_deliveries_and_call_once_each() {
    every_replica_gets_every_delivery(2, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_receive_the_same_deliveries_and_call_once_each() {
    every_replica_gets_every_delivery(3, 12).await;
}

pub(crate) async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    // Polled concurrently on this task (no 'static bound needed).
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

// ----- a replica killed mid-decision ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_during_the_platform_call_is_taken_over_without_a_second_approval() {
    let mut c = Cluster::start_on(Run::Binary, 2).await;
    let run = 31_001;
    // The first review call hangs (the replica dies during it); GitHub answers
    // a repeat with 422 "already reviewed".
    c.gh.script(
        &review_path("octo-org", "payments", run),
        [Reply::normal().delay(Duration::from_secs(8)), Reply::status(422)],
    );
    c.attest(c.app(0), run, &sha(run)).await;
    c.verdict(c.app(1), &sha(run), true).await;
    let body = c.payload(run, &sha(run));
    let (a, b) = tokio::join!(
        c.app(0).post_webhook("deployment_protection_rule", "d-kill", &body),
        c.app(1).post_webhook("deployment_protection_rule", "d-kill", &body)
    );
    assert_eq!((a.0, b.0), (202, 202));
    c.wait_reviews(run, 1).await;
    // The replica that decided holds the lease and is inside the call.
    let holder = (0..2)
        .find(|&i| c.app(i).logs().contains("decided"))
        .expect("a replica decided");
    let survivor = 1 - holder;
    let killed_at = Instant::now();
    c.kill(holder);

    let req = wait_done(c.app(survivor), run).await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "taken over only after the lease expired"
    );
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(
        (
            req["platform_result"]["ok"].as_bool(),
            req["platform_result"]["status"].as_u64()
        ),
        (Some(true), Some(422))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reviews = c.reviews_for(run);
    assert_eq!(reviews.len(), 2, "the call in flight and one idempotent repeat");
    assert_eq!(reviews[1].status, 422);
    assert!(reviews.iter().all(|r| r.body.as_ref().unwrap()["state"] == "approved"));
    assert!(
        c.app(survivor).logs().contains("re-driving a decision left in flight"),
        "{}",
        c.logs()
    );

    c.verify_audit();
    let records = c.audit_query(&["--request", &request_id(run)]);
    let events: Vec<&str> = records.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["request_received", "decision", "platform_result"],
        "the decision is recorded once"
    );
}

// ----- a Redis restart ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_gives_503s_then_recovers_and_loses_nothing() {
    let mut c = Cluster::start(2).await;
    let (pending_run, inflight_run, lost_run) = (41_001, 41_002, 41_003);
    // Accepted before the stop, waiting for its verdict.
    c.attest(c.app(0), pending_run, &sha(pending_run)).await;
    let (code, body) = c
        .app(0)
        .post_webhook(
            "deployment_protection_rule",
            "d-pending",
            &c.payload(pending_run, &sha(pending_run)),
        )
        .await;
    assert_eq!((code, body["status"].as_str()), (202, Some("accepted")));
    // Decided, its review call in flight while Redis stops.
    c.gh.script(
        &review_path("octo-org", "payments", inflight_run),
        [Reply::normal().delay(Duration::from_secs(2)), Reply::status(422)],
    );
    c.attest(c.app(1), inflight_run, &sha(inflight_run)).await;
    c.verdict(c.app(0), &sha(inflight_run), true).await;
    c.attest(c.app(0), lost_run, &sha(lost_run)).await;
    c.verdict(c.app(1), &sha(lost_run), true).await;
    let (code, _) = c
        .app(1)
        .post_webhook(
            "deployment_protection_rule",
            "d-inflight",
            &c.payload(inflight_run, &sha(inflight_run)),
        )
        .await;
    assert_eq!(code, 202);
    c.wait_reviews(inflight_run, 1).await;

    c.redis.stop();
    // Webhooks get 503 (GitHub records a failed, redeliverable delivery), and
    // neither replica is ready.
    let lost_body = c.payload(lost_run, &sha(lost_run));
    let (code, body) = c
        .app(0)
        .post_webhook("deployment_protection_rule", "d-lost", &lost_body)
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("state_unavailable")),
        "{body}"
    );
    for app in c.live() {
        let (code, body) = app.get("/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["state"], "unavailable");
    }

    // Down long enough for the call in flight to return meanwhile (its
    // replica cannot record the result) and for its lease to lapse.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.redis.restart();
    for app in c.live() {
        let deadline = Instant::now() + WAIT;
        while app.get("/readyz").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready after the restart; logs:\n{}",
                app.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The redelivered webhook (same delivery id) is taken now.
    let (code, body) = c
        .app(1)
        .post_webhook("deployment_protection_rule", "d-lost", &lost_body)
        .await;
    assert_eq!((code, body["status"].as_str()), (202, Some("accepted")), "{body}");
    // The request accepted before the stop is still there, and decides.
    assert_eq!(c.verdict(c.app(1), &sha(pending_run), true).await.0, 201);

    for (run, app) in [(pending_run, 0), (lost_run, 1), (inflight_run, 0)] {
        let req = wait_done(c.app(app), run).await;
        assert_eq!(req["decision"]["outcome"], "approved", "{req}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.reviews_for(pending_run).len(), 1);
    assert_eq!(c.reviews_for(lost_run).len(), 1);
    let inflight = c.reviews_for(inflight_run);
    assert_eq!(
        inflight.len(),
        2,
        "the call in flight, then one idempotent repeat after the restart: {inflight:?}"
    );
    assert_eq!(inflight[1].status, 422);
    assert!(
        c.logs().contains("re-driving a decision left in flight"),
        "{}",
        c.logs()
    );
    c.verify_audit();
    for run in [pending_run, inflight_run, lost_run] {
        let records = c.audit_query(&["--request", &request_id(run)]);
        let decisions = records.iter().filter(|r| r["event"] == "decision").count();
        assert_eq!(decisions, 1, "run {run}: {records:?}");
    }
}

// ----- the audit chain in Redis ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_chain_group_appends_and_the_export_verifies() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut figures = Vec::new();
    for (prefix, max_batch) in [("g1:", 1usize), ("g256:", 256)] {
        let options = RedisAuditOptions {
            max_batch,
            ..Default::default()
        };
        let writers: Vec<Arc<RedisAudit>> = (0..3)
            .map(|_| Arc::new(RedisAudit::connect(&url, prefix, options).unwrap()))
            .collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (w, log) in writers.iter().enumerate() {
            for i in 0..400 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let ev = AuditEvent::new(EventKind::Decision).request(format!("w{w}-{i}"));
                    if i % 2 == 0 {
                        log.append(ev).await.map(|_| ())
                    } else {
                        log.append_nowait(ev).expect("queued");
                        Ok(())
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // A durable append after the nowait ones makes them durable too.
        for log in &writers {
            log.append(AuditEvent::new(EventKind::PlatformResult)).await.unwrap();
        }
        let elapsed = started.elapsed();
        let reader = RedisAuditReader::new(RedisStore::connect(&url, prefix).unwrap().connection(), prefix);
        let mut out = Vec::new();
        let exported = reader.export(&mut out).await.unwrap();
        let report = verify_lines(&out[..]).expect("the export verifies");
        assert_eq!((report.records, exported.records), (1203, 1203));
        assert_eq!(report.head_hash, exported.head.hash);
        let stats: Vec<_> = writers.iter().map(|w| w.stats()).collect();
        let calls: u64 = stats.iter().map(|s| s.batches).sum();
        let conflicts: u64 = stats.iter().map(|s| s.conflicts).sum();
        assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), 1203);
        figures.push(format!(
            "max_batch {max_batch}: 1203 records by 3 writers in {elapsed:?} ({:.0}/s), {calls} script calls, {conflicts} conflicts, largest batch {}",
            1203.0 / elapsed.as_secs_f64(),
            stats.iter().map(|s| s.largest_batch).max().unwrap_or(0)
        ));
        // get and query read the same records.
        let first = reader.query(&Default::default()).await.unwrap();
        assert_eq!(first.len(), 1203);
        assert_eq!(writers[0].get(&first[10].id).await.unwrap().as_ref(), Some(&first[10]));
        let one = portcullis::audit::AuditFilter {
            request: Some("w1-7".into()),
            ..Default::default()
        };
        assert_eq!(writers[2].query(&one).await.unwrap().len(), 1);
        if max_batch > 1 {
            assert!(
                calls < 1203,
                "concurrent appends share script calls: {}",
                figures.join("\n")
            );
        }
    }
    eprintln!("{}", figures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_is_refused_by_name_unless_allowed() {
    let redis = RedisServer::start_ephemeral();
    let err = RedisAudit::open(&redis.url(), "np:", RedisAuditOptions::default())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("appendonly") && msg.contains("audit.require_persistence"),
        "{msg}"
    );
    let allowed = RedisAuditOptions {
        require_persistence: false,
        ..Default::default()
    };
    let log = RedisAudit::open(&redis.url(), "np:", allowed).await.expect("allowed");
    log.append(AuditEvent::new(EventKind::Decision)).await.unwrap();

    // Through the binary: the service refuses to start, naming the setting.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\ndry_run = true\n\
         [state]\nbackend = \"redis\"\nurl = \"{}\"\n[audit]\nbackend = \"redis\"\n",
        redis.url()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("appendonly") && stderr.contains("audit.require_persistence"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hides_config_is_used_with_a_warning() {
    // Managed Redis: CONFIG is not allowed, so persistence cannot be checked.
    let redis = RedisServer::start_without_config_command();
    let log = RedisAudit::open(&redis.url(), "mg:", RedisAuditOptions::default())
        .await
        .expect("starts");
    assert_eq!(
        log.reader().persistence().await.unwrap(),
        portcullis::audit::redis::Persistence::Unknown
    );
    let record = log.append(AuditEvent::new(EventKind::Decision)).await.unwrap();
    assert_eq!(record.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_enqueued_while_redis_is_down_are_stored_after_it_returns() {
    let mut redis = RedisServer::start();
    let log = RedisAudit::open(&redis.url(), "down:", RedisAuditOptions::default())
        .await
        .unwrap();
    log.append(AuditEvent::new(EventKind::Decision).request("before"))
        .await
        .unwrap();
    redis.stop();
    log.append_nowait(AuditEvent::new(EventKind::RequestReceived).request("during"))
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.ping().await.is_err(), "not ready while records wait");
    redis.restart();
    let after = tokio::time::timeout(
        WAIT,
        log.append(AuditEvent::new(EventKind::PlatformResult).request("after")),
    )
    .await
    .expect("stored once Redis is back")
    .unwrap();
    assert_eq!(after.seq, 3, "the record enqueued during the outage came first");
    log.ping().await.unwrap();
    let mut out = Vec::new();
    log.export(&mut out).await.unwrap();
    assert_eq!(verify_lines(&out[..]).unwrap().records, 3);
}

// ----- lost GitHub deliveries ---------------------------------------------------

struct RedeliverWorld {
    _dir: tempfile::TempDir,
    _redis: RedisServer,
    gh: GithubMock,
    gates: Vec<Arc<Gate>>,
    client: portcullis::platform::github::GithubClient,
}

async fn redeliver_world(replicas: usize) -> RedeliverWorld {
    let redis = RedisServer::start();
    let gh = GithubMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    std::fs::write(&key, test_app_private_key()).unwrap();
    let config = Arc::new(
        Config::from_toml(
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
                 [state]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"rd:\"\n[audit]\nbackend = \"redis\"\n\
                 [github]\napp_id = {TEST_APP_ID}\nprivate_key = {{ file = \"{}\" }}\n\
                 webhook_secrets = [{{ env = \"S\" }}]\napi_url = \"{}\"\n",
                redis.url(),
                key.display(),
                gh.url()
            ),
            &|_| Some("s".into()),
        )
        .unwrap(),
    );
    let mut gates = Vec::new();
    for _ in 0..replicas {
        let store = Arc::new(RedisStore::connect(&redis.url(), "rd:").unwrap());
        let audit = Arc::new(RedisAudit::connect(&redis.url(), "rd:", RedisAuditOptions::default()).unwrap());
        let verifier = Arc::new(portcullis::identity::Verifier::new(vec![], reqwest::Client::new()));
        gates.push(Gate::new(
            config.clone(),
            store,
            audit,
            verifier,
            Platforms::default(),
            tokio::runtime::Handle::current(),
        ));
    }
    let client = portcullis::platform::github::GithubClient::new(&gh.github_config()).unwrap();
    RedeliverWorld {
        _dir: dir,
        _redis: redis,
        gh,
        gates,
        client,
    }
}

fn redeliver_config(max_per_run: u32) -> portcullis::config::RedeliverConfig {
    portcullis::config::RedeliverConfig {
        enabled: true,
        interval: Duration::from_secs(1),
        lookback: Duration::from_secs(3600),
        max_per_run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_unprocessed_deliveries_are_redelivered_once_per_interval_bounded() {
    let w = redeliver_world(2).await;
    let now = OffsetDateTime::now_utc();
    let min = |m: i64| now - time::Duration::minutes(m);
    let pr = "deployment_protection_rule";
    let mut items = vec![
        // Newest first, as GitHub lists them.
        delivery_item(110, "g-redelivered-ok", min(1), 202, pr, true),
        delivery_item(109, "g-new-fail", min(2), 503, pr, false),
        delivery_item(108, "g-timeout", min(3), 0, pr, false),
        delivery_item(107, "g-processed", min(4), 503, pr, false),
        delivery_item(106, "g-push", min(5), 500, "push", false),
        delivery_item(105, "g-ok", min(6), 202, pr, false),
        delivery_item(104, "g-redelivered-ok", min(7), 503, pr, false),
        delivery_item(103, "g-old-fail", min(8), 503, pr, false),
    ];
    // Paging: filler successes push the oldest failure to a later page.
    for i in 0..150u64 {
        items.insert(
            0,
            delivery_item(1000 + i, &format!("g-fill-{i}"), min(0), 202, pr, false),
        );
    }
    items.push(delivery_item(50, "g-too-old", min(120), 503, pr, false));
    w.gh.set_deliveries(items);
    // The gate processed this one (GitHub timed out waiting for the answer).
    w.gates[0]
        .store
        .mark_delivery("github:g-processed", Duration::from_secs(60))
        .await
        .unwrap();

    // Two replicas at once: one runs, the other finds the lease taken.
    let two = redeliver_config(2);
    let (a, b) = tokio::join!(
        redeliver_once(&w.gates[0].store, &w.client, &two, now),
        redeliver_once(&w.gates[1].store, &w.client, &two, now)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let report: RedeliverReport = if a.ran { a.clone() } else { b.clone() };
    assert!(a.ran != b.ran, "exactly one replica runs: {a:?} {b:?}");
    assert_eq!(report.listed, 158, "everything within the lookback, over two pages");
    assert_eq!(report.failed, 4, "{report:?}");
    assert_eq!(report.already_processed, 1);
    assert_eq!(report.requested, vec![103, 108], "oldest first, at most max_per_run");
    assert_eq!(report.deferred, 1);
    assert_eq!(w.gh.redelivery_requests(), vec![103, 108]);
    assert_eq!(w.gh.delivery_listings().len(), 2, "two pages");
    let listing = &w.gh.delivery_listings()[1];
    assert!(
        listing
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ey")),
        "as the App (JWT)"
    );

    // Within the interval nobody runs again; after it, the rest is asked for.
    let again = redeliver_once(&w.gates[1].store, &w.client, &redeliver_config(2), now)
        .await
        .unwrap();
    assert!(!again.ran);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.gates[0]
        .store
        .mark_delivery("github:g-old-fail", Duration::from_secs(60))
        .await
        .unwrap();
    w.gates[0]
        .store
        .mark_delivery("github:g-timeout", Duration::from_secs(60))
        .await
        .unwrap();
    let later = redeliver_once(&w.gates[1].store, &w.client, &redeliver_config(2), now)
        .await
        .unwrap();
    assert!(later.ran);
    assert_eq!(later.requested, vec![109], "{later:?}");
    assert_eq!(w.gh.redelivery_requests(), vec![103, 108, 109]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_listing_failure_is_an_error_and_nothing_is_requested() {
    let w = redeliver_world(1).await;
    w.gh.script("/app/hook/deliveries", [Reply::status(401)]);
    let err = redeliver_once(
        &w.gates[0].store,
        &w.client,
        &redeliver_config(5),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("GitHub answered 401: Bad credentials"),
        "{err}"
    );
    assert!(w.gh.redelivery_requests().is_empty());
}

// ----- property: random interleavings across in-process gates ----------------------

/// The platform: counts calls per request and what they answered.
#[derive(Default)]
struct CountingPlatform {
    calls: Mutex<Vec<(String, bool)>>,
}

#[async_trait::async_trait]
impl PlatformClient for CountingPlatform {
    async fn answer(&self, request: &DeploymentRequest, approve: bool, _comment: &str) -> CallResult {
        self.calls.lock().unwrap().push((request.id.clone(), approve));
        // A little time in the call widens the windows for races.
        tokio::time::sleep(Duration::from_millis(3)).await;
        CallResult::done(Some(204), "counted")
    }
}

#[derive(Debug, Clone)]
struct RunSpec {
    approver: bool,
    ref_ok: bool,
    verdict: Option<bool>,
    attested: bool,
    webhook_copies: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Webhook(usize),
    Attest(usize),
    Verdict(usize),
}

#[derive(Debug, Clone)]
struct Scenario {
    replicas: usize,
    runs: Vec<RunSpec>,
    /// Ops in the order they start, each with its replica and whether it
    /// waits for the previous ones (else runs concurrently with them).
    ops: Vec<(Op, usize, bool)>,
}

fn scenario() -> impl proptest::strategy::Strategy<Value = Scenario> {
    use proptest::prelude::*;
    let run = (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
        prop::bool::weighted(0.8),
        1usize..=3,
    )
        .prop_map(|(approver, ref_ok, verdict, attested, webhook_copies)| RunSpec {
            approver,
            ref_ok,
            verdict,
            attested,
            webhook_copies,
        });
    (2usize..=3, prop::collection::vec(run, 1..=4)).prop_flat_map(|(replicas, runs)| {
        let mut ops = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            ops.extend(std::iter::repeat_n(Op::Webhook(i), r.webhook_copies));
            if r.attested {
                ops.push(Op::Attest(i));
            }
            if r.verdict.is_some() {
                ops.push(Op::Verdict(i));
            }
        }
        let n = ops.len();
        (
            Just(replicas),
            Just(runs),
            Just(ops).prop_shuffle(),
            prop::collection::vec(0usize..3, n),
            prop::collection::vec(any::<bool>(), n),
        )
            .prop_map(|(replicas, runs, ops, on, wait)| Scenario {
                replicas,
                runs,
                ops: ops
                    .into_iter()
                    .zip(on)
                    .zip(wait)
                    .map(|((op, r), w)| (op, r % replicas, w))
                    .collect(),
            })
    })
}

struct PropWorld {
    redis: RedisServer,
    oidc: OidcProvider,
}

fn prop_config(world: &PropWorld, prefix: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1"
[state]
backend = "redis"
url = "{}"
key_prefix = "{prefix}"
[audit]
backend = "redis"
[[issuers]]
name = "ci"
kind = "github"
issuer = "{}"
audience = "portcullis"
[environments.production]
approvers = ["octocat"]
require_claims = {{ ref = "refs/heads/main" }}
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]
"#,
        world.redis.url(),
        world.oidc.issuer()
    );
    Config::from_toml(&text, &|_| None).unwrap()
}

fn prop_request(run: u64, now: OffsetDateTime) -> DeploymentRequest {
    use portcullis::domain::Target;
    DeploymentRequest {
        id: request_id(run),
        platform: Platform::Github,
        issuer: "ci".into(),
        repository: REPO.into(),
        run: run.to_string(),
        environment: "production".into(),
        sha: sha(run),
        target: Target::Github {
            owner: "octo-org".into(),
            repo: "payments".into(),
            run_id: run,
            installation_id: None,
            callback_url: format!("https://api.github.com/repos/{REPO}/actions/runs/{run}/deployment_protection_rule"),
        },
        delivery: format!("d-{run}"),
        received_at: now,
        deadline: now + time::Duration::minutes(30),
        intake_problems: vec![],
        reviews: vec![],
        status: RequestStatus::Pending,
        decision: None,
        run_attempt: None,
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

async fn apply(gate: Arc<Gate>, op: Op, spec: RunSpec, run: u64, issuer: String) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    let token = |claims: Value| {
        forge(
            TestKey::ProviderRs256,
            &with_registered(claims, &issuer, "portcullis", now.unix_timestamp(), 600),
        )
    };
    match op {
        Op::Webhook(_) => {
            // What the webhook route does: dedup on the delivery id, then receive.
            if gate
                .store
                .mark_delivery(&format!("github:d-{run}"), Duration::from_secs(600))
                .await
                .map_err(|e| e.to_string())?
            {
                gate.receive_request(prop_request(run, now))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Op::Attest(_) => {
            let mut c = github_claims(&sha(run));
            c["repository"] = json!(REPO);
            c["run_id"] = json!(run.to_string());
            c["actor"] = json!(if spec.approver { "octocat" } else { "mallory" });
            c["ref"] = json!(if spec.ref_ok {
                "refs/heads/main"
            } else {
                "refs/heads/feature"
            });
            gate.attest(&token(c)).await.map_err(|e| e.to_string())?;
        }
        Op::Verdict(_) => {
            let mut c = github_claims(&sha(run));
            c["repository"] = json!(REPO);
            c["job_workflow_ref"] = json!(GATE_WORKFLOW);
            let body = VerdictBody {
                environment: "production".into(),
                sha: sha(run),
                policy: None,
                allow: spec.verdict,
                evidence: None,
                evidence_digest: None,
                reasons: vec![],
            };
            gate.record_verdict(&token(c), body).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn check_scenario(world: &PropWorld, s: Scenario, prefix: String) -> Result<(), String> {
    let config = Arc::new(prop_config(world, &prefix));
    let platform = Arc::new(CountingPlatform::default());
    let verifier = Arc::new(portcullis::identity::Verifier::new(
        config.issuers.clone(),
        reqwest::Client::new(),
    ));
    let mut gates = Vec::new();
    let mut audits = Vec::new();
    for _ in 0..s.replicas {
        let store = Arc::new(RedisStore::connect(&world.redis.url(), &prefix).map_err(|e| e.to_string())?);
        let audit = Arc::new(
            RedisAudit::connect(&world.redis.url(), &prefix, RedisAuditOptions::default())
                .map_err(|e| e.to_string())?,
        );
        audits.push(audit.clone());
        let platforms = Platforms {
            github: Some(platform.clone()),
            ..Default::default()
        };
        gates.push(Gate::new(
            config.clone(),
            store,
            audit,
            verifier.clone(),
            platforms,
            tokio::runtime::Handle::current(),
        ));
    }
    let runs: Vec<u64> = (0..s.runs.len() as u64).map(|i| 50_000 + i).collect();
    let mut in_flight: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for (op, replica, wait) in s.ops.clone() {
        if wait {
            for t in in_flight.drain(..) {
                t.await.map_err(|e| e.to_string())??;
            }
        }
        let i = match op {
            Op::Webhook(i) | Op::Attest(i) | Op::Verdict(i) => i,
        };
        let issuer = world.oidc.issuer();
        in_flight.push(tokio::spawn(apply(
            gates[replica].clone(),
            op,
            s.runs[i].clone(),
            runs[i],
            issuer,
        )));
    }
    for t in in_flight {
        t.await.map_err(|e| e.to_string())??;
    }

    // Wait until every request is where the final inputs put it (a wait for
    // a condition: generous, since a loaded machine only makes it slower).
    let store = gates[0].store.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut expected: HashMap<String, portcullis::decision::Outcome> = HashMap::new();
    loop {
        let mut settled = true;
        for &run in &runs {
            let id = request_id(run);
            let Some(req) = store.get_request(&id).await.map_err(|e| e.to_string())? else {
                return Err(format!("request of run {run} missing"));
            };
            let decision = gates[0]
                .decide(&req, OffsetDateTime::now_utc())
                .await
                .map_err(|e| e.to_string())?;
            expected.insert(id, decision.outcome);
            let done = req.status == RequestStatus::Done;
            if done != decision.is_final() {
                settled = false;
            }
        }
        if settled {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not settled: {expected:?}, calls {:?}",
                platform.calls.lock().unwrap()
            ));
        }
        for g in &gates {
            g.sweep(OffsetDateTime::now_utc()).await.map_err(|e| e.to_string())?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let calls = platform.calls.lock().unwrap().clone();
    for (i, (&run, spec)) in runs.iter().zip(&s.runs).enumerate() {
        let id = request_id(run);
        let mine: Vec<bool> = calls.iter().filter(|(r, _)| *r == id).map(|(_, a)| *a).collect();
        let outcome = expected[&id];
        let all_hold = spec.attested && spec.approver && spec.ref_ok && spec.verdict == Some(true);
        match outcome {
            portcullis::decision::Outcome::Pending => {
                if !mine.is_empty() {
                    return Err(format!("run {i}: a pending request was answered: {mine:?}"));
                }
            }
            final_outcome => {
                if mine.len() != 1 {
                    return Err(format!("run {i}: {} platform calls, want 1 ({spec:?})", mine.len()));
                }
                let approved = final_outcome == portcullis::decision::Outcome::Approved;
                if mine[0] != approved {
                    return Err(format!(
                        "run {i}: answered approve={} but the inputs give {final_outcome:?}",
                        mine[0]
                    ));
                }
            }
        }
        // The model: approved exactly when every condition holds.
        let approved_calls = mine.iter().filter(|a| **a).count();
        if approved_calls > 0 && !all_hold {
            return Err(format!("run {i}: approved without every condition: {spec:?}"));
        }
        if all_hold && approved_calls != 1 {
            return Err(format!("run {i}: every condition holds but {approved_calls} approvals"));
        }
    }

    // The chain the gates wrote together verifies, one decision per call.
    for a in &audits {
        a.append(AuditEvent::new(EventKind::PlatformResult).request("flush"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    audits[0].export(&mut out).await.map_err(|e| e.to_string())?;
    verify_lines(&out[..]).map_err(|e| format!("the chain does not verify: {e}"))?;
    let decisions = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.contains("\"event\":\"decision\""))
        .count();
    if decisions != calls.len() {
        return Err(format!("{decisions} decision records for {} calls", calls.len()));
    }
    for g in &gates {
        g.drain(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[test]
fn random_interleavings_across_replicas_call_once_and_never_approve_without_every_condition() {
    use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(async {
        PropWorld {
            redis: RedisServer::start(),
            oidc: OidcProvider::start().await,
        }
    });
    let cases = std::env::var("PORTCULLIS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&scenario(), |s| {
        let prefix = format!("p{}:", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        rt.block_on(check_scenario(&world, s, prefix))
            .map_err(TestCaseError::fail)
    });
    rt.block_on(async move { drop(world) });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deliveries_listing_keeps_githubs_contract() {
    // Prism serves GitHub's own description: the listing request must pass
    // its validation (path, query, headers). Its examples are `issues`
    // events that succeeded, so nothing is asked for again.
    let prism = crate::support::prism::Prism::start().await;
    let w = redeliver_world(1).await;
    let mut config = w.gh.github_config();
    config.api_url = url::Url::parse(&prism.url()).unwrap();
    let client = portcullis::platform::github::GithubClient::new(&config).unwrap();
    let mut rc = redeliver_config(5);
    rc.lookback = Duration::from_secs(20 * 365 * 24 * 3600);
    let report = redeliver_once(&w.gates[0].store, &client, &rc, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(
        (report.listed, report.failed, report.requested.len()),
        (2, 0, 0),
        "{report:?}"
    );
    let exchanges = prism.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    let e = &exchanges[0];
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.status),
        ("GET", "/app/hook/deliveries", 200),
        "{e:?}"
    );
    assert_eq!(
        e.violations,
        None,
        "Prism found the request off-contract: {e:?}\n{}",
        prism.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_and_query_read_the_redis_chain_through_the_cli() {
    let redis = RedisServer::start();
    let log = RedisAudit::open(&redis.url(), "cli:", RedisAuditOptions::default())
        .await
        .unwrap();
    for env in ["staging", "production", "production"] {
        log.append(AuditEvent::new(EventKind::Decision).environment(env))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    // The URL as a secret (as one with a password must be).
    std::fs::write(
        &path,
        "[server]\npublic_url = \"http://127.0.0.1\"\ndry_run = true\n\
         [state]\nbackend = \"redis\"\nurl = { env = \"PC_REDIS_URL\" }\nkey_prefix = \"cli:\"\n[audit]\nbackend = \"redis\"\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("PC_REDIS_URL", redis.url())
            .output()
            .unwrap()
    };
    let out = cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("audit chain OK: 3 record(s), last seq 3"));
    let out = cli(&["audit", "query", "--environment", "production"]);
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);

    // A record changed in Redis breaks the chain, and verify names it.
    let mut c = RedisStore::connect(&redis.url(), "cli:").unwrap().connection();
    // (Redis itself refuses an entry id below the top, so the stream is rebuilt.)
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("cli:audit:log")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("cli:audit:log")
        .query_async(&mut c)
        .await
        .unwrap();
    for (id, fields) in entries {
        let line = if id == "2-0" {
            fields[0].1.replace("production", "prod")
        } else {
            fields[0].1.clone()
        };
        let _: String = redis::cmd("XADD")
            .arg("cli:audit:log")
            .arg(&id)
            .arg("r")
            .arg(line)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let out = cli(&["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("audit chain broken in redis cli:audit") && stderr.contains("seq 2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_redeliver_on_two_replicas_runs_about_once_per_interval_and_stops() {
    let w = redeliver_world(2).await;
    let now = OffsetDateTime::now_utc();
    w.gh.set_deliveries(vec![delivery_item(
        7,
        "g-lost",
        now,
        503,
        "deployment_protection_rule",
        false,
    )]);
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = w
        .gates
        .iter()
        .map(|g| {
            tokio::spawn(portcullis::platform::redeliver::run_redeliver(
                g.store.clone(),
                g.config.github.clone().expect("[github]"),
                redeliver_config(5),
                false,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("stops when cancelled")
            .unwrap();
    }
    // Both replicas tick every second; the lease lets one run per interval.
    let asked = w.gh.redelivery_requests();
    assert!((2..=3).contains(&asked.len()), "{asked:?}");
    assert!(asked.iter().all(|id| *id == 7));
    let listings = w.gh.delivery_listings().len();
    assert_eq!(listings, asked.len(), "one listing per run");
    // Once the gate has the delivery, nothing more is asked.
    w.gates[0]
        .store
        .mark_delivery("github:g-lost", Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = redeliver_once(
        &w.gates[1].store,
        &w.client,
        &redeliver_config(5),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!((r.ran, r.already_processed, r.requested.len()), (true, 1, 0), "{r:?}");
}

/// A chain stored in Redis by an earlier build of this code (the committed
/// fixture: its keys as Redis held them) is continued by this one, and the
/// export verifies with the old records unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_chain_written_by_an_earlier_version_is_continued() {
    let redis = RedisServer::start();
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/audit/redis-keys.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut c = RedisStore::connect(&redis.url(), "fx:").unwrap().connection();
    let mut old = Vec::new();
    for entry in fixture["log"].as_array().unwrap() {
        let (id, field, line) = (
            entry[0].as_str().unwrap(),
            entry[1].as_str().unwrap(),
            entry[2].as_str().unwrap(),
        );
        let _: String = redis::cmd("XADD")
            .arg("fx:audit:log")
            .arg(id)
            .arg(field)
            .arg(line)
            .query_async(&mut c)
            .await
            .unwrap();
        old.extend_from_slice(line.as_bytes());
        old.push(b'\n');
    }
    for (key, name) in [("fx:audit:head", "head"), ("fx:audit:ids", "ids")] {
        for (field, value) in fixture[name].as_object().unwrap() {
            let _: i64 = redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(value.as_str().unwrap())
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }

    let log = RedisAudit::open(&redis.url(), "fx:", RedisAuditOptions::default())
        .await
        .unwrap();
    let head = fixture["head"]["hash"].as_str().unwrap();
    let next = log
        .append(AuditEvent::new(EventKind::Decision).request("after"))
        .await
        .unwrap();
    assert_eq!((next.seq, next.prev_hash.as_str()), (9, head));
    let id = fixture["ids"].as_object().unwrap().keys().next().unwrap();
    assert!(log.get(id).await.unwrap().is_some(), "old records are found by id");
    let mut out = Vec::new();
    let exported = log.export(&mut out).await.unwrap();
    assert_eq!(exported.records, 9);
    assert_eq!(verify_lines(&out[..]).expect("the export verifies").records, 9);
    assert_eq!(&out[..old.len()], &old[..], "the old records are unchanged");
}
