//! The replicas load run: 2 000 deployment requests through two replicas
//! sharing one Redis (state and audit) end with exactly 2 000 review calls
//! and a verifying audit chain.
//!
//! It starts a `redis-server` (AOF, `appendfsync everysec`), the test
//! OpenID Provider, the recording GitHub API mock and two `portcullis serve`
//! processes (the release binary next to this example, or `PORTCULLIS_BIN`);
//! posts an attestation and a verdict per run, alternating replicas; then
//! sends the 2 000 signed `deployment_protection_rule` webhooks, alternating
//! replicas, `CONCURRENCY` at a time. It prints the throughput (webhooks sent
//! to the last review call), the latency from a webhook's send to its review
//! call at the mock (p50/p99), the webhook answer latency, and each
//! replica's peak RSS; exits non-zero if the counts or the chain are wrong.
//!
//! Run: `bench/load/run.sh` (builds the release binary and this example).
//! `LOAD_REQUESTS` and `LOAD_CONCURRENCY` change the size.

#[allow(dead_code)]
#[path = "../../tests/support/github_mock.rs"]
mod github_mock;
#[allow(dead_code)]
#[path = "../../tests/support/oidc.rs"]
mod oidc;
#[allow(dead_code)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use github_mock::{GithubMock, TEST_APP_ID, test_app_private_key};
use oidc::{OidcProvider, TestKey, forge, github_claims, with_registered};
use redis_server::RedisServer;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const SECRET: &str = "load-webhook-secret";

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn fail(msg: impl Into<String>) -> Failure {
    msg.into().into()
}

struct Replica {
    child: Child,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Peak resident set size, from `/proc/<pid>/status` (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/examples/<this> -> target/<profile>/portcullis
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("portcullis"))
        .unwrap_or_default()
}

