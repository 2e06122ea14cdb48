//! Two figures the portcullis binary measures itself, run by the driver so
//! that one run prints every figure of the targets:
//!
//! - `portcullis policy eval --config FILE --environment ENV --input FILE
//!   --repeat N`: the shipped hipaa policy evaluated in process N times over
//!   a passing input; prints `{"allow", "timing": {"evaluations",
//!   "median_us", "p99_us", "min_us"}, ...}`;
//! - `portcullis audit bench --dir DIR --records N --concurrency C
//!   --checkpoint-every DUR`: N decision records appended to a throwaway
//!   trail in DIR (under the driver's work directory, so on the same disk as
//!   the measured servers' audit files), with the Merkle tree and a signed
//!   checkpoint every DUR; prints `{"records", "concurrency", "seconds",
//!   "records_per_s", "fsyncs", "records_per_fsync", "checkpoints",
//!   "tree_size"}`.
//!
//! A subcommand that fails (or that this portcullis binary does not have)
//! makes its figure "not measured", with the error; the run goes on.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::phases::portcullis_config;
use crate::procs::die_with_parent;
use crate::{Bench, SECRET, SHA, jwt};

/// The environment of the policy figure. Its name is the one the shipped
/// data (`config/policies/hipaa-data.json`) has a cosign signer for, so the
/// input can pass every rule: the policy reads the expected signer from
/// `data.signers[<environment>]` and the approvers from
/// `data.approvers[<environment>]` (the configuration's).
const POLICY_ENVIRONMENT: &str = "hipaa-production";
const POLICY_QUERY: &str = "data.deploy.hipaa.allow";

/// The checkpoint intervals of the audit figure: the product's default
/// (the target's figure), then 1 000 times as often.
const CHECKPOINT_EVERY: [&str; 2] = ["10s", "10ms"];

/// Runs `cmd` to its end (at most `timeout`); its exit code, stdout and
/// stderr.
fn run_captured(mut cmd: Command, timeout: Duration) -> Result<(Option<i32>, String, String), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    let reader = |mut s: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status.code(), stdout, stderr))
}

