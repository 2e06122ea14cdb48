//! The performance targets, each with the figure this run measured for it
//! and whether it is met. Printed last, as a Markdown table, and written to
//! the JSON.

use serde_json::{Value, json};

use crate::{Bench, Results, median};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    Missed,
    NotMeasured,
}

pub struct Row {
    pub target: &'static str,
    pub requirement: &'static str,
    pub measured: String,
    pub status: Status,
    /// Measured under other conditions than the target's (e.g. `--quick`):
    /// indicative only.
    pub other_conditions: bool,
}

impl Row {
    fn new(target: &'static str, requirement: &'static str) -> Row {
        Row {
            target,
            requirement,
            measured: "-".into(),
            status: Status::NotMeasured,
            other_conditions: false,
        }
    }

    fn result(&self) -> String {
        let star = if self.other_conditions { "*" } else { "" };
        match self.status {
            Status::Met => format!("**met**{star}"),
            Status::Missed => format!("**missed**{star}"),
            Status::NotMeasured => "not measured".into(),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "target": self.target,
            "requirement": self.requirement,
            "measured": self.measured,
            "met": match self.status {
                Status::Met => json!(true),
                Status::Missed => json!(false),
                Status::NotMeasured => Value::Null,
            },
            "status": match self.status {
                Status::Met => "met",
                Status::Missed => "missed",
                Status::NotMeasured => "not measured",
            },
            "other_conditions": self.other_conditions,
        })
    }
}

/// Met when every part is; missed when one part is; else not measured.
fn all(parts: &[Option<bool>]) -> Status {
    if parts.contains(&Some(false)) {
        Status::Missed
    } else if parts.iter().any(Option::is_none) || parts.is_empty() {
        Status::NotMeasured
    } else {
        Status::Met
    }
}

fn grouped(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A latency target over full-path figures: median < `p50`, p99 < `p99`
/// (ms); more than 1 % of deliveries without a review misses it.
fn full_path_row(row: &mut Row, fig: &Value, p50: f64, p99: f64, what: &str) {
    let (Some(m), Some(p)) = (fig["full_path_p50_ms"].as_f64(), fig["full_path_p99_ms"].as_f64()) else {
        if let Some(e) = fig["error"].as_str() {
            row.measured = format!("not measured: {}", first_line(e));
        }
        return;
    };
    let missing = fig["missing_reviews"].as_u64().unwrap_or(0);
    let webhooks = fig["webhooks"].as_u64().unwrap_or(0).max(1);
    let lost = missing as f64 > webhooks as f64 * 0.01;
    row.measured = format!("median {m:.2} ms, p99 {p:.2} ms ({what})");
    if missing > 0 {
        row.measured
            .push_str(&format!("; {missing} of {webhooks} without a review"));
    }
    row.status = all(&[Some(m < p50 && p < p99 && !lost)]);
}

/// The first line of an error, up to the first ` | ` (the lines of a
/// child's stderr are joined with it).
fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    line.split(" | ").next().unwrap_or(line)
}

