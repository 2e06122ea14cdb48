//! The load driver of portcullis's benchmark harness (BENCHMARKS.md).
//!
//! In one run, side by side on the same machine, it measures three servers
//! answering the same signed `deployment_protection_rule` deliveries:
//! - **floor**: a bare actix-web server that verifies the HMAC and parses
//!   the gate's fields (`src/floor.rs`), the upper bound;
//! - **portcullis**: the release binary, memory state, file audit;
//! - **probot**: a Probot 14 app doing the same check and posting the review
//!   (`bench/peers/probot/`).
//!
//! Each round starts each server fresh and drives it at saturation (closed
//! loop) and at a fixed rate (open loop), reading its CPU time and resident
//! memory from `/proc`. portcullis then gets the full path (attestation and
//! verdict posted first, so each webhook ends in a review call at the mock),
//! at the fixed rate and at saturation, and a memory run with 100 000 pending
//! requests. Everything listens on loopback, every phase is bounded in
//! requests and time, and every child dies with the driver.
//!
//! `cargo run --release -- --help` in `bench/driver` lists the options.

mod http;
mod jwt;
mod load;
mod mock;
mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{Deliveries, Phase, Signed, percentile};
use crate::mock::Mock;
use crate::procs::{Proc, RssSampler, cpu_secs, hwm_kb, rss_kb};

const SECRET: &str = "bench-webhook-secret-5e1f";
const SHA: &str = "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6";
const APP_ID: u64 = 1012345;

/// Disjoint run-id ranges, so that within one server instance every
/// delivery is a new workflow run (a new stored request).
const WARM_RUNS: u64 = 1_000_000_000;
const SAT_RUNS: u64 = 2_000_000_000;
const RATE_RUNS: u64 = 3_000_000_000;
const FULL_WARM_RUNS: u64 = 4_000_000_000;
const FULL_RUNS: u64 = 4_100_000_000;
const ATTESTED_RUNS: u64 = 5_000_000_000;
const PENDING_RUNS: u64 = 6_000_000_000;

const HELP: &str = "load-driver: portcullis side by side with a Probot app and a floor server

Build first: `cargo build --release` at the repository root (the portcullis
binary), `npm ci` in bench/peers/probot. Then, in bench/driver:
  cargo run --release --bin load-driver -- [options]

Options (defaults in brackets):
  --rounds N            rounds of the side-by-side phases; medians reported [3]
  --targets LIST        comma-separated: floor,portcullis,probot [all three]
  --connections N       connections at saturation [32]
  --saturation-secs S   length of a saturation phase [5]
  --saturation-max N    most deliveries in a saturation phase [150000]
  --warmup N            deliveries before measuring each server [5000]
  --rate R              fixed rate, requests/s [1000]
  --rate-secs S         length of the fixed-rate phase [5]
  --full-secs S         length of portcullis's full-path phase [10]
  --attested N          deliveries of portcullis's full-work saturation [20000]
  --pending N           pending requests of the memory phase [100000]
  --redis               also run the full path with state.backend = \"redis\"
                        (starts its own redis-server on a free port)
  --portcullis-log F    RUST_LOG for portcullis [warn]; `info` is its default
  --portcullis-bin P    [<repo>/target/release/portcullis]
  --portcullis-env K=V  an environment variable for portcullis (repeatable), e.g.
                        LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
  --work-dir DIR        where portcullis keeps its configuration and audit
                        file [the system temporary directory]; /dev/shm shows
                        what the fsyncs of the audit trail cost
  --json PATH           also write the results as JSON
  --perf DIR            record `perf` profiles (cpu-clock, DWARF call graphs) of
                        each saturation phase into DIR (use with --rounds 1;
                        Probot runs with --perf-basic-prof so JIT frames resolve)
  --quick               small numbers, for a smoke test
";

