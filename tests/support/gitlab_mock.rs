//! A recording mock of the GitLab REST API (v4), on `127.0.0.1:0`.
//!
//! It serves the four calls portcullis makes, checks them as GitLab would,
//! and records every request (method, raw path, query, headers, body, and
//! the status it answered):
//!
//! - `GET /api/v4/projects/:id` (numeric id or URL-encoded path);
//! - `GET /api/v4/projects/:id/deployments/:deployment_id`;
//! - `GET /api/v4/projects/:id/deployments?status=&page=&per_page=`, paged
//!   with GitLab's `x-next-page` / `x-total` headers;
//! - `POST /api/v4/projects/:id/deployments/:deployment_id/approval`;
//! - `POST /api/v4/projects/:id/jobs/:job_id/play`.
//!
//! Checks: a missing or wrong `PRIVATE-TOKEN` is 401; an approval whose
//! JSON body lacks `status: "approved" | "rejected"` is 400, as is a
//! comment over 255 characters or a deployment that is not `blocked`
//! ("This deployment is not waiting for approvals."); playing a job whose
//! deployment is still blocked is 400. An accepted approval unblocks the
//! deployment (`created`; `failed` when rejected), so a second one gets the
//! same 400 GitLab gives.
//!
//! Scripting: [`GitlabMock::script`] queues replies for one method and
//! path. Each authenticated request to it takes the next reply; when the
//! queue is empty the mock answers normally. A [`Reply`] is a fixed
//! status and body, or [`Reply::normal`] (answer as usual), either of them
//! optionally after a delay, e.g. `[Reply::message(500, "..."),
//! Reply::normal()]` for a 500 then the real answer, or
//! `[Reply::normal().after(Duration::from_secs(2))]` for a timeout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// One request the mock received, and the status it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    /// The raw path, still percent-encoded (`/api/v4/projects/a%2Fb`).
    pub path: String,
    pub query: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn query_pairs(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }
}

/// An approval GitLab took (answered 2xx).
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub project: String,
    pub deployment_id: u64,
    pub status: String,
    pub comment: Option<String>,
    pub represented_as: Option<String>,
    pub body: Value,
}

/// A scripted answer. See the module docs.
#[derive(Debug, Clone)]
pub struct Reply {
    fixed: Option<(u16, Value)>,
    delay: Option<Duration>,
    /// Extra response headers of a fixed answer.
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// Answers `status` with `body`.
    pub fn status(status: u16, body: Value) -> Self {
        Reply {
            fixed: Some((status, body)),
            delay: None,
            headers: Vec::new(),
        }
    }

    /// Answers `status` with GitLab's error shape `{"message": message}`.
    pub fn message(status: u16, message: &str) -> Self {
        Self::status(status, json!({ "message": message }))
    }

    /// Answers as the mock normally would.
    pub fn normal() -> Self {
        Reply {
            fixed: None,
            delay: None,
            headers: Vec::new(),
        }
    }

    /// Waits `delay` before answering (the request is recorded at once).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Adds a response header (`Retry-After`) to a fixed answer.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

struct State {
    token: String,
    /// Numeric id to `group/project` path.
    projects: BTreeMap<u64, String>,
    /// (project id, deployment id) to the deployment as the API shows it.
    deployments: BTreeMap<(u64, u64), Value>,
    scripts: HashMap<(String, String), VecDeque<Reply>>,
    requests: Vec<Recorded>,
    max_per_page: usize,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running mock. Stops when dropped.
pub struct GitlabMock {
    url: String,
    state: Shared,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for GitlabMock {
    fn drop(&mut self) {
        // `stop` sends the command at once; the returned future only waits.
        drop(self.handle.stop(false));
    }
}

impl GitlabMock {
    /// Starts the mock; requests must carry `PRIVATE-TOKEN: token`.
    pub async fn start(token: &str) -> GitlabMock {
        let state: Shared = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            projects: BTreeMap::new(),
            deployments: BTreeMap::new(),
            scripts: HashMap::new(),
            requests: Vec::new(),
            max_per_page: 100,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handle)))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .expect("listen")
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        GitlabMock {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// The instance URL to configure as `gitlab.url`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn add_project(&self, id: u64, path: &str) {
        lock(&self.state).projects.insert(id, path.to_owned());
    }

