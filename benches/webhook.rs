//! Webhook intake, without the network: `X-Hub-Signature-256` verification
//! over real-size bodies, and parsing a `deployment_protection_rule`
//! delivery into the gate's fields, compared with parsing the same body into
//! a `serde_json::Value` (what an SDK-free handler would otherwise do).
//!
//! `cargo bench --bench webhook`. Bodies: the 9.6 KB fixture as stored
//! (pretty), its 8.4 KB compact form (how GitHub sends it), and a 30 KB
//! delivery whose `pull_requests` carry repository-sized objects.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use portcullis::config::{Config, Secret};
use portcullis::webhook::github::{GithubEvent, parse, verify_signature};
use serde_json::Value;
use time::macros::datetime;
use url::Url;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/github/deployment_protection_rule.requested.json"
));
const SECRET: &str = "bench-webhook-secret";
const EVENT: &str = "deployment_protection_rule";

fn api() -> Url {
    Url::parse("https://api.github.com").expect("url")
}

fn sign(body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(portcullis::crypto::hmac_sha256(SECRET.as_bytes(), &[body]))
    )
}

/// The fixture, compact, with `pull_requests` grown until the body is at
/// least `size` bytes; still a valid delivery.
fn grown(size: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let repo = v["repository"].clone();
    while serde_json::to_vec(&v).expect("json").len() < size {
        v["pull_requests"].as_array_mut().expect("array").push(repo.clone());
    }
    serde_json::to_vec(&v).expect("json")
}

/// Exactly `size` bytes: the compact fixture padded with trailing spaces
/// (JSON whitespace), so the HMAC input has the size the name says.
fn padded(size: usize) -> Vec<u8> {
    let mut body = compact();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

fn compact() -> Vec<u8> {
    serde_json::to_vec(&serde_json::from_str::<Value>(FIXTURE).expect("fixture")).expect("json")
}

fn hmac(c: &mut Criterion) {
    let secrets = vec![Secret::new(SECRET)];
    // Rotation: the signing secret is the second configured one, so the
    // first HMAC is wasted; the worst case of two secrets.
    let rotating = vec![Secret::new("previous-secret"), Secret::new(SECRET)];
    let mut group = c.benchmark_group("webhook_hmac");
    for (name, body) in [("10KiB", padded(10 * 1024)), ("30KiB", padded(30 * 1024))] {
        let sig = sign(&body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("verify", name), &body, |b, body| {
            b.iter(|| verify_signature(black_box(&secrets), Some(black_box(&sig)), black_box(body)).expect("valid"))
        });
        group.bench_with_input(
            BenchmarkId::new("verify_second_of_two_secrets", name),
            &body,
            |b, body| {
                b.iter(|| {
                    verify_signature(black_box(&rotating), Some(black_box(&sig)), black_box(body)).expect("valid")
                })
            },
        );
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let api = api();
    let bodies = [
        ("fixture_9.6KB", FIXTURE.as_bytes().to_vec()),
        ("compact_8.4KB", compact()),
        ("grown_30KB", grown(30 * 1024)),
    ];
    let mut group = c.benchmark_group("webhook_parse");
    for (name, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("typed", name), body, |b, body| {
            b.iter(|| match parse(EVENT, black_box(body), &api).expect("parses") {
                GithubEvent::ProtectionRule(p) => p,
                other => panic!("{other:?}"),
            })
        });
        // The untyped alternative: the whole body as a `Value`, then the
        // same handful of fields read out of it.
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), body, |b, body| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(body)).expect("json");
                let fields = (
                    v["action"].as_str().map(str::len),
                    v["environment"].as_str().map(str::len),
                    v["deployment_callback_url"].as_str().map(str::len),
                    v["deployment"]["sha"].as_str().map(str::len),
                    v["repository"]["full_name"].as_str().map(str::len),
                    v["installation"]["id"].as_u64(),
                    v["sender"]["login"].as_str().map(str::len),
                );
                black_box(fields);
                v
            })
        });
    }
    group.finish();
}

/// What the route does before touching state: verify, parse, build the
/// deployment request.
fn intake(c: &mut Criterion) {
    let config = Config::from_toml(
        r#"
[server]
dry_run = true
[github]
webhook_secrets = [{ env = "SECRET" }]
[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
required = false
"#,
        &|_| Some(SECRET.to_owned()),
    )
    .expect("config");
    let gh = config.github.as_ref().expect("github");
    let body = compact();
    let sig = sign(&body);
    let now = datetime!(2026-03-01 12:00:00 UTC);
    let mut group = c.benchmark_group("webhook_intake");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify_parse_build_8.4KB", |b| {
        b.iter(|| {
            verify_signature(&gh.webhook_secrets, Some(&sig), black_box(&body)).expect("valid");
            let GithubEvent::ProtectionRule(p) = parse(EVENT, black_box(&body), &gh.api_url).expect("parses") else {
                panic!("not a protection rule")
            };
            let timeout = config
                .environment(&p.environment)
                .map(|e| e.pending_timeout)
                .unwrap_or_default();
            portcullis::webhook::github::deployment_request(&gh.issuer, timeout, "delivery-1", &p, now)
        })
    });
    group.finish();
}

criterion_group!(benches, hmac, parsing, intake);
criterion_main!(benches);
