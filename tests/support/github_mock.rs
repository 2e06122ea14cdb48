//! A recording, checking mock of the GitHub API slice portcullis calls, as
//! an actix-web server on `127.0.0.1:0`:
//!
//! - `POST /app/installations/{id}/access_tokens`: requires an App JWT that
//!   verifies (RS256) against the TEST-ONLY App public key, with
//!   `iss` = [`TEST_APP_ID`] and a lifetime of at most 10 minutes; answers
//!   201 with a fresh `ghs_mock_…` token valid for an hour.
//! - `GET /repos/{owner}/{repo}/installation`: requires the App JWT; answers
//!   200 with the repository's installation ([`TEST_INSTALLATION_ID`] unless
//!   set with [`GithubMock::set_installation`]).
//! - `POST /repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`:
//!   requires `Authorization: Bearer <a token this mock issued>`, GitHub's
//!   `Accept` and `X-GitHub-Api-Version` headers, a `User-Agent`, and a JSON
//!   body `{environment_name, state: approved|rejected, comment (≤ 1024 chars)}`,
//!   or without `state` (a status report); answers 204.
//! - `GET /repos/{owner}/{repo}/actions/runs/{run_id}`: requires an
//!   installation token this mock issued for the repository; answers 200 with
//!   the run's `id`, `run_attempt`, `actor` and `triggering_actor` (attempt 1
//!   by `octocat` unless set with [`GithubMock::set_run`]).
//!
//! A request that fails a check gets 400 with a `message` naming the check
//! (never 422, which the client treats as "already reviewed"), and a token
//! revoked with [`GithubMock::revoke_tokens`] gets 401 "Bad credentials".
//! Everything is recorded, checked or not. Tests script answers per path
//! with [`GithubMock::script`]; scripted answers are used in order, once
//! each, and only by requests that pass the checks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis::config::{GithubConfig, RedeliverConfig, Secret};
use serde_json::{Value, json};
use url::Url;

/// The App id the TEST-ONLY key pair belongs to.
pub const TEST_APP_ID: u64 = 1012345;
/// The installation every repository has unless told otherwise (the same
/// id as the webhook fixtures).
pub const TEST_INSTALLATION_ID: u64 = 57203958;
pub const API_VERSION: &str = "2022-11-28";

/// The TEST-ONLY App key pair, under `tests/fixtures/github-app/`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github-app")
        .join(name)
}

pub fn test_app_private_key() -> String {
    read_fixture("test-only-app-private-key.pem")
}

pub fn test_app_public_key() -> String {
    read_fixture("test-only-app-public-key.pem")
}

/// An RSA key that is NOT the App's: JWTs it signs must be refused.
pub fn other_private_key() -> String {
    read_fixture("test-only-other-private-key.pem")
}

fn read_fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The full path, without the query.
    pub path: String,
    /// Header names lower-cased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, if it was JSON.
    pub body: Option<Value>,
    /// The raw body as text (lossy UTF-8).
    pub raw_body: String,
    /// The status the mock answered (or was about to, when the client
    /// gave up during a scripted delay).
    pub status: u16,
    /// When the request arrived (the load run measures latency with it).
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    /// A review: the protection rule's call with a `state`.
    pub fn is_review(&self) -> bool {
        self.method == "POST"
            && self.path.ends_with("/deployment_protection_rule")
            && self.body.as_ref().is_none_or(|b| b.get("state").is_some())
    }
    /// A status report: the same call without `state`.
    pub fn is_status_report(&self) -> bool {
        self.method == "POST"
            && self.path.ends_with("/deployment_protection_rule")
            && self.body.as_ref().is_some_and(|b| b.get("state").is_none())
    }
    pub fn is_token_request(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/access_tokens")
    }
    pub fn is_installation_lookup(&self) -> bool {
        self.method == "GET" && self.path.ends_with("/installation")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `None`: answer as the mock normally would (after `delay`).
    status: Option<u16>,
    body: Option<Value>,
    delay: Duration,
    /// Extra response headers.
    headers: Vec<(String, String)>,
}

