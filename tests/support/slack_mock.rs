//! A local fake of the slice of Slack's Web API portcullis calls, as an
//! actix-web server on `127.0.0.1:0`, that records and checks every call.
//!
//! The API base URL is [`SlackMock::url`] (`http://127.0.0.1:PORT/api`);
//! methods are `POST /api/chat.postMessage`, `POST /api/chat.update`,
//! `GET /api/chat.getPermalink?channel&message_ts` and
//! `GET /api/users.info?user`. Like Slack it answers HTTP 200 with
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`:
//!
//! - every call must carry `Authorization: Bearer` [`BOT_TOKEN`]
//!   (`not_authed` without one, `invalid_auth` with another);
//! - `chat.postMessage` needs a JSON body (`application/json`) with a known
//!   `channel` (a `#name` or an id from [`SlackMock::add_channel`]), a
//!   non-empty `text` and valid `blocks`; it answers the channel id and a
//!   fresh `ts`;
//! - `chat.update` needs the channel id and the `ts` of a posted message
//!   (`channel_not_found`, `message_not_found`) and valid blocks;
//! - `chat.getPermalink` answers `https://portcullis-test.slack.com/archives/{channel}/p{ts}`;
//! - `users.info` answers from a directory ([`SlackMock::add_user`]),
//!   `user_not_found` otherwise;
//! - `views.open` needs a JSON body with a `trigger_id` the fake issued
//!   ([`SlackMock::issue_trigger`]; `invalid_trigger_id`), not used before
//!   (`exchanged_trigger_id`) and at most three seconds old
//!   (`expired_trigger_id`), and a modal that passes Slack's view rules
//!   (`super::slack_views`; `invalid_arguments`).
//!
//! Blocks are checked against Block Kit's rules for the blocks portcullis
//! uses (section, context, actions with buttons, header, divider): known
//! block and element types, no unknown keys, text objects and their limits,
//! unique `block_id`s and `action_id`s, button styles, `value` or `url`.
//! A failed check answers `invalid_blocks` (or Slack's code for the
//! problem) and is listed by [`SlackMock::problems`]; tests assert there
//! are none.
//!
//! `POST /respond/{tag}` stands for an interaction's `response_url` and
//! records the ephemeral replies ([`SlackMock::responses`]).
//!
//! Tests script answers per method with [`SlackMock::script`]: a 429 with
//! `Retry-After`, an error, a 5xx or a slow answer; each used once, in order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

pub const BOT_TOKEN: &str = "xoxb-test-only-1234-5678-abcdef";
pub const SIGNING_SECRET: &str = "test-only-slack-signing-secret-4e1c";
pub const TEAM_ID: &str = "T0PORTCULLIS";

/// One call the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The API method (`chat.postMessage`) or `respond/{tag}`.
    pub method: String,
    pub http_method: String,
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub body: Option<Value>,
    /// What the mock answered (its JSON).
    pub answer: Value,
    pub status: u16,
    pub at: Instant,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    pub fn ok(&self) -> bool {
        self.status == 200 && self.answer["ok"] == true
    }
}

/// A message as it stands, with every version of its blocks.
#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Value,
    /// The blocks of each version, oldest first (the post, then each update).
    pub history: Vec<Value>,
}

impl Message {
    /// The `action_id`s of the buttons of the current version.
    pub fn action_ids(&self) -> Vec<String> {
        action_ids(&self.blocks)
    }
    /// All the text of the current version, for `contains` checks.
    pub fn all_text(&self) -> String {
        all_text(&self.blocks)
    }
    /// The button with `action_id`, if any.
    pub fn button(&self, action_id: &str) -> Option<Value> {
        buttons(&self.blocks).into_iter().find(|b| b["action_id"] == action_id)
    }
}

/// The `action_id`s of the buttons in `blocks`.
pub fn action_ids(blocks: &Value) -> Vec<String> {
    buttons(blocks)
        .iter()
        .filter_map(|b| b["action_id"].as_str().map(str::to_string))
        .collect()
}

