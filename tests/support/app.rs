//! Runs portcullis with a configuration written to a temporary directory,
//! and talks to it over HTTP. By default the application runs inside the
//! test process ([`App::start`]); [`App::start_binary`] runs the real
//! `portcullis` binary, for what only a process has: SIGTERM, SIGKILL, exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::server::Application;
use serde_json::Value;

use super::logs;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret-7f3a";

/// How long an app may take to start, and an in-process one to stop.
const START_STOP: Duration = Duration::from_secs(30);

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

/// Where an [`App`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// [`Application`] on a thread of the test process, with its own
    /// multi-thread tokio runtime.
    InProcess,
    /// The `portcullis serve` binary, as a child process.
    Binary,
}

enum Runner {
    InProcess(InProcess),
    Binary(Child),
}

/// A running portcullis: stopped on drop (an in-process one at once, its
/// decisions in flight abandoned; the binary with SIGKILL).
pub struct App {
    runner: Runner,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: logs::Buffer,
    pub http: reqwest::Client,
}

impl App {
    /// Runs the application in this process with `config` (TOML; `{dir}` is
    /// replaced by a new temporary directory), its secrets' environment
    /// variables looked up in `env` only; returns once it listens.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config, env).await
    }

    /// [`App::start`] in `dir`.
    pub async fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> App {
        Self::launch_in(Run::InProcess, dir, config, env).await
    }

    /// Starts the binary with `config` (`{dir}` replaced as for
    /// [`App::start`]) and `env` added to its environment, waits for it to
    /// listen.
    pub async fn start_binary(config: &str, env: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_binary_in(dir, config, env).await
    }

    /// [`App::start_binary`] in `dir`.
    pub async fn start_binary_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> App {
        Self::launch_in(Run::Binary, dir, config, env).await
    }

    /// Writes `config` (with `{dir}` replaced) to `dir/portcullis.toml`, where
    /// [`App::cli`] finds it, and starts the app as `run` says.
    pub async fn launch_in(run: Run, dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> App {
        let config_path = dir.path().join("portcullis.toml");
        let text = config.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&config_path, &text).expect("write config");
        let logs = logs::Buffer::default();
        let (runner, port) = match run {
            Run::InProcess => {
                let config = Config::from_toml(&text, &|name| {
                    env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
                })
                .unwrap_or_else(|e| panic!("invalid test configuration:\n{e}"));
                let (app, port) = InProcess::start(config, logs.clone()).await;
                (Runner::InProcess(app), port)
            }
            Run::Binary => {
                let (child, port) = start_binary(&config_path, dir.path(), env, &logs);
                (Runner::Binary(child), port)
            }
        };
        App {
            runner,
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

    /// The text of `GET /metrics` (no read token).
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Sends SIGTERM to the binary and waits for it to exit; returns its
    /// status. Only for an app from [`App::start_binary`].
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let Runner::Binary(child) = &mut self.runner else {
            panic!("terminate() signals a process: start the app with App::start_binary");
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + START_STOP;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("portcullis did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, …) to the binary. Only for an app
    /// from [`App::start_binary`].
    pub fn signal(&self, signal: &str) {
        let Runner::Binary(child) = &self.runner else {
            panic!("signal() signals a process: start the app with App::start_binary");
        };
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
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
        status_json("POST", r).await
    }

    /// Posts with a bearer token. Like a polite client, it waits out a 429
    /// (the `/v1` rate limit) as `Retry-After` says, a few times.
    pub async fn post_bearer(&self, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        polite("POST", || {
            let mut r = self.http.post(self.url(path)).bearer_auth(token);
            if let Some(b) = body {
                r = r.json(b);
            }
            r
        })
        .await
    }

    /// Gets `path`, waiting out a 429 as [`App::post_bearer`] does.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        polite("GET", || self.http.get(self.url(path))).await
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
            // Under the default `/v1` rate limit (20 a second).
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }

    /// Reads the audit file's records.
    pub fn audit_records(&self) -> Vec<Value> {
        read_audit(&self.audit_path())
    }

    /// The audit records of `event`, once there is at least one (10 s at
    /// most): records nobody waits on are written by the group-commit
    /// writer in the background.
    pub async fn audited(&self, event: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Value> = self
                .audit_records()
                .into_iter()
                .filter(|r| r["event"] == event)
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::InProcess(app) => app.stop(),
            Runner::Binary(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Spawns `portcullis serve` and reads its stderr into `logs`; returns once
/// it logs the port it listens on.
fn start_binary(config_path: &Path, dir: &Path, env: &[(&str, &str)], logs: &logs::Buffer) -> (Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portcullis");
    let stderr = child.stderr.take().expect("stderr");
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
    match rx.recv_timeout(START_STOP) {
        Ok(p) => (child, p),
        Err(_) => {
            let _ = child.kill();
            panic!("portcullis did not start; its log:\n{}", logs.lock().unwrap());
        }
    }
}

/// An [`Application`] on its own thread, with its own multi-thread tokio
/// runtime (so a test's blocking calls or current-thread runtime never
/// starve it) inside an actix `System` (so actix-web's worker threads are
/// known to be the app's, for the log capture).
struct InProcess {
    id: u64,
    /// Dropped or sent: the app stops.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Receives when the app's thread is done.
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    async fn start(config: Config, buffer: logs::Buffer) -> (InProcess, u16) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        logs::install();
        logs::register(id, buffer.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<u16, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("portcullis-app-{id}"))
            .spawn(move || {
                logs::enter(id);
                let system = actix_web::rt::System::with_tokio_rt(move || {
                    tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .thread_name(format!("portcullis-app-{id}"))
                        .on_thread_start(move || logs::enter(id))
                        .build()
                        .expect("the app's runtime")
                });
                logs::register_system(actix_web::rt::System::current().id(), id);
                system.block_on(serve(config, ready_tx, stop_rx));
                drop(system);
                let _ = done_tx.send(());
            })
            .expect("spawn the app's thread");
        let mut app = InProcess {
            id,
            stop: Some(stop_tx),
            done,
            thread: Some(thread),
        };
        let port = match tokio::time::timeout(START_STOP, ready_rx).await {
            Ok(Ok(Ok(port))) => port,
            Ok(Ok(Err(e))) => {
                app.stop();
                panic!("portcullis did not start: {e}\nits log:\n{}", buffer.lock().unwrap())
            }
            Ok(Err(_)) => {
                app.stop();
                panic!(
                    "the app's thread ended before it listened; its log:\n{}",
                    buffer.lock().unwrap()
                )
            }
            Err(_) => panic!(
                "portcullis did not start in {START_STOP:?}; its log:\n{}",
                buffer.lock().unwrap()
            ),
        };
        // The startup line shows the capture works: a test asserting that
        // something is absent from the logs never passes on an empty buffer.
        let deadline = Instant::now() + START_STOP;
        while !buffer.lock().unwrap().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "the app's log has no `listening on` line: its log capture is broken"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (app, port)
    }

    /// Stops the server at once (open connections closed), abandons what is
    /// in flight with the runtime, and waits for the app's thread to end.
    fn stop(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        let _ = stop.send(());
        match self.done.recv_timeout(START_STOP) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "portcullis app {} did not stop in {START_STOP:?}; left running",
                    self.id
                );
            }
        }
        logs::unregister(self.id);
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs on the app's thread: builds the application, reports its port, and
/// serves until `stop` resolves (sent or dropped).
async fn serve(
    config: Config,
    ready: tokio::sync::oneshot::Sender<Result<u16, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let app = match Application::build_without_signals(config).await {
        Ok(app) => app,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let server = app.server_handle();
    let _ = ready.send(Ok(app.port()));
    let run = app.run_until_stopped();
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => {
            if let Err(e) = result {
                tracing::error!(error = %e, "the server failed");
            }
        }
        _ = stop => {
            // The server stops (its workers too) only while `run` is polled;
            // what `run` would drain afterwards is dropped with the runtime.
            let stopped = server.stop(false);
            tokio::select! {
                _ = &mut run => {}
                _ = stopped => {}
            }
        }
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

/// Sends the request `make` builds; on 429 waits `Retry-After` (at most
/// 2 s) and sends it again, up to 10 times.
async fn polite(method: &str, make: impl Fn() -> reqwest::RequestBuilder) -> (u16, Value) {
    for _ in 0..10 {
        let r = make().send().await.expect("send");
        if r.status().as_u16() != 429 {
            return status_json(method, r).await;
        }
        let wait = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
            .min(2);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    status_json(method, make().send().await.expect("send")).await
}

/// The status and the body (JSON, else a string), once the response is
/// checked against `docs/openapi.yaml`.
async fn status_json(method: &str, r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let path = r.url().path().to_string();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.unwrap_or_default();
    super::openapi::check(method, &path, status, &content_type, &text);
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
