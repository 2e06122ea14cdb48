//! Signed webhook deliveries and the two load shapes: closed loop
//! (saturation: N connections, each sends its next request as soon as the
//! previous one is answered) and open loop (a fixed rate, each request sent
//! at its scheduled time whatever the answers do).
//!
//! Every delivery is the real-shaped fixture (compact, as GitHub sends it)
//! for its own workflow run, so that portcullis stores a new request for
//! each; the run id is patched into the callback URL and the HMAC is
//! computed before the phase starts, so the client spends its CPU on
//! sending, not on hashing.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use serde_json::Value;

use crate::http::Conn;

/// Ten digits in the callback URL, replaced by each delivery's run id.
const MARKER: &[u8] = b"RUNID_____";

pub struct Deliveries {
    template: Vec<u8>,
    run_at: usize,
    key: hmac::Key,
}

/// The signatures of a range of runs, as the hex of `X-Hub-Signature-256`.
pub struct Signed {
    pub runs: Range<u64>,
    hex: Vec<[u8; 64]>,
}

impl Signed {
    pub fn len(&self) -> usize {
        self.hex.len()
    }

    pub fn run(&self, i: usize) -> u64 {
        self.runs.start + i as u64
    }
}

impl Deliveries {
    /// `fixture`: the delivery JSON; `api`: the base URL of the GitHub API
    /// the callback URL must point at.
    pub fn new(fixture: &str, api: &str, secret: &str) -> Deliveries {
        let mut v: Value = serde_json::from_str(fixture).expect("fixture JSON");
        v["deployment_callback_url"] = Value::String(format!(
            "{api}/repos/octo-org/payments/actions/runs/{}/deployment_protection_rule",
            std::str::from_utf8(MARKER).expect("ascii")
        ));
        let template = serde_json::to_vec(&v).expect("JSON");
        let run_at = template
            .windows(MARKER.len())
            .position(|w| w == MARKER)
            .expect("marker");
        Deliveries {
            template,
            run_at,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    pub fn body_len(&self) -> usize {
        self.template.len()
    }

    fn digits(run: u64) -> [u8; 10] {
        assert!(
            (1_000_000_000..10_000_000_000).contains(&run),
            "run ids have ten digits"
        );
        let mut d = [0u8; 10];
        let mut n = run;
        for slot in d.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        d
    }

    /// Signs every delivery of `runs`.
    pub fn sign(&self, runs: Range<u64>) -> Signed {
        let mut body = self.template.clone();
        let hex = runs
            .clone()
            .map(|run| {
                body[self.run_at..self.run_at + 10].copy_from_slice(&Self::digits(run));
                let tag = hmac::sign(&self.key, &body);
                let mut out = [0u8; 64];
                for (i, b) in tag.as_ref().iter().enumerate() {
                    out[2 * i] = HEX[(b >> 4) as usize];
                    out[2 * i + 1] = HEX[(b & 15) as usize];
                }
                out
            })
            .collect();
        Signed { runs, hex }
    }

    /// The whole HTTP request of delivery `i` of `signed`.
    pub fn request(&self, signed: &Signed, i: usize) -> Vec<u8> {
        let run = signed.run(i);
        let mut out = Vec::with_capacity(self.template.len() + 400);
        out.extend_from_slice(
            b"POST /webhooks/github HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: GitHub-Hookshot/bench\r\n\
content-type: application/json\r\nx-github-event: deployment_protection_rule\r\nx-github-delivery: ",
        );
        out.extend_from_slice(&Self::digits(run));
        out.extend_from_slice(b"\r\nx-hub-signature-256: sha256=");
        out.extend_from_slice(&signed.hex[i]);
        out.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", self.template.len()).as_bytes());
        let at = out.len() + self.run_at;
        out.extend_from_slice(&self.template);
        out[at..at + 10].copy_from_slice(&Self::digits(run));
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What one phase measured.
#[derive(Default)]
pub struct Phase {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Other statuses, by status.
    pub refused: std::collections::BTreeMap<u16, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Response times of 2xx answers, microseconds, sorted.
    pub latency_us: Vec<u32>,
    /// Open loop only: how late sends left against their schedule, sorted.
    pub lateness_us: Vec<u32>,
    /// (run, send instant) of every 2xx delivery.
    pub sends: Vec<(u64, Instant)>,
}

impl Phase {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn p(&self, q: f64) -> Duration {
        percentile(&self.latency_us, q)
    }

    fn merge(&mut self, other: Task) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.latency_us.extend(other.latency_us);
        self.lateness_us.extend(other.lateness_us);
        self.sends.extend(other.sends);
    }

    fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        self.latency_us.sort_unstable();
        self.lateness_us.sort_unstable();
    }

    /// A one-line summary of what was not 2xx.
    pub fn problems(&self) -> String {
        let mut parts = Vec::new();
        if !self.refused.is_empty() {
            parts.push(format!("non-2xx {:?}", self.refused));
        }
        if self.errors > 0 {
            parts.push(format!(
                "{} errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        parts.join(", ")
    }
}

/// The `q` quantile (0..=1) of sorted microsecond samples.
pub fn percentile(sorted_us: &[u32], q: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    Duration::from_micros(sorted_us[i.min(sorted_us.len() - 1)] as u64)
}

#[derive(Default)]
struct Task {
    sent: u64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    refused: std::collections::BTreeMap<u16, u64>,
    latency_us: Vec<u32>,
    lateness_us: Vec<u32>,
    sends: Vec<(u64, Instant)>,
}

impl Task {
    async fn one(&mut self, conn: &mut Conn, request: &[u8], run: u64) {
        let start = Instant::now();
        self.sent += 1;
        match conn.send(request).await {
            Ok(m) if (200..300).contains(&m.status()) => {
                self.ok += 1;
                self.latency_us
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                self.sends.push((run, start));
            }
            Ok(m) => *self.refused.entry(m.status()).or_default() += 1,
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }
}

/// Saturation: `conns` connections send deliveries of `signed` back to
/// back until all are sent or `max` has passed.
pub async fn closed_loop(
    addr: SocketAddr,
    deliveries: Arc<Deliveries>,
    signed: Arc<Signed>,
    conns: usize,
    max: Duration,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + max;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (next, deliveries, signed) = (next.clone(), deliveries.clone(), signed.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut t = Task::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= signed.len() || Instant::now() >= deadline {
                        break;
                    }
                    let request = deliveries.request(&signed, i);
                    t.one(&mut conn, &request, signed.run(i)).await;
                }
                t
            })
        })
        .collect();
    let mut phase = Phase::default();
    for t in tasks {
        phase.merge(t.await.expect("load task"));
    }
    phase.finish(start.elapsed());
    phase
}

/// A fixed rate: delivery `i` of `signed` is due at `start + i / rate`;
/// `conns` connections share the schedule (a send waits for a free one).
pub async fn open_loop(
    addr: SocketAddr,
    deliveries: Arc<Deliveries>,
    signed: Arc<Signed>,
    rate: f64,
    conns: usize,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (next, deliveries, signed) = (next.clone(), deliveries.clone(), signed.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut t = Task::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= signed.len() {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let request = deliveries.request(&signed, i);
                    tokio::time::sleep_until(due).await;
                    let late = tokio::time::Instant::now().saturating_duration_since(due);
                    t.lateness_us.push(late.as_micros().min(u32::MAX as u128) as u32);
                    t.one(&mut conn, &request, signed.run(i)).await;
                }
                t
            })
        })
        .collect();
    let mut phase = Phase::default();
    for t in tasks {
        phase.merge(t.await.expect("load task"));
    }
    phase.finish(start.elapsed());
    phase
}

/// Latencies from each delivery's send to its review's arrival at the mock,
/// sorted, in microseconds; and how many sends got no review.
pub fn full_path(sends: &[(u64, Instant)], reviews: &[(u64, Instant)]) -> (Vec<u32>, usize) {
    let arrived: std::collections::HashMap<u64, Instant> = reviews.iter().copied().collect();
    let mut out = Vec::with_capacity(sends.len());
    let mut missing = 0;
    for (run, sent) in sends {
        match arrived.get(run) {
            Some(at) => out.push(at.saturating_duration_since(*sent).as_micros().min(u32::MAX as u128) as u32),
            None => missing += 1,
        }
    }
    out.sort_unstable();
    (out, missing)
}
