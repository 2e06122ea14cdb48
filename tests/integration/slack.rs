//! Human reviews and the Slack-linked audit trail.
//!
//! Through the application, in process: a real OpenID Provider mints the CI tokens, a
//! recording GitHub API mock takes the review calls, a checking Slack Web
//! API fake holds the messages and the user directory, and interactivity
//! payloads are signed as Slack signs them. SSO reviews go through a second
//! real OpenID Provider (npm oidc-provider, `sso-provider.mjs`), its
//! authorization-code flow driven by the test as a browser would.
//! Library-level tests cover the Slack client, the message and the engine's
//! review rules with Slack identities.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::app::App;
use crate::support::github_mock::{GithubMock, TEST_APP_ID, review_path, test_app_private_key};
use crate::support::oidc::{OidcProvider, github_claims};
use crate::support::slack_mock::{self, BOT_TOKEN, Reply, SIGNING_SECRET, SlackMock, TEAM_ID};
use portcullis::config::{Config, Secret, SlackConfig};
use portcullis::decision::{self, Inputs, Outcome, ReasonCode};
use portcullis::domain::{Attestation, DeploymentRequest};
use portcullis::slack::message::{self, Links};
use portcullis::slack::{ACTION_APPROVE, ACTION_REJECT, ACTION_SSO, SlackClient, SlackError, SlackUser, interaction};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const PUBLIC_URL: &str = "https://portcullis.example";
const WAIT: Duration = Duration::from_secs(15);
const READ_TOKEN: &str = "test-only-read-token-91d2";
const SSO_SECRET: &str = "test-only-sso-secret";

// ----- the world ----------------------------------------------------------------

struct World {
    oidc: OidcProvider,
    gh: GithubMock,
    slack: SlackMock,
    app: App,
    _sso: Option<SsoProvider>,
}

struct Options {
    read_token: bool,
    sso: bool,
}

async fn world() -> World {
    world_with(Options {
        read_token: false,
        sso: false,
    })
    .await
}

