//! Small cryptographic helpers over aws-lc-rs (already linked for JWT
//! verification), so the crate carries one crypto library.

use aws_lc_rs::{constant_time, digest, hmac};

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in data {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

/// Checks `tag` against HMAC-SHA256 of `data` under `key`, in constant time.
pub fn hmac_sha256_verify(key: &[u8], data: &[&[u8]], tag: &[u8]) -> bool {
    let expected = hmac_sha256(key, data);
    constant_time::verify_slices_are_equal(&expected, tag).is_ok()
}

/// Compares two secrets in constant time (for the length of the shorter).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Decodes a Standard Webhooks secret (`whsec_<base64>`) into its key bytes.
pub fn standard_webhooks_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}
