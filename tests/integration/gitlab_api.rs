//! The GitLab client against the recording GitLab mock: the exact requests
//! it makes, how it reads deployments, and how every failure becomes a
//! `CallResult` that is never an approval.

use std::time::Duration;

use crate::support::gitlab_mock::{GitlabMock, Reply};
use portcullis::config::{GitlabConfig, Secret};
use portcullis::domain::{DeploymentRequest, Platform, RequestStatus, Target};
use portcullis::platform::gitlab::GitlabClient;
use portcullis::platform::{CallFailure, CallResult, FailureKind, PlatformClient, RetryPolicy};
use serde_json::{Value, json};
use time::OffsetDateTime;

const TOKEN: &str = "glpat-test-only-9f8e7d6c5b4a";
const PROJECT: u64 = 4711;
const PROJECT_PATH: &str = "platform/payments-api";
const DEPLOYMENT: u64 = 1934;
const JOB: u64 = 88312;
const SHA: &str = "3f9a2c7e5b1d4e8f9a0b1c2d3e4f5a6b7c8d9e0f";
const APPROVAL_PATH: &str = "/api/v4/projects/4711/deployments/1934/approval";
const PLAY_PATH: &str = "/api/v4/projects/4711/jobs/88312/play";

fn api_deployment() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gitlab/api.deployment.json");
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

/// A mock holding the project and its blocked deployment.
async fn mock() -> GitlabMock {
    let mock = GitlabMock::start(TOKEN).await;
    mock.add_project(PROJECT, PROJECT_PATH);
    mock.add_deployment(PROJECT, api_deployment());
    mock
}

struct Options {
    token: &'static str,
    represented_as: Option<&'static str>,
    play_after_approval: bool,
    timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: TOKEN,
            represented_as: None,
            play_after_approval: false,
            timeout: Duration::from_secs(5),
        }
    }
}

fn client(mock: &GitlabMock, o: Options) -> GitlabClient {
    let config = GitlabConfig {
        issuer: String::new(),
        url: url::Url::parse(&mock.url()).expect("mock URL"),
        token: Some(Secret::new(o.token)),
        webhook_token: Some(Secret::new("unused")),
        signing_token: None,
        represented_as: o.represented_as.map(str::to_owned),
        play_after_approval: o.play_after_approval,
        signature_tolerance: Duration::from_secs(300),
        request_timeout: o.timeout,
        poll: Vec::new(),
    };
    GitlabClient::new(&config)
        .expect("client")
        .with_retry_policy(RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_wait: Duration::from_secs(2),
        })
}

fn request(job_id: Option<u64>) -> DeploymentRequest {
    let now = OffsetDateTime::now_utc();
    DeploymentRequest {
        issuer: String::new(),
        id: DeploymentRequest::derive_id(Platform::Gitlab, PROJECT_PATH, "53017", "production"),
        platform: Platform::Gitlab,
        repository: PROJECT_PATH.into(),
        run: "53017".into(),
        environment: "production".into(),
        sha: SHA.into(),
        target: Target::Gitlab {
            project_id: PROJECT,
            deployment_id: DEPLOYMENT,
            job_id,
        },
        delivery: "2c1b7a0e-5d0f-4c53-9a8e-41f4f1a7c9d2".into(),
        received_at: now,
        deadline: now + time::Duration::minutes(30),
        intake_problems: Vec::new(),
        reviews: Vec::new(),
        status: RequestStatus::Deciding,
        decision: None,
        run_attempt: None,
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

fn assert_secret_free(result: &CallResult) {
    assert!(!result.detail.contains(TOKEN), "{}", result.detail);
    assert!(!result.detail.contains("glpat"), "{}", result.detail);
}

#[tokio::test]
async fn approval_is_one_exact_request() {
    let mock = mock().await;
    let gitlab = client(
        &mock,
        Options {
            represented_as: Some("portcullis"),
            ..Options::default()
        },
    );

    let result = gitlab
        .answer(&request(Some(JOB)), true, "Approved by portcullis: all rules hold")
        .await;

    assert_eq!(
        result,
        CallResult::done(Some(201), "GitLab took the approval (approved)")
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.query.as_str()),
        ("POST", APPROVAL_PATH, "")
    );
    assert_eq!(r.header("PRIVATE-TOKEN"), Some(TOKEN));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), None);
    assert!(r.header("user-agent").is_some_and(|ua| ua.starts_with("portcullis/")));
    assert_eq!(
        r.json(),
        Some(json!({
            "status": "approved",
            "comment": "Approved by portcullis: all rules hold",
            "represented_as": "portcullis"
        }))
    );
    assert_eq!(mock.wait_for_approvals(1, Duration::from_secs(1)).await.len(), 1);
}