impl Reply {
    /// Answer `status` with GitHub's error shape `{message, documentation_url}`
    /// (no body for 204).
    pub fn status(status: u16) -> Self {
        let body = (status != 204).then(|| {
            json!({
                "message": default_message(status),
                "documentation_url": "https://docs.github.com/rest/actions/workflow-runs#review-custom-deployment-protection-rules-for-a-workflow-run",
                "status": status.to_string(),
            })
        });
        Reply {
            status: Some(status),
            body,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    /// Answer as the mock normally would (useful with [`Reply::delay`]).
    pub fn normal() -> Self {
        Reply {
            status: None,
            body: None,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    /// Replace the body (JSON).
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
    /// Replace the body's `message`.
    pub fn message(mut self, message: &str) -> Self {
        self.body = Some(json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }));
        self
    }
    /// Wait this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    /// Add a response header (`Retry-After`, `x-ratelimit-*`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        401 => "Bad credentials",
        403 => "Resource not accessible by integration",
        404 => "Not Found",
        422 => "No pending custom deployment requests to approve or reject",
        500 => "Server Error",
        502 => "Server Error",
        503 => "Service Unavailable",
        _ => "Mock error",
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    scripts: HashMap<String, VecDeque<Reply>>,
    /// Issued tokens and the installation each is for.
    issued: Vec<(String, u64)>,
    revoked: HashSet<String>,
    installations: HashMap<String, u64>,
    token_lifetime: Option<time::Duration>,
    /// The App's webhook deliveries, newest first (see the deliveries section).
    deliveries: Vec<Value>,
    /// Workflow runs by id: (attempt, first attempt's actor, this attempt's).
    runs: HashMap<u64, (u32, String, String)>,
}

struct Shared {
    inner: Mutex<Inner>,
    prefix: String,
    public_key: DecodingKey,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct GithubMock {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl GithubMock {
    /// Starts the mock serving at the root (`api_url` = [`GithubMock::url`]).
    pub async fn start() -> Self {
        Self::start_with_prefix("").await
    }

    /// Starts the mock under a path prefix, as GitHub Enterprise Server
    /// serves its API under `/api/v3`. Requests outside it get 404.
    pub async fn start_with_prefix(prefix: &str) -> Self {
        let public_key =
            DecodingKey::from_rsa_pem(test_app_public_key().as_bytes()).expect("the TEST-ONLY App public key parses");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            prefix: prefix.trim_end_matches('/').to_owned(),
            public_key,
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handle)))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(0)
            .listen(listener)
            .expect("listen")
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        GithubMock { shared, addr, handle }
    }

    /// The API base URL, e.g. `http://127.0.0.1:PORT` (plus the prefix).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.shared.prefix)
    }

    /// A `[github]` configuration pointing at this mock with the TEST-ONLY
    /// App key and a 2 s request timeout.
    pub fn github_config(&self) -> GithubConfig {
        GithubConfig {
            issuer: String::new(),
            status_reports_per_minute: 60,
            app_id: Some(TEST_APP_ID),
            private_key: Some(Secret::new(test_app_private_key())),
            webhook_secrets: vec![Secret::new("test-only-webhook-secret")],
            api_url: Url::parse(&self.url()).expect("mock URL"),
            request_timeout: Duration::from_secs(2),
            redeliver: RedeliverConfig {
                enabled: false,
                interval: Duration::from_secs(300),
                lookback: Duration::from_secs(3600),
                max_per_run: 50,
            },
        }
    }

    /// Sets what `GET .../actions/runs/{run_id}` answers: the current
    /// attempt, who started the first attempt and who started this one.
    pub fn set_run(&self, run_id: u64, attempt: u32, actor: &str, triggering_actor: &str) {
        self.shared
            .lock()
            .runs
            .insert(run_id, (attempt, actor.to_owned(), triggering_actor.to_owned()));
    }

