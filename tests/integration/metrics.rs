//! `/metrics` through the application, parsed by the Prometheus project's
//! own Python parsers (`tests/support/metrics_parse.py`, PyPI
//! `prometheus-client`): the counters, the latency histograms by platform
//! and outcome, the reason codes and the pending requests by environment.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::e2e_github::{World, ci_claims, sha, world_full};
use crate::support::app::Run;

/// The families of an exposition, as the Python parsers read it.
fn parse(text: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/metrics_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (./scripts/test installs prometheus-client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parsers refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    families["families"][family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family `{family}` in {families}"))
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {}", families["families"][family]))[2]
        .as_f64()
        .unwrap()
}

async fn scrape(w: &World, token: Option<&str>) -> (u16, String, String) {
    let mut r = w.app.http.get(w.app.url("/metrics"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_hold_the_histograms_reasons_and_pending_requests() {
    let w = world_full(Run::InProcess, "", "", "").await;
    // One approved deployment...
    let (run, s) = (8801, sha(8801));
    assert_eq!(w.attest(ci_claims(run, &s)).await.0, 201);
    assert_eq!(w.verdict(&s, "production", true, &[]).await.0, 201);
    let id = w.webhook("d-8801", run, "production", &s).await;
    let done = w.app.wait_request(&id, "done", Duration::from_secs(15)).await;
    assert_eq!(done["decision"]["outcome"], "approved", "{done}");
    // ...and one that waits for its attestation.
    let waiting = w.webhook("d-8802", 8802, "production", &sha(8802)).await;
    w.app.wait_request(&waiting, "pending", Duration::from_secs(15)).await;

    let (status, content_type, text) = scrape(&w, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = parse(&text);

    for histogram in [
        "portcullis_webhook_to_decision_seconds",
        "portcullis_decision_to_platform_call_seconds",
        "portcullis_platform_call_seconds",
    ] {
        assert_eq!(m["families"][histogram]["type"], "histogram", "{histogram}");
        assert_eq!(m["classic_types"][histogram], "histogram", "{histogram}");
    }
    let approved = [("platform", "github"), ("outcome", "approved")];
    assert_eq!(
        sample(
            &m,
            "portcullis_webhook_to_decision_seconds",
            "portcullis_webhook_to_decision_seconds_count",
            &approved
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_decision_to_platform_call_seconds",
            "portcullis_decision_to_platform_call_seconds_count",
            &approved
        ),
        1.0
    );
    let call = [("platform", "github"), ("outcome", "ok")];
    assert_eq!(
        sample(
            &m,
            "portcullis_platform_call_seconds",
            "portcullis_platform_call_seconds_count",
            &call
        ),
        1.0
    );
    let inf = [("platform", "github"), ("outcome", "ok"), ("le", "+Inf")];
    assert_eq!(
        sample(
            &m,
            "portcullis_platform_call_seconds",
            "portcullis_platform_call_seconds_bucket",
            &inf
        ),
        1.0
    );
    for reason in [
        "attestation_verified",
        "claims_satisfied",
        "actor_approved",
        "verdict_allowed",
    ] {
        assert_eq!(
            sample(
                &m,
                "portcullis_decision_reasons",
                "portcullis_decision_reasons_total",
                &[("outcome", "approved"), ("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        sample(
            &m,
            "portcullis_decisions",
            "portcullis_decisions_total",
            &[("outcome", "approved")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_webhooks",
            "portcullis_webhooks_total",
            &[("result", "accepted")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_attestations",
            "portcullis_attestations_total",
            &[("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_pending_requests",
            "portcullis_pending_requests",
            &[("environment", "production")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "portcullis_open_requests", "portcullis_open_requests", &[]),
        1.0
    );
    // Without a signing key no checkpoint covers anything; without
    // anchoring there is no lag to report.
    assert_eq!(
        sample(
            &m,
            "portcullis_audit_checkpoint_records",
            "portcullis_audit_checkpoint_records",
            &[]
        ),
        0.0
    );
    assert!(!text.contains("portcullis_audit_anchor"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_read_token_puts_metrics_behind_the_read_token() {
    // OLD_SECRET is in the world's environment: it stands for the read token.
    let w = world_full(
        Run::InProcess,
        "read_token = { env = \"OLD_SECRET\" }\nmetrics_read_token = true",
        "",
        "",
    )
    .await;
    let (status, _, body) = scrape(&w, None).await;
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "read_token_invalid");
    let (status, _, _) = scrape(&w, Some("not-the-token")).await;
    assert_eq!(status, 401);
    let (status, _, text) = scrape(&w, Some("previous-secret")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &parse(&text),
            "portcullis_webhooks",
            "portcullis_webhooks_total",
            &[("result", "accepted")]
        ),
        0.0
    );
}
