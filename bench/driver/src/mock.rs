//! A fast local stand-in for the GitHub API (and the CI issuer's JWKS), on
//! its own thread and runtime so that it never waits behind the load
//! generator. It answers what portcullis and the Probot peer call:
//!
//! - `POST /app/installations/{id}/access_tokens`: 201, a token valid for
//!   years (so both sides fetch it once);
//! - `GET /repos/{owner}/{repo}/installation`: 200, the fixture's installation;
//! - `GET /repos/{owner}/{repo}/actions/runs/{run}`: 200, the workflow run
//!   (attempt 1, started and re-run by `octocat`), which portcullis reads
//!   before deciding (who triggered the current attempt);
//! - `POST /repos/{owner}/{repo}/actions/runs/{run}/deployment_protection_rule`:
//!   204. A body with `state` is a **review** (approve or reject): the mock
//!   records the run and the arrival time, the end of the full path. A body
//!   without `state` (only `environment_name` and `comment`) is a **status
//!   report** portcullis posts while a request waits: counted in
//!   `status_calls`, never taken for the end of the full path;
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
    /// `deployment_protection_rule` posts without `state`: status reports.
    pub status_calls: AtomicU64,
    /// `GET .../actions/runs/{run}`.
    pub run_calls: AtomicU64,
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

    /// Every counter, for the report.
    pub fn counts(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "reviews": n(&self.review_calls),
            "status_reports": n(&self.status_calls),
            "workflow_runs": n(&self.run_calls),
            "installation_tokens": n(&self.token_calls),
            "unknown": n(&self.other_calls),
        })
    }
}

/// The part of a `deployment_protection_rule` body that tells a review
/// from a status report.
#[derive(serde::Deserialize)]
struct RuleBody {
    state: Option<serde::de::IgnoredAny>,
}

/// `{run}` of `/repos/{owner}/{repo}/actions/runs/{run}` (nothing after it).
fn workflow_run(path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/repos/")?;
    let mut parts = rest.split('/');
    let (_owner, _repo) = (parts.next()?, parts.next()?);
    if (parts.next()?, parts.next()?) != ("actions", "runs") {
        return None;
    }
    let run = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(run)
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
            ("GET", p) if workflow_run(p).is_some() => {
                state.run_calls.fetch_add(1, Ordering::Relaxed);
                let id = workflow_run(p).unwrap_or(0);
                (
                    "200 OK",
                    format!(
                        r#"{{"id":{id},"name":"deploy","run_number":42,"run_attempt":1,"status":"waiting","event":"push","head_sha":"{sha}","actor":{{"login":"octocat","id":583231,"type":"User"}},"triggering_actor":{{"login":"octocat","id":583231,"type":"User"}}}}"#,
                        sha = crate::SHA
                    ),
                )
            }
            ("POST", p) if p.ends_with("/deployment_protection_rule") => {
                let is_review = serde_json::from_slice::<RuleBody>(&msg.body).is_ok_and(|b| b.state.is_some());
                if is_review {
                    let run = p.rsplit('/').nth(1).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                    state.reviews.lock().expect("reviews lock").push((run, arrived));
                    state.review_calls.fetch_add(1, Ordering::Relaxed);
                } else {
                    state.status_calls.fetch_add(1, Ordering::Relaxed);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_run_paths() {
        assert_eq!(
            workflow_run("/repos/octo-org/payments/actions/runs/4100000001"),
            Some(4_100_000_001)
        );
        assert_eq!(
            workflow_run("/repos/octo-org/payments/actions/runs/41/deployment_protection_rule"),
            None
        );
        assert_eq!(workflow_run("/repos/octo-org/payments/installation"), None);
    }

    #[test]
    fn reviews_have_a_state() {
        let is_review = |b: &str| serde_json::from_str::<RuleBody>(b).is_ok_and(|b| b.state.is_some());
        assert!(is_review(
            r#"{"environment_name":"production","state":"approved","comment":"ok"}"#
        ));
        assert!(!is_review(
            r#"{"environment_name":"production","comment":"waiting: the state of the attestation"}"#
        ));
    }

    #[tokio::test]
    async fn answers_workflow_runs_and_tells_reviews_from_status_reports() {
        let mock = start("{}".into());
        let mut conn = crate::http::Conn::new(mock.addr);
        let run = conn
            .send(b"GET /repos/o/r/actions/runs/4100000007 HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("run");
        assert_eq!(run.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&run.body).expect("json");
        assert_eq!(v["id"], 4_100_000_007u64);
        assert_eq!(v["run_attempt"], 1);
        assert_eq!(v["actor"]["login"], "octocat");
        assert_eq!(v["triggering_actor"]["login"], "octocat");
        let post = |body: &str| {
            crate::http::request(
                "POST",
                "/repos/o/r/actions/runs/4100000007/deployment_protection_rule",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
        };
        let status = conn
            .send(&post(r#"{"environment_name":"production","comment":"waiting"}"#))
            .await
            .expect("status");
        assert_eq!(status.status(), 204);
        assert_eq!(mock.state.review_count(), 0);
        assert_eq!(mock.state.status_calls.load(Ordering::Relaxed), 1);
        let review = conn
            .send(&post(
                r#"{"environment_name":"production","state":"approved","comment":"ok"}"#,
            ))
            .await
            .expect("review");
        assert_eq!(review.status(), 204);
        assert_eq!(mock.state.take_reviews()[0].0, 4_100_000_007);
    }
}