    /// Stores a deployment as `GET /projects/:id/deployments/:id` returns
    /// it (its `id` names it).
    pub fn add_deployment(&self, project_id: u64, deployment: Value) {
        let id = deployment["id"].as_u64().expect("deployment id");
        lock(&self.state).deployments.insert((project_id, id), deployment);
    }

    /// The stored deployment, as the mock now shows it.
    pub fn deployment(&self, project_id: u64, deployment_id: u64) -> Option<Value> {
        lock(&self.state).deployments.get(&(project_id, deployment_id)).cloned()
    }

    /// GitLab caps `per_page` at 100; a lower cap makes paging testable.
    pub fn set_max_per_page(&self, max: usize) {
        lock(&self.state).max_per_page = max.max(1);
    }

    /// Queues `replies` for `method` and the raw `path` (no query).
    pub fn script(&self, method: &str, path: &str, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state)
            .scripts
            .entry((method.to_ascii_uppercase(), path.to_owned()))
            .or_default()
            .extend(replies);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// The approvals GitLab took (2xx), in order.
    pub fn approvals(&self) -> Vec<Approval> {
        self.requests().iter().filter_map(accepted_approval).collect()
    }

    /// Waits until at least `n` approvals were taken; panics after
    /// `timeout`, listing what did arrive.
    pub async fn wait_for_approvals(&self, n: usize, timeout: Duration) -> Vec<Approval> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let approvals = self.approvals();
            if approvals.len() >= n {
                return approvals;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                    .collect();
                panic!(
                    "expected {n} approval(s) within {timeout:?}, got {}; requests: {seen:#?}",
                    approvals.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn accepted_approval(r: &Recorded) -> Option<Approval> {
    let segments = decoded_segments(&r.path);
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ["api", "v4", "projects", project, "deployments", id, "approval"] = s.as_slice() else {
        return None;
    };
    if r.method != "POST" || !(200..300).contains(&r.status) {
        return None;
    }
    let body = r.json()?;
    Some(Approval {
        project: (*project).to_owned(),
        deployment_id: id.parse().ok()?,
        status: body["status"].as_str()?.to_owned(),
        comment: body["comment"].as_str().map(str::to_owned),
        represented_as: body["represented_as"].as_str().map(str::to_owned),
        body,
    })
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decoded_segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(decode).collect()
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let mut headers = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let index = {
        let mut s = lock(&state);
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: req.query_string().to_owned(),
            headers: headers.clone(),
            body: body.to_vec(),
            status: 0,
            at: std::time::Instant::now(),
        });
        s.requests.len() - 1
    };
    let (status, body, extra) = {
        let authorized = {
            let s = lock(&state);
            headers.get("private-token").is_some_and(|t| *t == s.token)
        };
        if authorized {
            let reply = lock(&state)
                .scripts
                .get_mut(&(method.clone(), path.clone()))
                .and_then(VecDeque::pop_front);
            if let Some(delay) = reply.as_ref().and_then(|r| r.delay) {
                tokio::time::sleep(delay).await;
            }
            match reply.and_then(|r| r.fixed.map(|f| (f, r.headers))) {
                Some(((status, body), headers)) => (status, body, headers),
                None => serve(&state, &method, &path, req.query_string(), &body),
            }
        } else {
            (401, json!({ "message": "401 Unauthorized" }), Vec::new())
        }
    };
    lock(&state).requests[index].status = status;
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"));
    for (name, value) in extra {
        response.insert_header((name, value));
    }
    response.json(body)
}

type Served = (u16, Value, Vec<(&'static str, String)>);

fn not_found(what: &str) -> Served {
    (404, json!({ "message": format!("404 {what} Not Found") }), Vec::new())
}

fn serve(state: &Shared, method: &str, path: &str, query: &str, body: &[u8]) -> Served {
    let segments = decoded_segments(path);
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut st = lock(state);
    let project_id = |key: &str, st: &State| -> Option<u64> {
        key.parse::<u64>()
            .ok()
            .filter(|id| st.projects.contains_key(id))
            .or_else(|| {
                st.projects
                    .iter()
                    .find(|(_, p)| p.eq_ignore_ascii_case(key))
                    .map(|(id, _)| *id)
            })
    };
    match (method, s.as_slice()) {
        ("GET", ["api", "v4", "projects", key]) => match project_id(key, &st) {
            Some(id) => {
                let path = st.projects[&id].clone();
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                (
                    200,
                    json!({ "id": id, "name": name, "path": name, "path_with_namespace": path }),
                    Vec::new(),
                )
            }
            None => not_found("Project"),
        },
        ("GET", ["api", "v4", "projects", key, "deployments"]) => {
            let Some(id) = project_id(key, &st) else {
                return not_found("Project");
            };
            let q: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let per_page = q
                .get("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(20)
                .clamp(1, st.max_per_page);
            let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            let all: Vec<Value> = st
                .deployments
                .iter()
                .filter(|((p, _), d)| *p == id && q.get("status").is_none_or(|s| d["status"] == s.as_str()))
                .map(|(_, d)| d.clone())
                .collect();
            let total_pages = all.len().div_ceil(per_page).max(1);
            let items: Vec<Value> = all.iter().skip((page - 1) * per_page).take(per_page).cloned().collect();
            let next = if page < total_pages {
                (page + 1).to_string()
            } else {
                String::new()
            };
            let headers = vec![
                ("x-page", page.to_string()),
                ("x-per-page", per_page.to_string()),
                ("x-total", all.len().to_string()),
                ("x-total-pages", total_pages.to_string()),
                ("x-next-page", next),
            ];
            (200, Value::Array(items), headers)
        }
        ("GET", ["api", "v4", "projects", key, "deployments", did]) => {
            let found = project_id(key, &st)
                .zip(did.parse::<u64>().ok())
                .and_then(|k| st.deployments.get(&k).cloned());
            match found {
                Some(d) => (200, d, Vec::new()),
                None => not_found("Deployment"),
            }
        }
        ("POST", ["api", "v4", "projects", key, "deployments", did, "approval"]) => {
            let Some(key) = project_id(key, &st).zip(did.parse::<u64>().ok()) else {
                return not_found("Deployment");
            };
            let Some(deployment) = st.deployments.get_mut(&key) else {
                return not_found("Deployment");
            };
            let Ok(body) = serde_json::from_slice::<Value>(body) else {
                return (400, json!({ "error": "status is missing" }), Vec::new());
            };
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if status != "approved" && status != "rejected" {
                return (
                    400,
                    json!({ "error": "status does not have a valid value" }),
                    Vec::new(),
                );
            }
            let comment = body.get("comment").cloned().unwrap_or(Value::Null);
            if comment.as_str().is_some_and(|c| c.chars().count() > 255) {
                return (
                    400,
                    json!({ "message": ["Comment is too long (maximum is 255 characters)"] }),
                    Vec::new(),
                );
            }
            if deployment["status"] != "blocked" {
                return (
                    400,
                    json!({ "message": "This deployment is not waiting for approvals." }),
                    Vec::new(),
                );
            }
            deployment["status"] = json!(if status == "approved" { "created" } else { "failed" });
            let approval = json!({
                "user": {
                    "id": 99,
                    "username": "portcullis-bot",
                    "name": "portcullis",
                    "state": "active",
                    "avatar_url": "https://secure.gravatar.com/avatar/1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a?s=80&d=identicon",
                    "web_url": "https://gitlab.example.com/portcullis-bot"
                },
                "status": status,
                "created_at": "2025-10-09T14:03:02.511Z",
                "comment": comment
            });
            (201, approval, Vec::new())
        }
        ("POST", ["api", "v4", "projects", key, "jobs", jid, "play"]) => {
            let Some(pid) = project_id(key, &st) else {
                return not_found("Project");
            };
            let Ok(jid) = jid.parse::<u64>() else {
                return not_found("Job");
            };
            let Some(deployment) = st
                .deployments
                .iter_mut()
                .find(|((p, _), d)| *p == pid && d["deployable"]["id"].as_u64() == Some(jid))
                .map(|(_, d)| d)
            else {
                return not_found("Job");
            };
            if deployment["status"] != "created" {
                return (
                    400,
                    json!({ "message": "400 Bad request - Unplayable Job" }),
                    Vec::new(),
                );
            }
            deployment["status"] = json!("running");
            deployment["deployable"]["status"] = json!("pending");
            let job = json!({
                "id": jid,
                "name": deployment["deployable"]["name"].clone(),
                "stage": deployment["deployable"]["stage"].clone(),
                "status": "pending",
                "ref": deployment["ref"].clone(),
                "pipeline": deployment["deployable"]["pipeline"].clone()
            });
            (200, job, Vec::new())
        }
        _ => (404, json!({ "error": "404 Not Found" }), Vec::new()),
    }
}
