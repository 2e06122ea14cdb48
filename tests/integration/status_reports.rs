//! Telling the person waiting: a pending GitHub request gets a status
//! report (the review call without `state`) naming what is missing and
//! linking the request, a new one when that changes, never more than ten.

use std::time::Duration;

use portcullis::state::MemoryStore;
use serde_json::Value;

use crate::e2e_github::{World, ci_claims, sha, world_full, world_in_with_github};
use crate::support::app::Run;
use crate::support::github_mock::review_path;

/// Waits until `n` status reports arrived; returns their bodies.
async fn reports(w: &World, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<Value> = w.gh.status_reports().into_iter().map(|r| r.body.unwrap()).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} status reports; logs:\n{}",
            got.len(),
            w.app.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_reports_what_is_missing_and_again_when_that_changes() {
    let w = world_full(Run::InProcess, "", "", "").await;
    let (run, s) = (9701, sha(9701));
    let id = w.webhook("d-9701", run, "production", &s).await;
    let link = format!("Request: https://portcullis.example/v1/requests/{id}");

    // Nothing has arrived: the attestation and the verdict are missing.
    let first = reports(&w, 1).await;
    assert_eq!(first[0]["environment_name"], "production");
    assert_eq!(first[0].get("state"), None);
    let comment = first[0]["comment"].as_str().unwrap();
    assert!(
        comment.starts_with(&format!(
            "**portcullis is waiting** before the deployment of `{}` to **production**. Missing:\n- `attestation_missing`: ",
            &s[..12]
        )),
        "{comment}"
    );
    assert!(comment.contains("\n- `verdict_missing`: "), "{comment}");
    assert!(comment.ends_with(&link), "{comment}");
    assert!(comment.chars().count() <= 1024);

    // The attestation arrives: only the verdict is missing now.
    assert_eq!(w.attest(ci_claims(run, &s)).await.0, 201);
    let second = reports(&w, 2).await;
    let comment = second[1]["comment"].as_str().unwrap();
    assert!(!comment.contains("attestation_missing"), "{comment}");
    assert!(comment.contains("- `verdict_missing`: "), "{comment}");
    assert!(comment.ends_with(&link), "{comment}");

    // The verdict arrives: approved, with a review (a `state`), and no
    // further status report.
    assert_eq!(w.verdict(&s, "production", true, &[]).await.0, 201);
    let done = w.app.wait_request(&id, "done", Duration::from_secs(15)).await;
    assert_eq!(done["decision"]["outcome"], "approved");
    let reviews = w.gh.wait_for_reviews(1, Duration::from_secs(15)).await;
    assert_eq!(reviews[0].body.as_ref().unwrap()["state"], "approved");
    assert_eq!(w.gh.status_reports().len(), 2);
    // Every call went to the run's review endpoint with an installation token.
    let path = review_path("octo-org", "payments", run);
    for r in w.gh.status_reports() {
        assert_eq!((r.path.as_str(), r.status), (path.as_str(), 204));
        assert_eq!(
            r.body.as_ref().unwrap().as_object().unwrap().keys().collect::<Vec<_>>(),
            ["comment", "environment_name"]
        );
    }
    // /metrics counts them.
    let text = w.app.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l == "portcullis_status_reports_total{result=\"ok\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_change_is_reported_once_and_dry_run_reports_nothing() {
    let w = world_full(Run::InProcess, "", "", "").await;
    let id = w.webhook("d-9702", 9702, "production", &sha(9702)).await;
    reports(&w, 1).await;
    // Re-evaluations that leave the same inputs missing post nothing new.
    let (_, other) = w.attest(ci_claims(9799, &sha(9799))).await;
    assert_eq!(other["run"], "9799");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.gh.status_reports().len(), 1, "{id}");

    let dry = world_full(Run::InProcess, "dry_run = true", "", "").await;
    dry.webhook("d-9703", 9703, "production", &sha(9703)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dry.gh.status_reports().is_empty());
}

/// Status reports share the App's API rate limit with the reviews: past
/// `status_reports_per_minute` (here 2, so 2 at once) a report is skipped and
/// counted, and 0 posts none; the requests themselves are decided as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_past_the_budget_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let w = world_in_with_github(dir, Run::InProcess, "", "", "status_reports_per_minute = 2", "").await;
    let mut ids = Vec::new();
    for run in 9711..9714 {
        ids.push(w.webhook(&format!("d-{run}"), run, "production", &sha(run)).await);
    }
    let got = reports(&w, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.gh.status_reports().len(), 2, "{got:?}");
    let text = w.app.metrics_text().await;
    for line in [
        "portcullis_status_reports_total{result=\"ok\"} 2",
        "portcullis_status_reports_total{result=\"skipped\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    // Every request is pending all the same, reported or not.
    for id in &ids {
        let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
        assert_eq!(req["decision"]["outcome"], "pending", "{req}");
    }

    let none = world_in_with_github(
        tempfile::tempdir().unwrap(),
        Run::InProcess,
        "",
        "",
        "status_reports_per_minute = 0",
        "",
    )
    .await;
    none.webhook("d-9714", 9714, "production", &sha(9714)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(none.gh.status_reports().is_empty());
}

#[tokio::test]
async fn at_most_ten_status_report_slots_per_request() {
    let store = MemoryStore::new();
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(portcullis::gate::claim_status_slot(&store, "req_a").await.unwrap());
    }
    let want: Vec<Option<u32>> = (1..=10).map(Some).chain([None, None]).collect();
    assert_eq!(got, want);
    // Another request has its own ten.
    assert_eq!(
        portcullis::gate::claim_status_slot(&store, "req_b").await.unwrap(),
        Some(1)
    );
}
