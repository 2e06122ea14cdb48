//! Break glass end to end, through the binary: GitHub and GitLab requests,
//! CI tokens from a real OpenID Provider, recording GitHub and GitLab API
//! mocks, and the strict Slack fake, whose buttons and modals are clicked
//! and submitted with signed interactivity payloads as Slack sends them.

use std::time::Duration;

use crate::support::app::{App, Run, WEBHOOK_SECRET};
use crate::support::github_mock::{GithubMock, TEST_APP_ID, review_path, test_app_private_key};
use crate::support::gitlab_mock::GitlabMock;
use crate::support::oidc::{OidcProvider, github_claims, gitlab_claims};
use crate::support::slack_mock::{BOT_TOKEN, Message, SIGNING_SECRET, SlackMock, TEAM_ID};
use portcullis::slack::break_glass::{ACTION_BREAK_GLASS, ACTION_CONFIRM, ACTION_REVIEW};
use serde_json::{Value, json};

const REPO: &str = "octo-org/payments";
const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";
const GL_PROJECT_ID: u64 = 4711;
const GL_PROJECT: &str = "platform/payments-api";
const GL_TOKEN: &str = "glpat-test-only-0123456789";
const GL_HOOK_TOKEN: &str = "test-only-hook-token";
const PARENT: &str = "gitlab.example.com/platform/compliance//parent.gitlab-ci.yml@refs/heads/main";
const WAIT: Duration = Duration::from_secs(20);
const JUSTIFICATION: &str = "payments API is down for every EU customer; the fix must ship now";

pub(crate) struct World {
    pub(crate) oidc: OidcProvider,
    /// The GitLab instance's issuer.
    pub(crate) oidc_gl: OidcProvider,
    pub(crate) gh: GithubMock,
    pub(crate) gl: GitlabMock,
    pub(crate) slack: SlackMock,
    pub(crate) app: App,
}

/// The break-glass settings of the test environments: `production` (GitHub
/// and GitLab, reviews and a verdict required) and `short` (a two-second
/// window).
fn environments() -> String {
    let bg = |window: &str| {
        format!(
            r##"requesters = ["oncall-lead@example.com"]
confirmers = ["secops@example.com", "cto@example.com"]
confirmations = 1
via = "slack"
window = "{window}"
alert_channel = "#security-alerts"
review_within = "3s""##
        )
    };
    format!(
        r##"
[environments.production]
approvers = ["octocat", "alice"]
pending_timeout = "30m"
[environments.production.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}, {{ ci_config_ref_uri = "{PARENT}" }}]
[environments.production.reviews]
required = 1
via = "slack"
reviewers = ["alice@example.com"]
[environments.production.slack]
channel = "#deploys-production"
[environments.production.break_glass]
{}

[environments.short]
approvers = ["octocat"]
pending_timeout = "30m"
[environments.short.verdict]
max_age = "24h"
producers = [{{ job_workflow_ref = "{GATE_WORKFLOW}" }}]
[environments.short.slack]
channel = "#deploys-staging"
[environments.short.break_glass]
{}
"##,
        bg("1h"),
        bg("2s")
    )
}

