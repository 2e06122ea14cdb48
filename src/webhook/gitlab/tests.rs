use super::*;
use crate::config::Secret;
use base64::Engine;
use std::collections::HashMap;
use std::time::Duration;

/// The example secret of the Standard Webhooks specification, and another.
const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SIGNING: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHRlc3Qga2V5IQ==";
const NOW: i64 = 1_760_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/gitlab/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn config(webhook_token: Option<&str>, signing_token: Option<&str>) -> GitlabConfig {
    GitlabConfig {
        issuer: String::new(),
        url: url::Url::parse("https://gitlab.example.com").unwrap(),
        token: Some(Secret::new("glpat-test")),
        webhook_token: webhook_token.map(Secret::new),
        signing_token: signing_token.map(Secret::new),
        represented_as: None,
        play_after_approval: false,
        signature_tolerance: Duration::from_secs(300),
        request_timeout: Duration::from_secs(10),
        poll: Vec::new(),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).unwrap()
}

fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = standard_webhooks_key(secret).unwrap();
    let ts = timestamp.to_string();
    let mac = crate::crypto::hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// A named case: the headers sent, and what `verify` must say.
type Case = (&'static str, Vec<(&'static str, String)>, Result<(), WebhookError>);

fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    move |name: &str| map.get(&name.to_ascii_lowercase()).cloned()
}

fn signed_headers(secret: &str, id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sign(secret, id, ts, body)),
    ]
}

#[test]
fn standard_webhooks_signatures() {
    let body = br#"{"object_kind":"deployment"}"#;
    let id = "msg_2mZBp0BK2Zz7qXvu1cN2Rj3vD9a";
    let cfg = config(None, Some(SIGNING));
    let sig = |secret, id, ts| sign(secret, id, ts, body);
    let cases: Vec<Case> = vec![
        ("valid", signed_headers(SIGNING, id, NOW, body), Ok(())),
        ("valid, 299 s old", signed_headers(SIGNING, id, NOW - 299, body), Ok(())),
        (
            "valid, 299 s ahead",
            signed_headers(SIGNING, id, NOW + 299, body),
            Ok(()),
        ),
        (
            "stale",
            signed_headers(SIGNING, id, NOW - 301, body),
            Err(WebhookError::StaleTimestamp),
        ),
        (
            "from the future",
            signed_headers(SIGNING, id, NOW + 301, body),
            Err(WebhookError::StaleTimestamp),
        ),
        (
            "wrong secret",
            signed_headers(OTHER_SIGNING, id, NOW, body),
            Err(WebhookError::BadSignature),
        ),
        (
            "wrong id",
            vec![
                ("webhook-id", "msg_other".into()),
                ("webhook-timestamp", NOW.to_string()),
                ("webhook-signature", sig(SIGNING, id, NOW)),
            ],
            Err(WebhookError::BadSignature),
        ),
        (
            "timestamp changed after signing",
            vec![
                ("webhook-id", id.into()),
                ("webhook-timestamp", (NOW + 1).to_string()),
                ("webhook-signature", sig(SIGNING, id, NOW)),
            ],
            Err(WebhookError::BadSignature),
        ),
        (
            "several signatures, one right",
            vec![
                ("webhook-id", id.into()),
                ("webhook-timestamp", NOW.to_string()),
                (
                    "webhook-signature",
                    format!(
                        "v1,Zm9vYmFy {} v1a,c2lnbmVk {}",
                        sig(OTHER_SIGNING, id, NOW),
                        sig(SIGNING, id, NOW)
                    ),
                ),
            ],
            Ok(()),
        ),
        (
            "several signatures, none right",
            vec![
                ("webhook-id", id.into()),
                ("webhook-timestamp", NOW.to_string()),
                (
                    "webhook-signature",
                    format!("v1,!!notbase64 {}", sig(OTHER_SIGNING, id, NOW)),
                ),
            ],
            Err(WebhookError::BadSignature),
        ),
        (
            "right bytes under another version",
            vec![
                ("webhook-id", id.into()),
                ("webhook-timestamp", NOW.to_string()),
                ("webhook-signature", sig(SIGNING, id, NOW).replacen("v1,", "v2,", 1)),
            ],
            Err(WebhookError::BadSignature),
        ),
        (
            "no id",
            vec![
                ("webhook-timestamp", NOW.to_string()),
                ("webhook-signature", sig(SIGNING, id, NOW)),
            ],
            Err(WebhookError::MissingHeader("webhook-id")),
        ),
        (
            "no timestamp",
            vec![("webhook-id", id.into()), ("webhook-signature", sig(SIGNING, id, NOW))],
            Err(WebhookError::MissingHeader("webhook-timestamp")),
        ),
        (
            "timestamp not a number",
            vec![
                ("webhook-id", id.into()),
                ("webhook-timestamp", "soon".into()),
                ("webhook-signature", sign(SIGNING, id, NOW, body)),
            ],
            Err(WebhookError::BadSignature),
        ),
        ("no signature at all", vec![], Err(WebhookError::MissingSignature)),
        (
            "only a token, which is not configured",
            vec![("x-gitlab-token", "anything".into())],
            Err(WebhookError::MissingSignature),
        ),
    ];
    for (name, pairs, expected) in cases {
        assert_eq!(verify(&cfg, &headers(&pairs), body, now()), expected, "{name}");
    }
    // The body is signed too.
    let pairs = signed_headers(SIGNING, id, NOW, body);
    assert_eq!(
        verify(&cfg, &headers(&pairs), b"{}", now()),
        Err(WebhookError::BadSignature)
    );
}

