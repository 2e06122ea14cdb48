//! The load driver of portcullis's benchmark harness (BENCHMARKS.md).
//!
//! In one run, side by side on the same machine, it measures three servers
//! answering the same signed `deployment_protection_rule` deliveries:
//! - **floor**: a bare actix-web server that verifies the HMAC and parses
//!   the gate's fields (`src/floor.rs`), the upper bound; a mode of this
//!   binary (`load-driver floor <port>`), run in a process of its own;
//! - **portcullis**: the release binary, memory state, file audit;
//! - **probot**: a Probot 14 app (`bench/peers/probot/`); in the
//!   side-by-side rounds it does what portcullis does at intake (verify,
//!   parse, check the sender, keep the request pending; no API call).
//!
//! Each round starts each server fresh and drives it at saturation (closed
//! loop) and at a fixed rate (open loop), reading its CPU time and resident
//! memory from `/proc`. portcullis then gets the full path (attestation and
//! verdict posted first, so each webhook ends in a review call at the mock).
//! Once per run: portcullis and Probot each doing the whole job per delivery
//! at saturation, portcullis's memory with 100 000 pending requests, the full
//! path on Redis state, and two figures from the portcullis binary itself
//! (`policy eval --repeat`, `audit bench`). Last, a table of the performance
//! targets, each met or missed. Everything listens on loopback, every phase
//! is bounded in requests and time, and every child dies with the driver.
//!
//! `cargo run --release --bin load-driver -- --help` in `bench/driver`
//! lists the options.

mod figures;
mod floor;
mod http;
mod jwt;
mod load;
mod mock;
mod phases;
mod procs;
mod targets;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{Deliveries, percentile};
use crate::mock::Mock;
use crate::phases::{FullPath, Round};

const SECRET: &str = "bench-webhook-secret-5e1f";
pub(crate) const SHA: &str = "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6";
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
const REVIEW_WARM_RUNS: u64 = 7_000_000_000;
const REVIEW_RUNS: u64 = 7_100_000_000;

const HELP: &str = "load-driver: portcullis side by side with a Probot app and a floor server,
and every figure of the performance targets, in one run

Build first: `cargo build --release` at the repository root (the portcullis
binary), `npm ci` in bench/peers/probot (the Probot peer). Then, in
bench/driver:
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
  --redis / --no-redis  the full path with state.backend = \"redis\" (its own
                        redis-server on a free port) [on when redis-server is
                        on PATH; `apt-get install -y redis-server`]
  --policy-evaluations N  `portcullis policy eval --repeat N` over the shipped
                        hipaa policy [20000]
  --audit-records N     `portcullis audit bench` records per run [200000]
  --audit-concurrency C concurrent appends of `audit bench` [128]
  --portcullis-log F    RUST_LOG for portcullis [warn]; `info` is its default
  --portcullis-bin P    [<repo>/target/release/portcullis]
  --portcullis-env K=V  an environment variable for portcullis (repeatable), e.g.
                        LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
  --work-dir DIR        where portcullis keeps its configuration and audit
                        files [the system temporary directory]; /dev/shm shows
                        what the fsyncs of the audit trail cost
  --keep-work           keep the work directory (configurations, audit trails,
                        the policy input) instead of removing it at the end
  --json PATH           also write every figure and the targets table as JSON
  --perf DIR            record `perf` profiles (cpu-clock, DWARF call graphs) of
                        each saturation phase into DIR (use with --rounds 1;
                        Probot runs with --perf-basic-prof so JIT frames resolve)
  --quick               small numbers, for a smoke test (the targets table then
                        marks figures taken under other conditions with *)

Fairness:
  Same deliveries (8.4 KB, signed, each for its own workflow run), same
  connections, same mock GitHub API for all three servers; one client thread
  sharing the two cores with the server. Probot runs without request logging
  and with Octokit's throttling off (both in its favour).
  Side-by-side rounds (saturation and fixed rate) compare intake with intake:
  portcullis verifies, parses, stores the request as pending (and appends an
  audit record) and answers 202; the Probot peer (PEER_MODE=ingest) verifies,
  parses, checks the sender against its allow-list, keeps the request in an
  in-memory Map (no durability) and answers, neither calling the API.
  The whole job per delivery is compared once per run, at saturation:
  portcullis with attestation and verdict present (decision, durable audit,
  review call) next to Probot posting its review before it answers
  (PEER_MODE=review).
";