    /// The review URL for a run, as a webhook's `deployment_callback_url`.
    pub fn callback_url(&self, owner: &str, repo: &str, run_id: u64) -> String {
        format!("{}{}", self.url(), review_path(owner, repo, run_id))
    }

    /// Queues answers for requests to `path` (the full path, including
    /// any prefix; see [`review_path`], [`token_path`],
    /// [`installation_path`]). Each is used once, in order; then the mock
    /// answers normally again.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .lock()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// [`GithubMock::script`] for the run's review endpoint.
    pub fn script_review(&self, owner: &str, repo: &str, run_id: u64, replies: impl IntoIterator<Item = Reply>) {
        let path = format!("{}{}", self.shared.prefix, review_path(owner, repo, run_id));
        self.script(&path, replies);
    }

    /// [`GithubMock::script`] for an installation's access-token endpoint.
    pub fn script_token(&self, installation: u64, replies: impl IntoIterator<Item = Reply>) {
        let path = format!("{}{}", self.shared.prefix, token_path(installation));
        self.script(&path, replies);
    }

    /// The installation `GET /repos/{owner}/{repo}/installation` reports.
    pub fn set_installation(&self, owner: &str, repo: &str, installation: u64) {
        self.shared
            .lock()
            .installations
            .insert(repo_key(owner, repo), installation);
    }

    /// How long issued tokens are valid (default one hour).
    pub fn set_token_lifetime(&self, lifetime: time::Duration) {
        self.shared.lock().token_lifetime = Some(lifetime);
    }

    /// Makes every token issued so far fail with 401, as GitHub does for
    /// a revoked or expired token.
    pub fn revoke_tokens(&self) {
        let mut inner = self.shared.lock();
        let issued: Vec<String> = inner.issued.iter().map(|(t, _)| t.clone()).collect();
        inner.revoked.extend(issued);
    }

    /// Tokens issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Review requests (any status), in order.
    pub fn reviews(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_review).collect()
    }

    /// Status reports (any status), in order.
    pub fn status_reports(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_status_report).collect()
    }

    /// Access-token requests (any status), in order.
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_token_request).collect()
    }

    /// Installation lookups (any status), in order.
    pub fn installation_lookups(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_installation_lookup)
            .collect()
    }

    /// Waits until at least `n` reviews arrived and returns them all;
    /// panics after `timeout` with what did arrive.
    pub async fn wait_for_reviews(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reviews = self.reviews();
            if reviews.len() >= n {
                return reviews;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "expected {n} review(s) within {timeout:?}, got {}; requests: {:#?}",
                    reviews.len(),
                    self.requests()
                        .iter()
                        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GithubMock {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { handle.stop(false).await });
        }
    }
}

/// `/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`
pub fn review_path(owner: &str, repo: &str, run_id: u64) -> String {
    format!("/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule")
}

/// `/app/installations/{installation}/access_tokens`
pub fn token_path(installation: u64) -> String {
    format!("/app/installations/{installation}/access_tokens")
}

/// `/repos/{owner}/{repo}/installation`
pub fn installation_path(owner: &str, repo: &str) -> String {
    format!("/repos/{owner}/{repo}/installation")
}

fn repo_key(owner: &str, repo: &str) -> String {
    format!("{}/{}", owner.to_ascii_lowercase(), repo.to_ascii_lowercase())
}

/// What a route decided, before any scripted answer.
enum Outcome {
    /// The request is well-formed; answer this normally.
    Normal { status: u16, body: Option<Value> },
    /// The request failed a check.
    Rejected { status: u16, message: String },
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let method = req.method().as_str().to_owned();
    let full_path = req.path().to_owned();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let json_body = serde_json::from_slice::<Value>(&body).ok();

    let outcome = match full_path.strip_prefix(&shared.prefix) {
        Some(path) if shared.prefix.is_empty() || path.starts_with('/') => {
            match deliveries_route(&shared, &method, path, req.query_string(), &headers) {
                Some(outcome) => outcome,
                None => route(&shared, &method, path, &headers, json_body.as_ref(), &raw_body),
            }
        }
        _ => Outcome::Rejected {
            status: 404,
            message: "Not Found".into(),
        },
    };

