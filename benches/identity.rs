//! OIDC ID token verification with the issuer's keys already cached: the
//! cost a CI job's `POST /v1/attestations` pays in portcullis.
//!
//! A tiny JWKS server on loopback serves the public halves of the committed
//! test keys (`tests/support/node/keys/`); each `Verifier` fetches them once,
//! outside the measured time. Measured:
//! - `rs256_first_sight` / `es256_first_sight`: a token the verifier has not
//!   seen (header, SHA-256, claims, signature, audience, times, identity,
//!   cache insert), each iteration a different token;
//! - `cached_repeat`: the same token again (served by the verified-token
//!   cache: one SHA-256 and one lookup, plus the time checks);
//! - `signature_only_*`: the RSA signature check alone, through
//!   `jsonwebtoken::crypto::verify` with the JWKS's `(n, e)` key (what
//!   `Verifier` does) and through a pre-parsed `aws_lc_rs` key;
//! - `clone_verified_token`: the copy a cache hit hands out (the token's
//!   claims map is cloned on every hit).
//!
//! Then, timed by hand and printed: first-sight verification while the
//! verified-token cache is full (10 000 entries), against the same with an
//! empty cache: the cost of evicting at capacity.
//!
//! `cargo bench --bench identity`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use portcullis::config::IssuerConfig;
use portcullis::domain::Platform;
use portcullis::identity::Verifier;
use serde_json::{Value, json};
use time::OffsetDateTime;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/node/keys");
const AUDIENCE: &str = "portcullis";
/// Distinct tokens per verifier: every first-sight iteration sees a new one.
const POOL: usize = 256;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).expect("read test key")
}

fn jwk(name: &str) -> Value {
    serde_json::from_slice(&read(name)).expect("jwk json")
}

/// The public JWKS of the RS256 and ES256 test keys.
fn jwks() -> Value {
    let (rs, ec) = (jwk("rs256.private.jwk.json"), jwk("es256.private.jwk.json"));
    json!({"keys": [
        {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": rs["kid"], "n": rs["n"], "e": rs["e"]},
        {"kty": "EC", "use": "sig", "alg": "ES256", "kid": ec["kid"], "crv": "P-256", "x": ec["x"], "y": ec["y"]},
    ]})
}

/// Serves the JWKS to any request, one connection at a time, forever (the
/// bench process ends it). Returns its URL.
fn serve_jwks() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = jwks().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}/jwks")
}

fn issuer_url() -> &'static str {
    "http://127.0.0.1:1/bench-issuer"
}

/// GitHub Actions-shaped claims (25 of them, as GitHub mints), run `run`.
fn claims(run: usize, now: i64) -> Value {
    let sha = "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6";
    json!({
        "iss": issuer_url(), "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 3600,
        "jti": format!("bench-{run}"),
        "sub": "repo:octo-org/payments:environment:production",
        "ref": "refs/heads/main", "sha": sha,
        "repository": "octo-org/payments", "repository_owner": "octo-org", "repository_owner_id": "1234567",
        "repository_id": "7654321", "repository_visibility": "private",
        "run_id": (13172451234u64 + run as u64).to_string(), "run_number": "42", "run_attempt": "1",
        "actor": "octocat", "actor_id": "583231", "workflow": "deploy",
        "workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "workflow_sha": sha,
        "job_workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "job_workflow_sha": sha,
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch", "ref_protected": "true",
        "environment": "production", "runner_environment": "github-hosted",
    })
}

fn mint(alg: Algorithm, run: usize, now: i64) -> String {
    mint_with(alg, &signing_key(alg), claims(run, now))
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rs256.private.pem")),
        _ => EncodingKey::from_ec_pem(&read("es256.private.pem")),
    }
    .expect("key")
}