#[derive(Clone)]
pub(crate) struct Args {
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
    /// `None`: on when redis-server is on PATH.
    redis: Option<bool>,
    policy_evaluations: u32,
    audit_records: u64,
    audit_concurrency: u32,
    portcullis_log: String,
    portcullis_bin: PathBuf,
    portcullis_env: Vec<(String, String)>,
    json: Option<PathBuf>,
    perf: Option<PathBuf>,
    work_dir: PathBuf,
    keep_work: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
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

/// Where `cargo build --release` at the repository root puts the binary:
/// `<repo>/target/release/portcullis`, or under `$CARGO_TARGET_DIR` when
/// that is set and the binary is there.
fn default_portcullis_bin(repo: &Path) -> PathBuf {
    let in_repo = repo.join("target/release/portcullis");
    if !in_repo.is_file()
        && let Some(dir) = std::env::var_os("CARGO_TARGET_DIR")
    {
        let elsewhere = PathBuf::from(dir).join("release/portcullis");
        if elsewhere.is_file() {
            return elsewhere;
        }
    }
    in_repo
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
        redis: None,
        policy_evaluations: 20_000,
        audit_records: 200_000,
        audit_concurrency: 128,
        portcullis_log: "warn".into(),
        portcullis_bin: default_portcullis_bin(&repo()),
        portcullis_env: Vec::new(),
        json: None,
        perf: None,
        work_dir: std::env::temp_dir(),
        keep_work: false,
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
            "--redis" => a.redis = Some(true),
            "--no-redis" => a.redis = Some(false),
            "--policy-evaluations" => a.policy_evaluations = (num(value()?)? as u32).max(1),
            "--audit-records" => a.audit_records = (num(value()?)? as u64).max(1),
            "--audit-concurrency" => a.audit_concurrency = (num(value()?)? as u32).max(1),
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
            "--keep-work" => a.keep_work = true,
            "--quick" => {
                a.rounds = 1;
                a.saturation = Duration::from_secs(2);
                a.saturation_max = 20_000;
                a.warmup = 1_000;
                a.rate_secs = 2.0;
                a.full_secs = 2.0;
                a.attested = 2_000;
                a.pending = 5_000;
                a.policy_evaluations = 2_000;
                a.audit_records = 20_000;
            }
            other => return Err(format!("unknown option `{other}` (see --help)")),
        }
    }
    if a.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(a)
}

