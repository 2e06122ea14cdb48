//! The GitHub App client against a recording, checking mock of GitHub's API
//! (`crate::support::github_mock`), and against Prism serving GitHub's own OpenAPI
//! description (`crate::support::prism`).

use std::time::Duration;

use crate::support::github_mock::{self, GithubMock, Reply, TEST_INSTALLATION_ID};
use crate::support::prism::Prism;
use portcullis::domain::DeploymentRequest;
use portcullis::platform::github::GithubClient;
use portcullis::platform::{CallResult, FailureKind, PlatformClient, RetryPolicy};
use serde_json::json;

const OWNER: &str = "octo-org";
const REPO: &str = "payments";
const RUN: u64 = 13172451234;

/// Short back-off so retry tests stay fast; the shape is the default's.
const FAST_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    base_delay: Duration::from_millis(20),
    max_wait: Duration::from_secs(2),
};

fn request(callback_url: &str, installation_id: Option<u64>) -> DeploymentRequest {
    // Built from JSON so fields other modules add with defaults do not
    // break this test.
    let mut target = json!({
        "kind": "github",
        "owner": OWNER,
        "repo": REPO,
        "run_id": RUN,
        "callback_url": callback_url,
    });
    if let Some(id) = installation_id {
        target["installation_id"] = json!(id);
    }
    serde_json::from_value(json!({
        "id": "req_0123456789abcdef01234567",
        "platform": "github",
        "repository": format!("{OWNER}/{REPO}"),
        "run": RUN.to_string(),
        "environment": "production",
        "sha": "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6",
        "target": target,
        "delivery": "8c3e1f40-cd8d-11f0-8a2e-2b1f5c6d7e8f",
        "received_at": "2026-11-28T15:00:00Z",
        "deadline": "2026-11-28T15:30:00Z",
        "status": "deciding",
    }))
    .expect("a valid DeploymentRequest")
}

fn client(mock: &GithubMock) -> GithubClient {
    GithubClient::new(&mock.github_config())
        .expect("client")
        .with_retry_policy(FAST_RETRY)
}

async fn answer(client: &GithubClient, mock: &GithubMock, approve: bool, comment: &str) -> CallResult {
    client
        .answer(
            &request(&mock.callback_url(OWNER, REPO, RUN), Some(TEST_INSTALLATION_ID)),
            approve,
            comment,
        )
        .await
}

/// No secret may reach a detail: no token, no JWT.
fn assert_secret_free(result: &CallResult, mock: &GithubMock) {
    for token in mock.issued_tokens() {
        assert!(
            !result.detail.contains(&token),
            "detail leaks a token: {}",
            result.detail
        );
    }
    assert!(!result.detail.contains("ghs_"), "detail: {}", result.detail);
    assert!(
        !result.detail.contains("eyJ"),
        "detail looks like it holds a JWT: {}",
        result.detail
    );
    assert!(
        result.detail.chars().count() <= 400,
        "detail is not short: {}",
        result.detail
    );
}

#[tokio::test]
async fn approval_posts_the_exact_review_with_an_installation_token() {
    let mock = GithubMock::start().await;
    let client = client(&mock);

    let result = answer(
        &client,
        &mock,
        true,
        "Approved: all checks passed. https://portcullis.example.com/v1/audit/aud_1",
    )
    .await;

    assert_eq!(result, CallResult::done(Some(204), "GitHub took the review (approved)"));
    let tokens = mock.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].path,
        format!("/app/installations/{TEST_INSTALLATION_ID}/access_tokens")
    );
    assert_eq!(tokens[0].status, 201);
    let reviews = mock.reviews();
    assert_eq!(reviews.len(), 1);
    let review = &reviews[0];
    assert_eq!(
        review.path,
        format!("/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule")
    );
    assert_eq!(
        review.body,
        Some(json!({
            "environment_name": "production",
            "state": "approved",
            "comment": "Approved: all checks passed. https://portcullis.example.com/v1/audit/aud_1",
        }))
    );
    assert_eq!(review.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(review.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(
        review.header("authorization"),
        Some(format!("Bearer {}", mock.issued_tokens()[0]).as_str())
    );
    assert!(
        review
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("portcullis/")),
        "{:?}",
        review.header("user-agent")
    );
    assert!(
        review
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    assert_eq!(review.status, 204);
    assert_secret_free(&result, &mock);
}

#[tokio::test]
async fn rejection_posts_state_rejected() {
    let mock = GithubMock::start().await;
    let client = client(&mock);

    let result = answer(&client, &mock, false, "Rejected: actor_not_approver").await;

    assert!(result.ok(), "{result:?}");
    let reviews = mock.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(
        reviews[0].body,
        Some(
            json!({ "environment_name": "production", "state": "rejected", "comment": "Rejected: actor_not_approver" })
        )
    );
}

#[tokio::test]
async fn a_server_error_then_success_is_retried() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::status(500)]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!((result.ok(), result.status), (true, Some(204)), "{result:?}");
    let statuses: Vec<u16> = mock.reviews().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 204]);
    assert_eq!(mock.token_requests().len(), 1, "a retry reuses the token");
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::normal().delay(Duration::from_secs(2))]);
    let mut config = mock.github_config();
    config.request_timeout = Duration::from_millis(300);
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!((result.ok(), result.status), (true, Some(204)), "{result:?}");
    assert_eq!(mock.reviews().len(), 2);
}