#[tokio::test]
async fn rejection_sends_no_represented_as_unless_configured_and_never_plays() {
    let mock = mock().await;
    let gitlab = client(
        &mock,
        Options {
            play_after_approval: true,
            ..Options::default()
        },
    );

    let result = gitlab
        .answer(&request(Some(JOB)), false, "Rejected: actor_not_approver")
        .await;

    assert!(result.ok(), "{result:?}");
    assert_eq!(result.detail, "GitLab took the approval (rejected)");
    let requests = mock.requests();
    assert_eq!(requests.len(), 1, "no play after a rejection: {requests:#?}");
    assert_eq!(
        requests[0].json(),
        Some(json!({"status": "rejected", "comment": "Rejected: actor_not_approver"}))
    );
    let approvals = mock.approvals();
    assert_eq!(
        (approvals[0].status.as_str(), approvals[0].represented_as.as_deref()),
        ("rejected", None)
    );
    assert_eq!(
        mock.deployment(PROJECT, DEPLOYMENT).expect("deployment")["status"],
        "failed"
    );
}

#[tokio::test]
async fn play_after_approval_starts_the_job() {
    let mock = mock().await;
    let gitlab = client(
        &mock,
        Options {
            play_after_approval: true,
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert_eq!(
        result,
        CallResult::done(
            Some(200),
            format!("GitLab took the approval (approved) and started job {JOB}")
        )
    );
    let calls: Vec<(String, String)> = mock.requests().into_iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(
        calls,
        [
            ("POST".to_owned(), APPROVAL_PATH.to_owned()),
            ("POST".to_owned(), PLAY_PATH.to_owned())
        ]
    );
    let play = &mock.requests()[1];
    assert_eq!(play.header("private-token"), Some(TOKEN));
    assert_eq!(
        mock.deployment(PROJECT, DEPLOYMENT).expect("deployment")["status"],
        "running"
    );
}

#[tokio::test]
async fn a_failed_play_is_reported_but_the_approval_stands() {
    let mock = mock().await;
    mock.script("POST", PLAY_PATH, [Reply::message(403, "403 Forbidden")]);
    let gitlab = client(
        &mock,
        Options {
            play_after_approval: true,
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert!(result.ok(), "{result:?}");
    assert_eq!(result.status, Some(403));
    assert!(result.detail.contains("playing job 88312 failed"), "{}", result.detail);
    assert!(result.detail.contains("may not run it"), "{}", result.detail);
    assert_eq!(mock.approvals().len(), 1);
}

#[tokio::test]
async fn without_a_job_there_is_nothing_to_play() {
    let mock = mock().await;
    let gitlab = client(
        &mock,
        Options {
            play_after_approval: true,
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(None), true, "ok").await;

    assert!(result.ok());
    assert!(result.detail.contains("no job to play"), "{}", result.detail);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn refusals_are_never_approvals_and_name_the_cause() {
    let cases: [(&str, Reply, u16, &str); 5] = [
        (
            "403: not an eligible approver",
            Reply::message(403, "403 Forbidden"),
            403,
            "not an eligible approver",
        ),
        (
            "400: not waiting",
            Reply::message(400, "This deployment is not waiting for approvals."),
            400,
            "not waiting for approval",
        ),
        (
            "400: no permission (GitLab's approval service answers 400 for it)",
            Reply::message(
                400,
                "You don't have permission to approve this deployment. Contact the project or group owner for help.",
            ),
            400,
            "not an eligible approver",
        ),
        (
            "400: own deployment",
            Reply::message(
                400,
                "You cannot approve your own deployment. This configuration can be adjusted in the protected environment settings.",
            ),
            400,
            "may not approve its own",
        ),
        (
            "404",
            Reply::message(404, "404 Deployment Not Found"),
            404,
            "does not exist",
        ),
    ];
    for (name, reply, status, cause) in cases {
        let mock = mock().await;
        mock.script("POST", APPROVAL_PATH, [reply]);
        let gitlab = client(
            &mock,
            Options {
                play_after_approval: true,
                ..Options::default()
            },
        );

        let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

        assert!(!result.ok(), "{name}: {result:?}");
        assert_eq!(result.failure, Some(FailureKind::Definite), "{name}");
        assert_eq!(result.status, Some(status), "{name}");
        assert!(result.detail.contains(cause), "{name}: {}", result.detail);
        assert!(
            result.detail.contains(&format!("GitLab answered {status}")),
            "{name}: {}",
            result.detail
        );
        assert_secret_free(&result);
        assert_eq!(
            mock.requests().len(),
            1,
            "{name}: a 4xx is not retried, and nothing is played"
        );
        assert!(mock.approvals().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn a_deployment_no_longer_blocked_is_refused_by_gitlab_itself() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());

    assert!(gitlab.answer(&request(Some(JOB)), true, "first").await.ok());
    let second = gitlab.answer(&request(Some(JOB)), true, "again").await;

    assert!(!second.ok(), "{second:?}");
    assert_eq!(second.status, Some(400));
    assert!(second.detail.contains("not waiting for approval"), "{}", second.detail);
}

#[tokio::test]
async fn a_wrong_token_is_a_401_that_names_the_token_not_its_value() {
    let mock = mock().await;
    let gitlab = client(
        &mock,
        Options {
            token: "glpat-wrong",
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert!(!result.ok());
    assert_eq!(result.status, Some(401));
    assert!(result.detail.contains("gitlab.token is invalid"), "{}", result.detail);
    assert!(!result.detail.contains("glpat-wrong"), "{}", result.detail);
    assert_eq!(mock.requests()[0].status, 401);
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let mock = mock().await;
    mock.script(
        "POST",
        APPROVAL_PATH,
        [Reply::message(500, "500 Internal Server Error")],
    );
    let gitlab = client(&mock, Options::default());

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert!(result.ok(), "{result:?}");
    assert_eq!(result.status, Some(201));
    let statuses: Vec<u16> = mock.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 201]);
    assert_eq!(
        mock.requests()[0].body,
        mock.requests()[1].body,
        "the retry sends the same body"
    );
}

#[tokio::test]
async fn server_errors_on_every_attempt_are_a_failure() {
    let mock = mock().await;
    mock.script("POST", APPROVAL_PATH, vec![Reply::message(502, "502 Bad Gateway"); 3]);
    let gitlab = client(&mock, Options::default());

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert!(!result.ok());
    assert_eq!(result.status, Some(502));
    assert!(
        result.detail.contains("GitLab answered 502 after 3 attempts"),
        "{}",
        result.detail
    );
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let mock = mock().await;
    mock.script("POST", APPROVAL_PATH, [Reply::normal().after(Duration::from_secs(2))]);
    let gitlab = client(
        &mock,
        Options {
            timeout: Duration::from_millis(300),
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert!(result.ok(), "{result:?}");
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn timeouts_on_every_attempt_are_a_failure_without_status() {
    let mock = mock().await;
    mock.script(
        "POST",
        APPROVAL_PATH,
        vec![Reply::normal().after(Duration::from_secs(2)); 3],
    );
    let gitlab = client(
        &mock,
        Options {
            timeout: Duration::from_millis(200),
            ..Options::default()
        },
    );

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::Transient,
            None,
            "approval: GitLab did not take the approval: timed out after 3 attempts"
        )
    );
}

#[tokio::test]
async fn the_comment_is_cut_to_gitlabs_limit() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());

    let result = gitlab.answer(&request(Some(JOB)), false, &"reason ".repeat(100)).await;

    assert!(result.ok(), "{result:?}");
    let comment = mock.approvals()[0].comment.clone().expect("comment");
    assert_eq!(comment.chars().count(), 255);
    assert!(comment.ends_with('…'));
}

#[tokio::test]
async fn a_github_request_is_refused_without_a_call() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());
    let mut github = request(None);
    github.target = Target::Github {
        owner: "o".into(),
        repo: "r".into(),
        run_id: 1,
        installation_id: None,
        callback_url: "https://api.github.com/repos/o/r/actions/runs/1/deployment_protection_rule".into(),
    };

    let result = gitlab.answer(&github, true, "ok").await;

    assert!(!result.ok());
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn deployment_fetch_maps_the_full_sha_pipeline_and_job() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());
    mock.add_project(PROJECT, PROJECT_PATH);

    let d = gitlab.deployment(PROJECT, DEPLOYMENT).await.expect("deployment");

    assert_eq!(d.id, DEPLOYMENT);
    assert_eq!(d.iid, Some(212));
    assert_eq!(d.project_id, PROJECT);
    // The fixture's pipeline URL is on gitlab.example.com, not on the
    // configured instance: no path is read from another host; the project
    // is looked up instead.
    assert_eq!(d.project_path.as_deref(), Some(PROJECT_PATH));
    assert_eq!(d.status, "blocked");
    assert_eq!(d.sha.as_str(), SHA);
    assert_eq!(d.git_ref, "main");
    assert_eq!(d.environment, "production");
    assert_eq!(d.job_id, Some(JOB));
    assert_eq!(d.job_status.as_deref(), Some("manual"));
    assert_eq!(d.pipeline_id, Some(53017));
    assert_eq!(d.user.as_deref(), Some("jdoe"));
    let r = &mock.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/api/v4/projects/4711/deployments/1934")
    );
    assert_eq!(r.header("private-token"), Some(TOKEN));
    let r = &mock.requests()[1];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/api/v4/projects/4711"));

    let mut same_host = api_deployment();
    same_host["deployable"]["pipeline"]["web_url"] = json!(format!("{}/{PROJECT_PATH}/-/pipelines/53017", mock.url()));
    mock.add_deployment(PROJECT, same_host);
    let d = gitlab.deployment(PROJECT, DEPLOYMENT).await.expect("deployment");
    assert_eq!(d.project_path.as_deref(), Some(PROJECT_PATH));
}

#[tokio::test]
async fn deployment_fetch_failures_are_typed() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());
    let err = gitlab.deployment(PROJECT, 9999).await.expect_err("unknown deployment");
    assert_eq!(
        err,
        CallFailure {
            kind: FailureKind::Definite,
            status: Some(404),
            message: Some("404 Deployment Not Found".into()),
            detail: "GitLab answered 404: 404 Deployment Not Found".into(),
        }
    );

    let mut short = api_deployment();
    short["id"] = json!(2000);
    short["sha"] = json!("3f9a2c7e");
    mock.add_deployment(PROJECT, short);
    let err = gitlab.deployment(PROJECT, 2000).await.expect_err("short sha");
    assert_eq!(
        (err.kind, err.status, err.detail.as_str()),
        (
            FailureKind::Definite,
            Some(200),
            "GitLab answered 200 with no full commit sha"
        ),
        "{err:?}"
    );

    mock.script(
        "GET",
        "/api/v4/projects/4711/deployments/1934",
        [Reply::message(503, "503"), Reply::normal()],
    );
    assert!(gitlab.deployment(PROJECT, DEPLOYMENT).await.is_ok(), "a 503 is retried");
}

