//! A real browser for the SSO pages: Debian's headless Chromium driven
//! through chromedriver (WebDriver) with fantoccini. chromedriver is
//! started on a free loopback port per browser and stopped with it.
//! `scripts/test` installs both packages when missing.
//!
//! Scripts can be turned off for the pages (Chromium's content setting),
//! to show that they are plain HTML forms; WebDriver itself still works.
//! Keys are typed through WebDriver's actions (keyboard only: Tab, Enter,
//! text), never by clicking.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::oidc::unused_loopback_port;

/// Where screenshots go: `target/screenshots/`, and `/work/screenshots/`
/// too when that folder exists (to look at them outside the build tree).
pub fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")];
    let extra = PathBuf::from("/work/screenshots");
    if extra.is_dir() {
        dirs.push(extra);
    }
    dirs
}

pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    /// A headless Chromium; `scripts` false turns JavaScript off for pages.
    pub async fn start(scripts: bool) -> Browser {
        let port = unused_loopback_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let mut caps = serde_json::Map::new();
        let mut prefs = json!({});
        if !scripts {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=900,760", "--no-first-run", "--password-store=basic"],
                "prefs": prefs,
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "chromedriver did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            _driver: driver,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The page's `portcullis-code` (its meta tag), if it has one.
    pub async fn code(&self) -> Option<String> {
        let meta = self
            .client
            .find(Locator::Css("meta[name=portcullis-code]"))
            .await
            .ok()?;
        meta.attr("content").await.ok().flatten()
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Presses keys, one after another (keyboard only).
    pub async fn keys(&self, keys: &[Key]) {
        let mut seq = KeyActions::new("keyboard".into());
        for k in keys {
            let c: char = (*k).into();
            seq = seq.then(KeyAction::Down { value: c }).then(KeyAction::Up { value: c });
        }
        self.client.perform_actions(seq).await.expect("keys");
    }

    /// Types `text` into whatever has the focus.
    pub async fn type_text(&self, text: &str) {
        let mut seq = KeyActions::new("keyboard".into());
        for c in text.chars() {
            seq = seq.then(KeyAction::Down { value: c }).then(KeyAction::Up { value: c });
        }
        self.client.perform_actions(seq).await.expect("type");
    }

    /// Presses Tab until the focused element matches `selector` (at most
    /// 30 times); the focus is read through WebDriver.
    pub async fn tab_to(&self, selector: &str) {
        let target = self.client.find(Locator::Css(selector)).await.expect(selector);
        for _ in 0..30 {
            self.keys(&[Key::Tab]).await;
            let active = self.client.active_element().await.expect("active element");
            if active.element_id() == target.element_id() {
                return;
            }
        }
        panic!("Tab never reached {selector}: {}", self.source().await);
    }

    /// Saves a PNG of the page as `name.png` in [`screenshot_dirs`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        for dir in screenshot_dirs() {
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            std::fs::write(dir.join(format!("{name}.png")), &png).expect("write screenshot");
        }
    }

    /// Waits until the page's code is `want` (navigation after a submit).
    pub async fn wait_code(&self, want: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if self.code().await.as_deref() == Some(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never the page `{want}`; at {:?}: {}",
                self.client.current_url().await.ok(),
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in at the test OpenID Provider's login and consent pages (its
    /// development interactions), by keyboard, as `login`.
    pub async fn sign_in_at_provider(&self, login: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "the provider's pages never ended");
            let src = self.source().await;
            if src.contains("name=\"portcullis-code\"") {
                return;
            }
            if src.contains("name=\"login\"") {
                self.tab_to("input[name=login]").await;
                self.type_text(login).await;
                self.tab_to("input[name=password]").await;
                self.type_text("any").await;
                self.keys(&[Key::Enter]).await;
            } else if src.contains("name=\"prompt\" value=\"consent\"") {
                self.tab_to("button[type=submit]").await;
                self.keys(&[Key::Enter]).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}