pub(crate) async fn world(run: Run) -> World {
    let oidc = OidcProvider::start().await;
    let oidc_gl = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    let gl = GitlabMock::start(GL_TOKEN).await;
    gl.add_project(GL_PROJECT_ID, GL_PROJECT);
    let slack = SlackMock::start().await;
    slack.add_channel("#security-alerts", "C0SECURITY");
    for (id, name, email) in [
        ("U0LEAD", "oncall-lead", "oncall-lead@example.com"),
        ("U0SECOPS", "secops", "secops@example.com"),
        ("U0CTO", "cto", "cto@example.com"),
        ("U0MALLORY", "mallory", "mallory@example.com"),
        ("U0ALICE", "alice", "alice@example.com"),
    ] {
        slack.add_user(id, name, Some(email), name);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r##"
[server]
listen = "127.0.0.1:0"
public_url = "https://portcullis.example"
shutdown_timeout = "5s"

[audit]
path = "{{dir}}/audit.jsonl"

[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "2s"
issuer = "ci"

[gitlab]
url = "{gl}"
token = {{ env = "GL_TOKEN" }}
webhook_token = {{ env = "GL_HOOK_TOKEN" }}
request_timeout = "2s"
issuer = "gitlab"

[slack]
bot_token = {{ env = "SLACK_BOT_TOKEN" }}
signing_secret = {{ env = "SLACK_SIGNING_SECRET" }}
api_url = "{slack}"
team_id = "{TEAM_ID}"

[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"

[[issuers]]
name = "gitlab"
kind = "gitlab"
issuer = "{issuer_gl}"
audience = "portcullis"
{envs}
"##,
        api = gh.url(),
        gl = gl.url(),
        slack = slack.url(),
        issuer = oidc.issuer(),
        issuer_gl = oidc_gl.issuer(),
        envs = environments(),
    );
    let app = App::launch_in(
        run,
        dir,
        &config,
        &[
            ("GH_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("GL_TOKEN", GL_TOKEN),
            ("GL_HOOK_TOKEN", GL_HOOK_TOKEN),
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ],
    )
    .await;
    World {
        oidc,
        oidc_gl,
        gh,
        gl,
        slack,
        app,
    }
}

pub(crate) fn sha(n: u64) -> String {
    format!("{n:040x}")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn codes(request: &Value) -> Vec<String> {
    request["decision"]["reasons"]
        .as_array()
        .map(|a| a.iter().map(|r| r["code"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

fn form(payload: &Value) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

fn user(id: &str) -> Value {
    json!({ "id": id, "username": id.to_lowercase(), "name": id.to_lowercase(), "team_id": TEAM_ID })
}

impl World {
    pub(crate) async fn attest_github(&self, run: u64, sha: &str, actor: &str) {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["run_id"] = json!(run.to_string());
        c["actor"] = json!(actor);
        let token = self.oidc.mint("portcullis", c).await;
        let (code, body) = self.app.post_bearer("/v1/attestations", &token, None).await;
        assert_eq!(code, 201, "{body}");
    }

    pub(crate) async fn github_request(&self, run: u64, environment: &str, sha: &str) -> String {
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
            .post_webhook("deployment_protection_rule", &format!("bg-{run}-{environment}"), &body)
            .await;
        assert_eq!(code, 202, "{answer}");
        answer["request"].as_str().unwrap().to_string()
    }

    /// A `blocked` deployment hook for deployment `dep` of `pipeline`
    /// (registered at the GitLab mock first); returns the request id.
    pub(crate) async fn gitlab_blocked(&self, dep: u64, pipeline: u64, environment: &str, sha: &str) -> String {
        let fixture = |name: &str| -> Value {
            let path = format!("{}/tests/fixtures/gitlab/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let mut api = fixture("api.deployment.json");
        api["id"] = json!(dep);
        api["sha"] = json!(sha);
        api["environment"]["name"] = json!(environment);
        api["deployable"]["id"] = json!(dep + 100_000);
        api["deployable"]["pipeline"]["id"] = json!(pipeline);
        api["deployable"]["pipeline"]["sha"] = json!(sha);
        api["user"]["username"] = json!("alice");
        api["deployable"]["user"]["username"] = json!("alice");
        self.gl.add_deployment(GL_PROJECT_ID, api);
        let mut hook = fixture("deployment.blocked.json");
        hook["deployment_id"] = json!(dep);
        hook["deployable_id"] = json!(dep + 100_000);
        hook["environment"] = json!(environment);
        hook["short_sha"] = json!(&sha[..8]);
        let r = self
            .app
            .http
            .post(self.app.url("/webhooks/gitlab"))
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Deployment Hook")
            .header("x-gitlab-token", GL_HOOK_TOKEN)
            .header("idempotency-key", format!("bg-{dep}"))
            .body(serde_json::to_vec(&hook).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let body: Value = r.json().await.unwrap();
        body["request"].as_str().unwrap().to_string()
    }

    pub(crate) async fn wait_codes(&self, id: &str, want: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, req) = self.app.get(&format!("/v1/requests/{id}")).await;
            if codes(&req) == want {
                return req;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {want:?}: {req}\nlogs:\n{}",
                self.app.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn interact(&self, payload: &Value) -> (u16, Value) {
        let body = form(payload);
        let at = now();
        let sig = portcullis::slack::signature::sign(SIGNING_SECRET.as_bytes(), at, &body);
        let r = self
            .app
            .http
            .post(self.app.url("/webhooks/slack"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", at.to_string())
            .header("x-slack-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A signed click of button `action` (value `value`) by `who`, with a
    /// fresh trigger_id issued by the fake.
    pub(crate) async fn click(&self, who: &str, action: &str, value: &str, tag: &str) -> (u16, Value) {
        let payload = json!({
            "type": "block_actions",
            "user": user(who),
            "api_app_id": "A0PORTCULLIS",
            "token": "legacy-verification-token-not-used",
            "container": { "type": "message", "message_ts": "1700000000.000001", "channel_id": "C0SECURITY", "is_ephemeral": false },
            "trigger_id": self.slack.issue_trigger(),
            "team": { "id": TEAM_ID, "domain": "portcullis-test" },
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": { "id": "C0SECURITY", "name": "security-alerts" },
            "message": { "type": "message", "ts": "1700000000.000001", "text": "Break glass", "blocks": [] },
            "state": { "values": {} },
            "response_url": self.slack.response_url(tag),
            "actions": [{
                "action_id": action, "block_id": "actions", "value": value, "type": "button",
                "text": { "type": "plain_text", "text": "Button", "emoji": true }, "action_ts": "1700000001.000200"
            }]
        });
        self.interact(&payload).await
    }

    /// Submits `view` (as the fake opened it) by `who`, its one input set to `value`.
    pub(crate) async fn submit(&self, who: &str, view: &Value, value: &str) -> (u16, Value) {
        let input = view["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "input")
            .unwrap();
        let block = input["block_id"].as_str().unwrap();
        let action = input["element"]["action_id"].as_str().unwrap();
        let mut values = json!({});
        values[block] = json!({ action: { "type": "plain_text_input", "value": value } });
        let payload = json!({
            "type": "view_submission",
            "team": { "id": TEAM_ID, "domain": "portcullis-test" },
            "user": user(who),
            "api_app_id": "A0PORTCULLIS",
            "token": "legacy-verification-token-not-used",
            "trigger_id": self.slack.issue_trigger(),
            "view": {
                "id": "V00000001", "team_id": TEAM_ID, "type": "modal", "blocks": view["blocks"],
                "private_metadata": view["private_metadata"], "callback_id": view["callback_id"],
                "state": { "values": values }, "hash": "1700000002.abcdef",
                "title": view["title"], "clear_on_close": false, "notify_on_close": false,
                "close": view["close"], "submit": view["submit"], "previous_view_id": null,
                "root_view_id": "V00000001", "app_id": "A0PORTCULLIS", "external_id": "", "app_installed_team_id": TEAM_ID,
                "bot_id": "B0PORTCULLIS"
            },
            "response_urls": [],
            "is_enterprise_install": false,
            "enterprise": null
        });
        self.interact(&payload).await
    }

    /// The alert channel's messages, oldest first.
    pub(crate) fn alerts(&self) -> Vec<Message> {
        let mut m: Vec<Message> = self
            .slack
            .messages()
            .into_iter()
            .filter(|m| m.channel == "C0SECURITY")
            .collect();
        m.sort_by(|a, b| a.ts.cmp(&b.ts));
        m
    }

    pub(crate) async fn wait_alert(&self, what: &str) -> Message {
        self.slack
            .wait_message(WAIT, what, |m| m.channel == "C0SECURITY" && m.all_text().contains(what))
            .await
    }

    pub(crate) fn audit(&self, event: &str) -> Vec<Value> {
        self.app
            .audit_records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// Asks for a grant on request `id`'s message as `who`: the button, the
    /// modal, its submission. Returns the submission's answer.
    pub(crate) async fn ask(&self, who: &str, id: &str, justification: &str) -> (u16, Value) {
        let opened = self.slack.views().len();
        let (code, answer) = self.click(who, ACTION_BREAK_GLASS, id, "ask").await;
        assert_eq!(
            (code, &answer),
            (200, &Value::String(String::new())),
            "the click opens a modal"
        );
        let views = self.slack.views();
        assert_eq!(views.len(), opened + 1, "views.open was called once");
        let view = views.last().unwrap().clone();
        assert_eq!(view["callback_id"], "portcullis_break_glass_ask");
        assert_eq!(view["private_metadata"], json!(id));
        self.submit(who, &view, justification).await
    }

    /// The id of the grant the latest ask alert is about.
    pub(crate) fn grant_of(&self, alert: &Message) -> String {
        alert.button(ACTION_CONFIRM).expect("a Confirm button")["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) async fn metric(&self, line: &str) -> String {
        let text = self.app.metrics_text().await;
        text.lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no `{line}` in the metrics:\n{text}"))
            .to_string()
    }
}

fn ephemeral(answer: &Value) -> String {
    assert_eq!(answer["response_type"], "ephemeral", "{answer}");
    answer["text"].as_str().unwrap_or_default().to_string()
}

fn errors(answer: &Value, block: &str) -> String {
    assert_eq!(answer["response_action"], "errors", "{answer}");
    answer["errors"][block].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_github_request_is_approved_under_break_glass_then_reviewed_after_it_fell_overdue() {
    let w = world(Run::Binary).await;
    let (run, s) = (8101, sha(8101));
    w.attest_github(run, &s, "octocat").await;
    let id = w.github_request(run, "production", &s).await;
    w.wait_codes(&id, &["verdict_missing", "reviews_missing"]).await;

    // The pending message offers "Break glass…".
    let m = w
        .slack
        .wait_message(WAIT, "with Break glass", |m| m.button(ACTION_BREAK_GLASS).is_some())
        .await;
    assert_eq!(m.button(ACTION_BREAK_GLASS).unwrap()["value"], json!(id));

    // Too short a justification, and a person who may not ask: the modal
    // stays open with the reason, and nothing is recorded.
    let (code, answer) = w.ask("U0LEAD", &id, "it is down").await;
    assert_eq!(code, 200);
    assert_eq!(
        errors(&answer, "justification"),
        "a justification of at least 20 characters is required (this one has 10); nothing was recorded."
    );
    let (_, answer) = w.ask("U0MALLORY", &id, JUSTIFICATION).await;
    assert_eq!(
        errors(&answer, "justification"),
        "mallory@example.com may not ask for break glass on production; nothing was recorded."
    );
    assert!(w.audit("break_glass_requested").is_empty());

    // The requester asks: the modal closes and the alert channel hears it.
    let (code, answer) = w.ask("U0LEAD", &id, JUSTIFICATION).await;
    assert_eq!((code, answer), (200, Value::String(String::new())));
    let asked = w.wait_alert("Break glass asked for").await;
    let grant = w.grant_of(&asked);
    assert!(asked.all_text().contains(JUSTIFICATION), "{}", asked.all_text());
    assert!(
        asked
            .all_text()
            .contains("asked by oncall-lead@example.com (via slack)")
    );

    // The requester cannot confirm their own grant; a stranger cannot either.
    let (_, answer) = w.click("U0LEAD", ACTION_CONFIRM, &grant, "self").await;
    assert_eq!(
        ephemeral(&answer),
        "oncall-lead@example.com asked for this grant and cannot confirm or review it; nothing was recorded."
    );
    let (_, answer) = w.click("U0MALLORY", ACTION_CONFIRM, &grant, "stranger").await;
    assert_eq!(
        ephemeral(&answer),
        "mallory@example.com is not a break-glass confirmer of production; nothing was recorded."
    );
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "pending");
    assert!(w.audit("break_glass_confirmed").is_empty());

    // A confirmer confirms: the pending request is approved at once.
    let (_, answer) = w.click("U0SECOPS", ACTION_CONFIRM, &grant, "secops").await;
    let reply = ephemeral(&answer);
    assert!(
        reply.starts_with(&format!(
            "Recorded your confirmation of grant {grant}, as secops@example.com (identity verified through Slack). The grant is active until"
        )),
        "{reply}"
    );
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(codes(&req), ["attestation_verified", "actor_approved", "break_glass"]);
    let calls = w.gh.wait_for_reviews(1, WAIT).await;
    assert_eq!(calls[0].path, review_path("octo-org", "payments", run));
    let body = calls[0].body.clone().unwrap();
    assert_eq!(body["state"], "approved");
    let comment = body["comment"].as_str().unwrap();
    for needle in [
        "break_glass",
        &format!("grant {grant}"),
        JUSTIFICATION,
        "oncall-lead@example.com",
        "secops@example.com",
    ] {
        assert!(comment.contains(needle), "the comment names {needle}: {comment}");
    }

    // Loud: asked, confirmed, used.
    w.wait_alert("Break glass confirmed").await;
    let used = w.wait_alert("Break glass used").await;
    assert!(used.all_text().contains(&format!("Approved request `{id}`")));
    assert!(used.button(ACTION_REVIEW).is_some());
    // The ask's message no longer offers Confirm.
    let ask_now = w.alerts().into_iter().find(|m| m.ts == asked.ts).unwrap();
    assert!(ask_now.button(ACTION_CONFIRM).is_none(), "{:?}", ask_now.blocks);
    // The request's own message shows the grant.
    w.slack
        .wait_message(WAIT, "showing the grant", |m| {
            m.channel == "C0PRODUCTION" && m.all_text().contains(&format!("Break glass `{grant}` (confirmed"))
        })
        .await;

    // Not reviewed within review_within (3 s): listed, overdue, counted, reminded.
    let deadline = std::time::Instant::now() + WAIT;
    let listed = loop {
        let (code, body) = w.app.get("/v1/break-glass?unreviewed=true").await;
        assert_eq!(code, 200, "{body}");
        if body["grants"][0]["overdue"] == true {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "never overdue: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let grants = listed["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{listed}");
    assert_eq!(
        (
            grants[0]["id"].as_str(),
            grants[0]["used"].as_bool(),
            grants[0]["justification"].as_str()
        ),
        (Some(grant.as_str()), Some(true), Some(JUSTIFICATION))
    );
    assert_eq!(
        w.metric("portcullis_break_glass_reviews_overdue ").await,
        "portcullis_break_glass_reviews_overdue 1"
    );
    let reminder = w.wait_alert("Break glass review overdue").await;
    assert!(reminder.all_text().contains("review OVERDUE"));

    // A confirmer reviews it with notes, through the Review button's modal.
    let (code, answer) = w.click("U0CTO", ACTION_REVIEW, &grant, "review").await;
    assert_eq!((code, answer), (200, Value::String(String::new())));
    let view = w.slack.views().last().unwrap().clone();
    assert_eq!(view["callback_id"], "portcullis_break_glass_review");
    assert_eq!(view["private_metadata"], json!(grant));
    let notes = "hotfix 1.4.2 only; the verdict job was down, rerun since and green";
    let (code, answer) = w.submit("U0CTO", &view, notes).await;
    assert_eq!((code, answer), (200, Value::String(String::new())));
    let (_, body) = w.app.get("/v1/break-glass?unreviewed=true").await;
    assert_eq!(body["grants"], json!([]));
    assert_eq!(
        w.metric("portcullis_break_glass_reviews_overdue ").await,
        "portcullis_break_glass_reviews_overdue 0"
    );
    w.wait_alert("Break glass reviewed").await;

    // The audit chain holds each step, naming the people and how each was verified.
    let requested = w.audit("break_glass_requested");
    assert_eq!(requested.len(), 1);
    let r = &requested[0];
    assert_eq!(
        (
            r["actor"].as_str(),
            r["sha"].as_str(),
            r["environment"].as_str(),
            r["repository"].as_str()
        ),
        (
            Some("oncall-lead@example.com"),
            Some(s.as_str()),
            Some("production"),
            Some(REPO)
        )
    );
    assert_eq!(r["detail"]["grant"], json!(grant));
    assert_eq!(r["detail"]["justification"], JUSTIFICATION);
    assert_eq!(r["detail"]["by"]["via"], "slack");
    assert!(
        r["detail"]["by"]["verified"]
            .as_str()
            .unwrap()
            .starts_with("Slack users.info: user U0LEAD (@oncall-lead) of workspace T0PORTCULLIS"),
        "{r}"
    );
    let confirmed = w.audit("break_glass_confirmed");
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0]["actor"], "secops@example.com");
    assert_eq!(confirmed[0]["detail"]["state"], "confirmed");
    assert!(
        confirmed[0]["detail"]["by"]["verified"]
            .as_str()
            .unwrap()
            .contains("U0SECOPS")
    );
    let used = w.audit("break_glass_used");
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["request"], json!(id));
    assert_eq!(used[0]["detail"]["decision_record"], req["decision_record"]);
    let reviewed = w.audit("break_glass_reviewed");
    assert_eq!(reviewed.len(), 1);
    assert_eq!(
        (reviewed[0]["actor"].as_str(), reviewed[0]["detail"]["notes"].as_str()),
        (Some("cto@example.com"), Some(notes))
    );
    // The use is audited after the decision and before the platform's answer.
    let events: Vec<String> = w
        .app
        .audit_records()
        .into_iter()
        .filter(|r| r["request"] == json!(id) || r["detail"]["grant"] == json!(grant))
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    let pos = |e: &str| events.iter().position(|x| x == e).unwrap();
    assert!(pos("break_glass_confirmed") < pos("decision"), "{events:?}");
    assert!(pos("decision") < pos("break_glass_used"), "{events:?}");
    assert!(pos("break_glass_used") < pos("platform_result"), "{events:?}");

    assert_eq!(w.slack.problems(), Vec::<String>::new());
    let out = w.app.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!w.app.logs().contains(BOT_TOKEN) && !w.app.logs().contains(SIGNING_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_one_to_five_hold_under_a_grant_and_an_expired_grant_waives_nothing() {
    let w = world(Run::Binary).await;
    let s = sha(8201);
    // A pending request on `short` (two-second window) gets a grant.
    w.attest_github(8201, &s, "octocat").await;
    let first = w.github_request(8201, "short", &s).await;
    w.wait_codes(&first, &["verdict_missing"]).await;
    let (_, answer) = w.ask("U0LEAD", &first, JUSTIFICATION).await;
    assert_eq!(answer, Value::String(String::new()));
    let asked = w.wait_alert("Break glass asked for").await;
    let grant = w.grant_of(&asked);
    let (_, answer) = w.click("U0CTO", ACTION_CONFIRM, &grant, "cto").await;
    assert!(ephemeral(&answer).contains("The grant is active until"));
    let req = w.app.wait_request(&first, "done", WAIT).await;
    assert_eq!(codes(&req), ["attestation_verified", "actor_approved", "break_glass"]);

    // Within the window, a non-approver's run of the same commit is still
    // rejected (rule 5), and an approver's new run is approved when it comes.
    w.attest_github(8202, &s, "mallory").await;
    let mallory = w.github_request(8202, "short", &s).await;
    let req = w.app.wait_request(&mallory, "done", WAIT).await;
    assert_eq!(req["decision"]["outcome"], "rejected");
    assert_eq!(codes(&req), ["actor_not_approver"]);

    // Past the window the grant expires, loudly, and waives nothing.
    w.wait_alert("Break glass expired").await;
    let expired = w.audit("break_glass_expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["detail"]["grant"], json!(grant));
    w.attest_github(8203, &s, "octocat").await;
    let late = w.github_request(8203, "short", &s).await;
    let req = w.wait_codes(&late, &["verdict_missing"]).await;
    assert_eq!(req["status"], "pending");
    // A new grant can be asked for once the old one expired.
    let m = w
        .slack
        .wait_message(WAIT, "offering break glass again", |m| {
            m.channel == "C0STAGING" && m.all_text().contains(&late[..12])
                || m.button(ACTION_BREAK_GLASS).is_some_and(|b| b["value"] == json!(late))
        })
        .await;
    assert!(m.button(ACTION_BREAK_GLASS).is_some());
    assert_eq!(w.audit("break_glass_used").len(), 1, "only the first request used it");
    assert_eq!(w.slack.problems(), Vec::<String>::new());
    assert!(w.app.cli(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_gitlab_deployment_is_approved_under_break_glass() {
    let w = world(Run::Binary).await;
    let (dep, pipeline, s) = (3101, 63101, sha(3101));
    let mut c = gitlab_claims(&s);
    c["project_path"] = json!(GL_PROJECT);
    c["project_id"] = json!(GL_PROJECT_ID.to_string());
    c["pipeline_id"] = json!(pipeline.to_string());
    let token = w.oidc_gl.mint("portcullis", c).await;
    let (code, body) = w.app.post_bearer("/v1/attestations", &token, None).await;
    assert_eq!(code, 201, "{body}");
    let id = w.gitlab_blocked(dep, pipeline, "production", &s).await;
    w.wait_codes(&id, &["verdict_missing", "reviews_missing"]).await;

    let (_, answer) = w.ask("U0LEAD", &id, JUSTIFICATION).await;
    assert_eq!(answer, Value::String(String::new()));
    let grant = w.grant_of(&w.wait_alert("Break glass asked for").await);
    let (_, answer) = w.click("U0SECOPS", ACTION_CONFIRM, &grant, "secops").await;
    assert!(ephemeral(&answer).contains("The grant is active until"));
    let req = w.app.wait_request(&id, "done", WAIT).await;
    assert_eq!(codes(&req), ["attestation_verified", "actor_approved", "break_glass"]);
    let approvals = w.gl.wait_for_approvals(1, WAIT).await;
    assert_eq!(approvals[0].status, "approved");
    // GitLab keeps 255 characters of a comment: the grant comes first.
    let comment = approvals[0].comment.clone().unwrap();
    assert!(
        comment.contains(&format!(
            "\n- break_glass: grant {grant} waived the verdict and reviews"
        )),
        "{comment}"
    );
    assert_eq!(w.audit("break_glass_used").len(), 1);
    assert_eq!(w.slack.problems(), Vec::<String>::new());
}