fn buttons(blocks: &Value) -> Vec<Value> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Every text in `blocks`, joined by newlines.
pub fn all_text(blocks: &Value) -> String {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(t)) = m.get("text") {
                    out.push(t.clone());
                }
                for (k, x) in m {
                    if k != "text" || !x.is_string() {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(blocks, &mut out);
    out.join("\n")
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: Option<u16>,
    body: Option<Value>,
    retry_after: Option<u64>,
    delay: Duration,
}

impl Reply {
    /// HTTP 429 with `Retry-After: secs`, as Slack rate-limits.
    pub fn rate_limited(secs: u64) -> Self {
        Reply {
            status: Some(429),
            body: Some(json!({"ok": false, "error": "ratelimited"})),
            retry_after: Some(secs),
            delay: Duration::ZERO,
        }
    }
    /// `{"ok": false, "error": code}` with HTTP 200.
    pub fn error(code: &str) -> Self {
        Reply {
            status: Some(200),
            body: Some(json!({"ok": false, "error": code})),
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
    /// A bare HTTP status (a 5xx from Slack's edge).
    pub fn status(status: u16) -> Self {
        Reply {
            status: Some(status),
            body: None,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
    /// The normal answer (with [`Reply::delay`]: a slow Slack).
    pub fn normal() -> Self {
        Reply {
            status: None,
            body: None,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    problems: Vec<String>,
    scripts: HashMap<String, VecDeque<Reply>>,
    /// `#name` → id.
    channels: HashMap<String, String>,
    users: HashMap<String, Value>,
    /// (channel id, ts) → message.
    messages: BTreeMap<(String, String), Message>,
    seq: u64,
    /// trigger_id → (issued at, exchanged).
    triggers: HashMap<String, (Instant, bool)>,
    /// Views opened with `views.open`, in order.
    views: Vec<Value>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake. Stops when dropped.
pub struct SlackMock {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl SlackMock {
    /// Starts the fake with the channels `#deploys-production` (`C0PRODUCTION`)
    /// and `#deploys-staging` (`C0STAGING`) and an empty directory.
    pub async fn start() -> SlackMock {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
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
        let mock = SlackMock { shared, addr, handle };
        mock.add_channel("#deploys-production", "C0PRODUCTION");
        mock.add_channel("#deploys-staging", "C0STAGING");
        mock
    }

    /// The API base URL (`[slack] api_url`).
    pub fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// A `response_url` served by this fake.
    pub fn response_url(&self, tag: &str) -> String {
        format!("http://{}/respond/{tag}", self.addr)
    }

    pub fn add_channel(&self, name: &str, id: &str) {
        self.shared.lock().channels.insert(name.to_string(), id.to_string());
    }

    /// Adds a user to the directory `users.info` answers from.
    pub fn add_user(&self, id: &str, name: &str, email: Option<&str>, display_name: &str) {
        let mut profile = json!({ "display_name": display_name, "real_name": format!("{name} (test)") });
        if let Some(e) = email {
            profile["email"] = json!(e);
        }
        let user = json!({
            "id": id, "team_id": TEAM_ID, "name": name, "deleted": false, "real_name": format!("{name} (test)"),
            "is_bot": false, "is_admin": false, "is_restricted": false, "is_ultra_restricted": false,
            "is_email_confirmed": true, "tz": "Europe/Amsterdam", "profile": profile,
        });
        self.shared.lock().users.insert(id.to_string(), user);
    }

    /// Changes fields of a user in the directory (a guest, a foreign team,
    /// an unconfirmed email).
    pub fn patch_user(&self, id: &str, fields: serde_json::Value) {
        let mut shared = self.shared.lock();
        let user = shared.users.get_mut(id).expect("a known user");
        for (k, v) in fields.as_object().expect("an object") {
            user[k] = v.clone();
        }
    }

    /// Queues answers for calls of `method`; each is used once, in order.
    pub fn script(&self, method: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .lock()
            .scripts
            .entry(method.to_string())
            .or_default()
            .extend(replies);
    }

    /// A `trigger_id` as Slack puts in an interaction payload: usable once,
    /// for three seconds, by `views.open`.
    pub fn issue_trigger(&self) -> String {
        let mut inner = self.shared.lock();
        inner.seq += 1;
        let id = format!(
            "{}.{}.{:016x}",
            1_700_000_000 + inner.seq,
            4_242_000 + inner.seq,
            inner.seq * 7919
        );
        inner.triggers.insert(id.clone(), (Instant::now(), false));
        id
    }

    /// The views opened with `views.open`, oldest first.
    pub fn views(&self) -> Vec<Value> {
        self.shared.lock().views.clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }

    /// Checks that failed, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        self.shared.lock().problems.clone()
    }

    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.values().cloned().collect()
    }

    /// The ephemeral replies posted to `response_url`s: (tag, body).
    pub fn responses(&self) -> Vec<(String, Value)> {
        self.calls()
            .into_iter()
            .filter_map(|c| {
                c.method
                    .strip_prefix("respond/")
                    .map(|t| (t.to_string(), c.body.clone().unwrap_or(Value::Null)))
            })
            .collect()
    }

    /// Waits until `pred` holds for some message (its current version), up
    /// to `timeout`; returns it.
    pub async fn wait_message(&self, timeout: Duration, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no Slack message {what} within {timeout:?}; messages: {:#?}\ncalls: {:?}",
                self.messages(),
                self.calls().iter().map(|c| (&c.method, &c.answer)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` calls of `method` arrived.
    pub async fn wait_calls(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls_to(method);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{} call(s) of {method} within {timeout:?}, got {}",
                n,
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SlackMock {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        drop(handle.stop(false));
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.path().to_string();
    let http_method = req.method().as_str().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let json_body: Option<Value> = serde_json::from_slice(&body).ok();

    if let Some(tag) = path.strip_prefix("/respond/") {
        let mut inner = shared.lock();
        let mut problems = Vec::new();
        if http_method != "POST" {
            problems.push(format!("respond/{tag}: {http_method}, not POST"));
        }
        match &json_body {
            Some(b) if b["text"].is_string() && b["response_type"] == "ephemeral" && b["replace_original"] == false => {
            }
            other => problems.push(format!("respond/{tag}: not an ephemeral reply: {other:?}")),
        }
        if headers.contains_key("authorization") {
            problems.push(format!(
                "respond/{tag}: a response_url needs no token, yet one was sent"
            ));
        }
        inner.problems.extend(problems);
        inner.calls.push(Call {
            method: format!("respond/{tag}"),
            http_method,
            headers,
            query,
            body: json_body,
            answer: json!({"ok": true}),
            status: 200,
            at: Instant::now(),
        });
        return HttpResponse::Ok().content_type("text/plain").body("ok");
    }

    let Some(method) = path.strip_prefix("/api/").map(str::to_string) else {
        return HttpResponse::NotFound().finish();
    };
    let scripted = shared.lock().scripts.get_mut(&method).and_then(VecDeque::pop_front);
    if let Some(r) = &scripted
        && !r.delay.is_zero()
    {
        tokio::time::sleep(r.delay).await;
    }
    let (status, answer, retry_after) = match scripted {
        Some(Reply {
            status: Some(status),
            body,
            retry_after,
            ..
        }) => (status, body.unwrap_or(Value::Null), retry_after),
        _ => {
            let mut inner = shared.lock();
            let answer = inner.answer(&method, &http_method, &headers, &query, &body, json_body.as_ref());
            (200, answer, None)
        }
    };
    shared.lock().calls.push(Call {
        method,
        http_method,
        headers,
        query,
        body: json_body,
        answer: answer.clone(),
        status,
        at: Instant::now(),
    });
    let mut r =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK));
    if let Some(secs) = retry_after {
        r.insert_header(("retry-after", secs.to_string()));
    }
    if answer.is_null() { r.finish() } else { r.json(answer) }
}

impl Inner {
    fn fail(&mut self, method: &str, code: &str, why: String) -> Value {
        self.problems.push(format!("{method}: {why}"));
        json!({"ok": false, "error": code})
    }

    fn answer(
        &mut self,
        method: &str,
        http_method: &str,
        headers: &BTreeMap<String, String>,
        query: &BTreeMap<String, String>,
        raw: &[u8],
        body: Option<&Value>,
    ) -> Value {
        match headers.get("authorization").map(String::as_str) {
            None => return self.fail(method, "not_authed", "no Authorization header".into()),
            Some(a) if a != format!("Bearer {BOT_TOKEN}") => {
                return self.fail(
                    method,
                    "invalid_auth",
                    "the Authorization header is not the bot token".into(),
                );
            }
            _ => {}
        }
        if raw.windows(BOT_TOKEN.len()).any(|w| w == BOT_TOKEN.as_bytes())
            || query.values().any(|v| v.contains(BOT_TOKEN))
        {
            self.problems
                .push(format!("{method}: the bot token travels in the body or URL"));
        }
        match method {
            "chat.postMessage" | "chat.update" => {
                if http_method != "POST" {
                    return self.fail(method, "invalid_request", format!("{http_method}, not POST"));
                }
                if !headers
                    .get("content-type")
                    .is_some_and(|c| c.starts_with("application/json"))
                {
                    return self.fail(method, "invalid_form_data", "the body is not application/json".into());
                }
                let Some(body) = body.filter(|b| b.is_object()) else {
                    return self.fail(method, "invalid_json", "the body is not a JSON object".into());
                };
                let Some(text) = body["text"].as_str().filter(|t| !t.is_empty()) else {
                    return self.fail(method, "no_text", "no `text` fallback".into());
                };
                if let Err(why) = check_blocks(&body["blocks"]) {
                    return self.fail(method, "invalid_blocks", why);
                }
                let channel = body["channel"].as_str().unwrap_or("").to_string();
                let blocks = body["blocks"].clone();
                if method == "chat.postMessage" {
                    let known: HashSet<&String> = self.channels.values().collect();
                    let id = match self.channels.get(&channel) {
                        Some(id) => id.clone(),
                        None if known.contains(&channel) => channel.clone(),
                        None => return self.fail(method, "channel_not_found", format!("unknown channel `{channel}`")),
                    };
                    self.seq += 1;
                    let ts = format!("1700000000.{:06}", self.seq);
                    self.messages.insert(
                        (id.clone(), ts.clone()),
                        Message {
                            channel: id.clone(),
                            ts: ts.clone(),
                            text: text.to_string(),
                            blocks: blocks.clone(),
                            history: vec![blocks.clone()],
                        },
                    );
                    json!({"ok": true, "channel": id, "ts": ts, "message": {"type": "message", "text": text, "blocks": blocks}})
                } else {
                    let ts = body["ts"].as_str().unwrap_or("").to_string();
                    if !self.channels.values().any(|c| *c == channel) {
                        return self.fail(method, "channel_not_found", format!("`{channel}` is not a channel id"));
                    }
                    let Some(m) = self.messages.get_mut(&(channel.clone(), ts.clone())) else {
                        return self.fail(method, "message_not_found", format!("no message {channel}/{ts}"));
                    };
                    m.text = text.to_string();
                    m.blocks = blocks.clone();
                    m.history.push(blocks);
                    json!({"ok": true, "channel": channel, "ts": ts, "text": text})
                }
            }
            "views.open" => {
                if http_method != "POST" {
                    return self.fail(method, "invalid_request", format!("{http_method}, not POST"));
                }
                if !headers
                    .get("content-type")
                    .is_some_and(|c| c.starts_with("application/json"))
                {
                    return self.fail(method, "invalid_form_data", "the body is not application/json".into());
                }
                let Some(body) = body.filter(|b| b.is_object()) else {
                    return self.fail(method, "invalid_json", "the body is not a JSON object".into());
                };
                let trigger = body["trigger_id"].as_str().unwrap_or("").to_string();
                match self.triggers.get_mut(&trigger) {
                    None => {
                        return self.fail(
                            method,
                            "invalid_trigger_id",
                            format!("trigger `{trigger}` was never issued"),
                        );
                    }
                    Some((_, true)) => {
                        return self.fail(
                            method,
                            "exchanged_trigger_id",
                            format!("trigger `{trigger}` was already used"),
                        );
                    }
                    Some((at, _)) if at.elapsed() > Duration::from_secs(3) => {
                        return self.fail(
                            method,
                            "expired_trigger_id",
                            format!("trigger `{trigger}` is older than 3 s"),
                        );
                    }
                    Some((_, used)) => *used = true,
                }
                if let Err(why) = super::slack_views::check_view(&body["view"]) {
                    return self.fail(method, "invalid_arguments", why);
                }
                self.views.push(body["view"].clone());
                let mut view = body["view"].clone();
                view["id"] = json!(format!("V{:08}", self.views.len()));
                view["team_id"] = json!(TEAM_ID);
                view["state"] = json!({"values": {}});
                json!({"ok": true, "view": view})
            }
            "chat.getPermalink" => {
                if http_method != "GET" {
                    return self.fail(method, "invalid_request", format!("{http_method}, not GET"));
                }
                let channel = query.get("channel").cloned().unwrap_or_default();
                let ts = query.get("message_ts").cloned().unwrap_or_default();
                if !self.messages.contains_key(&(channel.clone(), ts.clone())) {
                    return self.fail(method, "message_not_found", format!("no message {channel}/{ts}"));
                }
                json!({"ok": true, "channel": channel, "permalink": permalink(&channel, &ts)})
            }
            "users.info" => {
                if http_method != "GET" {
                    return self.fail(method, "invalid_request", format!("{http_method}, not GET"));
                }
                match query.get("user").and_then(|u| self.users.get(u)) {
                    Some(user) => json!({"ok": true, "user": user}),
                    None => json!({"ok": false, "error": "user_not_found"}),
                }
            }
            other => self.fail(
                other,
                "unknown_method",
                format!("portcullis has no business calling `{other}`"),
            ),
        }
    }
}

/// The permalink the fake gives the message at (channel, ts).
pub fn permalink(channel: &str, ts: &str) -> String {
    format!(
        "https://portcullis-test.slack.com/archives/{channel}/p{}",
        ts.replace('.', "")
    )
}

fn keys_allowed(what: &str, v: &Value, allowed: &[&str]) -> Result<(), String> {
    let obj = v.as_object().ok_or(format!("{what} is not an object"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what} has an unknown key `{k}`")),
        None => Ok(()),
    }
}

fn check_text(what: &str, v: &Value, plain_only: bool, max: usize) -> Result<(), String> {
    keys_allowed(what, v, &["type", "text", "emoji", "verbatim"])?;
    let kind = v["type"].as_str().unwrap_or("");
    match kind {
        "plain_text" => {
            if v.get("verbatim").is_some() {
                return Err(format!("{what}: `verbatim` is for mrkdwn"));
            }
        }
        "mrkdwn" if !plain_only => {
            if v.get("emoji").is_some() {
                return Err(format!("{what}: `emoji` is for plain_text"));
            }
        }
        _ => return Err(format!("{what}: text type `{kind}` is not allowed here")),
    }
    let text = v["text"].as_str().ok_or(format!("{what}: `text` is not a string"))?;
    let n = text.chars().count();
    if n == 0 || n > max {
        return Err(format!("{what}: text length {n} is outside 1..={max}"));
    }
    Ok(())
}

/// Block Kit's rules for the blocks portcullis sends.
pub fn check_blocks(blocks: &Value) -> Result<(), String> {
    let blocks = blocks.as_array().ok_or("`blocks` is not an array")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks (1..=50 allowed)", blocks.len()));
    }
    let mut block_ids = HashSet::new();
    let mut action_ids = HashSet::new();
    for (i, b) in blocks.iter().enumerate() {
        let what = format!("blocks[{i}]");
        if let Some(id) = b.get("block_id") {
            let id = id.as_str().ok_or(format!("{what}: block_id is not a string"))?;
            if id.is_empty() || id.len() > 255 || !block_ids.insert(id.to_string()) {
                return Err(format!("{what}: block_id `{id}` is empty, too long or repeated"));
            }
        }
        match b["type"].as_str().unwrap_or("") {
            "section" => {
                keys_allowed(&what, b, &["type", "block_id", "text", "fields", "accessory"])?;
                check_text(&format!("{what}.text"), &b["text"], false, 3000)?;
            }
            "header" => {
                keys_allowed(&what, b, &["type", "block_id", "text"])?;
                check_text(&format!("{what}.text"), &b["text"], true, 150)?;
            }
            "divider" => keys_allowed(&what, b, &["type", "block_id"])?,
            "context" => {
                keys_allowed(&what, b, &["type", "block_id", "elements"])?;
                let els = b["elements"].as_array().ok_or(format!("{what}: no elements"))?;
                if els.is_empty() || els.len() > 10 {
                    return Err(format!("{what}: {} elements (1..=10)", els.len()));
                }
                for (j, e) in els.iter().enumerate() {
                    check_text(&format!("{what}.elements[{j}]"), e, false, 3000)?;
                }
            }
            "actions" => {
                keys_allowed(&what, b, &["type", "block_id", "elements"])?;
                let els = b["elements"].as_array().ok_or(format!("{what}: no elements"))?;
                if els.is_empty() || els.len() > 25 {
                    return Err(format!("{what}: {} elements (1..=25)", els.len()));
                }
                for (j, e) in els.iter().enumerate() {
                    let w = format!("{what}.elements[{j}]");
                    keys_allowed(
                        &w,
                        e,
                        &[
                            "type",
                            "text",
                            "action_id",
                            "value",
                            "url",
                            "style",
                            "confirm",
                            "accessibility_label",
                        ],
                    )?;
                    if e["type"] != "button" {
                        return Err(format!("{w}: only buttons are expected, got {}", e["type"]));
                    }
                    check_text(&format!("{w}.text"), &e["text"], true, 75)?;
                    let id = e["action_id"].as_str().ok_or(format!("{w}: no action_id"))?;
                    if id.is_empty() || id.len() > 255 || !action_ids.insert(id.to_string()) {
                        return Err(format!("{w}: action_id `{id}` is empty, too long or repeated"));
                    }
                    if let Some(style) = e.get("style")
                        && style != "primary"
                        && style != "danger"
                    {
                        return Err(format!("{w}: style {style} is not primary or danger"));
                    }
                    let value = e
                        .get("value")
                        .map(|v| v.as_str().map(str::len).ok_or(format!("{w}: value is not a string")));
                    if let Some(len) = value.transpose()?
                        && (len == 0 || len > 2000)
                    {
                        return Err(format!("{w}: value length {len} outside 1..=2000"));
                    }
                    if let Some(u) = e.get("url") {
                        let u = u.as_str().ok_or(format!("{w}: url is not a string"))?;
                        if u.len() > 3000 || url::Url::parse(u).is_err() {
                            return Err(format!("{w}: url `{u}` is not a URL"));
                        }
                    }
                    if e.get("value").is_none() && e.get("url").is_none() {
                        return Err(format!("{w}: a button with neither value nor url does nothing"));
                    }
                }
            }
            other => return Err(format!("{what}: block type `{other}` is not one portcullis sends")),
        }
    }
    Ok(())
}
