//! A GitHub delivery: the signature check over the raw body, then the parse
//! into a deployment request. Half the inputs carry a valid signature, so the
//! parser sees every body; the other half a header from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::Secret;
use portcullis::webhook::github::{GithubEvent, deployment_request, parse, verify_signature};

const SECRET: &str = "fuzz-webhook-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let secrets = [Secret::new(SECRET)];
    let (header, body) = if selector & 1 == 0 {
        let tag = portcullis::crypto::hmac_sha256(SECRET.as_bytes(), &[rest]);
        (format!("sha256={}", hex_encode(&tag)), rest)
    } else {
        let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        (String::from_utf8_lossy(&rest[..cut]).into_owned(), rest.get(cut + 1..).unwrap_or_default())
    };
    if verify_signature(&secrets, Some(&header), body).is_err() {
        return;
    }
    let event = match selector >> 1 & 3 {
        0 | 1 => "deployment_protection_rule",
        2 => "ping",
        _ => "push",
    };
    let api = url::Url::parse("https://api.github.com").expect("static URL");
    if let Ok(GithubEvent::ProtectionRule(p)) = parse(event, body, &api) {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let req = deployment_request("fuzz", std::time::Duration::from_secs(u64::MAX), "fuzz", &p, now);
        assert_eq!(req.repository, p.repository);
        assert!(req.deadline >= now);
    }
});

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