async fn world_with(opts: Options) -> World {
    let oidc = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    let slack = SlackMock::start().await;
    for (id, name, email, display) in [
        ("U0ALICE", "alice", Some("Alice@Example.com"), "Alice"),
        ("U0BOB", "bob", Some("bob@example.com"), "Bob"),
        ("U0CAROL", "carol", Some("carol@example.com"), "Carol"),
        ("U0OCTO", "octocat", Some("octocat@example.com"), "The Octocat"),
        ("U0MALLORY", "mallory", Some("mallory@example.com"), "Mallory"),
        ("U0NOMAIL", "nomail", None, "No Mail"),
    ] {
        slack.add_user(id, name, email, display);
    }
    let sso = if opts.sso {
        Some(SsoProvider::start().await)
    } else {
        None
    };
    let sso_section = match &sso {
        Some(p) => format!(
            r##"
[sso]
issuer = "{}"
client_id = "portcullis-reviews"
client_secret = {{ env = "SSO_CLIENT_SECRET" }}
groups_claim = "groups"

[environments.audited]
approvers = ["octocat"]
[environments.audited.verdict]
required = false
[environments.audited.reviews]
required = 1
via = "sso"
reviewers = ["alice@example.com", "bob@example.com", "octocat@example.com"]
[environments.audited.slack]
channel = "#deploys-production"
"##,
            p.issuer()
        ),
        None => String::new(),
    };
    let read_token = if opts.read_token {
        "read_token = { env = \"READ_TOKEN\" }"
    } else {
        ""
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r##"
[server]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
shutdown_timeout = "10s"
max_body_bytes = 65536
{read_token}

[audit]
path = "{{dir}}/audit.jsonl"

[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "2s"

[slack]
bot_token = {{ env = "SLACK_BOT_TOKEN" }}
signing_secret = {{ env = "SLACK_SIGNING_SECRET" }}
api_url = "{slack}"

{sso_section}

[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"

[environments.production]
approvers = ["octocat", "hubot"]
require_claims = {{ ref = "refs/heads/main" }}
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]
[environments.production.reviews]
required = 2
via = "slack"
reviewers = ["alice@example.com", "bob@example.com", "carol@example.com", "octocat@example.com"]
[environments.production.slack]
channel = "#deploys-production"

[environments.staging]
approvers = ["octocat"]
[environments.staging.verdict]
required = false
[environments.staging.slack]
channel = "#deploys-staging"

[environments.quiet]
approvers = ["octocat"]
[environments.quiet.verdict]
required = false
"##,
        api = gh.url(),
        slack = slack.url(),
        issuer = oidc.issuer(),
    );
    let app = App::start_in(
        dir,
        &config,
        &[
            ("GH_WEBHOOK_SECRET", crate::support::app::WEBHOOK_SECRET),
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
            ("SSO_CLIENT_SECRET", SSO_SECRET),
            ("READ_TOKEN", READ_TOKEN),
        ],
    )
    .await;
    World {
        oidc,
        gh,
        slack,
        app,
        _sso: sso,
    }
}

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn ci_claims(run: u64, sha: &str) -> Value {
    let mut c = github_claims(sha);
    c["repository"] = json!(REPO);
    c["run_id"] = json!(run.to_string());
    c["sub"] = json!(format!("repo:{REPO}:environment:production"));
    c
}

fn codes(request: &Value) -> Vec<String> {
    request["decision"]["reasons"]
        .as_array()
        .map(|a| a.iter().map(|r| r["code"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

impl World {
    async fn attest(&self, run: u64, sha: &str) {
        let token = self.oidc.mint("portcullis", ci_claims(run, sha)).await;
        let (code, body) = self.app.post_bearer("/v1/attestations", &token, None).await;
        assert_eq!(code, 201, "{body}");
    }

    async fn verdict(&self, sha: &str, environment: &str) {
        let mut claims = github_claims(sha);
        claims["repository"] = json!(REPO);
        claims["job_workflow_ref"] = json!(GATE_WORKFLOW);
        let token = self.oidc.mint("portcullis", claims).await;
        let body = json!({"environment": environment, "sha": sha, "policy": "data.deploy.hipaa.allow", "allow": true});
        let (code, answer) = self.app.post_bearer("/v1/verdicts", &token, Some(&body)).await;
        assert_eq!(code, 201, "{answer}");
    }

    async fn webhook(&self, run: u64, environment: &str, sha: &str) -> String {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/github/deployment_protection_rule.requested.json"
        ))
        .unwrap();
        let mut p: Value = serde_json::from_str(&text).unwrap();
        p["deployment_callback_url"] = json!(self.gh.callback_url("octo-org", "payments", run));
        p["environment"] = json!(environment);
        p["deployment"]["sha"] = json!(sha);
        p["deployment"]["environment"] = json!(environment);
        let body = serde_json::to_vec(&p).unwrap();
        let (code, answer) = self
            .app
            .post_webhook("deployment_protection_rule", &format!("d-{run}"), &body)
            .await;
        assert_eq!(code, 202, "{answer}");
        answer["request"].as_str().unwrap().to_string()
    }

    async fn wait_codes(&self, id: &str, want: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, req) = self.app.get(&format!("/v1/requests/{id}")).await;
            if codes(&req) == want {
                return req;
            }
            assert!(std::time::Instant::now() < deadline, "never {want:?}: {req}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Posts a signed interactivity payload; `at` is its timestamp.
    async fn post_interaction(&self, body: &[u8], secret: &str, at: i64) -> (u16, Value) {
        let sig = portcullis::slack::signature::sign(secret.as_bytes(), at, body);
        self.post_interaction_raw(body, Some(&at.to_string()), Some(&sig)).await
    }

    async fn post_interaction_raw(&self, body: &[u8], ts: Option<&str>, sig: Option<&str>) -> (u16, Value) {
        let mut r = self
            .app
            .http
            .post(self.app.url("/webhooks/slack"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "Slackbot 1.0 (+https://api.slack.com/robots)")
            .body(body.to_vec());
        if let Some(ts) = ts {
            r = r.header("x-slack-request-timestamp", ts);
        }
        if let Some(sig) = sig {
            r = r.header("x-slack-signature", sig);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A click signed now by Slack.
    async fn click(&self, user: &str, action: &str, request: &str, tag: &str) -> (u16, Value) {
        let body = click_payload(user, action, request, &self.slack.response_url(tag));
        self.post_interaction(&body, SIGNING_SECRET, now()).await
    }

    fn audit(&self, event: &str) -> Vec<Value> {
        self.app
            .audit_records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A `block_actions` payload as Slack sends it for a button click, form-encoded.
fn click_payload(user: &str, action: &str, request: &str, response_url: &str) -> Vec<u8> {
    let label = if action == ACTION_APPROVE { "Approve" } else { "Reject" };
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM_ID },
        "api_app_id": "A0PORTCULLIS",
        "token": "legacy-verification-token-not-used",
        "container": { "type": "message", "message_ts": "1700000000.000001", "channel_id": "C0PRODUCTION", "is_ephemeral": false },
        "trigger_id": "1700000001.1234.abcdef",
        "team": { "id": TEAM_ID, "domain": "portcullis-test" },
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": { "id": "C0PRODUCTION", "name": "deploys-production" },
        "message": { "type": "message", "ts": "1700000000.000001", "text": "Deployment", "blocks": [] },
        "state": { "values": {} },
        "response_url": response_url,
        "actions": [{
            "action_id": action, "block_id": "review_actions",
            "text": { "type": "plain_text", "text": label, "emoji": true },
            "value": request, "style": if action == ACTION_APPROVE { "primary" } else { "danger" },
            "type": "button", "action_ts": "1700000001.000200"
        }]
    });
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

fn text_of(answer: &Value) -> String {
    answer["text"].as_str().unwrap_or_default().to_string()
}

// ----- done when: the end-to-end sequence -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_buttons_after_the_verdict_then_two_slack_reviews_approve_through_github_linked_both_ways() {
    let w = world().await;
    let (run, s) = (9101, sha(9101));
    w.attest(run, &s).await;
    let id = w.webhook(run, "production", &s).await;

    // 1. The request is pending: the verdict is missing. The message says so
    //    and offers no buttons.
    w.wait_codes(&id, &["verdict_missing", "reviews_missing"]).await;
    let pending = w
        .slack
        .wait_message(WAIT, "naming the missing verdict", |m| {
            m.all_text().contains("verdict_missing")
        })
        .await;
    assert_eq!(pending.channel, "C0PRODUCTION");
    assert!(
        pending.history.iter().all(|b| slack_mock::action_ids(b).is_empty()),
        "no buttons before the verdict: {:#?}",
        pending.history
    );
    let text = pending.all_text();
    assert!(text.contains(":hourglass_flowing_sand: *Pending*"), "{text}");
    assert!(text.contains("0 of 2 required reviews"), "{text}");
    assert!(
        text.contains(&format!(
            "<{}/octo-org/payments/actions/runs/{run}|GitHub run {run}>",
            w.gh.url()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("<{PUBLIC_URL}/v1/requests/{id}|Request>")),
        "{text}"
    );
    // Only one message for this request, however many changes raced.
    assert_eq!(w.slack.calls_to("chat.postMessage").len(), 1);

    // The request holds the message's reference.
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    let permalink = slack_mock::permalink("C0PRODUCTION", &pending.ts);
    assert_eq!(
        req["slack"],
        json!({"channel": "C0PRODUCTION", "ts": pending.ts, "permalink": permalink})
    );

    // 2. The verdict arrives: reviews are all that is missing, and only now
    //    the buttons appear.
    w.verdict(&s, "production").await;
    w.wait_codes(&id, &["reviews_missing"]).await;
    let with_buttons = w
        .slack
        .wait_message(WAIT, "with review buttons", |m| !m.action_ids().is_empty())
        .await;
    assert_eq!(with_buttons.ts, pending.ts, "the same message, updated");
    assert_eq!(with_buttons.action_ids(), [ACTION_APPROVE, ACTION_REJECT]);
    let approve = with_buttons.button(ACTION_APPROVE).unwrap();
    assert_eq!(
        (approve["value"].as_str(), approve["style"].as_str()),
        (Some(id.as_str()), Some("primary"))
    );
    assert_eq!(with_buttons.button(ACTION_REJECT).unwrap()["style"], "danger");
    let first_with_buttons = with_buttons
        .history
        .iter()
        .position(|b| !slack_mock::action_ids(b).is_empty())
        .unwrap();
    assert!(
        with_buttons.history[..first_with_buttons]
            .iter()
            .any(|b| slack_mock::all_text(b).contains("verdict_missing")),
        "the buttons came after the pending verdict"
    );
    assert!(!slack_mock::all_text(&with_buttons.history[first_with_buttons]).contains("verdict_missing"));

    // 3. Two reviews, by signed Slack clicks on those buttons.
    let request_of_button = approve["value"].as_str().unwrap();
    let (code, answer) = w.click("U0ALICE", ACTION_APPROVE, request_of_button, "alice").await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["response_type"], "ephemeral");
    let reply = text_of(&answer);
    assert!(
        reply.starts_with("Recorded your approval of the deployment of"),
        "{reply}"
    );
    assert!(
        reply.contains("as alice@example.com (identity verified through Slack)"),
        "{reply}"
    );
    assert!(reply.contains("Still missing: 1 of 2 required reviews."), "{reply}");
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "pending");
    assert!(w.gh.reviews().is_empty(), "one review satisfies nothing");

    let (code, answer) = w.click("U0BOB", ACTION_APPROVE, request_of_button, "bob").await;
    assert_eq!(code, 200, "{answer}");
    let reply = text_of(&answer);
    assert!(
        reply.contains("as bob@example.com") && reply.ends_with("The deployment is approved."),
        "{reply}"
    );

    // 4. Approved through the platform API.
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(
        codes(&req),
        [
            "attestation_verified",
            "claims_satisfied",
            "actor_approved",
            "verdict_allowed",
            "reviews_satisfied"
        ]
    );
    let calls = w.gh.wait_for_reviews(1, WAIT).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, review_path("octo-org", "payments", run));
    let body = calls[0].body.clone().unwrap();
    assert_eq!(
        (body["state"].as_str(), body["environment_name"].as_str()),
        (Some("approved"), Some("production"))
    );
    let record = req["decision_record"].as_str().unwrap().to_string();
    let audit_url = format!("{PUBLIC_URL}/v1/audit/{record}");
    assert!(
        body["comment"]
            .as_str()
            .unwrap()
            .contains("reviews_satisfied: approved by alice@example.com, bob@example.com")
    );

    // 5. The message is updated and linked to the audit record ...
    let done = w
        .slack
        .wait_message(WAIT, "approved with the audit link", |m| {
            m.all_text().contains(&audit_url) && m.all_text().contains("(HTTP 204)")
        })
        .await;
    assert_eq!(done.ts, pending.ts);
    let text = done.all_text();
    assert!(text.contains(":white_check_mark: *Approved*"), "{text}");
    assert!(text.contains(&format!("<{audit_url}|Audit record>")), "{text}");
    assert!(
        text.contains(
            ":heavy_check_mark: alice@example.com (via slack) · :heavy_check_mark: bob@example.com (via slack)"
        ),
        "{text}"
    );
    assert!(done.action_ids().is_empty(), "no buttons once decided");
    assert_eq!(w.slack.calls_to("chat.postMessage").len(), 1, "one living message");

    // ... and the audit records link to the message.
    let slack_ref = json!({"channel": "C0PRODUCTION", "ts": done.ts, "permalink": permalink});
    let reviews = w.audit("review_recorded");
    assert_eq!(reviews.len(), 2);
    for (r, who) in reviews.iter().zip(["alice@example.com", "bob@example.com"]) {
        assert_eq!(
            r["reviews"],
            json!([{"reviewer": who, "approve": true, "via": "slack"}])
        );
        assert_eq!(r["slack"], slack_ref);
        assert_eq!(r["request"], json!(id));
    }
    let (code, decision) = w.app.get(&format!("/v1/audit/{record}")).await;
    assert_eq!(code, 200);
    assert_eq!(decision["event"], "decision");
    assert_eq!(decision["slack"], slack_ref);
    assert_eq!(decision["reviews"].as_array().map(Vec::len), Some(2));
    let results = w.audit("platform_result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["slack"], slack_ref);

    // A review after the decision changes nothing, and the reply says so.
    let (code, answer) = w.click("U0CAROL", ACTION_APPROVE, &id, "carol").await;
    assert_eq!(code, 200);
    assert_eq!(
        text_of(&answer),
        "This request was already decided (approved); your review changes nothing."
    );
    assert_eq!(w.audit("review_recorded").len(), 2);

    // The replies also went to each click's response_url, where Slack shows them.
    let deadline = std::time::Instant::now() + WAIT;
    while w.slack.responses().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "replies: {:?}",
            w.slack.responses()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let carol = w.slack.responses().into_iter().find(|(t, _)| t == "carol").unwrap().1;
    assert_eq!(
        carol["text"],
        "This request was already decided (approved); your review changes nothing."
    );

    assert_eq!(w.slack.problems(), Vec::<String>::new());
    assert!(w.app.cli(&["audit", "verify"]).status.success());
    let audit_text = std::fs::read_to_string(w.app.audit_path()).unwrap();
    for secret in [BOT_TOKEN, SIGNING_SECRET] {
        assert!(!w.app.logs().contains(secret), "a Slack secret leaked into the logs");
        assert!(!audit_text.contains(secret), "a Slack secret leaked into the audit");
    }
}

// ----- interaction payloads ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_payloads_signed_stale_and_forged() {
    let w = world().await;
    let body = click_payload(
        "U0ALICE",
        ACTION_APPROVE,
        "req_doesnotexist",
        &w.slack.response_url("x"),
    );
    let t = now();

    let (code, answer) = w.post_interaction(&body, SIGNING_SECRET, t).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        text_of(&answer),
        "This deployment request is not known to portcullis; nothing was recorded."
    );

    let error = |code: &str, message: &str| json!({"error": {"code": code, "message": message}});
    let stale_msg = "the Slack request timestamp is more than five minutes from now";
    let invalid_msg = "the Slack signature is missing or does not verify";
    let sig = |secret: &str, at: i64, b: &[u8]| portcullis::slack::signature::sign(secret.as_bytes(), at, b);
    // (name, X-Slack-Request-Timestamp, X-Slack-Signature, status, code, message)
    let stale = ("signature_stale", stale_msg);
    let invalid = ("signature_invalid", invalid_msg);
    let ts = |at: i64| Some(at.to_string());
    let signed = |secret: &str, at: i64| Some(sig(secret, at, &body));
    let cases = [
        (
            "stale: signed six minutes ago",
            ts(t - 360),
            signed(SIGNING_SECRET, t - 360),
            stale,
        ),
        (
            "stale: dated ten minutes ahead",
            ts(t + 600),
            signed(SIGNING_SECRET, t + 600),
            stale,
        ),
        ("forged: another secret", ts(t), signed("not-the-secret", t), invalid),
        (
            "forged: signed another body",
            ts(t),
            Some(sig(SIGNING_SECRET, t, b"payload=%7B%7D")),
            invalid,
        ),
        (
            "forged: an old signature, a fresh timestamp",
            ts(t),
            signed(SIGNING_SECRET, t - 360),
            invalid,
        ),
        ("no signature", ts(t), None, invalid),
        ("no timestamp", None, signed(SIGNING_SECRET, t), invalid),
        (
            "not v0",
            ts(t),
            signed(SIGNING_SECRET, t).map(|s| s.replace("v0=", "v1=")),
            invalid,
        ),
    ];
    for (name, ts, sig, (code, message)) in cases {
        let (status, answer) = w.post_interaction_raw(&body, ts.as_deref(), sig.as_deref()).await;
        assert_eq!((status, answer), (401, error(code, message)), "{name}");
    }

    // Signed but malformed, or of no interest.
    let (code, answer) = w.post_interaction(b"nothing=here", SIGNING_SECRET, t).await;
    assert_eq!(
        (code, answer["error"]["code"].as_str()),
        (400, Some("payload_malformed"))
    );
    let other = format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(json!({"type": "view_closed"}).to_string().as_bytes()).collect::<String>()
    );
    let (code, _) = w.post_interaction(other.as_bytes(), SIGNING_SECRET, t).await;
    assert_eq!(code, 200);

    // Nothing was recorded by any of it.
    assert!(w.audit("review_recorded").is_empty());
    assert!(
        w.slack.calls_to("users.info").is_empty(),
        "no identity lookup for refused payloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_counts_only_from_a_verified_reviewer_of_the_environment() {
    let w = world().await;
    let (run, s) = (9201, sha(9201));
    w.attest(run, &s).await;
    w.verdict(&s, "production").await;
    let id = w.webhook(run, "production", &s).await;
    w.wait_codes(&id, &["reviews_missing"]).await;

    let (code, answer) = w.click("U0MALLORY", ACTION_APPROVE, &id, "mallory").await;
    assert_eq!(code, 200);
    assert_eq!(
        text_of(&answer),
        "You are not a reviewer for production; nothing was recorded."
    );
    let (_, answer) = w.click("U0NOMAIL", ACTION_APPROVE, &id, "nomail").await;
    assert_eq!(
        text_of(&answer),
        "Your Slack profile shows no email address, so you cannot be matched to the reviewers of production; nothing was recorded."
    );
    let (_, answer) = w.click("U0GHOST", ACTION_APPROVE, &id, "ghost").await;
    assert_eq!(
        text_of(&answer),
        "Slack could not confirm who you are (user_not_found); nothing was recorded. Try again."
    );
    assert!(w.audit("review_recorded").is_empty());
    assert!(
        w.app
            .logs()
            .contains("slack review refused: not a reviewer of the environment"),
        "refusals are logged"
    );
    let lookups = w.slack.calls_to("users.info");
    assert_eq!(
        lookups.iter().map(|c| c.query["user"].as_str()).collect::<Vec<_>>(),
        ["U0MALLORY", "U0NOMAIL", "U0GHOST"]
    );
    assert!(
        lookups
            .iter()
            .all(|c| c.header("authorization") == Some(&format!("Bearer {BOT_TOKEN}")))
    );

    // A rejection by a reviewer rejects at once (any rejection rejects).
    let (_, answer) = w.click("U0CAROL", ACTION_REJECT, &id, "carol").await;
    assert!(text_of(&answer).contains("Recorded your rejection"), "{answer}");
    assert!(text_of(&answer).ends_with("The deployment is rejected."), "{answer}");
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(codes(&req), ["review_rejected"]);
    assert_eq!(
        w.gh.wait_for_reviews(1, WAIT).await[0].body.as_ref().unwrap()["state"],
        "rejected"
    );
    assert_eq!(w.slack.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_strangers_and_unconfirmed_emails_cannot_review_even_when_listed() {
    let w = world().await;
    let (run, s) = (9251, sha(9251));
    w.attest(run, &s).await;
    w.verdict(&s, "production").await;
    let id = w.webhook(run, "production", &s).await;
    w.wait_codes(&id, &["reviews_missing"]).await;

    // carol@example.com is on the reviewers list; each account state alone
    // makes her Slack account unfit to stand for her.
    let refused = "Your Slack account cannot review deployments; nothing was recorded.";
    for (fields, why) in [
        (json!({"is_restricted": true}), "a guest account"),
        (json!({"is_ultra_restricted": true}), "a guest account"),
        (json!({"is_stranger": true}), "a user of another organisation"),
        (json!({"is_email_confirmed": false}), "an unconfirmed email"),
        (json!({"deleted": true}), "a deactivated or bot user"),
    ] {
        w.slack.patch_user("U0CAROL", fields.clone());
        let (code, answer) = w.click("U0CAROL", ACTION_APPROVE, &id, "carol").await;
        assert_eq!((code, text_of(&answer).as_str()), (200, refused), "{fields}");
        assert!(
            w.app.logs().contains(&format!("slack review refused: {why}")),
            "{fields}: {why}"
        );
        // Back to an ordinary member before the next case.
        w.slack.patch_user(
            "U0CAROL",
            json!({"is_restricted": false, "is_ultra_restricted": false, "is_stranger": false,
                   "is_email_confirmed": true, "deleted": false}),
        );
    }
    assert!(w.audit("review_recorded").is_empty(), "nothing was recorded");

    // The same account as an ordinary member counts.
    let (_, answer) = w.click("U0CAROL", ACTION_APPROVE, &id, "carol").await;
    assert!(text_of(&answer).contains("Recorded your approval"), "{answer}");
    assert_eq!(w.audit("review_recorded").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_review_through_slack_is_recorded_but_does_not_count() {
    let w = world().await;
    let (run, s) = (9301, sha(9301));
    w.attest(run, &s).await; // the attested actor is `octocat`
    w.verdict(&s, "production").await;
    let id = w.webhook(run, "production", &s).await;
    w.wait_codes(&id, &["reviews_missing"]).await;

    // octocat@example.com is a reviewer, and Slack user `octocat` is the actor.
    let (_, answer) = w.click("U0OCTO", ACTION_APPROVE, &id, "octo").await;
    let reply = text_of(&answer);
    assert!(
        reply.contains("It does not count: you triggered this deployment, and production does not allow self-review."),
        "{reply}"
    );
    assert!(reply.ends_with("Still missing: 0 of 2 required reviews."), "{reply}");
    w.click("U0ALICE", ACTION_APPROVE, &id, "alice").await;
    let req = w.wait_codes(&id, &["reviews_missing"]).await;
    assert_eq!(req["decision"]["reasons"][0]["message"], "1 of 2 required reviews");
    assert_eq!(
        req["reviews"][0]["aliases"],
        json!(["octocat", "The Octocat", "octocat (test)"])
    );
    // A second distinct reviewer completes it.
    w.click("U0BOB", ACTION_APPROVE, &id, "bob").await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(
        w.audit("review_recorded").len(),
        3,
        "the self-review is recorded all the same"
    );
}

// ----- Slack down or slow -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_down_slow_or_rate_limited_never_delays_or_changes_a_decision() {
    let w = world().await;
    // Slow: the post takes 5 s. The decision does not wait for it.
    w.slack
        .script("chat.postMessage", [Reply::normal().delay(Duration::from_secs(5))]);
    let (run, s) = (9401, sha(9401));
    w.attest(run, &s).await;
    let id = w.webhook(run, "staging", &s).await;
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert!(w.gh.wait_for_reviews(1, WAIT).await[0].body.as_ref().unwrap()["state"] == "approved");
    assert!(
        w.slack.calls_to("chat.postMessage").is_empty(),
        "decided and answered while Slack was still answering the post"
    );
    // The message arrives later, decided, and the request gets its reference.
    let m = w
        .slack
        .wait_message(WAIT, "approved (staging)", |m| {
            m.channel == "C0STAGING" && m.all_text().contains("*Approved*")
        })
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
        if req["slack"]["ts"] == json!(m.ts) {
            assert_eq!(
                req["slack"]["permalink"],
                json!(slack_mock::permalink("C0STAGING", &m.ts))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reference was never recorded: {req}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rate-limited once (Retry-After: 1), then fine: the post is retried.
    w.slack.script("chat.postMessage", [Reply::rate_limited(1)]);
    let (run, s) = (9402, sha(9402));
    w.attest(run, &s).await;
    let id = w.webhook(run, "staging", &s).await;
    assert_eq!(
        w.app.wait_request(&id, "done", WAIT).await["decision"]["outcome"],
        "approved"
    );
    let posts = w.slack.wait_calls("chat.postMessage", 3, WAIT).await;
    let (limited, retried) = (&posts[1], &posts[2]);
    assert_eq!((limited.status, retried.status), (429, 200));
    assert!(
        retried.at.duration_since(limited.at) >= Duration::from_millis(950),
        "Retry-After was honoured"
    );

    // Down: every call fails. Decisions go on; the failure is logged.
    w.slack.script("chat.postMessage", (0..3).map(|_| Reply::status(503)));
    let (run, s) = (9403, sha(9403));
    w.attest(run, &s).await;
    let id = w.webhook(run, "staging", &s).await;
    assert_eq!(
        w.app.wait_request(&id, "done", WAIT).await["decision"]["outcome"],
        "approved"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !w
        .app
        .logs()
        .contains("slack: the message could not be brought up to date; the decision is unaffected")
    {
        assert!(std::time::Instant::now() < deadline, "{}", w.app.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.gh.reviews().len(), 3);

    // An environment without a channel posts nothing.
    let (run, s) = (9404, sha(9404));
    w.attest(run, &s).await;
    let id = w.webhook(run, "quiet", &s).await;
    w.app.wait_request(&id, "done", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.slack.messages().iter().all(|m| !m.all_text().contains("run 9404")));
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert!(req.get("slack").is_none(), "{req}");
    assert_eq!(w.slack.problems(), Vec::<String>::new());
}

// ----- the read token -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_is_behind_the_read_token() {
    let w = world_with(Options {
        read_token: true,
        sso: false,
    })
    .await;
    let (run, s) = (9501, sha(9501));
    w.attest(run, &s).await;
    let id = w.webhook(run, "staging", &s).await;
    let deadline = std::time::Instant::now() + WAIT;
    let record = loop {
        if let Some(r) = w.audit("decision").first() {
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = json!({"error": {"code": "read_token_invalid", "message": "a valid read token is required"}});
    for path in [
        "/v1/audit".to_string(),
        format!("/v1/audit/{record}"),
        format!("/v1/requests/{id}"),
    ] {
        let (code, body) = w.app.get(&path).await;
        assert_eq!((code, &body), (401, &refused), "{path} without a token");
        let r = w
            .app
            .http
            .get(w.app.url(&path))
            .bearer_auth("wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
        let r = w
            .app
            .http
            .get(w.app.url(&path))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} with the read token");
    }
    let r = w
        .app
        .http
        .get(w.app.url(&format!("/v1/audit/{record}")))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    let decision: Value = r.json().await.unwrap();
    assert_eq!(
        (decision["event"].as_str(), decision["request"].as_str()),
        (Some("decision"), Some(id.as_str()))
    );
    let r = w
        .app
        .http
        .get(w.app.url(&format!("/v1/audit?request={id}")))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    let listed: Value = r.json().await.unwrap();
    assert!(
        listed["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == json!(record))
    );
    assert!(!w.app.logs().contains(READ_TOKEN));
}

// ----- SSO reviews through a real OpenID Provider ----------------------------------

/// npm oidc-provider with the authorization-code flow (`sso-provider.mjs`).
struct SsoProvider {
    _child: tokio::process::Child,
    port: u16,
}

impl SsoProvider {
    async fn start() -> SsoProvider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/node");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "run `npm install` in {}",
            dir.display()
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("sso-provider.mjs"))
            .arg("0")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(p) = line.strip_prefix("READY ") {
                    return p.trim().parse::<u16>().unwrap();
                }
            }
            panic!("sso-provider exited before it was ready");
        })
        .await
        .expect("sso-provider did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SsoProvider { _child: child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A browser: no automatic redirects, a cookie jar by name.
struct Browser {
    http: reqwest::Client,
    jar: BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Page {
    fn code(&self) -> Option<&str> {
        let start =
            self.body.find("name=\"portcullis-code\" content=\"")? + "name=\"portcullis-code\" content=\"".len();
        self.body[start..].split('"').next()
    }
    fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        self.body[start..]
            .split('"')
            .next()
            .map(|v| v.replace("&amp;", "&").replace("&quot;", "\""))
    }
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: BTreeMap::new(),
        }
    }

    fn cookie(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn absorb(&mut self, r: reqwest::Response) -> Page {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attrs.to_ascii_lowercase().contains("max-age=0") {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_string(), value.to_string());
            }
        }
        let status = r.status().as_u16();
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        Page {
            status,
            location,
            body: r.text().await.unwrap(),
        }
    }

    async fn get(&mut self, url: &str) -> Page {
        let r = self.http.get(url).header("cookie", self.cookie()).send().await.unwrap();
        self.absorb(r).await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .http
            .post(url)
            .header("cookie", self.cookie())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.absorb(r).await
    }
}

/// Signs in at the provider as `login` from the review link of `request`,
/// playing the login and consent pages; returns portcullis's callback page.
/// `tamper` may rewrite the authorization URL first.
async fn sign_in(w: &World, b: &mut Browser, request: &str, login: &str, tamper: impl Fn(String) -> String) -> Page {
    let issuer = w._sso.as_ref().unwrap().issuer();
    let start = b.get(&w.app.url(&format!("/reviews/{request}"))).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let mut next = tamper(start.location.unwrap());
    assert!(next.starts_with(&format!("{issuer}/auth?")), "{next}");
    for _ in 0..12 {
        if let Some(query) = next.strip_prefix(&format!("{PUBLIC_URL}/reviews/callback?")) {
            return b.get(&w.app.url(&format!("/reviews/callback?{query}"))).await;
        }
        let url = if next.starts_with('/') {
            format!("{issuer}{next}")
        } else {
            next.clone()
        };
        let page = b.get(&url).await;
        if (300..400).contains(&page.status) {
            next = page.location.unwrap();
            continue;
        }
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        let action = page
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        let action = if action.starts_with('/') {
            format!("{issuer}{action}")
        } else {
            action
        };
        let done = match page.field("prompt").as_deref() {
            Some("login") => {
                b.post(&action, &[("prompt", "login"), ("login", login), ("password", "any")])
                    .await
            }
            Some("consent") => b.post(&action, &[("prompt", "consent")]).await,
            other => panic!("an unexpected interaction {other:?}: {}", page.body),
        };
        assert!((300..400).contains(&done.status), "{}", done.body);
        next = done.location.unwrap();
    }
    panic!("the sign-in never came back to portcullis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_review_through_the_real_openid_provider_approves() {
    let w = world_with(Options {
        read_token: false,
        sso: true,
    })
    .await;
    let (run, s) = (9601, sha(9601));
    w.attest(run, &s).await;
    let id = w.webhook(run, "audited", &s).await;
    w.wait_codes(&id, &["reviews_missing"]).await;

    // The button is a link to the review page.
    let m = w
        .slack
        .wait_message(WAIT, "with the sign-in link", |m| !m.action_ids().is_empty())
        .await;
    assert_eq!(m.action_ids(), [ACTION_SSO]);
    assert_eq!(
        m.button(ACTION_SSO).unwrap()["url"],
        json!(format!("{PUBLIC_URL}/reviews/{id}"))
    );
    // A click on a link button is acknowledged and records nothing.
    let (code, _) = w.click("U0ALICE", ACTION_SSO, &id, "link").await;
    assert_eq!(code, 200);

    let mut b = Browser::new();
    let form = sign_in(&w, &mut b, &id, "alice@example.com", |u| u).await;
    assert_eq!((form.status, form.code()), (200, Some("review_form")), "{}", form.body);
    assert!(form.body.contains("Signed in as <strong>alice@example.com</strong>"));
    assert!(form.body.contains("Still missing: 0 of 1 required reviews."));
    let grant = form.field("grant").unwrap();

    // The form's POST without the CSRF cookie (another site) records nothing.
    let mut other = Browser::new();
    let forged = other
        .post(
            &w.app.url(&format!("/reviews/{id}")),
            &[("grant", &grant), ("decision", "approve")],
        )
        .await;
    assert_eq!((forged.status, forged.code()), (403, Some("csrf_invalid")));
    // Nor for another request.
    let wrong = b
        .post(
            &w.app.url("/reviews/req_other"),
            &[("grant", &grant), ("decision", "approve")],
        )
        .await;
    assert_eq!((wrong.status, wrong.code()), (403, Some("csrf_invalid")));
    assert!(w.audit("review_recorded").is_empty());

    let done = b
        .post(
            &w.app.url(&format!("/reviews/{id}")),
            &[("grant", &grant), ("decision", "approve")],
        )
        .await;
    assert_eq!(
        (done.status, done.code()),
        (200, Some("review_recorded")),
        "{}",
        done.body
    );
    assert!(
        done.body
            .contains("as alice@example.com (identity verified by sign-in)"),
        "{}",
        done.body
    );
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(req["reviews"][0]["via"], "sso");
    assert_eq!(req["reviews"][0]["aliases"], json!(["alice", "Alice Reviewer"]));
    assert_eq!(
        w.gh.wait_for_reviews(1, WAIT).await[0].body.as_ref().unwrap()["state"],
        "approved"
    );
    let recorded = w.audit("review_recorded");
    assert_eq!(
        recorded[0]["reviews"],
        json!([{"reviewer": "alice@example.com", "approve": true, "via": "sso"}])
    );
    // The review's log line (with the groups) is written once the review's
    // evaluation returns; the log is read from the process's stderr.
    let deadline = std::time::Instant::now() + WAIT;
    while !(w.app.logs().contains("deployers") && w.app.logs().contains("sre")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the groups are logged with the review; logs:\n{}",
            w.app.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Signing in again after the decision: the page says so.
    let late = Browser::new().get(&w.app.url(&format!("/reviews/{id}"))).await;
    assert_eq!((late.status, late.code()), (409, Some("already_decided")));
    assert!(
        late.body
            .contains("already decided (approved); your review changes nothing")
    );
    // Neither codes nor tokens nor the client secret reach the logs.
    assert!(!w.app.logs().contains(SSO_SECRET));
    assert!(!w.app.logs().contains("eyJ"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_a_nonce_mismatch_a_stranger_a_foreign_state_and_records_nothing() {
    let w = world_with(Options {
        read_token: false,
        sso: true,
    })
    .await;
    let (run, s) = (9701, sha(9701));
    w.attest(run, &s).await;
    let id = w.webhook(run, "audited", &s).await;
    w.wait_codes(&id, &["reviews_missing"]).await;

    // The authorization request's nonce is swapped on its way to the
    // provider: the ID token then carries a nonce this sign-in never sent.
    let swap_nonce = |u: String| {
        let mut url = url::Url::parse(&u).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    if k == "nonce" {
                        "an-injected-nonce".to_string()
                    } else {
                        v.to_string()
                    },
                )
            })
            .collect();
        assert!(pairs.iter().any(|(k, _)| k == "nonce") && pairs.iter().any(|(k, _)| k == "code_challenge"));
        assert!(pairs.contains(&("code_challenge_method".to_string(), "S256".to_string())));
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.to_string()
    };
    let page = sign_in(&w, &mut Browser::new(), &id, "alice@example.com", swap_nonce).await;
    assert_eq!(
        (page.status, page.code()),
        (401, Some("nonce_mismatch")),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("The identity token was not issued for this sign-in (nonce mismatch).")
    );
    assert!(page.body.contains("Nothing was recorded."));

    // A verified person who is not on the reviewer list.
    let page = sign_in(&w, &mut Browser::new(), &id, "mallory@example.com", |u| u).await;
    assert_eq!(
        (page.status, page.code()),
        (403, Some("not_a_reviewer")),
        "{}",
        page.body
    );
    assert!(page.body.contains("mallory@example.com is not a reviewer for audited."));
    assert!(page.field("grant").is_none(), "no form for a stranger");

    // An email the provider does not say it verified (false, or no
    // `email_verified` claim at all) is no reviewer identity.
    for who in ["unverified@example.com", "unsaid@example.com"] {
        let page = sign_in(&w, &mut Browser::new(), &id, who, |u| u).await;
        assert_eq!(
            (page.status, page.code()),
            (403, Some("email_unverified")),
            "{who}: {}",
            page.body
        );
        assert!(page.field("grant").is_none(), "no form for {who}");
    }

    // A callback whose state this browser never started (login CSRF).
    let mut b = Browser::new();
    let start = b.get(&w.app.url(&format!("/reviews/{id}"))).await;
    assert_eq!(start.status, 302);
    let page = Browser::new()
        .get(&w.app.url("/reviews/callback?code=abc&state=xyz"))
        .await;
    assert_eq!((page.status, page.code()), (400, Some("state_invalid")));
    let page = b
        .get(&w.app.url("/reviews/callback?code=abc&state=not-the-state"))
        .await;
    assert_eq!((page.status, page.code()), (400, Some("state_invalid")));
    // The provider refusing (the user cancelled).
    let page = b.get(&w.app.url("/reviews/callback?error=access_denied&state=x")).await;
    assert_eq!((page.status, page.code()), (400, Some("provider_refused")));

    // An environment reviewed in Slack has no sign-in page.
    let (run2, s2) = (9702, sha(9702));
    w.attest(run2, &s2).await;
    let slack_env = w.webhook(run2, "production", &s2).await;
    let page = Browser::new().get(&w.app.url(&format!("/reviews/{slack_env}"))).await;
    assert_eq!((page.status, page.code()), (400, Some("sso_reviews_not_enabled")));
    // And a Slack click on an SSO environment points to the sign-in.
    let (_, answer) = w.click("U0ALICE", ACTION_APPROVE, &id, "a").await;
    assert_eq!(
        text_of(&answer),
        format!("Reviews for audited are made by signing in: {PUBLIC_URL}/reviews/{id}")
    );

    assert!(w.audit("review_recorded").is_empty());
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "pending");
    assert!(
        w.app
            .logs()
            .contains("sso review refused: not a reviewer of the environment")
    );
}

// ----- the Slack client against the fake ------------------------------------------------

fn slack_config(mock: &SlackMock, token: &str) -> SlackConfig {
    SlackConfig {
        bot_token: Secret::new(token),
        signing_secret: Secret::new(SIGNING_SECRET),
        api_url: url::Url::parse(&mock.url()).unwrap(),
        team_id: Some(TEAM_ID.into()),
    }
}

#[tokio::test]
async fn only_members_of_the_configured_workspace_review() {
    let mock = SlackMock::start().await;
    mock.add_user("U0ALICE", "alice", Some("alice@example.com"), "Alice");
    let ours = SlackClient::new(&slack_config(&mock, BOT_TOKEN)).unwrap();
    let user = ours.user_info("U0ALICE").await.unwrap();
    assert_eq!(user.review_refusal(ours.team_id()), None);
    let mut config = slack_config(&mock, BOT_TOKEN);
    config.team_id = Some("T0ANOTHER".into());
    let theirs = SlackClient::new(&config).unwrap();
    assert_eq!(theirs.team_id(), Some("T0ANOTHER"));
    assert_eq!(
        user.review_refusal(theirs.team_id()),
        Some("a user of another workspace")
    );
    // Without a configured workspace the team is not checked.
    config.team_id = None;
    assert_eq!(user.review_refusal(SlackClient::new(&config).unwrap().team_id()), None);
}

fn blocks() -> Value {
    json!([{"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": "*hello*"}}])
}

#[tokio::test]
async fn the_client_posts_updates_links_and_looks_up_users_with_the_bot_token() {
    let mock = SlackMock::start().await;
    mock.add_user("U0ALICE", "alice", Some("alice@example.com"), "Alice");
    let client = SlackClient::new(&slack_config(&mock, BOT_TOKEN)).unwrap();

    let posted = client
        .post_message("#deploys-production", "hello", &blocks())
        .await
        .unwrap();
    assert_eq!(posted.channel, "C0PRODUCTION");
    client
        .update_message(&posted.channel, &posted.ts, "hello again", &blocks())
        .await
        .unwrap();
    let link = client.permalink(&posted.channel, &posted.ts).await.unwrap();
    assert_eq!(link, slack_mock::permalink("C0PRODUCTION", &posted.ts));
    let user = client.user_info("U0ALICE").await.unwrap();
    assert_eq!(
        user,
        SlackUser {
            id: "U0ALICE".into(),
            team_id: Some(TEAM_ID.into()),
            name: "alice".into(),
            real_name: Some("alice (test)".into()),
            display_name: Some("Alice".into()),
            email: Some("alice@example.com".into()),
            deleted: false,
            is_bot: false,
            is_restricted: false,
            is_ultra_restricted: false,
            is_stranger: false,
            is_email_confirmed: true,
        }
    );
    let calls = mock.calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.http_method.as_str(), c.method.as_str()))
            .collect::<Vec<_>>(),
        [
            ("POST", "chat.postMessage"),
            ("POST", "chat.update"),
            ("GET", "chat.getPermalink"),
            ("GET", "users.info")
        ]
    );
    assert!(
        calls
            .iter()
            .all(|c| c.header("authorization") == Some(&format!("Bearer {BOT_TOKEN}")))
    );
    assert_eq!(mock.messages()[0].history.len(), 2);
    assert_eq!(mock.problems(), Vec::<String>::new());

    // Slack's errors come back with Slack's code.
    assert_eq!(
        client.post_message("#nowhere", "x", &blocks()).await,
        Err(SlackError::Api("channel_not_found".into()))
    );
    assert_eq!(
        client.update_message("C0PRODUCTION", "1.2", "x", &blocks()).await,
        Err(SlackError::Api("message_not_found".into()))
    );
    assert_eq!(client.user_info("U0NOBODY").await.unwrap_err().code(), "user_not_found");
    let bad = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "x", "emoji": true}}]);
    assert_eq!(
        client.post_message("#deploys-production", "x", &bad).await,
        Err(SlackError::Api("invalid_blocks".into()))
    );
    let wrong = SlackClient::new(&slack_config(&mock, "xoxb-wrong")).unwrap();
    let err = wrong
        .post_message("#deploys-production", "x", &blocks())
        .await
        .unwrap_err();
    assert_eq!(err, SlackError::Api("invalid_auth".into()));
    assert!(!err.to_string().contains("xoxb"), "no token in errors: {err}");
}

