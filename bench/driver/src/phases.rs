//! The measured phases: starting each server, the side-by-side rounds,
//! portcullis's full path, the whole job per delivery at saturation
//! (portcullis and Probot), the memory with many pending requests, and the
//! full path on Redis state.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{self, Phase, Signed, percentile};
use crate::procs::{Proc, RssSampler, cpu_secs, hwm_kb, rss_kb};
use crate::{APP_ID, Bench, Kind, SECRET, SHA, http, jwt, ms, pct_ms};

/// One server's side-by-side figures of one round.
pub struct Round {
    pub idle_rss_kb: u64,
    pub sat: Phase,
    pub sat_cpu_us_per_req: f64,
    pub rate: Phase,
    pub rate_cpu_us_per_req: f64,
    pub peak_rss_kb: u64,
    /// Probot (ingest): how many requests it held pending at the end.
    pub held_pending: Option<u64>,
}

/// portcullis's full path at the fixed rate.
pub struct FullPath {
    pub state: &'static str,
    pub response: Phase,
    pub full_path_us: Vec<u32>,
    pub missing: usize,
    pub peak_rss_kb: u64,
    /// Status reports (review calls without `state`) the mock got meanwhile.
    pub status_reports: u64,
}

impl FullPath {
    pub fn json(&self) -> Value {
        json!({
            "state": self.state,
            "webhooks": self.response.ok,
            "response_p50_ms": ms(self.response.p(0.5)),
            "response_p99_ms": ms(self.response.p(0.99)),
            "full_path_p50_ms": pct_ms(&self.full_path_us, 0.5),
            "full_path_p99_ms": pct_ms(&self.full_path_us, 0.99),
            "full_path_max_ms": pct_ms(&self.full_path_us, 1.0),
            "missing_reviews": self.missing,
            "status_reports": self.status_reports,
            "peak_rss_mb": self.peak_rss_kb as f64 / 1024.0,
            "problems": self.response.problems(),
        })
    }
}

/// One server, fresh: idle memory, warm-up, saturation, fixed rate.
pub async fn side_by_side(
    b: &Bench,
    kind: Kind,
    warm: &Arc<Signed>,
    sat: &Arc<Signed>,
    rate: &Arc<Signed>,
) -> Result<Round, String> {
    let a = &b.args;
    let proc = start(b, kind, "memory", None)?;
    let pid = proc.pid();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss_kb = rss_kb(pid);
    let sampler = RssSampler::start(pid);

    let w = load::closed_loop(
        proc.addr(),
        b.deliveries.clone(),
        warm.clone(),
        a.connections,
        Duration::from_secs(60),
    )
    .await;
    check_phase(&proc, "warm-up", &w)?;
    settle().await;

    let perf = profile(b, pid, &format!("{}-saturation", kind.name()), a.saturation);
    let cpu0 = cpu_secs(pid);
    let s = load::closed_loop(
        proc.addr(),
        b.deliveries.clone(),
        sat.clone(),
        a.connections,
        a.saturation,
    )
    .await;
    let sat_cpu = cpu_secs(pid) - cpu0;
    finish_profile(perf);
    check_phase(&proc, "saturation", &s)?;
    settle().await;

    let cpu0 = cpu_secs(pid);
    let r = load::open_loop(proc.addr(), b.deliveries.clone(), rate.clone(), a.rate, a.connections).await;
    let rate_cpu = cpu_secs(pid) - cpu0;
    check_phase(&proc, "fixed rate", &r)?;
    let peak_rss_kb = sampler.peak_kb().max(hwm_kb(pid));
    drop(sampler);
    let held_pending = if kind == Kind::Probot {
        probot_pending(&proc).await
    } else {
        None
    };
    let round = Round {
        idle_rss_kb,
        sat_cpu_us_per_req: sat_cpu * 1e6 / s.ok.max(1) as f64,
        rate_cpu_us_per_req: rate_cpu * 1e6 / r.ok.max(1) as f64,
        sat: s,
        rate: r,
        peak_rss_kb,
        held_pending,
    };
    println!(
        "  {:<10} idle {:>6.1} MB | saturation {:>7.0}/s p50 {:>6.2} ms p99 {:>6.2} ms, {:>6.1} µs CPU/req | {}/s: p50 {:.2} ms p99 {:.2} ms | peak {:.1} MB{}",
        kind.name(),
        round.idle_rss_kb as f64 / 1024.0,
        round.sat.throughput(),
        ms(round.sat.p(0.5)),
        ms(round.sat.p(0.99)),
        round.sat_cpu_us_per_req,
        a.rate,
        ms(round.rate.p(0.5)),
        ms(round.rate.p(0.99)),
        round.peak_rss_kb as f64 / 1024.0,
        round
            .held_pending
            .map(|n| format!(" | holds {n} pending"))
            .unwrap_or_default(),
    );
    Ok(round)
}