#[tokio::test]
async fn server_errors_on_every_attempt_fail_after_three_attempts() {
    let mock = GithubMock::start().await;
    mock.script_review(
        OWNER,
        REPO,
        RUN,
        [Reply::status(502), Reply::status(503), Reply::status(502)],
    );
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert!(!result.ok());
    assert_eq!(result.status, Some(502));
    assert_eq!(
        result.detail,
        "review: GitHub answered 502 after 3 attempts: Server Error"
    );
    assert_eq!(mock.reviews().len(), 3);
}

#[tokio::test]
async fn timeouts_on_every_attempt_fail_without_a_status() {
    let mock = GithubMock::start().await;
    let slow = Reply::normal().delay(Duration::from_secs(2));
    mock.script_review(OWNER, REPO, RUN, [slow.clone(), slow.clone(), slow]);
    let mut config = mock.github_config();
    config.request_timeout = Duration::from_millis(200);
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(FailureKind::Transient, None, "review: timed out after 3 attempts")
    );
}

#[tokio::test]
async fn unprocessable_422_means_already_reviewed_and_is_done() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::status(422)]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert!(result.ok(), "{result:?}");
    assert_eq!(result.status, Some(422));
    assert_eq!(
        result.detail,
        "GitHub answered 422, already reviewed or not waiting; treated as done: No pending custom deployment requests to approve or reject"
    );
    assert_eq!(mock.reviews().len(), 1, "a 422 is not retried");
}

#[tokio::test]
async fn forbidden_403_fails_with_its_status_and_is_not_retried() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::status(403)]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::Definite,
            Some(403),
            "review: GitHub answered 403: Resource not accessible by integration"
        )
    );
    assert_eq!(mock.reviews().len(), 1);
}

#[tokio::test]
async fn upstream_bodies_are_reduced_to_a_short_message() {
    let mock = GithubMock::start().await;
    let long = format!("secret-looking {}", "x".repeat(1000));
    mock.script_review(
        OWNER,
        REPO,
        RUN,
        [
            Reply::status(404)
                .json(json!({ "message": long, "token": "ghs_should_never_show", "errors": ["internal"] })),
        ],
    );
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(result.status, Some(404));
    assert!(!result.detail.contains("ghs_should_never_show"));
    assert!(!result.detail.contains("internal"));
    let message = result.detail.trim_start_matches("review: GitHub answered 404: ");
    assert_eq!(message.chars().count(), 200, "{}", result.detail);
    assert_secret_free(&result, &mock);
}

#[tokio::test]
async fn the_installation_token_is_cached_across_reviews() {
    let mock = GithubMock::start().await;
    let client = client(&mock);

    let first = answer(&client, &mock, true, "one").await;
    let second = answer(&client, &mock, false, "two").await;

    assert!(first.ok() && second.ok(), "{first:?} {second:?}");
    assert_eq!(mock.token_requests().len(), 1);
    let reviews = mock.reviews();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0].header("authorization"), reviews[1].header("authorization"));
}