    let (status, response_body, delay, extra_headers) = match outcome {
        Outcome::Rejected { status, message } => (
            status,
            Some(json!({ "message": message, "documentation_url": "https://docs.github.com/rest" })),
            Duration::ZERO,
            Vec::new(),
        ),
        Outcome::Normal { status, body } => {
            let scripted = shared.lock().scripts.get_mut(&full_path).and_then(VecDeque::pop_front);
            match scripted {
                None => (status, body, Duration::ZERO, Vec::new()),
                Some(Reply {
                    status: None,
                    delay,
                    headers,
                    ..
                }) => (status, body, delay, headers),
                Some(Reply {
                    status: Some(s),
                    body: b,
                    delay,
                    headers,
                }) => (s, b, delay, headers),
            }
        }
    };

    shared.lock().requests.push(Recorded {
        method,
        path: full_path,
        headers,
        body: json_body,
        raw_body,
        status,
        at: std::time::Instant::now(),
    });
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let code =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(code);
    response.insert_header(("X-GitHub-Api-Version-Selected", API_VERSION));
    for header in extra_headers {
        response.insert_header(header);
    }
    if (200..300).contains(&status)
        && let Some(link) = deliveries_link(&shared, &req)
    {
        response.insert_header(("Link", link));
    }
    match response_body {
        Some(b) if status != 204 => response
            .content_type("application/json; charset=utf-8")
            .body(b.to_string()),
        _ => response.finish(),
    }
}

fn route(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&Value>,
    raw_body: &str,
) -> Outcome {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let Err(message) = check_common_headers(headers) {
        return Outcome::Rejected { status: 400, message };
    }
    match (method, segments.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            let Ok(installation) = id.parse::<u64>() else {
                return Outcome::Rejected {
                    status: 404,
                    message: "Not Found".into(),
                };
            };
            if let Err(message) = check_app_jwt(shared, headers) {
                return Outcome::Rejected { status: 400, message };
            }
            if !raw_body.is_empty() && body.is_none_or(|b| !b.is_object()) {
                return Outcome::Rejected {
                    status: 400,
                    message: "mock: the body, when present, must be a JSON object".into(),
                };
            }
            let mut inner = shared.lock();
            let token = format!("ghs_mock{}x{}", inner.issued.len() + 1, uuid::Uuid::new_v4().simple());
            inner.issued.push((token.clone(), installation));
            let lifetime = inner.token_lifetime.unwrap_or(time::Duration::hours(1));
            let expires_at = (time::OffsetDateTime::now_utc() + lifetime)
                .replace_nanosecond(0)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            Outcome::Normal {
                status: 201,
                body: Some(json!({
                    "token": token,
                    "expires_at": expires_at,
                    "permissions": { "actions": "read", "deployments": "write", "metadata": "read" },
                    "repository_selection": "all",
                })),
            }
        }
        ("GET", ["repos", owner, repo, "installation"]) => {
            if let Err(message) = check_app_jwt(shared, headers) {
                return Outcome::Rejected { status: 400, message };
            }
            let id = shared
                .lock()
                .installations
                .get(&repo_key(owner, repo))
                .copied()
                .unwrap_or(TEST_INSTALLATION_ID);
            Outcome::Normal {
                status: 200,
                body: Some(installation_body(id, owner)),
            }
        }
        (
            "POST",
            [
                "repos",
                owner,
                repo,
                "actions",
                "runs",
                run_id,
                "deployment_protection_rule",
            ],
        ) => {
            if run_id.parse::<u64>().is_err() {
                return Outcome::Rejected {
                    status: 404,
                    message: "Not Found".into(),
                };
            }
            if let Err(rejected) = check_installation_token(shared, headers, owner, repo) {
                return rejected;
            }
            if let Err(message) = check_review_body(headers, body) {
                return Outcome::Rejected { status: 400, message };
            }
            Outcome::Normal {
                status: 204,
                body: None,
            }
        }
        ("GET", ["repos", owner, repo, "actions", "runs", run_id]) => {
            let Ok(run_id) = run_id.parse::<u64>() else {
                return Outcome::Rejected {
                    status: 404,
                    message: "Not Found".into(),
                };
            };
            if let Err(rejected) = check_installation_token(shared, headers, owner, repo) {
                return rejected;
            }
            if !raw_body.is_empty() {
                return Outcome::Rejected {
                    status: 400,
                    message: "mock: a GET carries no body".into(),
                };
            }
            let (attempt, actor, triggering) =
                shared
                    .lock()
                    .runs
                    .get(&run_id)
                    .cloned()
                    .unwrap_or((1, "octocat".into(), "octocat".into()));
            Outcome::Normal {
                status: 200,
                body: Some(workflow_run_body(owner, repo, run_id, attempt, &actor, &triggering)),
            }
        }
        _ => Outcome::Rejected {
            status: 404,
            message: "Not Found".into(),
        },
    }
}

