//! Webhook ingress: verifying that a delivery comes from the platform, and
//! parsing it into the few fields the gate uses.
//!
//! Parsing goes into small serde types of our own, not a full SDK model:
//! SDK models demand many fields, fail on trimmed payloads and drop fields
//! they do not know, and a typed parse of only what the gate reads is several
//! times cheaper than building a `serde_json::Value` of the whole body.

pub mod github;
pub mod gitlab;

use crate::domain::ErrorCode;

/// Why a delivery was refused before it reached the gate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("the signature header is missing")]
    MissingSignature,
    #[error("the signature does not match any configured secret")]
    BadSignature,
    #[error("the signature timestamp is outside the allowed window")]
    StaleTimestamp,
    #[error("a required header is missing: {0}")]
    MissingHeader(&'static str),
    #[error("the payload is malformed: {0}")]
    Malformed(String),
}

impl WebhookError {
    /// The stable error code of the HTTP API.
    pub fn code(&self) -> ErrorCode {
        match self {
            WebhookError::MissingSignature => ErrorCode::SignatureMissing,
            WebhookError::BadSignature => ErrorCode::SignatureInvalid,
            WebhookError::StaleTimestamp => ErrorCode::SignatureStale,
            WebhookError::MissingHeader(_) => ErrorCode::HeaderMissing,
            WebhookError::Malformed(_) => ErrorCode::PayloadMalformed,
        }
    }
}

/// Shortens serde's message to something safe and useful for a 400 body: it
/// names the field and position, and never echoes the payload.
pub(crate) fn parse_error(e: &serde_json::Error) -> WebhookError {
    let msg = e.to_string();
    let msg: String = msg.chars().take(200).collect();
    WebhookError::Malformed(msg)
}