/// The last few lines of `text`, on one line.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// A portcullis subcommand with the driver's environment for portcullis.
fn portcullis(b: &Bench, dir: &Path) -> Command {
    let mut cmd = Command::new(&b.args.portcullis_bin);
    cmd.current_dir(dir)
        .env("RUST_LOG", &b.args.portcullis_log)
        .env("NO_COLOR", "1")
        .env("BENCH_WEBHOOK_SECRET", SECRET)
        .envs(b.args.portcullis_env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// `unix` seconds as RFC 3339 UTC (`2026-03-01T10:00:00Z`).
fn rfc3339(unix: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// The policy input as the service builds it (`build_input` in
/// `src/verdict/evidence.rs`): the passing evidence of `benches/policy.rs`
/// (its scans stamped hours before now, since `policy eval` evaluates at
/// the current time and the policy wants them fresh within 24 h; built for
/// [`POLICY_ENVIRONMENT`]), and the context of a verdict posted by the
/// policy-gate job for the fixture's commit.
fn policy_input(b: &Bench) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let at = |hours_ago: f64| rfc3339(now.as_secs() as i64 - (hours_ago * 3_600.0) as i64);
    let digest = format!("sha256:{}", "1".repeat(64));
    let evidence = json!({
        "scans": {
            "sast": {"tool": "semgrep", "timestamp": at(2.0), "critical": 0, "high": 2},
            "container": {"tool": "trivy", "timestamp": at(1.9), "image_digest": digest, "critical": 0, "high": 1},
            "iac": {"tools": ["tfsec", "checkov"], "timestamp": at(1.8), "critical": 0, "high": 0},
            "secrets": {"tool": "gitleaks", "timestamp": at(2.0), "findings": 0},
            "dependencies": {"tool": "osv-scanner", "timestamp": at(3.0), "critical": 1, "high": 4}
        },
        "artifact": {
            "digest": digest,
            "cosign_verified": true,
            "signed_by": "awskms:///alias/hipaa-production-cosign",
            "target_environment": POLICY_ENVIRONMENT
        }
    });
    // The poster's claims: the gate job's verified token, as minted.
    let mut claims = jwt::gate_job(SHA);
    claims["actor"] = json!("octocat");
    claims["environment"] = json!(POLICY_ENVIRONMENT);
    let secs = now.as_secs();
    claims["iss"] = json!(b.minter.issuer);
    claims["aud"] = json!("portcullis");
    claims["iat"] = json!(secs);
    claims["nbf"] = json!(secs);
    claims["exp"] = json!(secs + 3_600);
    json!({
        "evidence": evidence,
        "context": {
            "environment": POLICY_ENVIRONMENT,
            "sha": SHA,
            "repository": "octo-org/payments",
            "actor": "octocat",
            "claims": claims,
            "reviews": [],
            "now_ns": now.as_nanos() as i64,
        }
    })
}

/// The shipped hipaa policy evaluated in process, `--policy-evaluations`
/// times, by `portcullis policy eval --repeat`.
pub fn policy_eval(b: &Bench) -> Result<Value, String> {
    println!(
        "\n-- shipped hipaa policy, in process ({} evaluations)",
        b.args.policy_evaluations
    );
    let dir = b.work.join("policy");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = format!(
        r#"{base}
[environments.{env}]
approvers = ["octocat", "hubot"]
pending_timeout = "24h"
[environments.{env}.verdict]
mode = "evaluated"
policy = "{POLICY_QUERY}"
max_age = "24h"
producers = [{{ job_workflow_ref = "{gate}" }}]

[policies]
paths = ["{policies}"]
"#,
        base = portcullis_config(b, &dir, "backend = \"memory\""),
        env = POLICY_ENVIRONMENT,
        gate = jwt::GATE_WORKFLOW,
        policies = b.repo.join("config/policies").display(),
    );
    let config_path = dir.join("portcullis.toml");
    let input_path = dir.join("input.json");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    std::fs::write(&input_path, serde_json::to_vec_pretty(&policy_input(b)).expect("json"))
        .map_err(|e| e.to_string())?;
    let mut cmd = portcullis(b, &dir);
    cmd.args(["policy", "eval", "--config"])
        .arg(&config_path)
        .args(["--environment", POLICY_ENVIRONMENT, "--input"])
        .arg(&input_path)
        .args(["--repeat", &b.args.policy_evaluations.to_string()]);
    let what = "`portcullis policy eval --repeat`";
    let (code, stdout, stderr) = run_captured(cmd, Duration::from_secs(600)).map_err(|e| format!("{what}: {e}"))?;
    // Exit 0: allowed; 2: denied (still a timing); anything else failed.
    let parsed = serde_json::from_str::<Value>(stdout.trim()).ok();
    let v = match (code, parsed) {
        (Some(0 | 2), Some(v)) if v["timing"]["median_us"].is_number() => v,
        (Some(0 | 2), Some(_)) => {
            return Err(format!(
                "{what} printed no `timing` (a portcullis binary without --repeat?); stderr: {}",
                tail(&stderr)
            ));
        }
        (code, _) => {
            return Err(format!(
                "{what} failed (exit {}): {}",
                code.map_or("by a signal".into(), |c| c.to_string()),
                tail(if stderr.trim().is_empty() { &stdout } else { &stderr })
            ));
        }
    };
    if v["allow"] != json!(true) {
        println!(
            "  ! the input was denied (the figure is then not the passing path's): {}",
            v["reasons"]
        );
    }
    println!("  {}", v["timing"]);
    Ok(v)
}

/// Audit appends with the Merkle tree and signed checkpoints, by
/// `portcullis audit bench`: checkpoints every 10 s (the product's default,
/// the target's figure), then every 10 ms.
pub fn audit_bench(b: &Bench) -> Vec<(String, Result<Value, String>)> {
    let mut out = Vec::new();
    for every in CHECKPOINT_EVERY {
        println!(
            "\n-- audit appends: {} records, concurrency {}, a checkpoint every {every}",
            b.args.audit_records, b.args.audit_concurrency
        );
        let r = audit_once(b, every);
        match &r {
            Ok(v) => println!("  {v}"),
            Err(e) => println!("  ! {e}"),
        }
        let failed = r.is_err();
        out.push((every.to_string(), r));
        if failed {
            // The second would fail the same way.
            break;
        }
    }
    out
}

fn audit_once(b: &Bench, every: &str) -> Result<Value, String> {
    let dir = b.work.join(format!("audit-bench-{every}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cmd = portcullis(b, &b.work);
    cmd.args(["audit", "bench", "--dir"])
        .arg(&dir)
        .args(["--records", &b.args.audit_records.to_string()])
        .args(["--concurrency", &b.args.audit_concurrency.to_string()])
        .args(["--checkpoint-every", every]);
    let what = "`portcullis audit bench`";
    let result = run_captured(cmd, Duration::from_secs(600));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, stdout, stderr) = result.map_err(|e| format!("{what}: {e}"))?;
    let parsed = serde_json::from_str::<Value>(stdout.trim()).ok();
    match (code, parsed) {
        (Some(0), Some(v)) if v["records_per_s"].is_number() => Ok(v),
        (Some(0), _) => Err(format!("{what} printed no `records_per_s`: {}", tail(&stdout))),
        (code, _) => Err(format!(
            "{what} failed (exit {}): {}",
            code.map_or("by a signal".into(), |c| c.to_string()),
            tail(if stderr.trim().is_empty() { &stdout } else { &stderr })
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_772_359_200), "2026-03-01T10:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