#[tokio::test]
async fn the_client_honours_retry_after_within_bounds_and_times_out() {
    let mock = SlackMock::start().await;
    let client = SlackClient::with_timeout(&slack_config(&mock, BOT_TOKEN), Duration::from_millis(800))
        .unwrap()
        .with_max_retry_after(Duration::from_secs(2));

    // 429 then success: retried after Retry-After.
    mock.script("chat.postMessage", [Reply::rate_limited(1)]);
    let t = std::time::Instant::now();
    client
        .post_message("#deploys-production", "x", &blocks())
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        mock.calls_to("chat.postMessage")
            .iter()
            .map(|c| c.status)
            .collect::<Vec<_>>(),
        [429, 200]
    );

    // A Retry-After beyond the bound fails at once.
    mock.script("chat.postMessage", [Reply::rate_limited(120)]);
    let t = std::time::Instant::now();
    let err = client
        .post_message("#deploys-production", "x", &blocks())
        .await
        .unwrap_err();
    assert_eq!(err, SlackError::RateLimited(Some(Duration::from_secs(120))));
    assert!(t.elapsed() < Duration::from_secs(2), "no wait: {:?}", t.elapsed());

    // Still limited after every attempt.
    mock.script("chat.update", (0..3).map(|_| Reply::rate_limited(1)));
    let err = client
        .update_message("C0PRODUCTION", "1.1", "x", &blocks())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "rate_limited");
    assert_eq!(mock.calls_to("chat.update").len(), 3);

    // 5xx is retried; a slow answer times out.
    mock.script("users.info", [Reply::status(502)]);
    assert_eq!(
        client.user_info("U0X").await.unwrap_err(),
        SlackError::Api("user_not_found".into())
    );
    assert_eq!(
        mock.calls_to("users.info").iter().map(|c| c.status).collect::<Vec<_>>(),
        [502, 200]
    );
    mock.script("chat.getPermalink", [Reply::normal().delay(Duration::from_secs(3))]);
    let t = std::time::Instant::now();
    assert_eq!(
        client.permalink("C0PRODUCTION", "1.1").await,
        Err(SlackError::Timeout(Duration::from_millis(800)))
    );
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
}

