//! A fast local stand-in for the GitHub API (and the CI issuer's JWKS), on
//! its own thread and runtime so that it never waits behind the load
//! generator. It answers what portcullis and the Probot peer call:
//!
//! - `POST /app/installations/{id}/access_tokens`: 201, a token valid for
//!   years (so both sides fetch it once);
//! - `GET /repos/{owner}/{repo}/installation`: 200, the fixture's installation;
//! - `POST /repos/{owner}/{repo}/actions/runs/{run}/deployment_protection_rule`:
//!   204, and records the run and the arrival time (the end of the full path);
//! - `GET /jwks`: the public half of the committed ES256 test key.
//!
//! It checks nothing: the recording mock in `tests/support` does that for
//! the tests; here only speed and timestamps matter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http::read_message;

#[derive(Default)]
pub struct MockState {
    /// (run id, arrival) of every review call since the last `take_reviews`.
    reviews: Mutex<Vec<(u64, Instant)>>,
    pub review_calls: AtomicU64,
    pub token_calls: AtomicU64,
    pub other_calls: AtomicU64,
    jwks: String,
}

impl MockState {
    pub fn take_reviews(&self) -> Vec<(u64, Instant)> {
        std::mem::take(&mut *self.reviews.lock().expect("reviews lock"))
    }

    pub fn review_count(&self) -> usize {
        self.reviews.lock().expect("reviews lock").len()
    }
}

pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
}

impl Mock {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the mock on a free loopback port, on a thread of its own that
/// lives as long as the process.
pub fn start(jwks: String) -> Mock {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("mock addr");
    let state = Arc::new(MockState {
        jwks,
        ..MockState::default()
    });
    let shared = state.clone();
    std::thread::Builder::new()
        .name("github-mock".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("mock runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("mock listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, shared.clone()));
                }
            });
        })
        .expect("spawn mock thread");
    Mock { addr, state }
}

async fn serve(mut stream: TcpStream, state: Arc<MockState>) {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let msg = match read_message(&mut stream, &mut buf, false).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let arrived = Instant::now();
        let (method, path) = msg.request_line();
        let (status, body): (&str, String) = match (method, path.split('?').next().unwrap_or("")) {
            ("GET", "/jwks") => ("200 OK", state.jwks.clone()),
            ("POST", p) if p.starts_with("/app/installations/") && p.ends_with("/access_tokens") => {
                state.token_calls.fetch_add(1, Ordering::Relaxed);
                (
                    "201 Created",
                    r#"{"token":"ghs_benchmarkinstallationtoken0000000000","expires_at":"2099-01-01T00:00:00Z","permissions":{"actions":"read","deployments":"write"},"repository_selection":"all"}"#.into(),
                )
            }
            ("GET", p) if p.starts_with("/repos/") && p.ends_with("/installation") => (
                "200 OK",
                r#"{"id":57203958,"app_id":1012345,"account":{"login":"octo-org"}}"#.into(),
            ),
            ("POST", p) if p.ends_with("/deployment_protection_rule") => {
                let run = p.rsplit('/').nth(1).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                state.reviews.lock().expect("reviews lock").push((run, arrived));
                state.review_calls.fetch_add(1, Ordering::Relaxed);
                ("204 No Content", String::new())
            }
            _ => {
                state.other_calls.fetch_add(1, Ordering::Relaxed);
                ("404 Not Found", r#"{"message":"Not Found"}"#.into())
            }
        };
        let head = if status.starts_with("204") {
            format!("HTTP/1.1 {status}\r\n\r\n")
        } else {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
        };
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