#[derive(Clone)]
struct Args {
    rounds: usize,
    targets: Vec<Kind>,
    connections: usize,
    saturation: Duration,
    saturation_max: u64,
    warmup: u64,
    rate: f64,
    rate_secs: f64,
    full_secs: f64,
    attested: u64,
    pending: u64,
    redis: bool,
    portcullis_log: String,
    portcullis_bin: PathBuf,
    portcullis_env: Vec<(String, String)>,
    json: Option<PathBuf>,
    perf: Option<PathBuf>,
    work_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Floor,
    Portcullis,
    Probot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Portcullis => "portcullis",
            Kind::Probot => "probot",
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 3,
        targets: vec![Kind::Floor, Kind::Portcullis, Kind::Probot],
        connections: 32,
        saturation: Duration::from_secs(5),
        saturation_max: 150_000,
        warmup: 5_000,
        rate: 1000.0,
        rate_secs: 5.0,
        full_secs: 10.0,
        attested: 20_000,
        pending: 100_000,
        redis: false,
        portcullis_log: "warn".into(),
        portcullis_bin: repo().join("target/release/portcullis"),
        portcullis_env: Vec::new(),
        json: None,
        perf: None,
        work_dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--rounds" => a.rounds = num(value()?)? as usize,
            "--targets" => {
                a.targets = value()?
                    .split(',')
                    .map(|t| match t.trim() {
                        "floor" => Ok(Kind::Floor),
                        "portcullis" => Ok(Kind::Portcullis),
                        "probot" => Ok(Kind::Probot),
                        other => Err(format!("--targets: unknown `{other}`")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--connections" => a.connections = num(value()?)? as usize,
            "--saturation-secs" => a.saturation = Duration::from_secs_f64(num(value()?)?),
            "--saturation-max" => a.saturation_max = num(value()?)? as u64,
            "--warmup" => a.warmup = num(value()?)? as u64,
            "--rate" => a.rate = num(value()?)?,
            "--rate-secs" => a.rate_secs = num(value()?)?,
            "--full-secs" => a.full_secs = num(value()?)?,
            "--attested" => a.attested = num(value()?)? as u64,
            "--pending" => a.pending = num(value()?)? as u64,
            "--redis" => a.redis = true,
            "--portcullis-log" => a.portcullis_log = value()?,
            "--portcullis-bin" => a.portcullis_bin = PathBuf::from(value()?),
            "--portcullis-env" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--portcullis-env: `{kv}` is not K=V"))?;
                a.portcullis_env.push((k.to_string(), v.to_string()));
            }
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--perf" => a.perf = Some(PathBuf::from(value()?)),
            "--work-dir" => a.work_dir = PathBuf::from(value()?),
            "--quick" => {
                a.rounds = 1;
                a.saturation = Duration::from_secs(2);
                a.saturation_max = 20_000;
                a.warmup = 1_000;
                a.rate_secs = 2.0;
                a.full_secs = 2.0;
                a.attested = 2_000;
                a.pending = 5_000;
            }
            other => return Err(format!("unknown option `{other}` (see --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load-driver: {e}");
            std::process::exit(2);
        }
    };
    // One thread for the load generator; the mock has a thread of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("load-driver: {e}");
        std::process::exit(1);
    }
}

/// What the driver shares between phases.
struct Bench {
    args: Args,
    repo: PathBuf,
    mock: Mock,
    deliveries: Arc<Deliveries>,
    minter: jwt::Minter,
    work: PathBuf,
    instances: std::cell::Cell<u32>,
}

/// One server's side-by-side figures of one round.
struct Round {
    idle_rss_kb: u64,
    sat: Phase,
    sat_cpu_us_per_req: f64,
    rate: Phase,
    rate_cpu_us_per_req: f64,
    /// Probot posts its review before answering; its full path is measured
    /// in the same fixed-rate phase.
    rate_full_path_us: Option<Vec<u32>>,
    peak_rss_kb: u64,
}

/// portcullis's full path at the fixed rate.
struct FullPath {
    state: &'static str,
    response: Phase,
    full_path_us: Vec<u32>,
    missing: usize,
    peak_rss_kb: u64,
}

async fn run(args: Args) -> Result<(), String> {
    let repo = repo();
    let keys = repo.join("tests/support/node/keys");
    let mock = mock::start(jwt::jwks(&keys));
    let fixture = std::fs::read_to_string(repo.join("tests/fixtures/github/deployment_protection_rule.requested.json"))
        .map_err(|e| format!("cannot read the webhook fixture: {e}"))?;
    let deliveries = Arc::new(Deliveries::new(&fixture, &mock.url(), SECRET));
    let minter = jwt::Minter::new(&keys, mock.url());
    let work = args.work_dir.join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let _cleanup = RemoveDir(work.clone());
    if args.targets.contains(&Kind::Portcullis) && !args.portcullis_bin.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release` at the repository root",
            args.portcullis_bin.display()
        ));
    }
    let b = Bench {
        args: args.clone(),
        repo,
        mock,
        deliveries,
        minter,
        work,
        instances: std::cell::Cell::new(0),
    };

    println!(
        "load-driver: {} rounds of {:?}; deliveries of {} bytes; {} connections at saturation; {} req/s fixed rate",
        args.rounds,
        args.targets.iter().map(|k| k.name()).collect::<Vec<_>>(),
        b.deliveries.body_len(),
        args.connections,
        args.rate
    );
    let t = Instant::now();
    let warm = Arc::new(b.deliveries.sign(WARM_RUNS..WARM_RUNS + args.warmup));
    let sat = Arc::new(b.deliveries.sign(SAT_RUNS..SAT_RUNS + args.saturation_max));
    let rate_n = (args.rate * args.rate_secs) as u64;
    let rate = Arc::new(b.deliveries.sign(RATE_RUNS..RATE_RUNS + rate_n));
    println!(
        "signed {} deliveries in {:.2?}",
        warm.len() + sat.len() + rate.len(),
        t.elapsed()
    );

    let mut rounds: Vec<Vec<(Kind, Round)>> = Vec::new();
    let mut full_paths: Vec<FullPath> = Vec::new();
    for r in 0..args.rounds {
        println!("\n-- round {} of {}", r + 1, args.rounds);
        let mut this = Vec::new();
        for &kind in &args.targets {
            let round = side_by_side(&b, kind, &warm, &sat, &rate).await?;
            this.push((kind, round));
        }
        rounds.push(this);
        if args.targets.contains(&Kind::Portcullis) {
            full_paths.push(full_path(&b, "memory").await?);
        }
    }

    let mut extra = json!({});
    let mut attested_summary = None;
    let mut pending_summary = None;
    let mut redis_summary: Option<Result<FullPath, String>> = None;
    if args.targets.contains(&Kind::Portcullis) {
        attested_summary = Some(attested_saturation(&b).await?);
        pending_summary = Some(pending_memory(&b).await?);
        if args.redis {
            redis_summary = Some(with_redis(&b).await);
        }
    }

    // ---- report ----------------------------------------------------------
    println!("\n==== results (median of {} rounds) ====", rounds.len());
    let mut table = Vec::new();
    println!(
        "\nsaturation: {} connections, deliveries of {} bytes, up to {:?} per phase",
        args.connections,
        b.deliveries.body_len(),
        args.saturation
    );
    println!(
        "{:<11} {:>11} {:>9} {:>9} {:>13} {:>10} {:>10} | fixed {:>5}/s: {:>8} {:>8} {:>10} {:>10}",
        "server",
        "accepted/s",
        "p50",
        "p99",
        "CPU µs/req",
        "idle RSS",
        "peak RSS",
        args.rate,
        "p50",
        "p99",
        "path p50",
        "path p99"
    );
    for &kind in &args.targets {
        let rs: Vec<&Round> = rounds
            .iter()
            .flat_map(|r| r.iter())
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r)
            .collect();
        let med = |f: &dyn Fn(&Round) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let thr = med(&|r| r.sat.throughput());
        let row = json!({
            "server": kind.name(),
            "accepted_per_s": thr,
            "accepted_per_s_rounds": rs.iter().map(|r| r.sat.throughput().round()).collect::<Vec<_>>(),
            "sat_p50_ms": med(&|r| ms(r.sat.p(0.5))),
            "sat_p99_ms": med(&|r| ms(r.sat.p(0.99))),
            "sat_cpu_us_per_req": med(&|r| r.sat_cpu_us_per_req),
            "idle_rss_mb": med(&|r| r.idle_rss_kb as f64 / 1024.0),
            "peak_rss_mb": med(&|r| r.peak_rss_kb as f64 / 1024.0),
            "rate_p50_ms": med(&|r| ms(r.rate.p(0.5))),
            "rate_p99_ms": med(&|r| ms(r.rate.p(0.99))),
            "rate_cpu_us_per_req": med(&|r| r.rate_cpu_us_per_req),
            "rate_full_path_p50_ms": rs.iter().all(|r| r.rate_full_path_us.is_some()).then(|| med(&|r| ms(percentile(r.rate_full_path_us.as_ref().expect("path"), 0.5)))),
            "rate_full_path_p99_ms": rs.iter().all(|r| r.rate_full_path_us.is_some()).then(|| med(&|r| ms(percentile(r.rate_full_path_us.as_ref().expect("path"), 0.99)))),
            "problems": rs.iter().map(|r| format!("{} {}", r.sat.problems(), r.rate.problems())).filter(|s| !s.trim().is_empty()).collect::<Vec<_>>(),
        });
        println!(
            "{:<11} {:>11.0} {:>7.2}ms {:>7.2}ms {:>13.1} {:>8.1}MB {:>8.1}MB | {:>19.2}ms {:>6.2}ms {:>10} {:>10}",
            kind.name(),
            thr,
            row["sat_p50_ms"].as_f64().unwrap_or(0.0),
            row["sat_p99_ms"].as_f64().unwrap_or(0.0),
            row["sat_cpu_us_per_req"].as_f64().unwrap_or(0.0),
            row["idle_rss_mb"].as_f64().unwrap_or(0.0),
            row["peak_rss_mb"].as_f64().unwrap_or(0.0),
            row["rate_p50_ms"].as_f64().unwrap_or(0.0),
            row["rate_p99_ms"].as_f64().unwrap_or(0.0),
            row["rate_full_path_p50_ms"]
                .as_f64()
                .map(|v| format!("{v:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            row["rate_full_path_p99_ms"]
                .as_f64()
                .map(|v| format!("{v:.2}ms"))
                .unwrap_or_else(|| "-".into()),
        );
        for p in row["problems"].as_array().into_iter().flatten() {
            println!("            ! {}", p.as_str().unwrap_or(""));
        }
        table.push(row);
    }
    let thr_of = |name: &str| {
        table
            .iter()
            .find(|r| r["server"] == name)
            .and_then(|r| r["accepted_per_s"].as_f64())
    };
    let mut ratios = json!({});
    if let Some(p) = thr_of("portcullis") {
        if let Some(pb) = thr_of("probot") {
            println!("portcullis / probot accepted/s = {:.2}x", p / pb);
            ratios["portcullis_over_probot"] = json!(p / pb);
        }
        if let Some(f) = thr_of("floor") {
            println!("portcullis / floor  accepted/s = {:.0}%", 100.0 * p / f);
            ratios["portcullis_over_floor"] = json!(p / f);
        }
    }
    let server_list = args.targets.iter().map(|k| k.name()).collect::<Vec<_>>();
    extra["rounds"] = json!(rounds.len());

    let full_json = |fp: &FullPath| {
        json!({
            "state": fp.state,
            "webhooks": fp.response.ok,
            "response_p50_ms": ms(fp.response.p(0.5)),
            "response_p99_ms": ms(fp.response.p(0.99)),
            "full_path_p50_ms": ms(percentile(&fp.full_path_us, 0.5)),
            "full_path_p99_ms": ms(percentile(&fp.full_path_us, 0.99)),
            "full_path_max_ms": ms(percentile(&fp.full_path_us, 1.0)),
            "missing_reviews": fp.missing,
            "peak_rss_mb": fp.peak_rss_kb as f64 / 1024.0,
            "problems": fp.response.problems(),
        })
    };
    let full_rows: Vec<Value> = full_paths.iter().map(full_json).collect();
    if !full_paths.is_empty() {
        let med = |key: &str| median(full_rows.iter().filter_map(|r| r[key].as_f64()).collect());
        println!(
            "\nportcullis full path at {}/s, memory state (webhook sent -> review call at the mock), median of {} runs:\n  \
             webhook response p50 {:.2} ms, p99 {:.2} ms; full path p50 {:.2} ms, p99 {:.2} ms (runs: {})",
            args.rate,
            full_rows.len(),
            med("response_p50_ms"),
            med("response_p99_ms"),
            med("full_path_p50_ms"),
            med("full_path_p99_ms"),
            full_rows
                .iter()
                .map(|r| format!(
                    "p50 {:.2}/p99 {:.2}/max {:.1}",
                    r["full_path_p50_ms"].as_f64().unwrap_or(0.0),
                    r["full_path_p99_ms"].as_f64().unwrap_or(0.0),
                    r["full_path_max_ms"].as_f64().unwrap_or(0.0)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        for r in &full_rows {
            if r["missing_reviews"].as_u64().unwrap_or(0) > 0 || r["problems"].as_str().is_some_and(|p| !p.is_empty()) {
                println!("  ! missing reviews {}, {}", r["missing_reviews"], r["problems"]);
            }
        }
    }
    let redis_json = match &redis_summary {
        None => Value::Null,
        Some(Ok(fp)) => {
            let r = full_json(fp);
            println!(
                "portcullis full path at {}/s, redis state: response p50 {:.2} ms, p99 {:.2} ms; full path p50 {:.2} ms, p99 {:.2} ms",
                args.rate,
                r["response_p50_ms"].as_f64().unwrap_or(0.0),
                r["response_p99_ms"].as_f64().unwrap_or(0.0),
                r["full_path_p50_ms"].as_f64().unwrap_or(0.0),
                r["full_path_p99_ms"].as_f64().unwrap_or(0.0)
            );
            r
        }
        Some(Err(e)) => {
            println!("portcullis with redis state: not measured: {e}");
            json!({"error": e})
        }
    };
    if let Some(a) = &attested_summary {
        println!(
            "\nportcullis full work at saturation ({} attested deliveries, {} connections): {:.0} accepted/s \
             (p50 {:.2} ms, p99 {:.2} ms), {:.0} reviews/s completed, full path p50 {:.1} ms, p99 {:.1} ms, \
             server CPU {:.1} µs per delivery, peak RSS {:.1} MB, audit {}",
            a["webhooks"],
            args.connections,
            a["accepted_per_s"].as_f64().unwrap_or(0.0),
            a["response_p50_ms"].as_f64().unwrap_or(0.0),
            a["response_p99_ms"].as_f64().unwrap_or(0.0),
            a["reviews_per_s"].as_f64().unwrap_or(0.0),
            a["full_path_p50_ms"].as_f64().unwrap_or(0.0),
            a["full_path_p99_ms"].as_f64().unwrap_or(0.0),
            a["cpu_us_per_req"].as_f64().unwrap_or(0.0),
            a["peak_rss_mb"].as_f64().unwrap_or(0.0),
            a["audit"]
        );
    }
    if let Some(p) = &pending_summary {
        println!(
            "portcullis memory: idle {:.1} MB; with {} pending requests {:.1} MB (peak {:.1} MB; {:.0} accepted/s while filling)",
            p["idle_rss_mb"].as_f64().unwrap_or(0.0),
            p["open_requests"],
            p["rss_mb"].as_f64().unwrap_or(0.0),
            p["peak_rss_mb"].as_f64().unwrap_or(0.0),
            p["accepted_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(path) = &args.json {
        let out = json!({
            "servers": server_list,
            "saturation": table,
            "ratios": ratios,
            "full_path_memory": full_rows,
            "full_path_redis": redis_json,
            "portcullis_attested_saturation": attested_summary,
            "portcullis_pending_memory": pending_summary,
            "settings": {
                "connections": args.connections, "saturation_secs": args.saturation.as_secs_f64(),
                "rate": args.rate, "rate_secs": args.rate_secs, "full_secs": args.full_secs,
                "delivery_bytes": b.deliveries.body_len(), "portcullis_log": args.portcullis_log,
                "work_dir": args.work_dir,
                "portcullis_env": args.portcullis_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            },
            "meta": extra,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out).expect("json"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// One server, fresh: idle memory, warm-up, saturation, fixed rate.
async fn side_by_side(
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
    settle(b, kind).await;
    b.mock.state.take_reviews();

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
    settle(b, kind).await;
    b.mock.state.take_reviews();

    let cpu0 = cpu_secs(pid);
    let r = load::open_loop(proc.addr(), b.deliveries.clone(), rate.clone(), a.rate, a.connections).await;
    let rate_full_path_us = if kind == Kind::Probot {
        wait_reviews(b, r.ok as usize, Duration::from_secs(10)).await;
        let (path, _) = load::full_path(&r.sends, &b.mock.state.take_reviews());
        Some(path)
    } else {
        None
    };
    let rate_cpu = cpu_secs(pid) - cpu0;
    check_phase(&proc, "fixed rate", &r)?;
    let peak_rss_kb = sampler.peak_kb().max(hwm_kb(pid));
    drop(sampler);
    let round = Round {
        idle_rss_kb,
        sat_cpu_us_per_req: sat_cpu * 1e6 / s.ok.max(1) as f64,
        rate_cpu_us_per_req: rate_cpu * 1e6 / r.ok.max(1) as f64,
        sat: s,
        rate: r,
        rate_full_path_us,
        peak_rss_kb,
    };
    println!(
        "  {:<10} idle {:>6.1} MB | saturation {:>7.0}/s p50 {:>6.2} ms p99 {:>6.2} ms, {:>6.1} µs CPU/req | {}/s: p50 {:.2} ms p99 {:.2} ms{} | peak {:.1} MB",
        kind.name(),
        round.idle_rss_kb as f64 / 1024.0,
        round.sat.throughput(),
        ms(round.sat.p(0.5)),
        ms(round.sat.p(0.99)),
        round.sat_cpu_us_per_req,
        a.rate,
        ms(round.rate.p(0.5)),
        ms(round.rate.p(0.99)),
        round
            .rate_full_path_us
            .as_ref()
            .map(|p| format!(
                ", path p50 {:.2} ms p99 {:.2} ms",
                ms(percentile(p, 0.5)),
                ms(percentile(p, 0.99))
            ))
            .unwrap_or_default(),
        round.peak_rss_kb as f64 / 1024.0
    );
    Ok(round)
}

/// Lets a server finish background work (Probot's queued reviews, the
/// audit writer) so that it does not spill into the next phase.
async fn settle(b: &Bench, kind: Kind) {
    if kind == Kind::Probot {
        let seen = b.mock.state.review_count();
        wait_reviews(b, seen, Duration::from_secs(5)).await;
    }
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

/// Starts a server of `kind`; for portcullis with the given state backend
/// (`redis_url` for "redis").
fn start(b: &Bench, kind: Kind, state: &str, redis_url: Option<&str>) -> Result<Proc, String> {
    let n = b.instances.get() + 1;
    b.instances.set(n);
    match kind {
        Kind::Floor => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let floor = exe.with_file_name("floor");
            let mut cmd = Command::new(&floor);
            cmd.arg("0").env("FLOOR_WEBHOOK_SECRET", SECRET);
            Proc::spawn("floor", cmd, |l| {
                l.strip_prefix("READY ").and_then(|p| p.trim().parse().ok())
            })
        }
        Kind::Probot => {
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
                .env("NODE_ENV", "production")
                .env("LOG_LEVEL", "fatal");
            Proc::spawn("probot", cmd, |l| {
                l.strip_prefix("READY ").and_then(|p| p.trim().parse().ok())
            })
        }
        Kind::Portcullis => {
            let dir = b.work.join(format!("portcullis-{n}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let state_toml = match (state, redis_url) {
                ("redis", Some(url)) => format!("backend = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"bench{n}:\""),
                _ => "backend = \"memory\"".to_string(),
            };
            let config = format!(
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
            );
            let path = dir.join("portcullis.toml");
            std::fs::write(&path, config).map_err(|e| e.to_string())?;
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
    }
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
/// attestation and verdict present.
async fn full_path(b: &Bench, state: &'static str) -> Result<FullPath, String> {
    full_path_with(b, state, None).await
}

async fn full_path_with(b: &Bench, state: &'static str, redis_url: Option<&str>) -> Result<FullPath, String> {
    let a = &b.args;
    let n = (a.rate * a.full_secs) as u64;
    let warm_n = (a.rate / 2.0).max(100.0) as u64;
    let proc = start(b, Kind::Portcullis, state, redis_url)?;
    let sampler = RssSampler::start(proc.pid());
    attest(b, &proc, FULL_WARM_RUNS..FULL_WARM_RUNS + warm_n).await?;
    attest(b, &proc, FULL_RUNS..FULL_RUNS + n).await?;
    let warm = Arc::new(b.deliveries.sign(FULL_WARM_RUNS..FULL_WARM_RUNS + warm_n));
    let signed = Arc::new(b.deliveries.sign(FULL_RUNS..FULL_RUNS + n));
    b.mock.state.take_reviews();
    let w = load::open_loop(proc.addr(), b.deliveries.clone(), warm, a.rate, 16).await;
    check_phase(&proc, "full-path warm-up", &w)?;
    wait_reviews(b, w.ok as usize, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.mock.state.take_reviews();

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
    };
    println!(
        "  portcullis full path ({state}) at {}/s: response p50 {:.2} ms p99 {:.2} ms | path p50 {:.2} ms p99 {:.2} ms max {:.1} ms, {} missing | schedule lateness p99 {:.2} ms",
        a.rate,
        ms(fp.response.p(0.5)),
        ms(fp.response.p(0.99)),
        ms(percentile(&fp.full_path_us, 0.5)),
        ms(percentile(&fp.full_path_us, 0.99)),
        ms(percentile(&fp.full_path_us, 1.0)),
        fp.missing,
        ms(percentile(&fp.response.lateness_us, 0.99)),
    );
    Ok(fp)
}

/// portcullis at saturation doing the whole job per delivery (decision,
/// durable audit, review call), as the Probot peer does per delivery.
async fn attested_saturation(b: &Bench) -> Result<Value, String> {
    let a = &b.args;
    println!("\n-- portcullis full work at saturation");
    let proc = start(b, Kind::Portcullis, "memory", None)?;
    let pid = proc.pid();
    let sampler = RssSampler::start(pid);
    let runs = ATTESTED_RUNS..ATTESTED_RUNS + a.attested;
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
    let last = reviews.iter().map(|(_, at)| *at).max().unwrap_or(start_at);
    let (path, missing) = load::full_path(&p.sends, &reviews);
    let audit = std::fs::read_to_string(b.work.join(format!("portcullis-{}/audit.jsonl", b.instances.get())))
        .map(|t| format!("{} records", t.lines().count()))
        .unwrap_or_else(|_| "unreadable".into());
    let v = json!({
        "webhooks": p.ok,
        "accepted_per_s": p.throughput(),
        "response_p50_ms": ms(p.p(0.5)),
        "response_p99_ms": ms(p.p(0.99)),
        "reviews": reviews.len(),
        "missing_reviews": missing,
        "reviews_per_s": reviews.len() as f64 / last.duration_since(start_at).as_secs_f64().max(1e-9),
        "full_path_p50_ms": ms(percentile(&path, 0.5)),
        "full_path_p99_ms": ms(percentile(&path, 0.99)),
        "cpu_us_per_req": cpu * 1e6 / p.ok.max(1) as f64,
        "peak_rss_mb": sampler.peak_kb() as f64 / 1024.0,
        "audit": audit,
        "problems": p.problems(),
    });
    println!("  {v}");
    Ok(v)
}

/// portcullis's memory: idle, then with `--pending` requests waiting for an
/// attestation that never comes.
async fn pending_memory(b: &Bench) -> Result<Value, String> {
    let a = &b.args;
    println!("\n-- portcullis memory with {} pending requests", a.pending);
    let signed = Arc::new(b.deliveries.sign(PENDING_RUNS..PENDING_RUNS + a.pending));
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
async fn with_redis(b: &Bench) -> Result<FullPath, String> {
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
    full_path_with(b, "redis", Some(&url)).await
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