/// The bearer must be an installation token this mock issued, not revoked,
/// for the repository's installation.
fn check_installation_token(
    shared: &Shared,
    headers: &BTreeMap<String, String>,
    owner: &str,
    repo: &str,
) -> Result<(), Outcome> {
    let Some(token) = bearer(headers) else {
        return Err(Outcome::Rejected {
            status: 400,
            message: "mock: missing `Authorization: Bearer <installation token>`".into(),
        });
    };
    let inner = shared.lock();
    let Some((_, for_installation)) = inner.issued.iter().find(|(t, _)| t == token) else {
        return Err(Outcome::Rejected {
            status: 400,
            message: "mock: the bearer token is not an installation token this mock issued".into(),
        });
    };
    if inner.revoked.contains(token) {
        return Err(Outcome::Rejected {
            status: 401,
            message: "Bad credentials".into(),
        });
    }
    let repo_installation = inner
        .installations
        .get(&repo_key(owner, repo))
        .copied()
        .unwrap_or(TEST_INSTALLATION_ID);
    if *for_installation != repo_installation {
        return Err(Outcome::Rejected {
            status: 400,
            message: format!(
                "mock: the token is for installation {for_installation}, the repository's is {repo_installation}"
            ),
        });
    }
    Ok(())
}

/// A workflow run as `GET /repos/{owner}/{repo}/actions/runs/{run_id}`
/// answers it (the fields portcullis reads, and a few around them).
fn workflow_run_body(owner: &str, repo: &str, run_id: u64, attempt: u32, actor: &str, triggering: &str) -> Value {
    let user = |login: &str| json!({ "login": login, "id": 583231, "type": "User", "site_admin": false });
    json!({
        "id": run_id,
        "name": "deploy",
        "run_attempt": attempt,
        "run_number": 42,
        "event": "push",
        "status": "waiting",
        "conclusion": null,
        "head_branch": "main",
        "path": ".github/workflows/deploy.yml",
        "actor": user(actor),
        "triggering_actor": user(triggering),
        "html_url": format!("https://github.com/{owner}/{repo}/actions/runs/{run_id}"),
        "url": format!("https://api.github.com/repos/{owner}/{repo}/actions/runs/{run_id}"),
    })
}

fn check_common_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    if headers.get("accept").map(String::as_str) != Some("application/vnd.github+json") {
        return Err("mock: `Accept: application/vnd.github+json` is required".into());
    }
    if headers.get("x-github-api-version").map(String::as_str) != Some(API_VERSION) {
        return Err(format!("mock: `X-GitHub-Api-Version: {API_VERSION}` is required"));
    }
    if headers.get("user-agent").is_none_or(|ua| ua.trim().is_empty()) {
        // GitHub itself refuses requests without a User-Agent.
        return Err("mock: a `User-Agent` is required".into());
    }
    Ok(())
}

