//! Webhook ingress.

/// Decodes a Standard Webhooks secret (`whsec_<base64>`) into its key bytes.
pub fn standard_webhooks_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok().filter(|k| !k.is_empty())
}