pub fn evaluate(b: &Bench, res: &Results, table: &[Value]) -> Vec<Row> {
    let a = &b.args;
    let thr = |name: &str| {
        table
            .iter()
            .find(|r| r["server"] == name)
            .and_then(|r| r["accepted_per_s"].as_f64())
    };
    let mut rows = Vec::new();
    let why = if a.targets.contains(&crate::Kind::Portcullis) {
        "not measured"
    } else {
        "not measured (portcullis is not among --targets)"
    };

    // 1. Ingest at saturation.
    let mut r = Row::new(
        "ingest, signed 8.4 KB deliveries, saturation",
        ">= 70% of the floor server and >= 6x the Probot peer",
    );
    if let Some(p) = thr("portcullis") {
        let (floor, probot) = (thr("floor"), thr("probot"));
        let mut parts = vec![format!("portcullis {}/s", grouped(p))];
        parts.push(match floor {
            Some(f) => format!("{:.0}% of the floor ({}/s)", 100.0 * p / f, grouped(f)),
            None => "floor not run".into(),
        });
        parts.push(match probot {
            Some(pb) => format!("{:.1}x Probot (ingest, {}/s)", p / pb, grouped(pb)),
            None => "Probot not run".into(),
        });
        r.measured = parts.join(", ");
        r.status = all(&[floor.map(|f| p >= 0.7 * f), probot.map(|pb| p >= 6.0 * pb)]);
    }
    rows.push(r);

    // 2. Memory with 100 000 pending.
    let mut r = Row::new("memory with 100,000 pending requests", "< 100 MB RSS");
    match &res.pending {
        Some(Ok(v)) => {
            let mb = v["rss_mb"].as_f64().unwrap_or(0.0);
            let held = v["open_requests"]
                .as_u64()
                .or_else(|| v["pending"].as_u64())
                .unwrap_or(0);
            r.measured = format!(
                "{mb:.1} MB with {} pending (peak {:.1} MB)",
                grouped(held as f64),
                v["peak_rss_mb"].as_f64().unwrap_or(0.0)
            );
            r.status = all(&[Some(mb < 100.0)]);
            r.other_conditions = held < 100_000;
        }
        Some(Err(e)) => r.measured = format!("not measured: {}", first_line(e)),
        None => {}
    }
    rows.push(r);

    // 3. Idle RSS: the median over the side-by-side rounds.
    let mut r = Row::new("idle RSS", "< 30 MB");
    let idle: Vec<f64> = res
        .rounds
        .iter()
        .flatten()
        .filter(|(k, _)| *k == crate::Kind::Portcullis)
        .map(|(_, round)| round.idle_rss_kb as f64 / 1024.0)
        .collect();
    let idle = if idle.is_empty() {
        match &res.pending {
            Some(Ok(v)) => v["idle_rss_mb"].as_f64(),
            _ => None,
        }
    } else {
        Some(median(idle))
    };
    if let Some(mb) = idle {
        r.measured = format!("{mb:.1} MB (1.5 s after start)");
        r.status = all(&[Some(mb < 30.0)]);
    }
    rows.push(r);

    let other_rate = (a.rate - 1000.0).abs() > f64::EPSILON;

    // 4. Full path on Redis state.
    let mut r = Row::new(
        "full path on Redis state, 1,000 deliveries/s",
        "median < 3 ms, p99 < 10 ms",
    );
    match &res.redis {
        Some(Ok(fp)) => {
            full_path_row(&mut r, &fp.json(), 3.0, 10.0, "1 run");
            r.other_conditions = other_rate;
        }
        Some(Err(e)) => r.measured = format!("not measured: {}", first_line(e)),
        None if a.targets.contains(&crate::Kind::Portcullis) => {
            r.measured = "not measured (no redis-server, or --no-redis)".into()
        }
        None => {}
    }
    rows.push(r);

    // 5. Full path on memory state: medians over the rounds.
    let mut r = Row::new(
        "full path on memory state, 1,000 deliveries/s",
        "median < 2 ms, p99 < 5 ms",
    );
    if !res.full_paths.is_empty() {
        let runs: Vec<Value> = res.full_paths.iter().map(|fp| fp.json()).collect();
        let med = |k: &str| median(runs.iter().filter_map(|v| v[k].as_f64()).collect());
        let fig = json!({
            "full_path_p50_ms": med("full_path_p50_ms"),
            "full_path_p99_ms": med("full_path_p99_ms"),
            "missing_reviews": runs.iter().filter_map(|v| v["missing_reviews"].as_u64()).sum::<u64>(),
            "webhooks": runs.iter().filter_map(|v| v["webhooks"].as_u64()).sum::<u64>(),
        });
        let what = if runs.len() == 1 {
            "1 run".to_string()
        } else {
            format!("medians of {} runs", runs.len())
        };
        full_path_row(&mut r, &fig, 2.0, 5.0, &what);
        r.other_conditions = other_rate;
    } else if let Some(e) = res.full_path_errors.first() {
        r.measured = format!("not measured: {}", first_line(e));
    }
    rows.push(r);

    // 6. The shipped hipaa policy.
    let mut r = Row::new("shipped hipaa policy, in-process evaluation", "median < 50 µs");
    match &res.policy {
        Some(Ok(v)) => {
            let t = &v["timing"];
            let m = t["median_us"].as_f64().unwrap_or(f64::INFINITY);
            r.measured = format!(
                "median {m:.1} µs, p99 {:.1} µs over {} evaluations{}",
                t["p99_us"].as_f64().unwrap_or(0.0),
                grouped(t["evaluations"].as_f64().unwrap_or(0.0)),
                if v["allow"] == json!(true) {
                    ""
                } else {
                    " (the input was denied)"
                }
            );
            r.status = all(&[Some(m < 50.0)]);
            r.other_conditions = v["allow"] != json!(true);
        }
        Some(Err(e)) => r.measured = format!("not measured: {}", first_line(e)),
        None => {}
    }
    rows.push(r);

    // 7. Audit appends, checkpoints at the product's default interval.
    let mut r = Row::new(
        "audit appends with the Merkle tree and checkpoints",
        ">= 80,000 records/s",
    );
    match res.audit.first() {
        Some((every, Ok(v))) => {
            let rps = v["records_per_s"].as_f64().unwrap_or(0.0);
            let mut m = format!(
                "{}/s (checkpoint every {every}, {} records, concurrency {})",
                grouped(rps),
                grouped(v["records"].as_f64().unwrap_or(0.0)),
                v["concurrency"]
            );
            if let Some((every2, Ok(v2))) = res.audit.get(1) {
                m.push_str(&format!(
                    "; {}/s with a checkpoint every {every2}",
                    grouped(v2["records_per_s"].as_f64().unwrap_or(0.0))
                ));
            }
            r.measured = m;
            r.status = all(&[Some(rps >= 80_000.0)]);
            r.other_conditions = a.audit_records != 200_000 || a.audit_concurrency != 128;
        }
        Some((_, Err(e))) => r.measured = format!("not measured: {}", first_line(e)),
        None => {}
    }
    rows.push(r);
    for r in &mut rows {
        if r.status == Status::NotMeasured && r.measured == "-" {
            r.measured = why.into();
        }
    }
    rows
}

pub fn print(rows: &[Row]) {
    println!("\n==== Targets ====\n");
    println!("| target | requirement | measured | result |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.target,
            r.requirement,
            r.measured.replace('|', "/"),
            r.result()
        );
    }
    let met = rows.iter().filter(|r| r.status == Status::Met).count();
    let missed = rows.iter().filter(|r| r.status == Status::Missed).count();
    let unmeasured = rows.len() - met - missed;
    println!(
        "\n{met} met, {missed} missed, {unmeasured} not measured (of {}).",
        rows.len()
    );
    if rows
        .iter()
        .any(|r| r.other_conditions && r.status != Status::NotMeasured)
    {
        println!(
            "* measured under other conditions than the target's (smaller counts, another rate, or a denied input): \
             indicative only"
        );
    }
}