fn bearer(headers: &BTreeMap<String, String>) -> Option<&str> {
    headers
        .get("authorization")?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

#[derive(serde::Deserialize)]
struct MockAppClaims {
    iat: i64,
    exp: i64,
}

/// The App JWT must verify against the App's public key, be issued by
/// [`TEST_APP_ID`], be current, and live at most 10 minutes (GitHub's rule).
fn check_app_jwt(shared: &Shared, headers: &BTreeMap<String, String>) -> Result<(), String> {
    let jwt = bearer(headers).ok_or("mock: missing `Authorization: Bearer <App JWT>`")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[TEST_APP_ID.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<MockAppClaims>(jwt, &shared.public_key, &validation)
        .map_err(|e| format!("mock: the App JWT does not verify: {e}"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if data.claims.iat > now + 5 {
        return Err("mock: the App JWT's iat is in the future".into());
    }
    if data.claims.exp - data.claims.iat > 600 {
        return Err("mock: the App JWT lives more than 10 minutes".into());
    }
    Ok(())
}

fn check_review_body(headers: &BTreeMap<String, String>, body: Option<&Value>) -> Result<(), String> {
    if !headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Err("mock: `Content-Type: application/json` is required".into());
    }
    let body = body
        .and_then(Value::as_object)
        .ok_or("mock: the body must be a JSON object")?;
    if !body.get("environment_name").is_some_and(Value::is_string) {
        return Err("mock: `environment_name` (a string) is required".into());
    }
    // Without `state` the body is a status report (GitHub's
    // `review-custom-gates-comment-required`), which needs a comment.
    if body.contains_key("state") && !matches!(body.get("state").and_then(Value::as_str), Some("approved" | "rejected"))
    {
        return Err("mock: `state` must be \"approved\" or \"rejected\"".into());
    }
    let comment = body
        .get("comment")
        .and_then(Value::as_str)
        .ok_or("mock: `comment` (a string) is required")?;
    if comment.chars().count() > 1024 {
        return Err("mock: `comment` is longer than 1024 characters".into());
    }
    if let Some(extra) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "environment_name" | "state" | "comment"))
    {
        return Err(format!("mock: unexpected field `{extra}`"));
    }
    Ok(())
}

/// A real-shaped installation (the fields GitHub returns).
fn installation_body(id: u64, owner: &str) -> Value {
    json!({
        "id": id,
        "client_id": "Iv23liTESTONLYmock",
        "account": {
            "login": owner,
            "id": 9919,
            "node_id": "MDEyOk9yZ2FuaXphdGlvbjk5MTk=",
            "avatar_url": "https://avatars.githubusercontent.com/u/9919?v=4",
            "gravatar_id": "",
            "url": format!("https://api.github.com/users/{owner}"),
            "html_url": format!("https://github.com/{owner}"),
            "type": "Organization",
            "site_admin": false
        },
        "repository_selection": "all",
        "access_tokens_url": format!("https://api.github.com/app/installations/{id}/access_tokens"),
        "repositories_url": "https://api.github.com/installation/repositories",
        "html_url": format!("https://github.com/organizations/{owner}/settings/installations/{id}"),
        "app_id": TEST_APP_ID,
        "app_slug": "portcullis-test-only",
        "target_id": 9919,
        "target_type": "Organization",
        "permissions": { "actions": "read", "deployments": "write", "metadata": "read" },
        "events": ["deployment_protection_rule"],
        "created_at": "2026-01-12T09:30:11.000Z",
        "updated_at": "2026-01-12T09:30:11.000Z",
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null
    })
}

// ----- The App's webhook deliveries (the redelivery reconciler) -----------
//
// - `GET /app/hook/deliveries?per_page=N&cursor=C`: requires the App JWT;
//   answers the deliveries set with [`GithubMock::set_deliveries`], newest
//   first, `per_page` (default 30, at most 100) at a time, with a `Link`
//   header whose `rel="next"` URL carries the next page's `cursor`.
// - `POST /app/hook/deliveries/{delivery_id}/attempts`: requires the App JWT
//   and an id that is in the list (else 404); answers 202 `{}`.

impl GithubMock {
    /// The deliveries `GET /app/hook/deliveries` lists, newest first (build
    /// them with [`delivery_item`]).
    pub fn set_deliveries(&self, items: Vec<Value>) {
        self.shared.lock().deliveries = items;
    }

    /// The delivery ids redelivery was asked for (accepted requests), in order.
    pub fn redelivery_requests(&self) -> Vec<u64> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/attempts") && r.status == 202)
            .filter_map(|r| r.path.split('/').rev().nth(1).and_then(|id| id.parse().ok()))
            .collect()
    }

    /// Listing requests (any status), in order.
    pub fn delivery_listings(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/app/hook/deliveries"))
            .collect()
    }
}