fn main() {
    // `load-driver floor <port>`: this process is the floor server, started
    // by a driver (see `phases::start`).
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(floor::MODE) {
        let port = argv.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if let Err(e) = floor::run(port) {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
        return;
    }
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
pub(crate) struct Bench {
    args: Args,
    repo: PathBuf,
    mock: Mock,
    deliveries: Arc<Deliveries>,
    minter: jwt::Minter,
    work: PathBuf,
    instances: std::cell::Cell<u32>,
}

/// Is `name` an executable file in a directory of `PATH`?
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Everything a run needs that the driver's own build does not give:
/// checked before anything starts, each with the command that provides it.
/// Returns whether the Redis phase runs.
fn preflight(args: &Args, repo: &Path) -> Result<bool, String> {
    let mut missing = Vec::new();
    if args.targets.contains(&Kind::Portcullis) && !args.portcullis_bin.is_file() {
        missing.push(format!(
            "the portcullis release binary {} is missing: build it with `cargo build --release` at the \
             repository root ({}), or name another with --portcullis-bin",
            args.portcullis_bin.display(),
            repo.display()
        ));
    }
    if args.targets.contains(&Kind::Probot) {
        let dir = repo.join("bench/peers/probot");
        if !on_path("node") {
            missing.push("`node` (Node.js 20 or later) is not on PATH; the Probot peer needs it".to_string());
        }
        if !dir.join("node_modules/probot").is_dir() {
            missing.push(format!(
                "the Probot peer is not installed: run `npm ci` in {}",
                dir.display()
            ));
        }
    }
    let redis_found = on_path("redis-server");
    let redis = args.targets.contains(&Kind::Portcullis)
        && match args.redis {
            Some(true) if !redis_found => {
                missing.push(
                    "--redis: `redis-server` is not on PATH (`apt-get install -y redis-server`), or run with --no-redis"
                        .to_string(),
                );
                false
            }
            Some(on) => on,
            None => redis_found,
        };
    if !missing.is_empty() {
        return Err(format!("cannot start:\n  - {}", missing.join("\n  - ")));
    }
    if args.targets.contains(&Kind::Portcullis) && args.redis.is_none() && !redis {
        println!(
            "note: `redis-server` is not on PATH, so the full path on Redis state is not measured \
             (`apt-get install -y redis-server`)"
        );
    }
    Ok(redis)
}

/// Everything one run measured, for the report, the JSON and the targets.
#[derive(Default)]
pub(crate) struct Results {
    rounds: Vec<Vec<(Kind, Round)>>,
    full_paths: Vec<FullPath>,
    /// Full-path runs that failed (the run goes on without them).
    full_path_errors: Vec<String>,
    portcullis_full_work: Option<Result<Value, String>>,
    probot_full_work: Option<Result<Value, String>>,
    pending: Option<Result<Value, String>>,
    redis: Option<Result<FullPath, String>>,
    policy: Option<Result<Value, String>>,
    audit: Vec<(String, Result<Value, String>)>,
}

async fn run(args: Args) -> Result<(), String> {
    let repo = repo();
    let redis = preflight(&args, &repo)?;
    let keys = repo.join("tests/support/node/keys");
    let mock = mock::start(jwt::jwks(&keys));
    let fixture = std::fs::read_to_string(repo.join("tests/fixtures/github/deployment_protection_rule.requested.json"))
        .map_err(|e| format!("cannot read the webhook fixture: {e}"))?;
    let deliveries = Arc::new(Deliveries::new(&fixture, &mock.url(), SECRET));
    let minter = jwt::Minter::new(&keys, mock.url());
    let work = args.work_dir.join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let _cleanup = (!args.keep_work).then(|| RemoveDir(work.clone()));
    if args.keep_work {
        println!("work directory (kept): {}", work.display());
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
    let started = Instant::now();

    println!(
        "load-driver: {} rounds of {:?}; deliveries of {} bytes; {} connections at saturation; {} req/s fixed rate",
        args.rounds,
        args.targets.iter().map(|k| k.name()).collect::<Vec<_>>(),
        b.deliveries.body_len(),
        args.connections,
        args.rate
    );
    if args.targets.contains(&Kind::Portcullis) {
        println!("portcullis: {}", args.portcullis_bin.display());
    }
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

    let mut res = Results::default();
    let portcullis = args.targets.contains(&Kind::Portcullis);
    for r in 0..args.rounds {
        println!("\n-- round {} of {}", r + 1, args.rounds);
        let mut this = Vec::new();
        for &kind in &args.targets {
            let round = phases::side_by_side(&b, kind, &warm, &sat, &rate).await?;
            this.push((kind, round));
        }
        res.rounds.push(this);
        if portcullis {
            match phases::full_path(&b, "memory", None).await {
                Ok(fp) => res.full_paths.push(fp),
                Err(e) => {
                    println!("  ! portcullis full path (memory): {e}");
                    res.full_path_errors.push(e);
                }
            }
        }
    }

    // Once per run; a phase that fails is reported as such, and the run
    // goes on to the next.
    let noted = |what: &str, r: Result<Value, String>| {
        if let Err(e) = &r {
            println!("  ! {what}: {e}");
        }
        r
    };
    if portcullis {
        res.portcullis_full_work = Some(noted("portcullis full work", phases::attested_saturation(&b).await));
    }
    if args.targets.contains(&Kind::Probot) {
        res.probot_full_work = Some(noted("probot full work", phases::probot_full_work(&b).await));
    }
    if portcullis {
        res.pending = Some(noted("portcullis pending memory", phases::pending_memory(&b).await));
        if redis {
            res.redis = Some(phases::with_redis(&b).await);
        }
        res.policy = Some(noted("policy evaluation", figures::policy_eval(&b)));
        res.audit = figures::audit_bench(&b);
    }

    report(&b, &res, started.elapsed())
}

/// Prints every figure, the targets table, and writes the JSON.
fn report(b: &Bench, res: &Results, took: Duration) -> Result<(), String> {
    let args = &b.args;
    println!("\n==== results (median of {} rounds) ====", res.rounds.len());
    let mut table = Vec::new();
    println!(
        "\nsaturation: {} connections, deliveries of {} bytes, up to {:?} per phase; fixed rate {}/s for {} s",
        args.connections,
        b.deliveries.body_len(),
        args.saturation,
        args.rate,
        args.rate_secs
    );
    println!(
        "{:<11} {:>11} {:>9} {:>9} {:>11} {:>10} {:>10} | {:>9} {:>9} {:>11}",
        "server",
        "accepted/s",
        "p50",
        "p99",
        "CPU µs/req",
        "idle RSS",
        "peak RSS",
        "rate p50",
        "rate p99",
        "CPU µs/req"
    );
    for &kind in &args.targets {
        let rs: Vec<&Round> = res
            .rounds
            .iter()
            .flat_map(|r| r.iter())
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r)
            .collect();
        let med = |f: &dyn Fn(&Round) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let thr = med(&|r| r.sat.throughput());
        let row = json!({
            "server": kind.name(),
            "mode": match kind { Kind::Probot => "ingest", Kind::Portcullis => "stored, pending", Kind::Floor => "verify + parse" },
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
            "held_pending": rs.last().and_then(|r| r.held_pending),
            "problems": rs.iter().map(|r| format!("{} {}", r.sat.problems(), r.rate.problems())).filter(|s| !s.trim().is_empty()).collect::<Vec<_>>(),
        });
        let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<11} {:>11.0} {:>7.2}ms {:>7.2}ms {:>11.1} {:>8.1}MB {:>8.1}MB | {:>7.2}ms {:>7.2}ms {:>11.1}",
            kind.name(),
            thr,
            f("sat_p50_ms"),
            f("sat_p99_ms"),
            f("sat_cpu_us_per_req"),
            f("idle_rss_mb"),
            f("peak_rss_mb"),
            f("rate_p50_ms"),
            f("rate_p99_ms"),
            f("rate_cpu_us_per_req"),
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
            println!("portcullis / probot (ingest) accepted/s = {:.2}x", p / pb);
            ratios["portcullis_over_probot"] = json!(p / pb);
        }
        if let Some(f) = thr_of("floor") {
            println!("portcullis / floor accepted/s = {:.0}%", 100.0 * p / f);
            ratios["portcullis_over_floor"] = json!(p / f);
        }
    }

    let full_rows: Vec<Value> = res.full_paths.iter().map(FullPath::json).collect();
    let full_memory = if full_rows.is_empty() {
        Value::Null
    } else {
        let med = |key: &str| median(full_rows.iter().filter_map(|r| r[key].as_f64()).collect());
        let summary = json!({
            "runs": full_rows.len(),
            "response_p50_ms": med("response_p50_ms"),
            "response_p99_ms": med("response_p99_ms"),
            "full_path_p50_ms": med("full_path_p50_ms"),
            "full_path_p99_ms": med("full_path_p99_ms"),
            "missing_reviews": full_rows.iter().filter_map(|r| r["missing_reviews"].as_u64()).sum::<u64>(),
        });
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
        summary
    };
    for e in &res.full_path_errors {
        println!("portcullis full path, memory state: a run failed: {e}");
    }
    let redis_json = match &res.redis {
        None => Value::Null,
        Some(Ok(fp)) => {
            let r = fp.json();
            println!(
                "portcullis full path at {}/s, redis state: response p50 {:.2} ms, p99 {:.2} ms; full path p50 {:.2} ms, p99 {:.2} ms{}",
                args.rate,
                r["response_p50_ms"].as_f64().unwrap_or(0.0),
                r["response_p99_ms"].as_f64().unwrap_or(0.0),
                r["full_path_p50_ms"].as_f64().unwrap_or(0.0),
                r["full_path_p99_ms"].as_f64().unwrap_or(0.0),
                match r["missing_reviews"].as_u64() {
                    Some(n) if n > 0 => format!(" ({n} missing reviews)"),
                    _ => String::new(),
                }
            );
            r
        }
        Some(Err(e)) => {
            println!("portcullis full path, redis state: not measured: {e}");
            json!({"error": e})
        }
    };

    if res.portcullis_full_work.is_some() || res.probot_full_work.is_some() {
        println!(
            "\nfull work at saturation (the whole job per delivery, {} connections):",
            args.connections
        );
    }
    let portcullis_full_json = match &res.portcullis_full_work {
        None => Value::Null,
        Some(Err(e)) => {
            println!("  portcullis: not measured: {e}");
            json!({"error": e})
        }
        Some(Ok(a)) => a.clone(),
    };
    if let Some(Ok(a)) = &res.portcullis_full_work {
        println!(
            "  portcullis ({} attested deliveries: decision, durable audit, review call): {}, audit {}",
            a["webhooks"],
            full_work_figures(a),
            a["audit"]
        );
    }
    let probot_full_json = match &res.probot_full_work {
        None => Value::Null,
        Some(Ok(a)) => {
            println!(
                "  probot     ({} deliveries, PEER_MODE=review: check, review call, then the answer): {}",
                a["webhooks"],
                full_work_figures(a)
            );
            a.clone()
        }
        Some(Err(e)) => {
            println!("  probot (review): not measured: {e}");
            json!({"error": e})
        }
    };
    let pending_json = match &res.pending {
        None => Value::Null,
        Some(Err(e)) => {
            println!(
                "\nportcullis memory with {} pending requests: not measured: {e}",
                args.pending
            );
            json!({"error": e})
        }
        Some(Ok(p)) => p.clone(),
    };
    if let Some(Ok(p)) = &res.pending {
        println!(
            "\nportcullis memory: idle {:.1} MB; with {} pending requests {:.1} MB (peak {:.1} MB; {:.0} accepted/s while filling)",
            p["idle_rss_mb"].as_f64().unwrap_or(0.0),
            p["open_requests"],
            p["rss_mb"].as_f64().unwrap_or(0.0),
            p["peak_rss_mb"].as_f64().unwrap_or(0.0),
            p["accepted_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    let policy_json = match &res.policy {
        None => Value::Null,
        Some(Ok(v)) => {
            let t = &v["timing"];
            println!(
                "\nshipped hipaa policy, in process (`portcullis policy eval --repeat {}`): median {:.1} µs, p99 {:.1} µs, \
                 fastest {:.1} µs; allow = {}",
                t["evaluations"],
                t["median_us"].as_f64().unwrap_or(0.0),
                t["p99_us"].as_f64().unwrap_or(0.0),
                t["min_us"].as_f64().unwrap_or(0.0),
                v["allow"]
            );
            v.clone()
        }
        Some(Err(e)) => {
            println!("\nshipped hipaa policy: not measured: {e}");
            json!({"error": e})
        }
    };
    let mut audit_json = Vec::new();
    for (every, r) in &res.audit {
        match r {
            Ok(v) => {
                println!(
                    "audit appends (`portcullis audit bench`), checkpoint every {every}: {:.0} records/s ({} records, \
                     concurrency {}, {:.2} s; {:.1} records per fsync; {} checkpoints, tree size {})",
                    v["records_per_s"].as_f64().unwrap_or(0.0),
                    v["records"],
                    v["concurrency"],
                    v["seconds"].as_f64().unwrap_or(0.0),
                    v["records_per_fsync"].as_f64().unwrap_or(0.0),
                    v["checkpoints"],
                    v["tree_size"]
                );
                audit_json.push(json!({"checkpoint_every": every, "result": v}));
            }
            Err(e) => {
                println!("audit appends, checkpoint every {every}: not measured: {e}");
                audit_json.push(json!({"checkpoint_every": every, "error": e}));
            }
        }
    }
    let mock_counts = b.mock.state.counts();
    println!("\nmock GitHub API calls over the run: {mock_counts}");

    let targets = targets::evaluate(b, res, &table);
    targets::print(&targets);
    println!("\nthe run took {:.0?}", took);

    if let Some(path) = &args.json {
        let out = json!({
            "servers": args.targets.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "saturation": table,
            "ratios": ratios,
            "full_path_memory": full_memory,
            "full_path_memory_runs": full_rows,
            "full_path_memory_errors": res.full_path_errors,
            "full_path_redis": redis_json,
            "portcullis_attested_saturation": portcullis_full_json,
            "probot_review_saturation": probot_full_json,
            "portcullis_pending_memory": pending_json,
            "policy_eval": policy_json,
            "audit_bench": audit_json,
            "mock_calls": mock_counts,
            "targets": targets.iter().map(targets::Row::json).collect::<Vec<_>>(),
            "settings": {
                "rounds": res.rounds.len(),
                "connections": args.connections, "saturation_secs": args.saturation.as_secs_f64(),
                "rate": args.rate, "rate_secs": args.rate_secs, "full_secs": args.full_secs,
                "attested": args.attested, "pending": args.pending,
                "policy_evaluations": args.policy_evaluations,
                "audit_records": args.audit_records, "audit_concurrency": args.audit_concurrency,
                "delivery_bytes": b.deliveries.body_len(), "portcullis_log": args.portcullis_log,
                "portcullis_bin": args.portcullis_bin,
                "work_dir": args.work_dir,
                "portcullis_env": args.portcullis_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            },
            "seconds": took.as_secs_f64(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out).expect("json"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

/// The `q` quantile of sorted microseconds, in milliseconds.
pub(crate) fn pct_ms(sorted_us: &[u32], q: f64) -> f64 {
    ms(percentile(sorted_us, q))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The figures of a full-work phase, as one line reads them.
fn full_work_figures(a: &Value) -> String {
    let f = |k: &str| a[k].as_f64().unwrap_or(0.0);
    format!(
        "{:.0} accepted/s (p50 {:.2} ms, p99 {:.2} ms), {:.0} reviews/s completed, full path p50 {:.1} ms, \
         p99 {:.1} ms, {:.1} µs CPU per delivery, peak RSS {:.1} MB",
        f("accepted_per_s"),
        f("response_p50_ms"),
        f("response_p99_ms"),
        f("reviews_per_s"),
        f("full_path_p50_ms"),
        f("full_path_p99_ms"),
        f("cpu_us_per_req"),
        f("peak_rss_mb"),
    )
}