// ----- the message, table-driven --------------------------------------------------------

fn config() -> Config {
    let text = r##"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example/"
[github]
app_id = 1
private_key = { env = "NOPE" }
webhook_secrets = [{ env = "NOPE" }]
[gitlab]
url = "https://gitlab.example.com"
token = { env = "NOPE" }
webhook_token = { env = "NOPE" }
[slack]
bot_token = { env = "NOPE" }
signing_secret = { env = "NOPE" }
[sso]
issuer = "https://login.example.com"
client_id = "portcullis"
[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
required = false
[environments.production.reviews]
required = 2
reviewers = ["alice@example.com", "bob@example.com", "octocat@example.com"]
[environments.production.slack]
channel = "#deploys-production"
[environments.selfok]
approvers = ["octocat"]
[environments.selfok.verdict]
required = false
[environments.selfok.reviews]
required = 1
reviewers = ["octocat@example.com"]
allow_self_review = true
[environments.sso]
approvers = ["octocat"]
[environments.sso.verdict]
required = false
[environments.sso.reviews]
required = 1
via = "sso"
reviewers = ["alice@example.com"]
[environments.plain]
approvers = ["octocat"]
[environments.plain.verdict]
required = false
"##;
    let key = test_app_private_key();
    Config::from_toml(text, &|name| match name {
        "NOPE" => Some(key.clone()),
        _ => None,
    })
    .expect("config")
}

fn request(platform: &str, environment: &str, decision: Option<Value>, status: &str) -> DeploymentRequest {
    let target = if platform == "github" {
        json!({"kind": "github", "owner": "octo-org", "repo": "payments", "run_id": 42, "callback_url": "https://api.github.com/x"})
    } else {
        json!({"kind": "gitlab", "project_id": 20, "deployment_id": 7})
    };
    let repository = if platform == "github" { REPO } else { "group/project" };
    serde_json::from_value(json!({
        "id": "req_0123456789abcdef01234567",
        "platform": platform,
        "repository": repository,
        "run": "42",
        "environment": environment,
        "sha": sha(42),
        "target": target,
        "delivery": "d-1",
        "received_at": "2026-01-01T00:00:00Z",
        "deadline": "2026-01-01T00:30:00Z",
        "status": status,
        "decision": decision,
        "run_attempt": {"number": 1, "actor": "octocat", "triggering_actor": "octocat", "read": true},
    }))
    .expect("a request")
}

fn pending(codes: &[&str]) -> Option<Value> {
    Some(
        json!({"outcome": "pending", "reasons": codes.iter().map(|c| json!({"code": c, "message": format!("{c} here")})).collect::<Vec<_>>()}),
    )
}

#[test]
fn review_buttons_appear_only_when_reviews_are_all_that_is_missing() {
    let config = config();
    let approved =
        Some(json!({"outcome": "approved", "reasons": [{"code": "reviews_satisfied", "message": "approved by a, b"}]}));
    let rejected = Some(
        json!({"outcome": "rejected", "reasons": [{"code": "verdict_denied", "message": "denied: 2 CVEs <script>"}]}),
    );
    struct Case {
        name: &'static str,
        env: &'static str,
        decision: Option<Value>,
        status: &'static str,
        buttons: &'static [&'static str],
        text: &'static str,
    }
    let case = |name, env, decision, status, buttons, text| Case {
        name,
        env,
        decision,
        status,
        buttons,
        text,
    };
    let both: &[&str] = &[ACTION_APPROVE, ACTION_REJECT];
    let cases = [
        case(
            "requested, not yet evaluated",
            "production",
            None,
            "pending",
            &[],
            ":inbox_tray: *Requested*",
        ),
        case(
            "the verdict is missing too",
            "production",
            pending(&["verdict_missing", "reviews_missing"]),
            "pending",
            &[],
            "*Still missing:*",
        ),
        case(
            "the attestation is missing too",
            "production",
            pending(&["attestation_missing", "reviews_missing"]),
            "pending",
            &[],
            "attestation_missing",
        ),
        case(
            "only reviews are missing",
            "production",
            pending(&["reviews_missing"]),
            "pending",
            both,
            "reviews_missing",
        ),
        case(
            "only reviews, via SSO",
            "sso",
            pending(&["reviews_missing"]),
            "pending",
            &[ACTION_SSO],
            "reviews_missing",
        ),
        case(
            "no reviews required",
            "plain",
            pending(&["verdict_missing"]),
            "pending",
            &[],
            "verdict_missing",
        ),
        case(
            "being decided",
            "production",
            approved.clone(),
            "deciding",
            &[],
            ":white_check_mark: *Approved*",
        ),
        case(
            "approved and answered",
            "production",
            approved,
            "done",
            &[],
            "*Why it was approved:*",
        ),
        case(
            "rejected",
            "production",
            rejected,
            "done",
            &[],
            "denied: 2 CVEs &lt;script&gt;",
        ),
        case(
            "decided on the platform",
            "production",
            pending(&["reviews_missing"]),
            "superseded",
            &[],
            "*Decided on the platform*",
        ),
    ];
    for Case {
        name,
        env,
        decision,
        status,
        buttons: want_buttons,
        text: want_text,
    } in cases
    {
        let req = request("github", env, decision, status);
        let policy = config.environment(env);
        let links = Links::of(&config, &req, |r| format!("https://portcullis.example/v1/audit/{r}"));
        let rendered = message::render(&req, policy, &links);
        slack_mock::check_blocks(&rendered.blocks).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(slack_mock::action_ids(&rendered.blocks), want_buttons, "{name}");
        assert_eq!(
            message::buttons_allowed(&req, policy),
            !want_buttons.is_empty(),
            "{name}"
        );
        let text = slack_mock::all_text(&rendered.blocks);
        assert!(text.contains(want_text), "{name}: {text}");
        assert!(
            text.contains("<https://github.com/octo-org/payments/actions/runs/42|GitHub run 42>"),
            "{name}: {text}"
        );
        assert!(
            text.contains("<https://portcullis.example/v1/requests/req_0123456789abcdef01234567|Request>"),
            "{name}"
        );
        assert!(
            rendered
                .text
                .starts_with(&format!("Deployment of {REPO} {} to {env}: ", &sha(42)[..12])),
            "{name}"
        );
    }
}