/// A real-shaped item of `GET /app/hook/deliveries`.
pub fn delivery_item(
    id: u64,
    guid: &str,
    delivered_at: time::OffsetDateTime,
    status_code: u16,
    event: &str,
    redelivery: bool,
) -> Value {
    let status = match status_code {
        200..=299 => "OK".to_string(),
        0 => "timed out".to_string(),
        code => format!("Invalid HTTP Response: {code}"),
    };
    json!({
        "id": id,
        "guid": guid,
        "delivered_at": delivered_at
            .replace_nanosecond(0)
            .unwrap_or(delivered_at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "redelivery": redelivery,
        "duration": 0.27,
        "status": status,
        "status_code": status_code,
        "event": event,
        "action": if event == "deployment_protection_rule" { json!("requested") } else { Value::Null },
        "installation_id": TEST_INSTALLATION_ID,
        "repository_id": 1296269,
        "throttled_at": null
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn page_bounds(query: &str, total: usize) -> Result<(usize, usize), String> {
    let per_page = match query_param(query, "per_page") {
        None => 30,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or("mock: per_page must be 1..=100")?,
    };
    let start = match query_param(query, "cursor") {
        None => 0,
        Some(c) => c
            .strip_prefix("v1_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or("mock: unknown cursor")?,
    };
    Ok((start.min(total), (start + per_page).min(total)))
}

fn deliveries_route(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
) -> Option<Outcome> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let list = match (method, segments.as_slice()) {
        ("GET", ["app", "hook", "deliveries"]) => true,
        ("POST", ["app", "hook", "deliveries", _, "attempts"]) => false,
        _ => return None,
    };
    if let Err(message) = check_common_headers(headers).and_then(|()| check_app_jwt(shared, headers)) {
        return Some(Outcome::Rejected { status: 400, message });
    }
    let inner = shared.lock();
    if list {
        return Some(match page_bounds(query, inner.deliveries.len()) {
            Ok((from, to)) => Outcome::Normal {
                status: 200,
                body: Some(Value::Array(inner.deliveries[from..to].to_vec())),
            },
            Err(message) => Outcome::Rejected { status: 400, message },
        });
    }
    let known = segments[3]
        .parse::<u64>()
        .ok()
        .is_some_and(|id| inner.deliveries.iter().any(|d| d["id"] == id));
    Some(if known {
        Outcome::Normal {
            status: 202,
            body: Some(json!({})),
        }
    } else {
        Outcome::Rejected {
            status: 404,
            message: "Not Found".into(),
        }
    })
}

/// The `Link` header of a deliveries page that has a next page.
fn deliveries_link(shared: &Shared, req: &HttpRequest) -> Option<String> {
    let path = req.path().strip_prefix(&shared.prefix)?;
    if req.method() != actix_web::http::Method::GET || path != "/app/hook/deliveries" {
        return None;
    }
    let total = shared.lock().deliveries.len();
    let (_, to) = page_bounds(req.query_string(), total).ok()?;
    let per_page = query_param(req.query_string(), "per_page").unwrap_or_else(|| "30".into());
    let base = format!(
        "http://{}{}{}",
        req.connection_info().host(),
        shared.prefix,
        "/app/hook/deliveries"
    );
    (to < total).then(|| {
        format!(
            "<{base}?per_page={per_page}&cursor=v1_{to}>; rel=\"next\", <{base}?per_page={per_page}>; rel=\"first\""
        )
    })
}