#[tokio::test]
async fn blocked_list_reads_every_page_by_project_path() {
    let mock = mock().await;
    mock.set_max_per_page(2);
    let base = api_deployment();
    for (id, status) in [
        (1935, "blocked"),
        (1936, "success"),
        (1937, "blocked"),
        (1938, "blocked"),
    ] {
        let mut d = base.clone();
        d["id"] = json!(id);
        d["status"] = json!(status);
        mock.add_deployment(PROJECT, d);
    }
    let mut other_project = base.clone();
    other_project["id"] = json!(5000);
    mock.add_project(4712, "platform/ledger");
    mock.add_deployment(4712, other_project);
    let mut broken = base.clone();
    broken["id"] = json!(1939);
    broken["sha"] = json!("not-a-sha");
    mock.add_deployment(PROJECT, broken);
    let gitlab = client(&mock, Options::default());

    let list = gitlab.blocked_deployments(PROJECT_PATH).await.expect("list");

    let ids: Vec<u64> = list.iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        [1934, 1935, 1937, 1938],
        "blocked only, this project only, the unreadable one skipped"
    );
    assert!(
        list.iter()
            .all(|d| d.project_id == PROJECT && d.project_path.as_deref() == Some(PROJECT_PATH))
    );
    assert!(
        list.iter()
            .all(|d| d.pipeline_id == Some(53017) && d.sha.as_str() == SHA)
    );
    let requests = mock.requests();
    assert_eq!(requests[0].path, "/api/v4/projects/platform%2Fpayments-api");
    let pages: Vec<(String, String)> = requests[1..]
        .iter()
        .map(|r| {
            let q = r.query_pairs();
            assert_eq!(r.path, "/api/v4/projects/4711/deployments");
            assert_eq!(q.get("status").map(String::as_str), Some("blocked"));
            assert_eq!(q.get("per_page").map(String::as_str), Some("100"));
            (q["page"].clone(), q["sort"].clone())
        })
        .collect();
    assert_eq!(
        pages,
        [("1", "asc"), ("2", "asc"), ("3", "asc")].map(|(p, s)| (p.to_owned(), s.to_owned()))
    );
}