#[tokio::test]
async fn concurrent_reviews_share_one_token_fetch() {
    let mock = GithubMock::start().await;
    // A slow token endpoint makes the callers overlap for certain.
    mock.script_token(
        TEST_INSTALLATION_ID,
        [Reply::normal().delay(Duration::from_millis(300))],
    );
    let client = client(&mock);

    let (a, b, c) = tokio::join!(
        answer(&client, &mock, true, "a"),
        answer(&client, &mock, true, "b"),
        answer(&client, &mock, true, "c"),
    );

    assert!(a.ok() && b.ok() && c.ok(), "{a:?} {b:?} {c:?}");
    assert_eq!(mock.token_requests().len(), 1);
    assert_eq!(mock.reviews().len(), 3);
}

#[tokio::test]
async fn a_token_close_to_expiry_is_not_reused() {
    let mock = GithubMock::start().await;
    // Less than the five-minute refresh margin.
    mock.set_token_lifetime(time::Duration::minutes(4));
    let client = client(&mock);

    answer(&client, &mock, true, "one").await;
    answer(&client, &mock, true, "two").await;

    assert_eq!(mock.token_requests().len(), 2);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_the_review_retried_once() {
    let mock = GithubMock::start().await;
    let client = client(&mock);
    assert!(answer(&client, &mock, true, "one").await.ok());
    mock.revoke_tokens();

    let result = answer(&client, &mock, true, "two").await;

    assert_eq!((result.ok(), result.status), (true, Some(204)), "{result:?}");
    let statuses: Vec<u16> = mock.reviews().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [204, 401, 204]);
    assert_eq!(mock.token_requests().len(), 2);
}

#[tokio::test]
async fn a_second_401_is_a_failure() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::status(401), Reply::status(401)]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::Definite,
            Some(401),
            "review: GitHub answered 401: Bad credentials"
        )
    );
    assert_eq!(mock.reviews().len(), 2);
    assert_eq!(mock.token_requests().len(), 2);
}

#[tokio::test]
async fn a_missing_installation_is_looked_up_once_and_cached() {
    let mock = GithubMock::start().await;
    mock.set_installation(OWNER, REPO, 777);
    let client = client(&mock);
    let req = request(&mock.callback_url(OWNER, REPO, RUN), None);

    let first = client.answer(&req, true, "one").await;
    let second = client.answer(&req, true, "two").await;

    assert!(first.ok() && second.ok(), "{first:?} {second:?}");
    let lookups = mock.installation_lookups();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].path, format!("/repos/{OWNER}/{REPO}/installation"));
    assert!(
        lookups[0]
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ey")),
        "an App JWT"
    );
    let tokens = mock.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].path, "/app/installations/777/access_tokens");
}

#[tokio::test]
async fn the_comment_is_capped_at_1024_characters() {
    let mock = GithubMock::start().await;
    let client = client(&mock);
    let comment = "Rejected: é".repeat(600);

    let result = answer(&client, &mock, false, &comment).await;

    assert!(result.ok(), "{result:?}");
    let reviews = mock.reviews();
    let sent = reviews[0]
        .body
        .as_ref()
        .and_then(|b| b["comment"].as_str())
        .expect("comment")
        .to_owned();
    assert_eq!(sent.chars().count(), 1024);
    assert!(sent.ends_with('…'));
    assert!(comment.starts_with(sent.trim_end_matches('…')));
}

#[tokio::test]
async fn a_jwt_from_another_key_is_refused_by_the_mock() {
    let mock = GithubMock::start().await;
    let mut config = mock.github_config();
    config.private_key = Some(portcullis::config::Secret::new(github_mock::other_private_key()));
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);

    let result = answer(&client, &mock, true, "ok").await;

    assert!(!result.ok());
    assert_eq!(result.status, Some(400));
    assert!(
        result
            .detail
            .starts_with("installation token: GitHub answered 400: mock: the App JWT does not verify"),
        "{}",
        result.detail
    );
    assert!(mock.reviews().is_empty());
    assert_secret_free(&result, &mock);
}

#[tokio::test]
async fn an_api_url_with_a_path_is_joined_like_github_enterprise() {
    let mock = GithubMock::start_with_prefix("/api/v3").await;
    let client = client(&mock);
    assert!(mock.url().ends_with("/api/v3"));

    let result = client
        .answer(&request(&mock.callback_url(OWNER, REPO, RUN), None), true, "ok")
        .await;

    assert!(result.ok(), "{result:?}");
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            format!("/api/v3/repos/{OWNER}/{REPO}/installation"),
            format!("/api/v3/app/installations/{TEST_INSTALLATION_ID}/access_tokens"),
            format!("/api/v3/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule"),
        ]
    );
}

