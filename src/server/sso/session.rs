//! Sealed values and cookies: the sign-in flow and the review grant travel
//! HMAC-sealed, so any replica can open them, and the form is bound to a
//! CSRF cookie (signed double submit).

use std::sync::OnceLock;

use actix_web::HttpRequest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::config::SsoConfig;
use crate::gate::Gate;

pub(super) const FLOW_COOKIE: &str = "portcullis_sso_flow";
pub(super) const CSRF_COOKIE: &str = "portcullis_sso_csrf";
/// How long a sign-in, and then a signed-in form, stays usable.
pub(super) const FLOW_TTL: i64 = 600;

pub(super) fn seal_key(sso: &SsoConfig) -> Vec<u8> {
    static RANDOM: OnceLock<Vec<u8>> = OnceLock::new();
    match &sso.client_secret {
        Some(secret) => crate::crypto::hmac_sha256(secret.expose().as_bytes(), &[b"portcullis sso seal v1"]),
        None => RANDOM
            .get_or_init(|| {
                let mut key = vec![0u8; 32];
                if aws_lc_rs::rand::fill(&mut key).is_err() {
                    // Never expected; a fixed key would be guessable, so make
                    // every seal fail to open instead.
                    key.clear();
                }
                key
            })
            .clone(),
    }
}

pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(json).base64url(hmac)`, for `purpose`, expiring at `exp`.
pub(super) fn seal(key: &[u8], purpose: &str, mut value: Value, exp: i64) -> String {
    value["purpose"] = json!(purpose);
    value["exp"] = json!(exp);
    let payload = URL_SAFE_NO_PAD.encode(value.to_string());
    let tag = crate::crypto::hmac_sha256(key, &[b"portcullis-seal.", payload.as_bytes()]);
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
}

pub(super) fn unseal(key: &[u8], purpose: &str, sealed: &str, now: i64) -> Option<Value> {
    if key.is_empty() {
        return None;
    }
    let (payload, tag) = sealed.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if !crate::crypto::hmac_sha256_verify(key, &[b"portcullis-seal.", payload.as_bytes()], &tag) {
        return None;
    }
    let value: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let fresh = value.get("exp").and_then(Value::as_i64).is_some_and(|exp| exp > now);
    (value.get("purpose").and_then(Value::as_str) == Some(purpose) && fresh).then_some(value)
}

pub(super) fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn set_cookie(gate: &Gate, name: &str, value: &str, max_age: i64, same_site: &str) -> String {
    let secure = if gate.config.server.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/reviews; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}")
}

pub(super) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_only_unchanged_for_its_purpose_and_before_it_expires() {
        let key = b"k".repeat(32);
        let sealed = seal(&key, "flow", json!({"r": "req_1"}), 1000);
        assert_eq!(
            unseal(&key, "flow", &sealed, 999).map(|v| v["r"].clone()),
            Some(json!("req_1"))
        );
        assert!(unseal(&key, "flow", &sealed, 1000).is_none(), "expired");
        assert!(unseal(&key, "grant", &sealed, 999).is_none(), "another purpose");
        assert!(unseal(b"other", "flow", &sealed, 999).is_none(), "another key");
        let (p, t) = sealed.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json!({"r": "req_2", "purpose": "flow", "exp": 2000}).to_string());
        assert!(
            unseal(&key, "flow", &format!("{forged}.{t}"), 999).is_none(),
            "another payload"
        );
        assert!(unseal(&key, "flow", p, 999).is_none(), "no tag");
        assert!(unseal(&[], "flow", &sealed, 999).is_none(), "no key");
    }
}