#[tokio::test]
async fn blocked_list_takes_a_numeric_id_and_refuses_odd_projects() {
    let mock = mock().await;
    let gitlab = client(&mock, Options::default());

    let list = gitlab.blocked_deployments("4711").await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(mock.requests()[0].path, "/api/v4/projects/4711");

    let err = gitlab
        .blocked_deployments("../../users")
        .await
        .expect_err("odd project");
    assert_eq!(
        (err.kind, err.status, err.detail.as_str()),
        (
            FailureKind::Definite,
            None,
            "the project is not a GitLab project id or path"
        ),
        "{err:?}"
    );
    let err = gitlab
        .blocked_deployments("platform/unknown")
        .await
        .expect_err("unknown project");
    assert_eq!((err.kind, err.status), (FailureKind::Definite, Some(404)));
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_the_approval_succeeds() {
    let mock = mock().await;
    mock.script(
        "POST",
        APPROVAL_PATH,
        [
            Reply::message(429, "Retry later").header("Retry-After", "1"),
            Reply::normal(),
        ],
    );
    let gitlab = client(&mock, Options::default());

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert_eq!(
        result,
        CallResult::done(Some(201), "GitLab took the approval (approved)")
    );
    let requests = mock.requests();
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 201]);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
}

#[tokio::test]
async fn a_rate_limited_approval_is_retryable_and_never_a_refusal_cause() {
    let mock = mock().await;
    mock.script(
        "POST",
        APPROVAL_PATH,
        [Reply::message(429, "Retry later").header("Retry-After", "60")],
    );
    let gitlab = client(&mock, Options::default());

    let result = gitlab.answer(&request(Some(JOB)), true, "ok").await;

    assert_eq!(
        result,
        CallResult::failed(
            FailureKind::RateLimited {
                retry_after: Duration::from_secs(60)
            },
            Some(429),
            "approval: GitLab did not take the approval: GitLab answered 429: Retry later (rate-limited; retry after 60s)"
        )
    );
    assert!(result.retryable());
    assert_eq!(mock.requests().len(), 1);
}
