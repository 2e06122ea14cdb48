//! Runs the real `portcullis` binary with a configuration written to a
//! temporary directory, and talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret-7f3a";

/// The port of the startup line `listening on ADDR` (`127.0.0.1:8080`,
/// `0.0.0.0:8080`, `[::1]:8080`), in the text or the JSON log format.
fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("listening on ").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// A running portcullis process. Killed on drop.
pub struct App {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<String>>,
    pub http: reqwest::Client,
}

impl App {
    /// Starts the binary with `config` (TOML; `{dir}` is replaced by the
    /// temporary directory) and `env`, waits for it to listen.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config, env).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> App {
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config.replace("{dir}", &dir.path().display().to_string())).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn portcullis");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (Some(p), Some(t)) = (listening_port(&line), tx.as_ref()) {
                    let _ = t.send(p);
                    tx = None;
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!("portcullis did not start; its log:\n{}", logs.lock().unwrap());
            }
        };
        App {
            child,
            port,
            dir,
            config_path,
            logs,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("portcullis did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a CLI subcommand against this app's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .output()
            .expect("run portcullis")
    }

    pub async fn post_webhook(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        let sig = sign(WEBHOOK_SECRET, body);
        self.post_webhook_signed(event, delivery, body, &sig).await
    }

    pub async fn post_webhook_signed(&self, event: &str, delivery: &str, body: &[u8], sig: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/webhooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .header("user-agent", "GitHub-Hookshot/abc123")
            .body(body.to_vec())
            .send()
            .await
            .expect("post webhook");
        status_json(r).await
    }

    pub async fn post_bearer(&self, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = self.http.post(self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(b);
        }
        status_json(r.send().await.expect("post")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        status_json(self.http.get(self.url(path)).send().await.expect("get")).await
    }

    /// Polls `GET /v1/requests/{id}` until its status is not pending (or
    /// `status` equals `want`), up to `timeout`.
    pub async fn wait_request(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, body) = self.get(&format!("/v1/requests/{id}")).await;
            if code == 200 && body["status"] == want {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "request {id} did not reach `{want}` in {timeout:?}; last: {code} {body}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the audit file's records.
    pub fn audit_records(&self) -> Vec<Value> {
        read_audit(&self.audit_path())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(portcullis::crypto::hmac_sha256(secret.as_bytes(), &[body]))
    )
}

async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
