//! Prism (`@stoplight/prism-cli`, from `tests/support/node`) serving
//! GitHub's own OpenAPI description (`tests/contracts/github-api-subset.openapi.json`)
//! as a validating mock, behind a small recording proxy.
//!
//! Prism answers a request that violates the description with 422, and
//! reports lesser violations in an `sl-violations` response header. The
//! client under test treats GitHub's 422 as "already reviewed", so a
//! contract test must look at what Prism actually answered: the proxy
//! records every exchange's status and `sl-violations` header.
//!
//! Needs `node` and `npm install` in `tests/support/node`; fails with that
//! instruction otherwise. Prism is killed when [`Prism`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// One request through the proxy and Prism's answer to it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub request_body: String,
    pub status: u16,
    /// Prism's `sl-violations` header, if it sent one.
    pub violations: Option<String>,
    pub response_body: String,
}

pub struct Prism {
    child: Child,
    prism_url: String,
    proxy_addr: std::net::SocketAddr,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    proxy: actix_web::dev::ServerHandle,
    log: PathBuf,
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/node")
}

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/contracts/github-api-subset.openapi.json")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Prism {
    /// Starts Prism on a free port and waits (up to 60 s) until it answers.
    pub async fn start() -> Prism {
        let cli = node_dir().join("node_modules/@stoplight/prism-cli/dist/index.js");
        assert!(
            cli.exists(),
            "Prism is not installed: run `cd tests/support/node && npm install --no-audit --no-fund` (needs node >= 18)"
        );
        // A port taken between probing and Prism's bind makes Prism exit;
        // try a few ports before giving up.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("portcullis-prism-{port}.log"));
            let log_file = std::fs::File::create(&log).expect("create the Prism log file");
            let child = Command::new("node")
                .arg(&cli)
                .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
                .arg(spec_path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file handle"))
                .stderr(log_file)
                .spawn()
                .expect("spawn `node` (is Node.js installed?)");
            let prism_url = format!("http://127.0.0.1:{port}");
            let mut started = Started { child: Some(child) };
            if wait_until_answering(&prism_url, started.child_mut(), Duration::from_secs(60)).await {
                let exchanges = Arc::new(Mutex::new(Vec::new()));
                let (proxy_addr, proxy) = start_proxy(prism_url.clone(), exchanges.clone());
                return Prism {
                    child: started.take(),
                    prism_url,
                    proxy_addr,
                    exchanges,
                    proxy,
                    log,
                };
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("Prism did not start; its last output:\n{}", tail(&last_log, 40));
    }

    /// The URL to point a client at: the recording proxy in front of Prism.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// Prism itself, bypassing the recording.
    pub fn prism_url(&self) -> &str {
        &self.prism_url
    }

    /// Every exchange so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Prism's output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the log of a failed test for reading; drop the rest.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
        let handle = self.proxy.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { handle.stop(false).await });
        }
    }
}

/// Kills a child that never became a [`Prism`].
struct Started {
    child: Option<Child>,
}

impl Started {
    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until taken")
    }
    fn take(&mut self) -> Child {
        self.child.take().expect("child present until taken")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_until_answering(url: &str, child: &mut Child, limit: Duration) -> bool {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let probe = http
            .get(format!("{url}/app"))
            .header("Accept", "application/vnd.github+json")
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if probe.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct ProxyState {
    prism_url: String,
    http: reqwest::Client,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

fn start_proxy(
    prism_url: String,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
) -> (std::net::SocketAddr, actix_web::dev::ServerHandle) {
    let state = web::Data::new(ProxyState {
        prism_url,
        http: reqwest::Client::new(),
        exchanges,
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let server = HttpServer::new(move || App::new().app_data(state.clone()).default_service(web::to(forward)))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("proxy listen")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (addr, handle)
}

/// Hop-by-hop headers, and ones the HTTP stacks set themselves.
const SKIP_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn forward(req: HttpRequest, body: web::Bytes, state: web::Data<ProxyState>) -> HttpResponse {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut upstream = state
        .http
        .request(method, format!("{}{}", state.prism_url, path_and_query));
    for (name, value) in req.headers() {
        if !SKIP_HEADERS.contains(&name.as_str()) {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    let request_body = String::from_utf8_lossy(&body).into_owned();
    let answer = upstream.body(body.to_vec()).send().await;
    let (status, headers, response_body) = match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers: Vec<(String, Vec<u8>)> = r
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            let bytes = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            (status, headers, bytes)
        }
        Err(e) => (
            502,
            Vec::new(),
            format!("proxy: Prism did not answer: {e}").into_bytes(),
        ),
    };
    let violations = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sl-violations"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    state
        .exchanges
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Exchange {
            method: req.method().as_str().to_owned(),
            path: req.path().to_owned(),
            request_body,
            status,
            violations,
            response_body: String::from_utf8_lossy(&response_body).into_owned(),
        });
    let code = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(code);
    for (name, value) in &headers {
        if !SKIP_HEADERS.contains(&name.as_str()) {
            response.append_header((name.as_str(), value.as_slice()));
        }
    }
    response.body(response_body)
}