#[test]
fn gitlab_requests_get_the_same_message_with_the_pipeline_link_and_the_audit_link_once_decided() {
    let config = config();
    let mut req = request("gitlab", "production", pending(&["reviews_missing"]), "pending");
    let links = Links::of(&config, &req, |r| format!("https://portcullis.example/v1/audit/{r}"));
    assert_eq!(
        links.run.as_deref(),
        Some("https://gitlab.example.com/group/project/-/pipelines/42")
    );
    let rendered = message::render(&req, config.environment("production"), &links);
    assert_eq!(
        slack_mock::action_ids(&rendered.blocks),
        [ACTION_APPROVE, ACTION_REJECT]
    );
    assert!(slack_mock::all_text(&rendered.blocks).contains("|GitLab pipeline 42>"));

    req.status = serde_json::from_value(json!("done")).unwrap();
    req.decision = serde_json::from_value(json!({"outcome": "approved", "reasons": []})).unwrap();
    req.decision_record = Some("rec_1".into());
    let links = Links::of(&config, &req, |r| format!("https://portcullis.example/v1/audit/{r}"));
    assert_eq!(links.audit, "https://portcullis.example/v1/audit/rec_1");
    let text = slack_mock::all_text(&message::render(&req, config.environment("production"), &links).blocks);
    assert!(
        text.contains("<https://portcullis.example/v1/audit/rec_1|Audit record>"),
        "{text}"
    );
}