/// Whether a callback's host is the API's is decided at intake
/// (`webhook::github`), and the gate answers no request that failed it
/// (`e2e_github`: a callback on a foreign host is rejected and never
/// called). The client itself never uses the callback URL.
#[tokio::test]
async fn the_callback_url_is_never_used_reviews_go_to_api_url() {
    let mock = GithubMock::start().await;
    let client = client(&mock);
    let foreign =
        format!("https://evil.example.com/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule");
    let req = request(&foreign, Some(TEST_INSTALLATION_ID));

    let rejection = client.answer(&req, false, "rejected").await;
    let approval = client.answer(&req, true, "approved").await;

    assert_eq!(
        (rejection, approval),
        (
            CallResult::done(Some(204), "GitHub took the review (rejected)"),
            CallResult::done(Some(204), "GitHub took the review (approved)")
        )
    );
    let reviews: Vec<String> = mock.reviews().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        reviews,
        vec![format!("/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule"); 2]
    );
}

#[tokio::test]
async fn an_unreachable_api_fails_after_three_attempts() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mock = GithubMock::start().await;
    let mut config = mock.github_config();
    config.api_url = url::Url::parse(&format!("http://127.0.0.1:{port}")).expect("url");
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);
    let req = request(&format!("http://127.0.0.1:{port}/x"), Some(TEST_INSTALLATION_ID));

    let result = client.answer(&req, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::Transient,
            None,
            "installation token: could not connect after 3 attempts"
        )
    );
}

#[tokio::test]
async fn a_token_endpoint_error_is_reported_as_such() {
    let mock = GithubMock::start().await;
    mock.script_token(TEST_INSTALLATION_ID, [Reply::status(404)]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::Definite,
            Some(404),
            "installation token: GitHub answered 404: Not Found"
        )
    );
    assert!(mock.reviews().is_empty());
}

#[tokio::test]
async fn malformed_token_responses_do_not_panic() {
    let mock = GithubMock::start().await;
    mock.script_token(
        TEST_INSTALLATION_ID,
        [
            Reply::status(201).json(json!({ "token": 42 })),
            Reply::status(201).json(json!({ "token": "" })),
            Reply::status(201).json(json!([])),
        ],
    );
    let client = client(&mock);

    for expected in ["no usable token", "an empty token", "no usable token"] {
        let result = answer(&client, &mock, true, "ok").await;
        assert_eq!(result.status, Some(201));
        assert_eq!(
            result.detail,
            format!("installation token: GitHub answered 201 with {expected}")
        );
        assert!(!result.ok());
    }
    assert!(mock.reviews().is_empty());
}

#[tokio::test]
async fn wait_for_reviews_returns_once_enough_arrived() {
    let mock = GithubMock::start().await;
    let client = client(&mock);
    let callback = mock.callback_url(OWNER, REPO, RUN);
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client
            .answer(&request(&callback, Some(TEST_INSTALLATION_ID)), true, "later")
            .await
    });

    let reviews = mock.wait_for_reviews(1, Duration::from_secs(5)).await;

    assert_eq!(reviews.len(), 1);
    assert!(task.await.expect("task").ok());
}

