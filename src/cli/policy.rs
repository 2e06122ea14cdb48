//! `check-config`'s policy checks, `portcullis policy test` and
//! `portcullis policy eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use super::{load, read_file, runtime};
use crate::config::{Config, VerdictMode};
use crate::verdict::{EvidenceSchema, PolicyEngine};

/// `check-config`: the configuration, then everything the service would
/// load from it: each evidence schema, every policy module and data file
/// (loose and in bundles, signatures verified), and each evaluated
/// environment's query naming a rule that exists. Every problem is
/// printed, each naming its file and line (or key, line and column).
pub(super) fn check_config(path: &Path) -> Result<ExitCode, String> {
    let config = load(path)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut problems: Vec<String> = Vec::new();
    let at = |key: &str| match crate::config::locate(&text, key) {
        Some((line, column)) => format!("{key} (line {line}, column {column})"),
        None => key.to_owned(),
    };
    for (name, env) in &config.environments {
        if let Some(schema) = &env.verdict.evidence_schema
            && let Err(e) = EvidenceSchema::load(schema)
        {
            problems.push(format!(
                "{}: {e}",
                at(&format!("environments.{name}.verdict.evidence_schema"))
            ));
        }
    }
    // The schemas are checked above, the queries below (each with its
    // place and the nearest rule): the policies on their own here.
    let mut policies_only = config.clone();
    for env in policies_only.environments.values_mut() {
        env.verdict.evidence_schema = None;
        env.verdict.policy = None;
    }
    let loaded = runtime()?.block_on(async {
        let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let opa = crate::verdict::OpaClient::new(http.clone());
        Ok::<_, String>(crate::verdict::PolicySet::load(&policies_only, http, opa).await)
    })?;
    match loaded {
        Err(e) => problems.push(e.to_string()),
        Ok(set) => {
            if let Some(message) = set.status().last_error {
                problems.push(message);
            }
            if let Some(engine) = set.engine() {
                for (env, query, nearest) in crate::verdict::missing_rules(&config, &engine) {
                    let mut line = format!(
                        "{}: {query} names no rule of the loaded policies",
                        at(&format!("environments.{env}.verdict.policy"))
                    );
                    if let Some(n) = nearest {
                        line.push_str(&format!("; did you mean {n}?"));
                    }
                    problems.push(line);
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "invalid configuration {}:\n  {}",
            path.display(),
            problems.join("\n  ")
        ));
    }
    print!("{}", config.summary());
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}

/// Where policies come from for `policy test` and `policy eval`: the
/// paths given, else the configuration's sources.
fn engine_for(
    config: Option<&Path>,
    paths: &[PathBuf],
    with_tests: bool,
) -> Result<(Arc<PolicyEngine>, Option<Config>), String> {
    let config = config.map(load).transpose()?;
    let approvers = config
        .as_ref()
        .map(crate::verdict::approvers_of)
        .unwrap_or_else(BTreeMap::new);
    if !paths.is_empty() {
        let engine = crate::verdict::compile_paths(paths, &approvers, with_tests).map_err(|e| e.to_string())?;
        return Ok((Arc::new(engine), config));
    }
    let Some(config) = config else {
        return Err("name policy paths, or --config to use the configured ones".into());
    };
    let engine = runtime()?.block_on(async {
        let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        if with_tests {
            crate::verdict::load_with_tests(&config, http)
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string())
        } else {
            let opa = crate::verdict::OpaClient::new(http.clone());
            let set = crate::verdict::PolicySet::load(&config, http, opa)
                .await
                .map_err(|e| e.to_string())?;
            set.engine()
                .ok_or_else(|| "no policies are configured (or a bundle could not be fetched)".to_string())
        }
    })?;
    Ok((engine, Some(config)))
}

/// `policy test`: runs every `test_` rule of the `*_test.rego` files, as
/// `opa test` does: one line per failing test, then the counts. Exit 0 when
/// all pass, 2 when one fails (as `opa test`), 1 when nothing could run.
pub(super) fn test(config: Option<&Path>, paths: &[PathBuf], verbose: bool) -> Result<ExitCode, String> {
    let (engine, _) = engine_for(config, paths, true)?;
    let results = engine.run_tests(OffsetDateTime::now_utc());
    if results.is_empty() {
        return Err("no test_ rules found (tests live in *_test.rego files)".into());
    }
    let (mut passed, mut failed, mut errors) = (0, 0, 0);
    for r in &results {
        match (&r.error, r.passed) {
            (Some(e), _) => {
                errors += 1;
                println!("{}: ERROR: {e}", r.rule);
            }
            (None, true) => {
                passed += 1;
                if verbose {
                    println!("{}: PASS", r.rule);
                }
            }
            (None, false) => {
                failed += 1;
                println!("{}: FAIL", r.rule);
            }
        }
    }
    let total = results.len();
    println!("{}", "-".repeat(80));
    println!("PASS: {passed}/{total}");
    if failed > 0 {
        println!("FAIL: {failed}/{total}");
    }
    if errors > 0 {
        println!("ERROR: {errors}/{total}");
    }
    Ok(if failed + errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `policy eval`: evaluates a query (or an environment's) over an input
/// file (`{"evidence", "context"}`, as the service builds it) and prints
/// `{"query", "allow", "reasons", "revision"}`, with `--repeat N` also
/// `timing` over N evaluations. Exit 0 when it allows, 2 when it denies.
pub(super) fn eval(
    config: Option<&Path>,
    paths: &[PathBuf],
    input: &Path,
    query: Option<&str>,
    environment: Option<&str>,
    repeat: Option<u32>,
) -> Result<ExitCode, String> {
    let (engine, config) = engine_for(config, paths, false)?;
    let query = match (query, environment) {
        (Some(q), _) => q.to_owned(),
        (None, Some(env)) => {
            let env = config
                .as_ref()
                .and_then(|c| c.environment(env))
                .ok_or_else(|| format!("environment `{env}` is not configured"))?;
            if env.verdict.mode == VerdictMode::Asserted {
                return Err(format!("environment `{}` does not evaluate policies", env.name));
            }
            env.verdict
                .policy
                .clone()
                .ok_or_else(|| format!("environments.{}.verdict.policy is not set", env.name))?
        }
        (None, None) => return Err("name the query (--query data.pkg.allow) or an --environment".into()),
    };
    let input: Value =
        serde_json::from_slice(&read_file(input, "input")?).map_err(|e| format!("input {}: {e}", input.display()))?;
    let evaluation = engine
        .evaluate(&query, &input, OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::json!({
        "query": query,
        "allow": evaluation.allow,
        "reasons": evaluation.reasons,
        "revision": engine.revision(),
    });
    if let Some(n) = repeat {
        out["timing"] = time_evaluations(n, || {
            engine
                .evaluate(&query, &input, OffsetDateTime::now_utc())
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
    }
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(if evaluation.allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Runs `evaluate` `n` times and summarises the wall time of each run, as
/// the service pays it per verdict: `{"evaluations", "median_us", "p99_us",
/// "min_us"}`.
fn time_evaluations(n: u32, mut evaluate: impl FnMut() -> Result<(), String>) -> Result<Value, String> {
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let started = std::time::Instant::now();
        evaluate()?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(serde_json::json!({
        "evaluations": n,
        "median_us": at(0.5),
        "p99_us": at(0.99),
        "min_us": at(0.0),
    }))
}