#[test]
fn gitlab_token() {
    let body = b"{}";
    let cfg = config(Some("s3cr3t-token"), None);
    let cases: Vec<Case> = vec![
        ("right", vec![("X-Gitlab-Token", "s3cr3t-token".into())], Ok(())),
        (
            "wrong",
            vec![("X-Gitlab-Token", "s3cr3t-tokem".into())],
            Err(WebhookError::BadSignature),
        ),
        (
            "prefix",
            vec![("X-Gitlab-Token", "s3cr3t".into())],
            Err(WebhookError::BadSignature),
        ),
        (
            "empty",
            vec![("X-Gitlab-Token", String::new())],
            Err(WebhookError::BadSignature),
        ),
        ("missing", vec![], Err(WebhookError::MissingSignature)),
        (
            "a signature, which is not configured, does not stand in for the token",
            signed_headers(SIGNING, "msg_1", NOW, body),
            Err(WebhookError::MissingSignature),
        ),
    ];
    for (name, pairs, expected) in cases {
        assert_eq!(verify(&cfg, &headers(&pairs), body, now()), expected, "{name}");
    }
}

#[test]
fn with_both_configured_each_credential_present_must_verify() {
    let body = b"{}";
    let cfg = config(Some("s3cr3t-token"), Some(SIGNING));
    let good_sig = signed_headers(SIGNING, "msg_1", NOW, body);
    let bad_sig = signed_headers(OTHER_SIGNING, "msg_1", NOW, body);
    let token = |t: &str| ("x-gitlab-token", t.to_owned());
    let with = |mut v: Vec<(&'static str, String)>, extra: (&'static str, String)| {
        v.push(extra);
        v
    };
    let cases: Vec<Case> = vec![
        ("signature only", good_sig.clone(), Ok(())),
        ("token only", vec![token("s3cr3t-token")], Ok(())),
        ("both right", with(good_sig.clone(), token("s3cr3t-token")), Ok(())),
        (
            "right signature, wrong token",
            with(good_sig, token("nope")),
            Err(WebhookError::BadSignature),
        ),
        (
            "wrong signature, right token",
            with(bad_sig, token("s3cr3t-token")),
            Err(WebhookError::BadSignature),
        ),
        ("neither", vec![], Err(WebhookError::MissingSignature)),
    ];
    for (name, pairs, expected) in cases {
        assert_eq!(verify(&cfg, &headers(&pairs), body, now()), expected, "{name}");
    }
}

#[test]
fn dedup_key_prefers_idempotency_key_then_webhook_id() {
    let both = headers(&[("Idempotency-Key", "a1b2".into()), ("webhook-id", "msg_9".into())]);
    assert_eq!(dedup_key(&both).as_deref(), Some("a1b2"));
    let id_only = headers(&[("webhook-id", " msg_9 ".into())]);
    assert_eq!(dedup_key(&id_only).as_deref(), Some("msg_9"));
    let blank = headers(&[("Idempotency-Key", "  ".into()), ("webhook-id", "msg_9".into())]);
    assert_eq!(dedup_key(&blank).as_deref(), Some("msg_9"));
    assert_eq!(dedup_key(&headers(&[])), None);
    let long = "k".repeat(500);
    let hashed = dedup_key(&headers(&[("Idempotency-Key", long.clone())])).unwrap();
    assert_eq!(hashed, format!("sha256:{}", sha256_hex(long.as_bytes())));
    let odd = dedup_key(&headers(&[("Idempotency-Key", "a b\u{7}".into())])).unwrap();
    assert!(odd.starts_with("sha256:"), "{odd}");
}