/// The calls the client makes validate against GitHub's own OpenAPI
/// description: Prism answers each with its documented 2xx status and
/// reports no violation. (Prism answers a violating request with 422,
/// which the client would take as "already reviewed", so the status of
/// every exchange is asserted, not just the client's verdict.)
#[tokio::test]
async fn calls_validate_against_githubs_openapi_description() {
    let prism = Prism::start().await;
    let mut config = GithubMock::start().await.github_config();
    config.api_url = url::Url::parse(&prism.url()).expect("prism url");
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);
    let callback = format!(
        "{}/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule",
        prism.url()
    );

    // No installation id: lookup, token, review.
    let approval = client
        .answer(&request(&callback, None), true, "Approved: all checks passed.")
        .await;
    // A rejection with an over-long comment, cut to GitHub's limit.
    let rejection = client
        .answer(
            &request(&callback, None),
            false,
            &"Rejected: verdict_missing. ".repeat(100),
        )
        .await;

    let exchanges = prism.exchanges();
    let summary: Vec<(String, String, u16)> = exchanges
        .iter()
        .map(|e| (e.method.clone(), e.path.clone(), e.status))
        .collect();
    assert_eq!(
        approval,
        CallResult::done(Some(204), "GitHub took the review (approved)")
    );
    assert_eq!(
        rejection,
        CallResult::done(Some(204), "GitHub took the review (rejected)")
    );
    // Prism's example token expired in 2016, so it is not cached; the
    // looked-up installation (id 1 in Prism's example) is.
    assert_eq!(
        summary,
        [
            ("GET".to_owned(), format!("/repos/{OWNER}/{REPO}/installation"), 200),
            ("POST".to_owned(), "/app/installations/1/access_tokens".to_owned(), 201),
            (
                "POST".to_owned(),
                format!("/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule"),
                204
            ),
            ("POST".to_owned(), "/app/installations/1/access_tokens".to_owned(), 201),
            (
                "POST".to_owned(),
                format!("/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule"),
                204
            ),
        ],
        "Prism log:\n{}",
        prism.log_tail(30)
    );
    for e in &exchanges {
        assert_eq!(
            e.violations,
            None,
            "{} {}: Prism reported violations; log:\n{}",
            e.method,
            e.path,
            prism.log_tail(30)
        );
    }
}

// ----- rate limits and failure categories ----------------------------------------

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_succeeds() {
    let mock = GithubMock::start().await;
    mock.script_review(
        OWNER,
        REPO,
        RUN,
        [Reply::status(429).header("Retry-After", "1"), Reply::normal()],
    );
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(result, CallResult::done(Some(204), "GitHub took the review (approved)"));
    let reviews = mock.reviews();
    assert_eq!(reviews.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 204]);
    let waited = reviews[1].at - reviews[0].at;
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
}

#[tokio::test]
async fn a_403_with_an_exhausted_quota_waits_for_the_reset() {
    let mock = GithubMock::start().await;
    let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 1).to_string();
    mock.script_review(
        OWNER,
        REPO,
        RUN,
        [
            Reply::status(403)
                .message("API rate limit exceeded for installation ID 1.")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &reset),
            Reply::normal(),
        ],
    );
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(result, CallResult::done(Some(204), "GitHub took the review (approved)"));
    assert_eq!(mock.reviews().iter().map(|r| r.status).collect::<Vec<_>>(), [403, 204]);
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_policy_waits_is_returned_at_once() {
    let mock = GithubMock::start().await;
    mock.script_review(OWNER, REPO, RUN, [Reply::status(429).header("Retry-After", "60")]);
    let client = client(&mock);

    let result = answer(&client, &mock, true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::RateLimited {
                retry_after: Duration::from_secs(60)
            },
            Some(429),
            "review: GitHub answered 429: Mock error (rate-limited; retry after 60s)"
        )
    );
    assert!(result.retryable());
    assert_eq!(mock.reviews().len(), 1, "not waited, not retried");
}

#[tokio::test]
async fn a_definite_refusal_is_called_exactly_once() {
    for status in [400, 403, 404] {
        let mock = GithubMock::start().await;
        mock.script_review(OWNER, REPO, RUN, [Reply::status(status), Reply::normal()]);
        let client = client(&mock);

        let result = answer(&client, &mock, true, "ok").await;

        assert_eq!(
            (result.failure, result.status, result.retryable()),
            (Some(FailureKind::Definite), Some(status), false),
            "{status}: {result:?}"
        );
        assert_eq!(mock.reviews().len(), 1, "{status}");
    }
}