fn mint_with(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    let mut header = Header::new(alg);
    let kid = match alg {
        Algorithm::RS256 => "portcullis-test-rs256",
        _ => "portcullis-test-es256",
    };
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

struct Bench {
    rt: tokio::runtime::Runtime,
    jwks_url: url::Url,
    now: OffsetDateTime,
}

impl Bench {
    /// A verifier whose key cache is warm (one verification done, of a token
    /// not in `pool`).
    fn warm_verifier(&self, alg: Algorithm) -> Verifier {
        let issuer = IssuerConfig {
            name: "bench".into(),
            kind: Platform::Github,
            issuer: issuer_url().into(),
            audience: AUDIENCE.into(),
            jwks_url: Some(self.jwks_url.clone()),
        };
        let verifier = Verifier::new(vec![issuer], reqwest::Client::new());
        let warmup = mint(alg, usize::MAX / 2, self.now.unix_timestamp());
        self.rt
            .block_on(verifier.verify(&warmup, self.now))
            .expect("warm-up token verifies");
        verifier
    }
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let b = Bench {
        rt,
        jwks_url: url::Url::parse(&serve_jwks()).expect("url"),
        now: OffsetDateTime::now_utc(),
    };
    let now = b.now;

    let mut group = c.benchmark_group("identity_verify");
    group.measurement_time(Duration::from_secs(5));

    for (name, alg) in [
        ("rs256_first_sight", Algorithm::RS256),
        ("es256_first_sight", Algorithm::ES256),
    ] {
        let pool: Vec<String> = (0..POOL).map(|i| mint(alg, i, now.unix_timestamp())).collect();
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    // A fresh verifier per pass over the pool, so no token
                    // is a cache hit; its key fetch is not timed.
                    let verifier = b.warm_verifier(alg);
                    let n = left.min(POOL);
                    let start = Instant::now();
                    b.rt.block_on(async {
                        for token in &pool[..n] {
                            std::hint::black_box(verifier.verify(token, now).await.expect("verifies"));
                        }
                    });
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }

    let verifier = b.warm_verifier(Algorithm::RS256);
    let token = mint(Algorithm::RS256, 0, now.unix_timestamp());
    let verified = b.rt.block_on(verifier.verify(&token, now)).expect("verifies");
    group.bench_function("clone_verified_token", |bench| {
        bench.iter(|| std::hint::black_box(&verified).clone())
    });
    group.bench_function("cached_repeat", |bench| {
        bench.iter(|| {
            b.rt.block_on(verifier.verify(std::hint::black_box(&token), now))
                .expect("verifies")
        })
    });

    // The RSA check alone, two ways.
    let (signing_input, signature) = token.rsplit_once('.').expect("jws");
    let rs = jwk("rs256.private.jwk.json");
    let decoding = DecodingKey::from_rsa_components(rs["n"].as_str().expect("n"), rs["e"].as_str().expect("e"))
        .expect("rsa components");
    group.bench_function("signature_only_jsonwebtoken_components", |bench| {
        bench.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &decoding, Algorithm::RS256)
                    .expect("verify")
            )
        })
    });
    let spki = pem_der(&read("rs256.public.pem"));
    let parsed = aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, spki)
        .expect("spki");
    group.bench_function("signature_only_aws_lc_parsed_key", |bench| {
        bench.iter(|| {
            let sig = URL_SAFE_NO_PAD.decode(signature).expect("b64");
            parsed.verify_sig(signing_input.as_bytes(), &sig).expect("verifies")
        })
    });
    group.finish();
}

/// The DER inside a PEM file.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).expect("pem text");
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("pem base64")
}

/// First-sight verifications with the verified-token cache at capacity
/// (10 000 entries) and with it empty. Timed by hand: each measured token
/// must be new, which criterion's iteration counts cannot promise.
fn full_cache(_: &mut Criterion) {
    const CAPACITY: usize = 10_000;
    const MEASURED: usize = 2_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let b = Bench {
        rt,
        jwks_url: url::Url::parse(&serve_jwks()).expect("url"),
        now: OffsetDateTime::now_utc(),
    };
    let now = b.now.unix_timestamp();
    let key = signing_key(Algorithm::ES256);
    // The filler expires first, so evictions take filler, never a measured token.
    let filler: Vec<String> = (0..CAPACITY)
        .map(|i| {
            let mut c = claims(1_000_000 + i, now);
            c["exp"] = json!(now + 600);
            mint_with(Algorithm::ES256, &key, c)
        })
        .collect();
    let fresh: Vec<String> = (0..2 * MEASURED)
        .map(|i| mint_with(Algorithm::ES256, &key, claims(i, now)))
        .collect();
    let time = |verifier: &Verifier, tokens: &[String]| {
        let start = Instant::now();
        b.rt.block_on(async {
            for t in tokens {
                verifier.verify(t, b.now).await.expect("verifies");
            }
        });
        start.elapsed() / tokens.len() as u32
    };
    let full = b.warm_verifier(Algorithm::ES256);
    time(&full, &filler);
    let at_capacity = time(&full, &fresh[..MEASURED]);
    let empty = b.warm_verifier(Algorithm::ES256);
    let below = time(&empty, &fresh[MEASURED..]);
    eprintln!(
        "identity_verify/es256_first_sight with the token cache full ({CAPACITY}): {at_capacity:?} per token; \
         with it nearly empty: {below:?}; eviction at capacity costs {:?} per new token",
        at_capacity.saturating_sub(below)
    );
}

criterion_group!(benches, verify, full_cache);
criterion_main!(benches);
