//! The floor server: the least a GitHub deployment gate's webhook endpoint
//! can do. A bare actix-web server that verifies `X-Hub-Signature-256` and
//! parses the handful of fields a gate needs (borrowed, no copies), then
//! answers 202. No state, no logging, no decision: the upper bound that
//! portcullis's webhook throughput is compared with.
//!
//! A mode of the `load-driver` binary, not a binary of its own: the driver
//! re-executes itself as `load-driver floor <port>` (0 for any), so the
//! floor runs in its own process (its own CPU time and resident memory,
//! read from `/proc` like the other servers') and a fresh clone needs to
//! build nothing else. It prints `READY <port>` once listening. The secret
//! comes from `FLOOR_WEBHOOK_SECRET`; `FLOOR_WORKERS` sets actix's worker
//! count (default: one per core, as portcullis).

use std::borrow::Cow;
use std::io::Write;
use std::net::TcpListener;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use aws_lc_rs::hmac;
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    environment: Option<Cow<'a, str>>,
    #[serde(borrow)]
    deployment_callback_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    deployment: Option<Deployment<'a>>,
    #[serde(borrow)]
    repository: Repository<'a>,
    installation: Option<Installation>,
    #[serde(borrow)]
    sender: Option<Sender<'a>>,
}

#[derive(Deserialize)]
struct Deployment<'a> {
    #[serde(borrow)]
    sha: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Repository<'a> {
    #[serde(borrow)]
    full_name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct Sender<'a> {
    #[serde(borrow)]
    login: Cow<'a, str>,
}

fn verified(key: &hmac::Key, req: &HttpRequest, body: &[u8]) -> bool {
    let Some(sig) = req.headers().get("x-hub-signature-256").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let mut tag = [0u8; 32];
    if hex_sig.len() != 64 || !decode_hex(hex_sig.as_bytes(), &mut tag) {
        return false;
    }
    hmac::verify(key, body, &tag).is_ok()
}

fn decode_hex(src: &[u8], out: &mut [u8; 32]) -> bool {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (i, pair) in src.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return false,
        }
    }
    true
}

async fn webhook(req: HttpRequest, body: web::Bytes, key: web::Data<hmac::Key>) -> HttpResponse {
    if !verified(&key, &req, &body) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": {"code": "signature_invalid"}}));
    }
    let event = req
        .headers()
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if event != "deployment_protection_rule" {
        return HttpResponse::Accepted().json(serde_json::json!({"status": "ignored"}));
    }
    let Ok(p) = serde_json::from_slice::<Payload<'_>>(&body) else {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": {"code": "payload_malformed"}}));
    };
    // The fields a gate keys on: all present, or the delivery is malformed.
    let complete = p.action == "requested"
        && p.environment.as_deref().is_some_and(|e| !e.is_empty())
        && p.deployment_callback_url
            .as_deref()
            .is_some_and(|u| u.contains("/actions/runs/"))
        && p.deployment.as_ref().is_some_and(|d| d.sha.len() == 40)
        && p.repository.full_name.contains('/')
        && p.installation.as_ref().is_some_and(|i| i.id > 0)
        && p.sender.as_ref().is_some_and(|s| !s.login.is_empty());
    if complete {
        HttpResponse::Accepted().json(serde_json::json!({"status": "accepted"}))
    } else {
        HttpResponse::BadRequest().json(serde_json::json!({"error": {"code": "payload_malformed"}}))
    }
}

/// The first argument that makes the driver run as the floor server.
pub const MODE: &str = "floor";

/// Runs the floor server on `port` until the process is killed.
pub fn run(port: u16) -> std::io::Result<()> {
    let secret = std::env::var("FLOOR_WEBHOOK_SECRET").unwrap_or_else(|_| "bench-webhook-secret".into());
    let workers = std::env::var("FLOOR_WORKERS").ok().and_then(|w| w.parse().ok());
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    let key = web::Data::new(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()));
    actix_web::rt::System::new().block_on(async move {
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(key.clone())
                .app_data(web::PayloadConfig::new(1024 * 1024))
                .route("/webhooks/github", web::post().to(webhook))
        });
        if let Some(w) = workers {
            server = server.workers(w);
        }
        let server = server.listen(listener)?.run();
        println!("READY {port}");
        std::io::stdout().flush()?;
        server.await
    })
}