/// The same answer from either platform is the same category of failure:
/// both clients go through one send.
#[tokio::test]
async fn github_and_gitlab_report_the_same_category_for_the_same_status() {
    use crate::support::gitlab_mock::{self, GitlabMock};
    use portcullis::config::{GitlabConfig, Secret};

    const GL_TOKEN: &str = "glpat-test-only-parity";
    let gitlab_request: DeploymentRequest = serde_json::from_value(json!({
        "id": "req_parity0123456789abcdef0",
        "platform": "gitlab",
        "repository": "platform/payments-api",
        "run": "53017",
        "environment": "production",
        "sha": "3f9a2c7e5b1d4e8f9a0b1c2d3e4f5a6b7c8d9e0f",
        "target": { "kind": "gitlab", "project_id": 4711, "deployment_id": 1934 },
        "delivery": "2c1b7a0e-5d0f-4c53-9a8e-41f4f1a7c9d2",
        "received_at": "2026-11-28T15:00:00Z",
        "deadline": "2026-11-28T15:30:00Z",
        "status": "deciding",
    }))
    .expect("a valid GitLab DeploymentRequest");
    let limited = FailureKind::RateLimited {
        retry_after: Duration::ZERO,
    };
    let cases = [
        (400, Some(FailureKind::Definite)),
        (403, Some(FailureKind::Definite)),
        (404, Some(FailureKind::Definite)),
        (429, Some(limited)),
        (500, Some(FailureKind::Transient)),
        (502, Some(FailureKind::Transient)),
        (503, Some(FailureKind::Transient)),
    ];
    for (status, expected) in cases {
        // Three replies: a retried status is answered the same each attempt.
        let github_reply = || {
            let r = Reply::status(status);
            if status == 429 { r.header("Retry-After", "0") } else { r }
        };
        let github = GithubMock::start().await;
        github.script_review(OWNER, REPO, RUN, [github_reply(), github_reply(), github_reply()]);
        let from_github = answer(&client(&github), &github, true, "ok").await;

        let gitlab = GitlabMock::start(GL_TOKEN).await;
        let gitlab_reply = || {
            let r = gitlab_mock::Reply::message(status, "refused");
            if status == 429 { r.header("Retry-After", "0") } else { r }
        };
        gitlab.script(
            "POST",
            "/api/v4/projects/4711/deployments/1934/approval",
            [gitlab_reply(), gitlab_reply(), gitlab_reply()],
        );
        let config = GitlabConfig {
            issuer: String::new(),
            url: url::Url::parse(&gitlab.url()).expect("mock URL"),
            token: Some(Secret::new(GL_TOKEN)),
            webhook_token: Some(Secret::new("unused")),
            signing_token: None,
            represented_as: None,
            play_after_approval: false,
            signature_tolerance: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            poll: Vec::new(),
        };
        let gitlab_client = portcullis::platform::gitlab::GitlabClient::new(&config)
            .expect("client")
            .with_retry_policy(FAST_RETRY);
        let from_gitlab = gitlab_client.answer(&gitlab_request, true, "ok").await;

        assert_eq!(
            (from_github.failure, from_github.status),
            (expected, Some(status)),
            "GitHub {status}: {from_github:?}"
        );
        assert_eq!(
            (from_gitlab.failure, from_gitlab.status),
            (expected, Some(status)),
            "GitLab {status}: {from_gitlab:?}"
        );
        let attempts = if expected.is_some_and(FailureKind::retryable) {
            3
        } else {
            1
        };
        assert_eq!(github.reviews().len(), attempts, "GitHub {status}");
        assert_eq!(gitlab.requests().len(), attempts, "GitLab {status}");
    }
}

#[tokio::test]
async fn a_status_report_validates_against_githubs_openapi_description() {
    let prism = Prism::start().await;
    let mut config = GithubMock::start().await.github_config();
    config.api_url = url::Url::parse(&prism.url()).expect("prism url");
    let client = GithubClient::new(&config)
        .expect("client")
        .with_retry_policy(FAST_RETRY);
    let callback = format!(
        "{}/repos/{OWNER}/{REPO}/actions/runs/{RUN}/deployment_protection_rule",
        prism.url()
    );
    // The review body without `state`: GitHub's `review-custom-gates-comment-required`.
    let report = client
        .status_report(&request(&callback, None), "**Waiting**: `verdict_missing`.")
        .await;
    assert_eq!(report, CallResult::done(Some(204), "GitHub took the status report"));
    let exchanges = prism.exchanges();
    let review = exchanges.last().expect("the report");
    assert_eq!(
        (review.method.as_str(), review.status),
        ("POST", 204),
        "Prism log:\n{}",
        prism.log_tail(30)
    );
    let body: serde_json::Value = serde_json::from_str(&review.request_body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"environment_name": "production", "comment": "**Waiting**: `verdict_missing`."})
    );
    for e in &exchanges {
        assert_eq!(e.violations, None, "{} {}: {}", e.method, e.path, prism.log_tail(30));
    }
}
