//! Unit tests of the GitLab client: construction, endpoints, project
//! paths, the reading of GitLab's messages and the causes of refusals.

use std::time::Duration;

use super::*;
use crate::platform::http::MAX_MESSAGE_CHARS;

fn config(url: &str, token: Option<&str>) -> GitlabConfig {
    GitlabConfig {
        issuer: String::new(),
        url: Url::parse(url).expect("test URL"),
        token: token.map(Secret::new),
        webhook_token: Some(Secret::new("w")),
        signing_token: None,
        represented_as: None,
        play_after_approval: false,
        signature_tolerance: Duration::from_secs(300),
        request_timeout: Duration::from_secs(5),
        poll: Vec::new(),
    }
}

fn client(url: &str) -> GitlabClient {
    GitlabClient::new(&config(url, Some("glpat-secret"))).expect("client")
}

#[test]
fn new_needs_a_token_and_a_base_url() {
    let err = GitlabClient::new(&config("https://gitlab.example.com", None)).expect_err("no token");
    assert_eq!(err.to_string(), "gitlab.token is required to call GitLab");
    let err = GitlabClient::new(&config("mailto:ops@example.com", Some("t"))).expect_err("no base");
    assert!(err.to_string().contains("gitlab.url"), "{err}");
    let debug = format!("{:?}", client("https://gitlab.example.com"));
    assert!(!debug.contains("glpat-secret"), "{debug}");
}

#[test]
fn endpoints_join_under_api_v4_with_any_relative_root() {
    let cases = [
        (
            "root",
            "https://gitlab.example.com",
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp",
        ),
        (
            "slash",
            "https://gitlab.example.com/",
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp",
        ),
        (
            "relative root",
            "https://example.com/gitlab",
            "https://example.com/gitlab/api/v4/projects/group%2Fsub%2Fapp",
        ),
        (
            "loopback",
            "http://127.0.0.1:8929/",
            "http://127.0.0.1:8929/api/v4/projects/group%2Fsub%2Fapp",
        ),
    ];
    for (name, base, expected) in cases {
        assert_eq!(
            client(base).endpoint(&["projects", "group/sub/app"]).as_str(),
            expected,
            "{name}"
        );
    }
}

#[test]
fn project_path_comes_from_the_pipeline_url_on_the_same_instance() {
    let c = client("https://example.com/gitlab");
    let cases = [
        (
            "nested",
            "https://example.com/gitlab/group/sub/app/-/pipelines/53017",
            Some("group/sub/app"),
        ),
        (
            "other host",
            "https://gitlab.other.example/group/app/-/pipelines/1",
            None,
        ),
        ("outside the root", "https://example.com/group/app/-/pipelines/1", None),
        ("not a pipeline", "https://example.com/gitlab/group/app/-/jobs/1", None),
        ("no path", "https://example.com/gitlab/-/pipelines/1", None),
        ("not a URL", "pipelines", None),
    ];
    for (name, url, expected) in cases {
        assert_eq!(c.project_path_from(url).as_deref(), expected, "{name}");
    }
}

#[test]
fn gitlab_messages_are_read_in_every_shape_and_capped() {
    let cases: [(&str, &[u8], Option<&str>); 7] = [
        (
            "string",
            br#"{"message":"This deployment is not waiting for approvals."}"#,
            Some("This deployment is not waiting for approvals."),
        ),
        (
            "list",
            br#"{"message":["Comment is too long (maximum is 255 characters)"]}"#,
            Some("Comment is too long (maximum is 255 characters)"),
        ),
        (
            "fields",
            br#"{"message":{"status":["is invalid"],"comment":["is too long"]}}"#,
            Some("comment is too long; status is invalid"),
        ),
        (
            "error",
            br#"{"error":"status does not have a valid value"}"#,
            Some("status does not have a valid value"),
        ),
        ("html", b"<html>502</html>", None),
        ("other json", br#"{"token":"glpat-x"}"#, None),
        (
            "control characters",
            b"{\"message\":\"403\\nForbidden\"}",
            Some("403 Forbidden"),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(gitlab_message(body).as_deref(), expected, "{name}");
    }
    let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
    assert_eq!(
        gitlab_message(long.as_bytes()).expect("message").chars().count(),
        MAX_MESSAGE_CHARS
    );
}

#[test]
fn approval_failures_name_the_likely_cause() {
    let status = |status: u16, message: &str| CallFailure {
        kind: FailureKind::Definite,
        status: Some(status),
        message: Some(message.into()),
        detail: format!("GitLab answered {status}: {message}"),
    };
    let cases = [
        (
            status(400, "This deployment is not waiting for approvals."),
            "not waiting for approval",
        ),
        (
            status(
                400,
                "You don't have permission to approve this deployment. Contact the project or group owner for help.",
            ),
            "not an eligible approver",
        ),
        (
            status(400, "You cannot approve your own deployment."),
            "may not approve its own",
        ),
        (
            status(
                400,
                "There are no approval rules for the given `represent_as` parameter.",
            ),
            "represented_as",
        ),
        (
            status(400, "Deployment approvals is not configured for this environment."),
            "not protected",
        ),
        (status(400, "Comment is too long"), "GitLab refused the approval"),
        (status(401, "401 Unauthorized"), "gitlab.token is invalid"),
        (status(403, "403 Forbidden"), "not an eligible approver"),
        (status(404, "404 Not found"), "does not exist"),
        (
            CallFailure {
                kind: FailureKind::Transient,
                status: None,
                message: None,
                detail: "timed out after 3 attempts".into(),
            },
            "timed out after 3 attempts",
        ),
    ];
    for (e, expected) in cases {
        let detail = approval_failure(&e);
        assert!(detail.contains(expected), "{detail}");
        assert!(detail.starts_with("approval: "), "{detail}");
    }
    let detail = approval_failure(&status(400, "This deployment is not waiting for approvals."));
    assert!(
        detail.ends_with("GitLab answered 400: This deployment is not waiting for approvals."),
        "{detail}"
    );
}

#[test]
fn projects_are_ids_or_paths() {
    for good in ["4711", "platform/payments-api", "a/b/c.d_e"] {
        assert!(check_project(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "/a",
        "a/",
        "a//b",
        "a/../b",
        ".",
        "a b",
        "a?b",
        "a%2Fb",
        &"x".repeat(256),
    ] {
        assert!(check_project(bad).is_err(), "{bad:?}");
    }
}
