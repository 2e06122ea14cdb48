//! A GitLab delivery: headers (`name: value` lines, then a blank line) and a
//! body from the input; the token or Standard Webhooks signature check, the
//! dedup key, then the parse into a deployment hook.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::webhook::gitlab::{GitlabEvent, dedup_key, parse, verify};

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n").unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 2..).unwrap_or_default();
    let headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let lookup = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = portcullis::config::Config::from_toml(
        r#"
        [gitlab]
        url = "https://gitlab.example.com"
        webhook_token = { env = "T" }
        signing_token = { env = "S" }
        "#,
        &|name| match name {
            "T" => Some("fuzz-token".into()),
            "S" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            _ => None,
        },
    );
    let Ok(config) = config else { return };
    let Some(gitlab) = config.gitlab.as_ref() else { return };
    let _ = verify(gitlab, &lookup, body, time::OffsetDateTime::UNIX_EPOCH);
    if let Some(key) = dedup_key(&lookup) {
        assert!(key.len() <= 200, "a dedup key is bounded: {}", key.len());
    }
    if let Ok(GitlabEvent::Deployment(hook)) = parse(body) {
        let id = portcullis::webhook::gitlab::request_id(hook.project_id, hook.deployment_id, &hook.environment);
        assert!(id.starts_with("req_"));
    }
});
