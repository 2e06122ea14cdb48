//! Verdict mode "opa": `OpaClient` against a local OPA Data API answered by
//! Go OPA (tests/opa/server.py, the same bindings as the differential test),
//! compared with the in-process engine; and the failures that must never
//! allow: a 500, a timeout, an unreachable server, a malformed answer.

use std::time::Duration;

use portcullis::verdict::{OpaClient, OpaFailure, PolicyError, build_input};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

use crate::common::*;

fn start_opa() -> OpaServer {
    OpaServer::start_with(&[&policies_dir()], &approvers(), Some(NOW.unix_timestamp_nanos()))
}

fn evidence() -> Value {
    let digest = format!("sha256:{}", "1".repeat(64));
    json!({
        "scans": {
            "sast": {"tool": "semgrep", "timestamp": "2026-03-01T10:00:00Z", "critical": 0, "high": 2},
            "container": {"tool": "trivy", "timestamp": "2026-03-01T10:05:00Z", "image_digest": digest, "critical": 0, "high": 1},
            "iac": {"tools": ["tfsec", "checkov"], "timestamp": "2026-03-01T10:10:00Z", "critical": 0, "high": 0},
            "secrets": {"tool": "gitleaks", "timestamp": "2026-03-01T10:00:00Z", "findings": 0},
            "dependencies": {"tool": "osv-scanner", "timestamp": "2026-03-01T09:00:00Z", "critical": 1, "high": 4}
        },
        "artifact": {"digest": digest, "cosign_verified": true, "signed_by": PROD_SIGNER, "target_environment": "production"}
    })
}

fn input(evidence: &Value, actor: &str) -> Value {
    build_input(
        evidence,
        "production",
        &"0".repeat(40),
        "octo-org/app",
        actor,
        &Default::default(),
        &json!([]),
        NOW,
    )
}

#[tokio::test]
async fn opa_mode_gives_the_in_process_answer() {
    let server = start_opa();
    let client = OpaClient::new(reqwest::Client::new());
    let engine = shipped();

    let mut cases = vec![
        ("happy path", input(&evidence(), "octocat")),
        ("not an approver", input(&evidence(), "mallory")),
    ];
    for (name, pointer, value) in [
        ("criticals", "/scans/container/critical", json!(2)),
        ("stale", "/scans/iac/timestamp", json!("2026-02-27T00:00:00Z")),
        ("unsigned", "/artifact/cosign_verified", json!(false)),
        ("other signer", "/artifact/signed_by", json!(STAGING_SIGNER)),
        ("secrets", "/scans/secrets/findings", json!(3)),
    ] {
        let mut e = evidence();
        *e.pointer_mut(pointer).unwrap() = value;
        cases.push((name, input(&e, "octocat")));
    }

    for (name, input) in &cases {
        let remote = client
            .evaluate(&server.url, QUERY, input)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let local = engine.evaluate(QUERY, input, NOW).unwrap();
        assert_eq!(remote, local, "{name}");
    }
    let happy = client.evaluate(&server.url, QUERY, &cases[0].1).await.unwrap();
    assert!(happy.allow && happy.reasons.is_empty(), "{happy:?}");
    let criticals = client.evaluate(&server.url, QUERY, &cases[2].1).await.unwrap();
    assert_eq!(criticals.reasons, ["container: 2 critical CVEs"]);

    // An undefined document (OPA answers {}) denies, with a reason.
    let undefined = client
        .evaluate(&server.url, "data.deploy.nothing.allow", &cases[0].1)
        .await
        .unwrap();
    assert!(!undefined.allow);
    assert_eq!(undefined.reasons, ["data.deploy.nothing.allow is undefined"]);

    // Queries are rule paths only, as in process.
    let err = client
        .evaluate(&server.url, "data.deploy.hipaa.allow/../x", &cases[0].1)
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::InvalidQuery { .. }), "{err:?}");
}

/// A one-shot HTTP server answering every connection with `response`,
/// or holding it open without a word when `response` is None.
async fn fake_opa(response: Option<&'static str>) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                match response {
                    Some(r) => {
                        let _ = socket.write_all(r.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

fn http(status: &str, body: &str) -> &'static str {
    Box::leak(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    )
}

#[tokio::test]
async fn a_failing_opa_server_is_an_error_never_an_allow() {
    let client = OpaClient::new(reqwest::Client::new()).with_timeout(Duration::from_millis(300));
    let input = input(&evidence(), "octocat");
    let secret = "upstream-secret-detail";

    let url = fake_opa(Some(http(
        "500 Internal Server Error",
        &format!("{{\"code\":\"internal_error\",\"message\":\"{secret}\"}}"),
    )))
    .await;
    let err = client.evaluate(&url, QUERY, &input).await.unwrap_err();
    assert!(matches!(err, PolicyError::Opa(OpaFailure::Status(500))), "{err:?}");
    assert!(!err.to_string().contains(secret), "{err}");

    let url = fake_opa(Some(http("200 OK", &format!("<html>{secret}</html>")))).await;
    let err = client.evaluate(&url, QUERY, &input).await.unwrap_err();
    assert!(matches!(err, PolicyError::Opa(OpaFailure::Malformed)), "{err:?}");
    assert!(!err.to_string().contains(secret), "{err}");

    let url = fake_opa(Some(http("200 OK", "[true]"))).await;
    let err = client.evaluate(&url, QUERY, &input).await.unwrap_err();
    assert!(matches!(err, PolicyError::Opa(OpaFailure::Malformed)), "{err:?}");

    let url = fake_opa(None).await;
    let started = std::time::Instant::now();
    let err = client.evaluate(&url, QUERY, &input).await.unwrap_err();
    assert!(matches!(err, PolicyError::Opa(OpaFailure::Timeout(_))), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = Url::parse(&format!("http://{closed}")).unwrap();
    let err = client.evaluate(&url, QUERY, &input).await.unwrap_err();
    assert!(matches!(err, PolicyError::Opa(OpaFailure::Unreachable)), "{err:?}");

    // A "true" without a result key is not an allow either: {} is undefined.
    let url = fake_opa(Some(http("200 OK", "{}"))).await;
    let got = client.evaluate(&url, QUERY, &input).await.unwrap();
    assert!(!got.allow, "{got:?}");
}