fn deployment(name: &str) -> DeploymentHook {
    match parse(&fixture(name)).unwrap() {
        GitlabEvent::Deployment(d) => *d,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn parses_a_blocked_deployment() {
    let d = deployment("deployment.blocked.json");
    assert_eq!(d.status, DeploymentStatus::Blocked);
    assert_eq!(d.deployment_id, 1934);
    assert_eq!(d.job_id, Some(88312));
    assert_eq!(
        d.job_url.as_deref(),
        Some("https://gitlab.example.com/platform/payments-api/-/jobs/88312")
    );
    assert_eq!(d.environment, "production");
    assert_eq!(d.project_id, 4711);
    assert_eq!(d.project_path, "platform/payments-api");
    assert_eq!(
        d.project_url.as_deref(),
        Some("https://gitlab.example.com/platform/payments-api")
    );
    assert_eq!(d.short_sha.as_deref(), Some("3f9a2c7e"));
    assert_eq!(d.git_ref.as_deref(), Some("main"));
    assert_eq!(d.user.as_ref().map(|u| u.username.as_str()), Some("jdoe"));
    assert_eq!(d.approver, None);
    assert_eq!(d.approval, None);
}

#[test]
fn parses_an_approval_by_someone_else_without_a_rule() {
    let d = deployment("deployment.approved.json");
    assert_eq!(d.status, DeploymentStatus::Approved);
    assert_eq!(d.approver_username(), Some("asmith"));
    let approval = d.approval.expect("approval");
    assert_eq!(approval.status.as_deref(), Some("approved"));
    assert_eq!(
        approval.comment.as_deref(),
        Some("Change ticket CHG-2291 approved in CAB")
    );
    assert_eq!(approval.user_id, Some(57));
    assert_eq!(approval.approval_rule, None);
}

#[test]
fn parses_a_rejection_under_an_approval_rule() {
    let d = deployment("deployment.rejected.json");
    assert_eq!(d.status, DeploymentStatus::Rejected);
    assert_eq!(d.approver_username(), Some("security-lead"));
    let approval = d.approval.expect("approval");
    assert_eq!(approval.status.as_deref(), Some("rejected"));
    let rule = approval.approval_rule.expect("rule");
    assert_eq!(rule.group_id, Some(912));
    assert_eq!(rule.required_approvals, Some(1));
    assert_eq!(rule.access_level_description.as_deref(), Some("security-approvers"));
}

#[test]
fn parses_a_finished_deployment() {
    let d = deployment("deployment.success.json");
    assert_eq!(d.status, DeploymentStatus::Success);
    assert_eq!(d.deployment_id, 1934);
    assert_eq!(d.approval, None);
}

#[test]
fn every_status_parses_and_unknown_ones_are_kept() {
    for s in [
        "created", "blocked", "approved", "rejected", "running", "success", "failed", "canceled", "skipped",
    ] {
        assert_eq!(DeploymentStatus::parse(s).as_str(), s);
        assert!(!matches!(DeploymentStatus::parse(s), DeploymentStatus::Other(_)), "{s}");
    }
    assert_eq!(
        DeploymentStatus::parse("paused"),
        DeploymentStatus::Other("paused".into())
    );
}

#[test]
fn an_api_deployment_has_no_job() {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("deployment.blocked.json")).unwrap();
    v["deployable_id"] = serde_json::Value::Null;
    v["deployable_url"] = serde_json::Value::Null;
    let GitlabEvent::Deployment(d) = parse(v.to_string().as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(d.job_id, None);
}

#[test]
fn an_approval_user_or_a_top_level_rule_is_understood() {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("deployment.approved.json")).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("approver");
    obj.insert(
        "approval_rule".into(),
        serde_json::json!({"id": 3, "required_approvals": 2}),
    );
    v["approval"]["user"] = serde_json::json!({"id": 57, "username": "asmith", "name": "Alice Smith"});
    let GitlabEvent::Deployment(d) = parse(v.to_string().as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(d.approver_username(), Some("asmith"));
    assert_eq!(d.approval.unwrap().approval_rule.unwrap().required_approvals, Some(2));
}

#[test]
fn other_kinds_are_ignored() {
    assert_eq!(
        parse(br#"{"object_kind":"pipeline","object_attributes":{"status":1}}"#).unwrap(),
        GitlabEvent::Ignored("pipeline".into())
    );
    assert_eq!(
        parse(br#"{"object_kind":"build"}"#).unwrap(),
        GitlabEvent::Ignored("build".into())
    );
}

#[test]
fn malformed_deliveries_are_refused_without_echoing_them() {
    let cases: [(&str, &[u8]); 6] = [
        ("not json", b"<html>"),
        ("no kind", br#"{"status":"blocked"}"#),
        ("no deployment id", br#"{"object_kind":"deployment","status":"blocked","environment":"production","project":{"id":1,"path_with_namespace":"a/b"}}"#),
        ("id not a number", br#"{"object_kind":"deployment","status":"blocked","deployment_id":"x","environment":"production","project":{"id":1,"path_with_namespace":"a/b"}}"#),
        ("empty environment", br#"{"object_kind":"deployment","status":"blocked","deployment_id":1,"environment":" ","project":{"id":1,"path_with_namespace":"a/b"}}"#),
        ("no project path", br#"{"object_kind":"deployment","status":"blocked","deployment_id":1,"environment":"production","project":{"id":1,"path_with_namespace":""}}"#),
    ];
    for (name, body) in cases {
        let err = parse(body).expect_err(name);
        assert_eq!(err.code().as_str(), "payload_malformed", "{name}");
    }
    let WebhookError::Malformed(msg) = parse(br#"{"object_kind": "deployment", "secret-ish": "#).unwrap_err() else {
        panic!()
    };
    assert!(!msg.contains("secret-ish"), "{msg}");
}