// ----- N of M and self-review, with Slack identities ----------------------------------------

fn slack_user(name: &str, email: Option<&str>, display: &str) -> SlackUser {
    SlackUser {
        id: format!("U0{}", name.to_uppercase()),
        team_id: Some(TEAM_ID.into()),
        name: name.into(),
        real_name: Some(format!("{name} Example")),
        display_name: (!display.is_empty()).then(|| display.to_string()),
        email: email.map(str::to_string),
        deleted: false,
        is_bot: false,
        is_restricted: false,
        is_ultra_restricted: false,
        is_stranger: false,
        is_email_confirmed: true,
    }
}

fn attestation(actor: &str) -> Attestation {
    serde_json::from_value(json!({
        "id": "att_1", "issuer_name": "ci", "issuer": "https://token.actions.githubusercontent.com", "platform": "github",
        "subject": "repo:octo-org/payments:environment:production", "actor": actor, "repository": REPO, "run": "42",
        "sha": sha(42), "claims": {}, "token_sha256": "0".repeat(64),
        "verified_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
    }))
    .expect("an attestation")
}

#[test]
fn slack_identities_map_to_reviews_the_engine_counts() {
    let at = time::OffsetDateTime::now_utc();
    // The mapping: email (lower-cased) is the reviewer; handle, display
    // name, real name and the email's local part are aliases.
    let octo = slack_user("octo", Some("OctoCat@Example.com"), "octocat");
    let review = interaction::review_of(&octo, true, at).unwrap();
    assert_eq!(review.reviewer, "octocat@example.com");
    assert_eq!(review.aliases, ["octo", "octocat", "octo Example"]);
    assert_eq!(review.via, "slack");
    assert!(
        interaction::review_of(&slack_user("ghost", None, ""), true, at).is_none(),
        "no email, no review"
    );

    let config = config();
    let users = BTreeMap::from([
        ("alice", slack_user("alice", Some("alice@example.com"), "Alice")),
        ("alice-again", slack_user("alice2", Some("ALICE@example.com"), "")),
        ("bob", slack_user("bob", Some("bob@example.com"), "")),
        ("octocat-by-handle", slack_user("octocat", Some("mona@example.com"), "")),
        (
            "octocat-by-display-name",
            slack_user("mona", Some("mona@example.com"), "octocat"),
        ),
        (
            "octocat-by-email",
            slack_user("mona", Some("octocat@example.com"), "Mona"),
        ),
        ("mallory", slack_user("mallory", Some("mallory@example.com"), "")),
    ]);
    struct Case {
        name: &'static str,
        env: &'static str,
        votes: &'static [(&'static str, bool)],
        outcome: Outcome,
        code: ReasonCode,
    }
    let cases = [
        Case {
            name: "none of two",
            env: "production",
            votes: &[],
            outcome: Outcome::Pending,
            code: ReasonCode::ReviewsMissing,
        },
        Case {
            name: "one of two",
            env: "production",
            votes: &[("alice", true)],
            outcome: Outcome::Pending,
            code: ReasonCode::ReviewsMissing,
        },
        Case {
            name: "two of two",
            env: "production",
            votes: &[("alice", true), ("bob", true)],
            outcome: Outcome::Approved,
            code: ReasonCode::ReviewsSatisfied,
        },
        Case {
            name: "the same email twice is one",
            env: "production",
            votes: &[("alice", true), ("alice-again", true)],
            outcome: Outcome::Pending,
            code: ReasonCode::ReviewsMissing,
        },
        Case {
            name: "a stranger does not count",
            env: "production",
            votes: &[("alice", true), ("mallory", true)],
            outcome: Outcome::Pending,
            code: ReasonCode::ReviewsMissing,
        },
        Case {
            name: "a stranger's rejection does not count",
            env: "production",
            votes: &[("alice", true), ("bob", true), ("mallory", false)],
            outcome: Outcome::Approved,
            code: ReasonCode::ReviewsSatisfied,
        },
        Case {
            name: "any rejection rejects",
            env: "production",
            votes: &[("alice", true), ("bob", false)],
            outcome: Outcome::Rejected,
            code: ReasonCode::ReviewRejected,
        },
        Case {
            name: "self-review by email",
            env: "production",
            votes: &[("alice", true), ("octocat-by-email", true)],
            outcome: Outcome::Pending,
            code: ReasonCode::ReviewsMissing,
        },
        Case {
            name: "self-review allowed",
            env: "selfok",
            votes: &[("octocat-by-email", true)],
            outcome: Outcome::Approved,
            code: ReasonCode::ReviewsSatisfied,
        },
    ];
    let att = attestation("octocat");
    for c in &cases {
        let mut req = request("github", c.env, None, "pending");
        req.deadline = at + time::Duration::hours(1);
        let reviews: Vec<_> = c
            .votes
            .iter()
            .map(|(who, approve)| interaction::review_of(&users[who], *approve, at).unwrap())
            .collect();
        let d = decision::evaluate(&Inputs {
            policy: config.environment(c.env),
            request: &req,
            attestation: Some(&att),
            verdict: None,
            reviews: &reviews,
            break_glass: &[],
            now: at,
        });
        assert_eq!(d.outcome, c.outcome, "{}: {:?}", c.name, d.reasons);
        assert!(d.codes().contains(&c.code), "{}: {:?}", c.name, d.reasons);
    }
    // Self-review is recognised by handle, display name and email local part
    // (the alias mapping), not only by the email itself.
    for who in ["octocat-by-handle", "octocat-by-display-name", "octocat-by-email"] {
        let review = interaction::review_of(&users[who], true, at).unwrap();
        assert!(
            review.aliases.iter().any(|a| a.eq_ignore_ascii_case("octocat")),
            "{who}: {:?}",
            review.aliases
        );
    }
}

