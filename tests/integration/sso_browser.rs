//! The SSO pages in a real browser: headless Chromium (through chromedriver
//! and fantoccini) signs in at the test OpenID Provider (`sso-provider.mjs`),
//! fills the forms and submits them by keyboard only. The review page is
//! also shown to refuse a forged CSRF token; the break-glass pages run with
//! scripts turned off, as the plain HTML forms they are. Each page's
//! screenshot is saved (see `support::browser::screenshot_dirs`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::app::{App, WEBHOOK_SECRET};
use crate::support::browser::Browser;
use crate::support::github_mock::{GithubMock, TEST_APP_ID, test_app_private_key};
use crate::support::oidc::{OidcProvider, github_claims, unused_loopback_port};
use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const REPO: &str = "octo-org/payments";
const WAIT: Duration = Duration::from_secs(20);

struct World {
    oidc: OidcProvider,
    gh: GithubMock,
    app: App,
    _sso: tokio::process::Child,
}

async fn sso_provider(redirect: &str) -> (tokio::process::Child, u16) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/node");
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("sso-provider.mjs"))
        .arg("0")
        .env("REDIRECT_URIS", redirect)
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
    (child, port)
}

async fn world() -> World {
    let port = unused_loopback_port();
    let base = format!("http://127.0.0.1:{port}");
    let (sso, sso_port) = sso_provider(&format!("{base}/reviews/callback")).await;
    let oidc = OidcProvider::start().await;
    let gh = GithubMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), test_app_private_key()).unwrap();
    let config = format!(
        r##"
[server]
listen = "127.0.0.1:{port}"
public_url = "{base}"
shutdown_timeout = "5s"

[audit]
path = "{{dir}}/audit.jsonl"

[github]
app_id = {TEST_APP_ID}
private_key = {{ file = "{{dir}}/app.pem" }}
webhook_secrets = [{{ env = "GH_WEBHOOK_SECRET" }}]
api_url = "{api}"
request_timeout = "2s"

[sso]
issuer = "http://127.0.0.1:{sso_port}"
client_id = "portcullis-reviews"
client_secret = {{ env = "SSO_CLIENT_SECRET" }}
groups_claim = "groups"

[[issuers]]
name = "ci"
kind = "github"
issuer = "{issuer}"
audience = "portcullis"

[environments.reviewed]
approvers = ["octocat"]
[environments.reviewed.verdict]
required = false
[environments.reviewed.reviews]
required = 1
via = "sso"
reviewers = ["alice@example.com", "bob@example.com"]

[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
producers = [{{ job_workflow_ref = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main" }}]
[environments.production.break_glass]
requesters = ["oncall-lead@example.com"]
confirmers = ["secops@example.com", "cto@example.com"]
via = "sso"
window = "1h"
review_within = "2s"
"##,
        api = gh.url(),
        issuer = oidc.issuer(),
    );
    let app = App::start_in(
        dir,
        &config,
        &[
            ("GH_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("SSO_CLIENT_SECRET", "test-only-sso-secret"),
        ],
    )
    .await;
    World {
        oidc,
        gh,
        app,
        _sso: sso,
    }
}

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

impl World {
    async fn request(&self, run: u64, environment: &str, sha: &str) -> String {
        let mut c = github_claims(sha);
        c["repository"] = json!(REPO);
        c["run_id"] = json!(run.to_string());
        let token = self.oidc.mint("portcullis", c).await;
        let (code, body) = self.app.post_bearer("/v1/attestations", &token, None).await;
        assert_eq!(code, 201, "{body}");
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
        let (code, answer) = self
            .app
            .post_webhook(
                "deployment_protection_rule",
                &format!("sso-{run}"),
                &serde_json::to_vec(&p).unwrap(),
            )
            .await;
        assert_eq!(code, 202, "{answer}");
        answer["request"].as_str().unwrap().to_string()
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, req) = self.app.get(&format!("/v1/requests/{id}")).await;
            if req["status"] == status && req["decision"].is_object() {
                return req;
            }
            assert!(std::time::Instant::now() < deadline, "never {status}: {req}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn codes(req: &Value) -> Vec<String> {
    req["decision"]["reasons"]
        .as_array()
        .map(|a| a.iter().map(|r| r["code"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_page_in_chromium_refuses_a_forged_csrf_token_and_approves_by_keyboard() {
    let w = world().await;
    let id = w.request(9901, "reviewed", &sha(9901)).await;
    w.wait_status(&id, "pending").await;

    let b = Browser::start(true).await;
    b.goto(&w.app.url(&format!("/reviews/{id}"))).await;
    b.sign_in_at_provider("alice@example.com").await;
    b.wait_code("review_form").await;
    assert!(
        b.source()
            .await
            .contains("Signed in as <strong>alice@example.com</strong>")
    );
    b.screenshot("review-form").await;

    // A forged token in the form (another site's post): refused, nothing recorded.
    b.client
        .execute(
            "document.querySelector('input[name=grant]').value = 'forged.' + document.querySelector('input[name=grant]').value; return true;",
            vec![],
        )
        .await
        .unwrap();
    b.tab_to("button[value=approve]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("csrf_invalid").await;
    b.screenshot("review-csrf-refused").await;
    let (_, req) = w.app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "pending");
    assert!(req["reviews"].as_array().unwrap().is_empty());

    // Signed in again, the real form, by keyboard only.
    b.goto(&w.app.url(&format!("/reviews/{id}"))).await;
    b.sign_in_at_provider("alice@example.com").await;
    b.wait_code("review_form").await;
    b.tab_to("button[value=approve]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("review_recorded").await;
    assert!(
        b.source()
            .await
            .contains("as alice@example.com (identity verified by sign-in)")
    );
    b.screenshot("review-recorded").await;
    let req = w.wait_status(&id, "done").await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(req["reviews"][0]["reviewer"], "alice@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_break_glass_pages_in_chromium_with_scripts_off_ask_confirm_and_review_by_keyboard() {
    let w = world().await;
    let s = sha(9911);
    let id = w.request(9911, "production", &s).await;
    w.wait_status(&id, "pending").await;
    let justification = "payments API is down for every EU customer; the fix must ship now";

    // Scripts off: every page is a plain HTML form.
    let b = Browser::start(false).await;
    assert!(
        b.client.execute("return 1", vec![]).await.is_err() || {
            // WebDriver's own scripts may still run; the page's may not.
            b.goto(&w.app.url("/healthz")).await;
            true
        }
    );

    // The requester asks for a grant for the pending request's commit.
    b.goto(&w.app.url(&format!("/reviews/break-glass?request={id}"))).await;
    b.sign_in_at_provider("oncall-lead@example.com").await;
    b.wait_code("break_glass_ask").await;
    b.screenshot("break-glass-ask").await;
    b.tab_to("textarea[name=justification]").await;
    b.type_text(justification).await;
    b.tab_to("button[type=submit]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("break_glass_requested").await;
    b.screenshot("break-glass-requested").await;
    let link = b
        .client
        .find(Locator::Css("a[href*='/reviews/break-glass/grants/']"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let grant = link.rsplit('/').next().unwrap().to_string();

    // A forged CSRF token (a post from another site, without this session): refused.
    let forged = w
        .app
        .http
        .post(w.app.url(&format!("/reviews/break-glass/grants/{grant}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=forged&action=confirm")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert!(forged.text().await.unwrap().contains("content=\"csrf_invalid\""));

    // The requester cannot confirm their own grant: no form for them.
    b.goto(&w.app.url(&format!("/reviews/break-glass/grants/{grant}")))
        .await;
    b.wait_code("break_glass_grant").await;
    assert!(
        b.source()
            .await
            .contains("There is nothing for you to do on this grant.")
    );

    // A confirmer signs in (another person: the cookies go) and confirms.
    b.client.delete_all_cookies().await.unwrap();
    b.goto(&w.app.url(&format!("/reviews/break-glass/grants/{grant}")))
        .await;
    b.sign_in_at_provider("secops@example.com").await;
    b.wait_code("break_glass_grant").await;
    b.screenshot("break-glass-confirm").await;
    b.tab_to("button[value=confirm]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("break_glass_confirmed").await;
    b.screenshot("break-glass-confirmed").await;
    let req = w.wait_status(&id, "done").await;
    assert_eq!(req["decision"]["outcome"], "approved");
    assert_eq!(codes(&req), ["attestation_verified", "actor_approved", "break_glass"]);

    // Past review_within, another confirmer reviews it with notes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, listed) = w.app.get("/v1/break-glass?unreviewed=true").await;
    assert_eq!(listed["grants"][0]["overdue"], true, "{listed}");
    b.client.delete_all_cookies().await.unwrap();
    b.goto(&w.app.url(&format!("/reviews/break-glass/grants/{grant}")))
        .await;
    b.sign_in_at_provider("cto@example.com").await;
    b.wait_code("break_glass_grant").await;
    b.screenshot("break-glass-review").await;
    b.tab_to("textarea[name=notes]").await;
    b.type_text("hotfix 1.4.2 only; the verdict job was down and is green again")
        .await;
    b.tab_to("button[type=submit]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("break_glass_reviewed").await;
    b.screenshot("break-glass-reviewed").await;
    let (_, listed) = w.app.get("/v1/break-glass?unreviewed=true").await;
    assert_eq!(listed["grants"], json!([]));

    // Asked ahead of the deploy for a given sha.
    b.client.delete_all_cookies().await.unwrap();
    b.goto(&w.app.url("/reviews/break-glass")).await;
    b.sign_in_at_provider("oncall-lead@example.com").await;
    b.wait_code("break_glass_ask").await;
    b.tab_to("input[name=repository]").await;
    b.type_text(REPO).await;
    b.tab_to("input[name=sha]").await;
    b.type_text(&sha(9912)).await;
    b.tab_to("textarea[name=justification]").await;
    b.type_text(justification).await;
    b.screenshot("break-glass-ask-ahead").await;
    b.tab_to("button[type=submit]").await;
    b.keys(&[Key::Enter]).await;
    b.wait_code("break_glass_requested").await;

    let events: Vec<String> = w
        .app
        .audit_records()
        .into_iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .filter(|e| e.starts_with("break_glass"))
        .collect();
    assert_eq!(
        events,
        [
            "break_glass_requested",
            "break_glass_confirmed",
            "break_glass_used",
            "break_glass_reviewed",
            "break_glass_requested"
        ]
    );
    let confirmed = w
        .app
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "break_glass_confirmed")
        .unwrap();
    assert_eq!(confirmed["detail"]["by"]["via"], "sso");
    assert!(
        confirmed["detail"]["by"]["verified"]
            .as_str()
            .unwrap()
            .contains("as subject secops@example.com; its email_verified claim is true"),
        "{confirmed}"
    );
}
