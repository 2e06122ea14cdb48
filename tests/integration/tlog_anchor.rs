//! Write-once anchoring through the binary, against moto's S3 (signatures
//! checked, Object Lock enforced), with the bucket's side checked by boto3.
//! The bucket prefix is empty here: moto checks the signature of a listing
//! against a query whose `/` it has already decoded, so a prefix with `/`
//! cannot be listed there (S3 itself lists it).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e_github::{World, ci_claims, sha, world_in};
use crate::support::app::Run;
use crate::support::github_mock::review_path;
use crate::support::moto::Moto;
use crate::support::switch::Switch;

const BUCKET: &str = "audit-anchors";

async fn anchored_world(moto: &Moto, switch: &Switch, max_lag: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let pem = portcullis::signing::SigningKey::generate_pem().unwrap();
    std::fs::write(dir.path().join("audit-key.pem"), pem).unwrap();
    std::fs::write(dir.path().join("anchor-id"), &moto.access_key_id).unwrap();
    std::fs::write(dir.path().join("anchor-secret"), &moto.secret_access_key).unwrap();
    let audit = format!(
        r#"signing_key = {{ file = "{{dir}}/audit-key.pem" }}
log_name = "portcullis.test/audit"
checkpoint_every = "200ms"
[audit.anchor]
kind = "s3"
endpoint = "http://127.0.0.1:{port}"
region = "us-east-1"
bucket = "{BUCKET}"
prefix = ""
access_key_id = {{ file = "{{dir}}/anchor-id" }}
secret_access_key = {{ file = "{{dir}}/anchor-secret" }}
retain = "1d"
max_anchor_lag = "{max_lag}""#,
        port = switch.port
    );
    world_in(dir, Run::Binary, "rate_limit = false", &audit, "").await
}

async fn deploy(w: &World, run: u64) -> String {
    let (code, body) = w.attest(ci_claims(run, &sha(run))).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = w.verdict(&sha(run), "production", true, &[]).await;
    assert_eq!(code, 201, "{body}");
    w.webhook(&format!("d-{run}"), run, "production", &sha(run)).await
}

fn reviews(w: &World, run: u64) -> usize {
    let path = review_path("octo-org", "payments", run);
    w.gh.reviews().into_iter().filter(|r| r.path == path).count()
}

/// Waits until every record of the trail is anchored; returns /readyz.
async fn all_anchored(w: &World) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = w.app.audit_records().len() as u64;
        let (code, ready) = w.app.get("/readyz").await;
        if code == 200 && ready["anchor"]["anchored_records"].as_u64() == Some(records) {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "not anchored: {ready}; logs:\n{}",
            w.app.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_anchored_locked_and_wait_while_the_bucket_is_away() {
    let moto = Moto::start(BUCKET);
    let switch = Switch::start(moto.port).await;
    let w = anchored_world(&moto, &switch, "2s").await;

    // Decisions → checkpoints → the bucket, each object locked.
    let first = deploy(&w, 9101).await;
    w.app.wait_request(&first, "done", Duration::from_secs(15)).await;
    let ready = all_anchored(&w).await;
    assert_eq!(ready["anchor"]["status"], "ok");
    let seen: Value = serde_json::from_str(&moto.boto3(&format!(
        r#"
now = datetime.datetime.now(datetime.timezone.utc)
out = []
# (No Prefix: moto checks signatures against a query with `/` decoded.)
for o in s3.list_objects_v2(Bucket="{BUCKET}").get("Contents", []):
    h = s3.head_object(Bucket="{BUCKET}", Key=o["Key"])
    try:
        s3.delete_object(Bucket="{BUCKET}", Key=o["Key"], VersionId=h["VersionId"])
        delete = "deleted"
    except ClientError as e:
        delete = e.response["Error"]["Code"]
    out.append({{"key": o["Key"], "mode": h["ObjectLockMode"], "delete": delete,
                "retained_s": (h["ObjectLockRetainUntilDate"] - now).total_seconds()}})
print(json.dumps(out))
"#
    )))
    .unwrap();
    let objects = seen.as_array().unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o["key"].as_str().unwrap().starts_with("checkpoints/"))
            && objects
                .iter()
                .any(|o| o["key"].as_str().unwrap().starts_with("segments/")),
        "{seen}"
    );
    for o in objects {
        assert_eq!(o["mode"], "COMPLIANCE", "{o}");
        assert_eq!(o["delete"], "AccessDenied", "{o}");
        // Retained until at least now + retain (1 day), less the test's own time.
        assert!(o["retained_s"].as_f64().unwrap() > 86_400.0 - 120.0, "{o}");
    }
    let out = w.app.cli(&["audit", "verify", "--anchor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("anchor OK: checkpoint of"), "{stdout}");

    // The bucket goes away: past max_anchor_lag, readiness drops and a new
    // decision waits, unanswered.
    switch.off();
    let second = deploy(&w, 9102).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, ready) = w.app.get("/readyz").await;
        if code == 503 && ready["anchor"]["status"] == "lagging" {
            break;
        }
        assert!(Instant::now() < deadline, "never lagging: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = deploy(&w, 9103).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, req) = w.app.get(&format!("/v1/requests/{third}")).await;
    assert_eq!(req["status"], "pending", "{req}");
    assert_eq!(reviews(&w, 9103), 0, "approved while its record could not be anchored");
    let metrics = w.app.metrics_text().await;
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_audit_anchor_lag_seconds "))
        .expect("the lag gauge")
        .parse()
        .unwrap();
    assert!(lag > 2.0, "{lag}");

    // Back: everything drains, and the waiting decisions are made.
    switch.on();
    for (id, run) in [(&second, 9102), (&third, 9103)] {
        let req = w.app.wait_request(id, "done", Duration::from_secs(20)).await;
        assert_eq!(req["decision"]["outcome"], "approved", "{req}");
        assert_eq!(reviews(&w, run), 1);
    }
    let ready = all_anchored(&w).await;
    assert_eq!(ready["anchor"]["status"], "ok");
    let out = w.app.cli(&["audit", "verify", "--anchor"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
