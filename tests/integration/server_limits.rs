//! The server's abuse limits through the real binary: per-source rate limits
//! on `/v1/*` (not on webhooks), and timeouts for slow or idle clients.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::App;

async fn app(server_extra: &str) -> App {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
dry_run = true
{server_extra}

[audit]
path = "{{dir}}/audit.jsonl"

[github]
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]

[[issuers]]
name = "ci"
kind = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = "portcullis"

[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
required = false
"#
    );
    App::start(&config, &[("GH_WEBHOOK_SECRET", "s")]).await
}

async fn get(app: &App, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut r = app.http.get(app.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post_attestation(app: &App, forwarded: Option<&str>) -> u16 {
    let mut r = app.http.post(app.url("/v1/attestations")).bearer_auth("not-a-jwt");
    if let Some(f) = forwarded {
        r = r.header("x-forwarded-for", f);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_answers_429_with_retry_after_past_the_sources_burst() {
    let app = app("rate_limit = { per_second = 0.2, burst = 3 }").await;
    for _ in 0..3 {
        let (status, retry, body) = get(&app, "/v1/audit", &[]).await;
        assert_eq!((status, retry), (200, None), "{body}");
    }
    let (status, retry, body) = get(&app, "/v1/audit", &[]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body,
        json!({"error": {"code": "rate_limited", "message": "too many requests from this source; slow down"}})
    );
    // One token comes back every five seconds.
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    // The bucket is the source's, whatever the /v1 route.
    assert_eq!(post_attestation(&app, None).await, 429);
    // Webhooks and health are not limited.
    for i in 0..10 {
        let (status, body) = app
            .post_webhook_signed("ping", &format!("d-{i}"), b"{}", "sha256=00")
            .await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(get(&app, "/healthz", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_false_turns_it_off() {
    let app = app("rate_limit = false").await;
    for _ in 0..60 {
        assert_eq!(get(&app, "/v1/audit", &[]).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_bucket() {
    let app = app("rate_limit = { per_second = 0.2, burst = 2 }\ntrusted_proxy_header = \"x-forwarded-for\"").await;
    let client_a = Some("198.51.100.7, 203.0.113.1");
    assert_eq!(post_attestation(&app, client_a).await, 401);
    assert_eq!(post_attestation(&app, client_a).await, 401);
    assert_eq!(post_attestation(&app, client_a).await, 429);
    // Another client behind the same proxy is not held back.
    assert_eq!(post_attestation(&app, Some("203.0.113.2")).await, 401);
    // Behind the proxy, a forwarded client off loopback cannot read.
    let (status, _, body) = get(&app, "/v1/audit", &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("read_token_required")));
}

/// Reads from `stream` until the server closes it; returns what it sent
/// and how long that took.
async fn until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_headers_is_cut_off() {
    let app = app("client_request_timeout = \"1s\"\nkeep_alive = \"1s\"").await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (answer, took) = until_closed(&mut slow, Duration::from_secs(4)).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took >= Duration::from_millis(900), "cut off after {took:?}");
    // An idle keep-alive connection is closed too.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