// ----- GitLab: the same gating ---------------------------------------------------------

const GL_PROJECT_ID: u64 = 4711;
const GL_PROJECT: &str = "platform/payments-api";
const GL_TOKEN: &str = "glpat-test-only-0123456789";
const GL_HOOK_TOKEN: &str = "test-only-hook-token";

fn gitlab_fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/gitlab/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_deployment_goes_through_the_same_slack_reviews() {
    let oidc = OidcProvider::start().await;
    let gl = crate::support::gitlab_mock::GitlabMock::start(GL_TOKEN).await;
    gl.add_project(GL_PROJECT_ID, GL_PROJECT);
    let slack = SlackMock::start().await;
    slack.add_user("U0ALICE", "alice", Some("alice@example.com"), "Alice");
    slack.add_user("U0BOB", "bob", Some("bob@example.com"), "Bob");
    let config = format!(
        r##"
[server]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"

[audit]
path = "{{dir}}/audit.jsonl"

[gitlab]
url = "{gl}"
token = {{ env = "GL_TOKEN" }}
webhook_token = {{ env = "GL_HOOK_TOKEN" }}
request_timeout = "2s"

[slack]
bot_token = {{ env = "SLACK_BOT_TOKEN" }}
signing_secret = {{ env = "SLACK_SIGNING_SECRET" }}
api_url = "{slack}"

[[issuers]]
name = "gitlab"
kind = "gitlab"
issuer = "{issuer}"
audience = "portcullis"

[environments.production]
approvers = ["alice"]
[environments.production.verdict]
required = false
[environments.production.reviews]
required = 1
reviewers = ["alice@example.com", "bob@example.com"]
[environments.production.slack]
channel = "#deploys-production"
"##,
        gl = gl.url(),
        slack = slack.url(),
        issuer = oidc.issuer(),
    );
    let app = App::start(
        &config,
        &[
            ("GL_TOKEN", GL_TOKEN),
            ("GL_HOOK_TOKEN", GL_HOOK_TOKEN),
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ],
    )
    .await;

    // A pipeline of `alice` (GitLab `user_login`) asks to deploy.
    let (dep, pipeline, s) = (2101_u64, 53101_u64, sha(2101));
    let mut claims = crate::support::oidc::gitlab_claims(&s);
    claims["project_path"] = json!(GL_PROJECT);
    claims["project_id"] = json!(GL_PROJECT_ID.to_string());
    claims["pipeline_id"] = json!(pipeline.to_string());
    let token = oidc.mint("portcullis", claims).await;
    assert_eq!(app.post_bearer("/v1/attestations", &token, None).await.0, 201);
    let mut api = gitlab_fixture("api.deployment.json");
    api["id"] = json!(dep);
    api["sha"] = json!(s);
    api["environment"]["name"] = json!("production");
    api["deployable"]["id"] = json!(dep + 100_000);
    api["deployable"]["pipeline"]["id"] = json!(pipeline);
    api["deployable"]["pipeline"]["sha"] = json!(s);
    // The pipeline's user (as in the CI token) started the deploy job.
    api["user"]["username"] = json!("alice");
    gl.add_deployment(GL_PROJECT_ID, api);
    let mut hook = gitlab_fixture("deployment.blocked.json");
    hook["deployment_id"] = json!(dep);
    hook["deployable_id"] = json!(dep + 100_000);
    hook["environment"] = json!("production");
    hook["short_sha"] = json!(&s[..8]);
    let r = app
        .http
        .post(app.url("/webhooks/gitlab"))
        .header("content-type", "application/json")
        .header("x-gitlab-event", "Deployment Hook")
        .header("x-gitlab-token", GL_HOOK_TOKEN)
        .header("idempotency-key", "idem-2101")
        .body(serde_json::to_vec(&hook).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["request"]
        .as_str()
        .unwrap()
        .to_string();

    // The same message, with the pipeline's link and the buttons once only
    // reviews are missing.
    let m = slack
        .wait_message(WAIT, "with buttons", |m| !m.action_ids().is_empty())
        .await;
    assert_eq!(m.action_ids(), [ACTION_APPROVE, ACTION_REJECT]);
    let pipeline_link = format!(
        "<{}/{GL_PROJECT}/-/pipelines/{pipeline}|GitLab pipeline {pipeline}>",
        gl.url().trim_end_matches('/')
    );
    assert!(m.all_text().contains(&pipeline_link), "{}", m.all_text());

    let click = |user: &str| {
        let body = click_payload(user, ACTION_APPROVE, &id, &slack.response_url(user));
        let sig = portcullis::slack::signature::sign(SIGNING_SECRET.as_bytes(), now(), &body);
        app.http
            .post(app.url("/webhooks/slack"))
            .header("x-slack-request-timestamp", now().to_string())
            .header("x-slack-signature", sig)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // alice triggered it: her approval (alias `alice`) does not count.
    let answer: Value = click("U0ALICE").await.unwrap().json().await.unwrap();
    assert!(
        text_of(&answer).contains("It does not count: you triggered this deployment"),
        "{answer}"
    );
    assert!(gl.approvals().is_empty());
    // bob's does: approved through GitLab's approval API.
    let answer: Value = click("U0BOB").await.unwrap().json().await.unwrap();
    assert!(text_of(&answer).ends_with("The deployment is approved."), "{answer}");
    let approvals = gl.wait_for_approvals(1, WAIT).await;
    assert_eq!(
        (approvals[0].deployment_id, approvals[0].status.as_str()),
        (dep, "approved")
    );
    let req = app.wait_request(&id, "done", WAIT).await;
    let audit_url = format!("{PUBLIC_URL}/v1/audit/{}", req["decision_record"].as_str().unwrap());
    slack
        .wait_message(WAIT, "approved, linked to the audit", |m| {
            m.all_text().contains(&audit_url)
        })
        .await;
    let decision = app
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "decision")
        .unwrap();
    assert_eq!(decision["slack"]["ts"], json!(m.ts));
    assert_eq!(slack.problems(), Vec::<String>::new());
}
