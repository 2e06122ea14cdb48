//! A Slack interactivity request: the v0 signature over the raw body (valid
//! for half the inputs), then the form and payload parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::slack::interaction::parse;
use portcullis::slack::signature::{sign, verify};

const SECRET: &[u8] = b"fuzz-signing-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let ts = now.unix_timestamp();
    let (timestamp, signature) = if selector & 1 == 0 {
        (ts.to_string(), sign(SECRET, ts, body))
    } else {
        let text = String::from_utf8_lossy(body);
        let mut parts = text.splitn(3, '\n');
        (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        )
    };
    if verify(SECRET, Some(&timestamp), Some(&signature), body, now).is_ok() {
        let _ = parse(body);
    }
});