/// How many requests the Probot peer holds (`GET /pending`).
async fn probot_pending(proc: &Proc) -> Option<u64> {
    let m = http::Conn::new(proc.addr())
        .send(b"GET /pending HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    serde_json::from_slice::<Value>(&m.body).ok()?["pending"].as_u64()
}

/// Lets a server finish background work (the audit writer, the tasks a
/// delivery spawned) so that it does not spill into the next phase.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn wait_reviews(b: &Bench, want: usize, max: Duration) {
    let deadline = Instant::now() + max;
    while b.mock.state.review_count() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn check_phase(proc: &Proc, what: &str, p: &Phase) -> Result<(), String> {
    // A few refusals are reported, not fatal; a phase with almost nothing
    // accepted means the setup is wrong.
    if p.sent > 0 && p.ok * 2 < p.sent {
        return Err(format!(
            "{}: {what}: only {} of {} deliveries accepted ({}); its last output:\n{}",
            proc.name,
            p.ok,
            p.sent,
            p.problems(),
            proc.tail()
        ));
    }
    Ok(())
}

/// `READY <port>` (and whatever follows it on the line).
fn ready_port(line: &str) -> Option<u16> {
    line.strip_prefix("READY ")?.split_whitespace().next()?.parse().ok()
}

/// Starts a server of `kind` (Probot in `ingest` mode); for portcullis with
/// the given state backend (`redis_url` for "redis").
pub fn start(b: &Bench, kind: Kind, state: &str, redis_url: Option<&str>) -> Result<Proc, String> {
    match kind {
        Kind::Floor => {
            b.instances.set(b.instances.get() + 1);
            // This very binary, in its floor mode (see `main`).
            let exe = std::env::current_exe().map_err(|e| format!("cannot find the driver's own binary: {e}"))?;
            let mut cmd = Command::new(exe);
            cmd.arg(crate::floor::MODE).arg("0").env("FLOOR_WEBHOOK_SECRET", SECRET);
            Proc::spawn("floor", cmd, ready_port)
        }
        Kind::Probot => start_probot(b, "ingest"),
        Kind::Portcullis => start_portcullis(b, state, redis_url),
    }
}

/// The Probot peer in `mode` (`ingest` or `review`, see its server.mjs).
pub fn start_probot(b: &Bench, mode: &str) -> Result<Proc, String> {
    b.instances.set(b.instances.get() + 1);
    let dir = b.repo.join("bench/peers/probot");
    if !dir.join("node_modules/probot").is_dir() {
        return Err(format!("Probot is not installed: run `npm ci` in {}", dir.display()));
    }
    let mut cmd = Command::new("node");
    if b.args.perf.is_some() {
        // Symbol maps of JIT-compiled code, so that `perf report` names it.
        cmd.arg("--perf-basic-prof");
    }
    cmd.arg(dir.join("server.mjs"))
        .arg("0")
        .current_dir(&dir)
        .env("APP_ID", APP_ID.to_string())
        .env(
            "PRIVATE_KEY_PATH",
            b.repo.join("tests/fixtures/github-app/test-only-app-private-key.pem"),
        )
        .env("WEBHOOK_SECRET", SECRET)
        .env("GITHUB_API_URL", b.mock.url())
        .env("PEER_MODE", mode)
        .env("NODE_ENV", "production")
        .env("LOG_LEVEL", "fatal");
    Proc::spawn(&format!("probot ({mode})"), cmd, ready_port)
}

/// The configuration portcullis is measured with: memory (or Redis) state,
/// the file audit in `dir`, the mock as the GitHub API and the CI issuer,
/// and one environment, `production`, whose verdicts are asserted.
pub fn portcullis_config(b: &Bench, dir: &Path, state_toml: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
shutdown_timeout = "5s"
rate_limit = false                # one load source: measure the service, not the limiter

[state]
{state_toml}

[audit]
path = "{dir}/audit.jsonl"

[github]
app_id = {APP_ID}
private_key = {{ file = "{key}" }}
webhook_secrets = [{{ env = "BENCH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "5s"

[[issuers]]
name = "bench-ci"
kind = "github"
issuer = "{api}"
audience = "portcullis"
jwks_url = "{api}/jwks"

[environments.production]
approvers = ["octocat", "hubot"]
require_claims = {{ ref = "refs/heads/main" }}
pending_timeout = "24h"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{gate}" }}]
"#,
        dir = dir.display(),
        key = b
            .repo
            .join("tests/fixtures/github-app/test-only-app-private-key.pem")
            .display(),
        api = b.mock.url(),
        gate = jwt::GATE_WORKFLOW,
    )
}

fn start_portcullis(b: &Bench, state: &str, redis_url: Option<&str>) -> Result<Proc, String> {
    let n = b.instances.get() + 1;
    b.instances.set(n);
    let dir = b.work.join(format!("portcullis-{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let state_toml = match (state, redis_url) {
        ("redis", Some(url)) => format!("backend = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"bench{n}:\""),
        _ => "backend = \"memory\"".to_string(),
    };
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, portcullis_config(b, &dir, &state_toml)).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&b.args.portcullis_bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(&dir)
        .env("RUST_LOG", format!("{},portcullis::server=info", b.args.portcullis_log))
        .env("NO_COLOR", "1")
        .env("BENCH_WEBHOOK_SECRET", SECRET)
        .envs(b.args.portcullis_env.iter().map(|(k, v)| (k, v)));
    Proc::spawn("portcullis", cmd, |l| {
        // `listening on ADDR`, whatever host ADDR names.
        let rest = l.split("listening on ").nth(1)?;
        rest.chars()
            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
            .collect::<String>()
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    })
}

/// The audit file of the portcullis instance started last.
fn last_audit_file(b: &Bench) -> std::path::PathBuf {
    b.work.join(format!("portcullis-{}/audit.jsonl", b.instances.get()))
}

/// Posts the verdict for the fixture's commit and one attestation per run of
/// `runs`, as the CI jobs would.
async fn attest(b: &Bench, proc: &Proc, runs: std::ops::Range<u64>) -> Result<(), String> {
    let t = Instant::now();
    let token = b.minter.mint(jwt::gate_job(SHA));
    let body = json!({"environment": "production", "sha": SHA, "policy": "data.deploy.hipaa.allow", "allow": true,
                      "evidence_digest": format!("sha256:{}", "ab".repeat(32))})
    .to_string();
    let auth = format!("Bearer {token}");
    let req = http::request(
        "POST",
        "/v1/verdicts",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.as_bytes(),
    );
    let answer = http::Conn::new(proc.addr())
        .send(&req)
        .await
        .map_err(|e| e.to_string())?;
    if answer.status() != 201 {
        return Err(format!(
            "verdict refused: {} {}",
            answer.status(),
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let requests: Vec<Vec<u8>> = runs
        .clone()
        .map(|run| {
            let auth = format!("Bearer {}", b.minter.mint(jwt::deploy_job(run, SHA)));
            http::request("POST", "/v1/attestations", &[("authorization", &auth)], b"")
        })
        .collect();
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (requests, next, addr) = (requests.clone(), next.clone(), proc.addr());
            tokio::spawn(async move {
                let mut conn = http::Conn::new(addr);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { return Ok(()) };
                    let m = conn.send(req).await.map_err(|e| e.to_string())?;
                    if m.status() != 201 {
                        return Err(format!(
                            "attestation refused: {} {}",
                            m.status(),
                            String::from_utf8_lossy(&m.body)
                        ));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    println!(
        "  attested {} runs (and posted the verdict) in {:.2?}",
        runs.end - runs.start,
        t.elapsed()
    );
    Ok(())
}

/// portcullis: webhook -> decision -> review call, at the fixed rate, with
/// attestation and verdict present (state `memory`, or `redis` at
/// `redis_url`).
pub async fn full_path(b: &Bench, state: &'static str, redis_url: Option<&str>) -> Result<FullPath, String> {
    use std::sync::atomic::Ordering;
    let a = &b.args;
    let n = (a.rate * a.full_secs) as u64;
    let warm_n = (a.rate / 2.0).max(100.0) as u64;
    let proc = start(b, Kind::Portcullis, state, redis_url)?;
    let sampler = RssSampler::start(proc.pid());
    let warm_runs = crate::FULL_WARM_RUNS..crate::FULL_WARM_RUNS + warm_n;
    let runs = crate::FULL_RUNS..crate::FULL_RUNS + n;
    attest(b, &proc, warm_runs.clone()).await?;
    attest(b, &proc, runs.clone()).await?;
    let warm = Arc::new(b.deliveries.sign(warm_runs));
    let signed = Arc::new(b.deliveries.sign(runs));
    b.mock.state.take_reviews();
    let w = load::open_loop(proc.addr(), b.deliveries.clone(), warm, a.rate, 16).await;
    check_phase(&proc, "full-path warm-up", &w)?;
    wait_reviews(b, w.ok as usize, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.mock.state.take_reviews();

    let status0 = b.mock.state.status_calls.load(Ordering::Relaxed);
    let r = load::open_loop(proc.addr(), b.deliveries.clone(), signed, a.rate, 16).await;
    check_phase(&proc, "full path", &r)?;
    wait_reviews(b, r.ok as usize, Duration::from_secs(10)).await;
    let (path, missing) = load::full_path(&r.sends, &b.mock.state.take_reviews());
    let fp = FullPath {
        state,
        peak_rss_kb: sampler.peak_kb(),
        full_path_us: path,
        missing,
        response: r,
        status_reports: b.mock.state.status_calls.load(Ordering::Relaxed) - status0,
    };
    println!(
        "  portcullis full path ({state}) at {}/s: response p50 {:.2} ms p99 {:.2} ms | path p50 {:.2} ms p99 {:.2} ms max {:.1} ms, {} missing, {} status reports | schedule lateness p99 {:.2} ms",
        a.rate,
        ms(fp.response.p(0.5)),
        ms(fp.response.p(0.99)),
        pct_ms(&fp.full_path_us, 0.5),
        pct_ms(&fp.full_path_us, 0.99),
        pct_ms(&fp.full_path_us, 1.0),
        fp.missing,
        fp.status_reports,
        ms(percentile(&fp.response.lateness_us, 0.99)),
    );
    if fp.missing > 0 && fp.full_path_us.is_empty() {
        return Err(format!(
            "no review call arrived at the mock for any of {} decided deliveries (mock calls: {}); portcullis's last output:\n{}",
            fp.missing,
            b.mock.state.counts(),
            proc.tail()
        ));
    }
    Ok(fp)
}

/// The figures of a whole-job saturation phase: `p` the webhooks, `reviews`
/// the review calls the mock got from `start_at` on, `cpu` the server's CPU
/// seconds over the phase.
fn whole_job(p: &Phase, reviews: &[(u64, Instant)], start_at: Instant, cpu: f64, peak_kb: u64) -> Value {
    let last = reviews.iter().map(|(_, at)| *at).max().unwrap_or(start_at);
    let (path, missing) = load::full_path(&p.sends, reviews);
    json!({
        "webhooks": p.ok,
        "accepted_per_s": p.throughput(),
        "response_p50_ms": ms(p.p(0.5)),
        "response_p99_ms": ms(p.p(0.99)),
        "reviews": reviews.len(),
        "missing_reviews": missing,
        "reviews_per_s": reviews.len() as f64 / last.duration_since(start_at).as_secs_f64().max(1e-9),
        "full_path_p50_ms": pct_ms(&path, 0.5),
        "full_path_p99_ms": pct_ms(&path, 0.99),
        "cpu_us_per_req": cpu * 1e6 / p.ok.max(1) as f64,
        "peak_rss_mb": peak_kb as f64 / 1024.0,
        "problems": p.problems(),
    })
}

/// portcullis at saturation doing the whole job per delivery (decision,
/// durable audit, review call), as the Probot peer does in `review` mode.
pub async fn attested_saturation(b: &Bench) -> Result<Value, String> {
    let a = &b.args;
    println!("\n-- portcullis full work at saturation");
    let proc = start(b, Kind::Portcullis, "memory", None)?;
    let pid = proc.pid();
    let sampler = RssSampler::start(pid);
    let runs = crate::ATTESTED_RUNS..crate::ATTESTED_RUNS + a.attested;
    attest(b, &proc, runs.clone()).await?;
    let signed = Arc::new(b.deliveries.sign(runs));
    b.mock.state.take_reviews();
    let perf = profile(b, pid, "portcullis-full-work", Duration::from_secs(3));
    let cpu0 = cpu_secs(pid);
    let start_at = Instant::now();
    let p = load::closed_loop(
        proc.addr(),
        b.deliveries.clone(),
        signed,
        a.connections,
        Duration::from_secs(120),
    )
    .await;
    check_phase(&proc, "full work", &p)?;
    wait_reviews(b, p.ok as usize, Duration::from_secs(30)).await;
    let cpu = cpu_secs(pid) - cpu0;
    finish_profile(perf);
    let reviews = b.mock.state.take_reviews();
    let mut v = whole_job(&p, &reviews, start_at, cpu, sampler.peak_kb());
    v["audit"] = json!(
        std::fs::read_to_string(last_audit_file(b))
            .map(|t| format!("{} records", t.lines().count()))
            .unwrap_or_else(|_| "unreadable".into())
    );
    println!("  {v}");
    Ok(v)
}

/// The Probot peer at saturation in `review` mode: the check, then the
/// review posted to the mock before each webhook is answered; the same
/// connections and length as a side-by-side saturation phase.
pub async fn probot_full_work(b: &Bench) -> Result<Value, String> {
    let a = &b.args;
    println!("\n-- probot full work at saturation (PEER_MODE=review)");
    let proc = start_probot(b, "review")?;
    let pid = proc.pid();
    let sampler = RssSampler::start(pid);
    let warm = Arc::new(
        b.deliveries
            .sign(crate::REVIEW_WARM_RUNS..crate::REVIEW_WARM_RUNS + a.warmup),
    );
    let signed = Arc::new(
        b.deliveries
            .sign(crate::REVIEW_RUNS..crate::REVIEW_RUNS + a.attested.max(1)),
    );
    b.mock.state.take_reviews();
    let w = load::closed_loop(
        proc.addr(),
        b.deliveries.clone(),
        warm,
        a.connections,
        Duration::from_secs(60),
    )
    .await;
    check_phase(&proc, "review warm-up", &w)?;
    wait_reviews(b, w.ok as usize, Duration::from_secs(10)).await;
    settle().await;
    b.mock.state.take_reviews();

    let perf = profile(b, pid, "probot-full-work", a.saturation);
    let cpu0 = cpu_secs(pid);
    let start_at = Instant::now();
    let p = load::closed_loop(proc.addr(), b.deliveries.clone(), signed, a.connections, a.saturation).await;
    check_phase(&proc, "review saturation", &p)?;
    wait_reviews(b, p.ok as usize, Duration::from_secs(10)).await;
    let cpu = cpu_secs(pid) - cpu0;
    finish_profile(perf);
    let reviews = b.mock.state.take_reviews();
    let v = whole_job(&p, &reviews, start_at, cpu, sampler.peak_kb().max(hwm_kb(pid)));
    println!("  {v}");
    Ok(v)
}

/// portcullis's memory: idle, then with `--pending` requests waiting for an
/// attestation that never comes.
pub async fn pending_memory(b: &Bench) -> Result<Value, String> {
    let a = &b.args;
    println!("\n-- portcullis memory with {} pending requests", a.pending);
    let signed = Arc::new(b.deliveries.sign(crate::PENDING_RUNS..crate::PENDING_RUNS + a.pending));
    let proc = start(b, Kind::Portcullis, "memory", None)?;
    let pid = proc.pid();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = rss_kb(pid);
    let sampler = RssSampler::start(pid);
    let p = load::closed_loop(
        proc.addr(),
        b.deliveries.clone(),
        signed,
        a.connections,
        Duration::from_secs(300),
    )
    .await;
    check_phase(&proc, "pending fill", &p)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = rss_kb(pid);
    let metrics = http::Conn::new(proc.addr())
        .send(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .unwrap_or_default();
    let open = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_open_requests "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let v = json!({
        "idle_rss_mb": idle as f64 / 1024.0,
        "pending": p.ok,
        "open_requests": open,
        "rss_mb": rss as f64 / 1024.0,
        "peak_rss_mb": sampler.peak_kb().max(rss) as f64 / 1024.0,
        "accepted_per_s": p.throughput(),
        "problems": p.problems(),
    });
    println!("  {v}");
    Ok(v)
}

/// The full path with Redis state: its own redis-server on a free port.
pub async fn with_redis(b: &Bench) -> Result<FullPath, String> {
    println!("\n-- portcullis full path with redis state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let _redis = Proc::spawn("redis-server", cmd, |l| {
        l.contains("Ready to accept connections").then_some(0)
    })?;
    let url = format!("redis://127.0.0.1:{port}/0");
    let r = full_path(b, "redis", Some(&url)).await;
    if let Err(e) = &r {
        println!("  ! {e}");
    }
    r
}

/// Starts `perf record` on `pid` for `secs`, if `--perf` was given.
fn profile(b: &Bench, pid: u32, name: &str, secs: Duration) -> Option<std::process::Child> {
    let dir = b.args.perf.as_ref()?;
    let _ = std::fs::create_dir_all(dir);
    let out = dir.join(format!("{name}-{}.data", b.instances.get()));
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
            "dwarf,16384",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&out)
        .args(["--", "sleep", &format!("{:.1}", secs.as_secs_f64())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf record did not start: {e}"))
        .ok()?;
    println!("  profiling {name} into {}", out.display());
    Some(child)
}

fn finish_profile(perf: Option<std::process::Child>) {
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
}
