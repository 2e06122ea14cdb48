//! Every operation `docs/openapi.yaml` describes (but the SSO review pages,
//! which need an identity provider; `slack` covers them) is called through
//! the application, and each answer is checked against the description by
//! the test helpers (`support::openapi`), refusals included. The test also
//! requires that it called every operation the description lists, so the
//! description cannot grow a route nobody exercises.

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis::signing::SigningKey;
use serde_json::json;

use crate::e2e_github::{ci_claims, sha, world_in};
use crate::support::app::Run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_described() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit-key.pem"), SigningKey::generate_pem().unwrap()).unwrap();
    let w = world_in(
        dir,
        Run::InProcess,
        "",
        "signing_key = { file = \"{dir}/audit-key.pem\" }\ncheckpoint_every = \"1s\"",
        "",
    )
    .await;
    let mut called: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut expect = |method: &'static str, path: &'static str, code: u16, want: u16| {
        assert_eq!(code, want, "{method} {path}");
        called.insert((method, path));
    };

    let (code, _) = w.app.get("/healthz").await;
    expect("get", "/healthz", code, 200);
    let (code, _) = w.app.get("/readyz").await;
    expect("get", "/readyz", code, 200);
    let (code, _) = w.app.get("/metrics").await;
    expect("get", "/metrics", code, 200);
    let (code, _) = w.app.get("/v1/keys").await;
    expect("get", "/v1/keys", code, 200);

    // A deployment, approved: attestation, verdict, webhook, request, audit.
    let (run, s) = (9901, sha(9901));
    let (code, _) = w.attest(ci_claims(run, &s)).await;
    expect("post", "/v1/attestations", code, 201);
    let (code, _) = w.app.post_bearer("/v1/attestations", "not-a-jwt", None).await;
    assert_eq!(code, 401);
    let (code, _) = w.verdict(&s, "production", true, &[]).await;
    expect("post", "/v1/verdicts", code, 201);
    let (code, _) = w.verdict(&s, "nowhere", true, &[]).await;
    assert_eq!(code, 400);
    let id = w.webhook("d-9901", run, "production", &s).await;
    expect("post", "/webhooks/github", 202, 202);
    let (code, _) = w.app.post_webhook_signed("ping", "d-x", b"{}", "sha256=00").await;
    assert_eq!(code, 401);
    let done = w.app.wait_request(&id, "done", Duration::from_secs(15)).await;
    expect("get", "/v1/requests/{id}", 200, 200);
    let record = done["decision_record"].as_str().unwrap().to_string();
    let (code, _) = w.app.get("/v1/requests/req_nope").await;
    assert_eq!(code, 404);
    let (code, _) = w.app.get(&format!("/v1/requests/{id}/receipt")).await;
    expect("get", "/v1/requests/{id}/receipt", code, 200);
    let (code, body) = w.app.get(&format!("/v1/audit?request={id}")).await;
    expect("get", "/v1/audit", code, 200);
    assert!(body["records"].as_array().is_some_and(|r| r.len() >= 3), "{body}");
    let (code, _) = w.app.get("/v1/audit?limit=x").await;
    assert_eq!(code, 400);
    let (code, _) = w.app.get(&format!("/v1/audit/{record}")).await;
    expect("get", "/v1/audit/{id}", code, 200);

    // The transparency log, once a checkpoint covers the records.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let size = loop {
        let (code, text) = w.app.get("/v1/audit/checkpoint").await;
        if code == 200 {
            let size: u64 = text.as_str().unwrap().lines().nth(1).unwrap().parse().unwrap();
            if size >= 4 {
                break size;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint: {code} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    expect("get", "/v1/audit/checkpoint", 200, 200);
    let (code, _) = w
        .app
        .get(&format!("/v1/audit/proof/inclusion?record={record}&size={size}"))
        .await;
    expect("get", "/v1/audit/proof/inclusion", code, 200);
    let (code, _) = w
        .app
        .get(&format!("/v1/audit/proof/consistency?from=1&to={size}"))
        .await;
    expect("get", "/v1/audit/proof/consistency", code, 200);
    let (code, _) = w
        .app
        .get(&format!("/v1/audit/proof/consistency?from={size}&to=1"))
        .await;
    assert_eq!(code, 400);

    // Platforms this world does not configure, and a route nobody has.
    let r = w
        .app
        .http
        .post(w.app.url("/webhooks/gitlab"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    crate::support::openapi::check("POST", "/webhooks/gitlab", status, &ct, &r.text().await.unwrap());
    expect("post", "/webhooks/gitlab", status, 404);
    let r = w
        .app
        .http
        .post(w.app.url("/webhooks/slack"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    crate::support::openapi::check("POST", "/webhooks/slack", status, &ct, &r.text().await.unwrap());
    expect("post", "/webhooks/slack", status, 404);
    let (code, _) = w.app.get("/v2/nothing").await;
    assert_eq!(code, 404);

    // Every operation of the description was called (the review pages aside).
    let spec: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap(),
    )
    .unwrap();
    let mut listed = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !path.starts_with("/reviews") {
                listed.insert((method.clone(), path.clone()));
            }
        }
    }
    let called: BTreeSet<(String, String)> = called.into_iter().map(|(m, p)| (m.into(), p.into())).collect();
    assert_eq!(listed, called);
}