async fn start_replica(dir: &Path, n: usize, redis: &str, issuer: &str, api: &str) -> Result<Replica, Failure> {
    let port = free_port();
    let key = dir.join("app.pem");
    std::fs::write(&key, test_app_private_key())?;
    let config = dir.join(format!("replica-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "https://portcullis.example"
rate_limit = false
[state]
backend = "redis"
url = "{redis}"
[audit]
backend = "redis"
[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{key}" }}
webhook_secrets = [{{ env = "LOAD_WEBHOOK_SECRET" }}]
api_url = "{api}"
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
            key = key.display()
        ),
    )?;
    let log = dir.join(format!("replica-{n}.log"));
    let child = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("LOAD_WEBHOOK_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("LOAD_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start {}: {e} (build it: cargo build --release)",
                binary().display()
            ))
        })?;
    let replica = Replica {
        child,
        port,
        config,
        log,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(replica.url("/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "replica {n} did not get ready; see {}",
                replica.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(replica)
}

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `make(i)` for `0..n`, `limit` at a time; fails on the first error.
async fn fan_out<F, Fut, T>(n: u64, limit: usize, make: F) -> Result<Vec<(u64, T)>, Failure>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    T: Send + 'static,
{
    let gate = Arc::new(Semaphore::new(limit));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let fut = make(i);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            out.map(|t| (i, t))
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Failure> {
    let n: u64 = std::env::var("LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let concurrency: usize = std::env::var("LOAD_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start();
    let oidc = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    let issuer = oidc.issuer();
    let replicas = vec![
        start_replica(dir.path(), 0, &redis.url(), &issuer, &gh.url()).await?,
        start_replica(dir.path(), 1, &redis.url(), &issuer, &gh.url()).await?,
    ];
    let urls: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.url("")).collect());
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    eprintln!(
        "load: {n} requests, 2 replicas, concurrency {concurrency}; redis {}",
        redis.url()
    );

    // Inputs: an attestation and a verdict per run, alternating replicas.
    let started = Instant::now();
    let token = {
        let issuer = issuer.clone();
        move |claims: Value| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            forge(
                TestKey::ProviderRs256,
                &with_registered(claims, &issuer, "portcullis", now, 3600),
            )
        }
    };
    let token = Arc::new(token);
    fan_out(n, concurrency, |i| {
        let (http, urls, token) = (http.clone(), urls.clone(), token.clone());
        async move {
            let run = 1_000_000 + i;
            let mut a = github_claims(&sha(run));
            a["repository"] = json!(REPO);
            a["run_id"] = json!(run.to_string());
            let mut v = github_claims(&sha(run));
            v["repository"] = json!(REPO);
            v["job_workflow_ref"] = json!(GATE_WORKFLOW);
            let base = &urls[(i % 2) as usize];
            let r = http
                .post(format!("{base}/v1/attestations"))
                .bearer_auth(token(a))
                .send()
                .await?;
            if r.status() != 201 {
                return Err(fail(format!(
                    "attestation {run}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )));
            }
            let base = &urls[((i + 1) % 2) as usize];
            let body = json!({"environment": "production", "sha": sha(run), "allow": true});
            let r = http
                .post(format!("{base}/v1/verdicts"))
                .bearer_auth(token(v))
                .json(&body)
                .send()
                .await?;
            if r.status() != 201 {
                return Err(fail(format!(
                    "verdict {run}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )));
            }
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "load: {} attestations and {n} verdicts posted in {:?}",
        n,
        started.elapsed()
    );

    // The webhooks.
    let fixture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github/deployment_protection_rule.requested.json"
    ))?;
    let fixture: Arc<Value> = Arc::new(serde_json::from_str(&fixture)?);
    let gh_url = gh.url();
    let started = Instant::now();
    let sent = fan_out(n, concurrency, |i| {
        let (http, urls, fixture, gh_url) = (http.clone(), urls.clone(), fixture.clone(), gh_url.clone());
        async move {
            let run = 1_000_000 + i;
            let mut p = (*fixture).clone();
            p["deployment_callback_url"] = json!(format!(
                "{gh_url}/repos/{REPO}/actions/runs/{run}/deployment_protection_rule"
            ));
            p["environment"] = json!("production");
            p["deployment"]["sha"] = json!(sha(run));
            p["deployment"]["environment"] = json!("production");
            let body = serde_json::to_vec(&p)?;
            let sig = format!(
                "sha256={}",
                hex::encode(portcullis::crypto::hmac_sha256(SECRET.as_bytes(), &[&body]))
            );
            let at = Instant::now();
            let r = http
                .post(format!("{}/webhooks/github", urls[(i % 2) as usize]))
                .header("content-type", "application/json")
                .header("x-github-event", "deployment_protection_rule")
                .header("x-github-delivery", format!("load-{run}"))
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await?;
            let answered = at.elapsed();
            if r.status() != 202 {
                return Err(fail(format!(
                    "webhook {run}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )));
            }
            Ok((at, answered))
        }
    })
    .await?;
    let sent_done = started.elapsed();

    // Every request answered at the mock, once.
    let deadline = Instant::now() + Duration::from_secs(300);
    while gh.reviews().len() < n as usize {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "only {} of {n} review calls after 300 s",
                gh.reviews().len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reviews = gh.reviews();
    let last = reviews.iter().map(|r| r.at).max().unwrap_or_else(Instant::now);
    let elapsed = last.duration_since(started);
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reviews = gh.reviews();
    let mut by_run: HashMap<u64, (usize, Instant, bool)> = HashMap::new();
    for r in &reviews {
        let run = r
            .path
            .split('/')
            .nth(6)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let approved = r.body.as_ref().is_some_and(|b| b["state"] == "approved");
        let e = by_run.entry(run).or_insert((0, r.at, approved));
        e.0 += 1;
        e.2 &= approved;
    }
    let duplicates = by_run.values().filter(|(c, _, _)| *c > 1).count();
    let approved = by_run.values().filter(|(_, _, a)| *a).count();
    let mut latency: Vec<Duration> = sent
        .iter()
        .filter_map(|(i, (at, _))| {
            by_run
                .get(&(1_000_000 + i))
                .map(|(_, seen, _)| seen.duration_since(*at))
        })
        .collect();
    latency.sort();
    let mut answer: Vec<Duration> = sent.iter().map(|(_, (_, a))| *a).collect();
    answer.sort();

    // The chain, through the CLI (export from Redis, verified as a file).
    let verify = Command::new(binary())
        .args(["audit", "verify", "--config"])
        .arg(&replicas[0].config)
        .output()?;
    let verify_out = String::from_utf8_lossy(&verify.stdout).trim().to_string();

    println!("load run: {n} deployment requests through 2 replicas sharing one Redis (state + audit)");
    println!(
        "  review calls at the GitHub mock: {} ({} runs, {approved} approved, {duplicates} with more than one call)",
        reviews.len(),
        by_run.len()
    );
    println!(
        "  throughput: {:.0} requests/s ({n} in {:.2?}; all webhooks answered in {:.2?})",
        n as f64 / elapsed.as_secs_f64(),
        elapsed,
        sent_done
    );
    println!(
        "  webhook -> review call: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        latency.last().copied().unwrap_or_default()
    );
    println!(
        "  webhook answer (202): p50 {:.1?}, p99 {:.1?}",
        percentile(&answer, 0.5),
        percentile(&answer, 0.99)
    );
    for (i, r) in replicas.iter().enumerate() {
        println!(
            "  replica {i}: peak RSS {:.1} MiB",
            r.peak_rss_kib().unwrap_or(0) as f64 / 1024.0
        );
    }
    println!(
        "  audit verify: {}",
        if verify.status.success() {
            verify_out.clone()
        } else {
            String::from_utf8_lossy(&verify.stderr).trim().to_string()
        }
    );

    let want_records = 5 * n;
    if reviews.len() as u64 != n || by_run.len() as u64 != n || duplicates != 0 || approved as u64 != n {
        return Err(fail("the review calls are not exactly one approval per request"));
    }
    if !verify.status.success() || !verify_out.starts_with(&format!("audit chain OK: {want_records} record(s)")) {
        return Err(fail(format!(
            "the audit chain does not verify with {want_records} records"
        )));
    }
    drop(replicas);
    Ok(())
}
