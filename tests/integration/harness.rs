//! The test harness itself: applications run in the test process keep their
//! logs apart, and stop when dropped.

use crate::support::app::{App, WEBHOOK_SECRET};
use crate::support::github_mock::{TEST_APP_ID, test_app_private_key};

async fn dry_run_app() -> App {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
dry_run = true
[audit]
path = "{{dir}}/audit.jsonl"
[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
"#
    );
    App::start_in(dir, &config, &[("GH_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_in_one_process_each_capture_their_own_logs() {
    let (a, b) = (dry_run_app().await, dry_run_app().await);
    let (code, _) = a
        .post_webhook_signed("deployment_protection_rule", "d-a", b"{}", "sha256=00")
        .await;
    assert_eq!(code, 401);
    // Logged by the handler, on one of actix-web's worker threads.
    assert!(a.logs().contains("github webhook refused"), "{}", a.logs());
    assert!(!b.logs().contains("github webhook refused"), "{}", b.logs());
    assert!(b.logs().contains(&format!("listening on 127.0.0.1:{}", b.port)));
    assert!(!a.logs().contains(&format!("listening on 127.0.0.1:{}", b.port)));
}

#[tokio::test]
async fn a_dropped_app_no_longer_listens() {
    let app = dry_run_app().await;
    let url = app.url("/healthz");
    assert_eq!(app.get("/healthz").await.0, 200);
    drop(app);
    assert!(reqwest::get(&url).await.is_err(), "{url} still answers");
}
