//! One error body everywhere: `{"error": {"code", "message"}}`, with a stable
//! `code`. Upstream error text and secrets never reach a caller; internal
//! causes go to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::ErrorCode;
use crate::gate::GateError;
use crate::identity::TokenError;
use crate::webhook::WebhookError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        let status = match e {
            WebhookError::Malformed(_) | WebhookError::MissingHeader(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let status = match e {
            TokenError::IssuerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        let message = match &e {
            // The cause (a network error) is for the log, not the caller.
            TokenError::IssuerUnavailable(_) => "the issuer's keys could not be fetched; try again".to_string(),
            other => other.to_string(),
        };
        ApiError::new(status, e.code(), message)
    }
}

impl From<GateError> for ApiError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Token(t) => t.into(),
            GateError::State(s) => {
                tracing::error!(error = %s, "state backend error");
                ApiError::unavailable("the state backend is unavailable; try again")
            }
            GateError::Audit(s) => {
                tracing::error!(error = %s, "audit error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit trail is unavailable; try again",
                )
            }
            GateError::Refused { code, message } => ApiError::new(status_of(code), code.as_str(), message),
        }
    }
}

/// The HTTP status of each error code: the one table.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::NotFound | E::RequestNotFound | E::AuditRecordNotFound => StatusCode::NOT_FOUND,
        E::EnvironmentNotConfigured
        | E::PayloadMalformed
        | E::PayloadUnreadable
        | E::HeaderMissing
        | E::HeaderInvalid
        | E::InvalidSha
        | E::InvalidVerdict
        | E::InvalidEvidence
        | E::InvalidEvidenceDigest
        | E::EvidenceDigestMismatch
        | E::EvidenceRequired
        | E::EvidenceNotSupported
        | E::InvalidQuery => StatusCode::BAD_REQUEST,
        E::SignatureMissing
        | E::SignatureInvalid
        | E::SignatureStale
        | E::TokenExpired
        | E::TokenNotYetValid
        | E::TokenMalformed
        | E::IssuerNotTrusted
        | E::AudienceMismatch
        | E::AlgorithmNotAllowed
        | E::ReadTokenRequired
        | E::ReadTokenInvalid => StatusCode::UNAUTHORIZED,
        E::ProducerNotTrusted | E::ShaMismatch => StatusCode::FORBIDDEN,
        E::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::IssuerUnavailable
        | E::StateUnavailable
        | E::AuditUnavailable
        | E::PolicyUnavailable
        | E::PlatformUnavailable
        | E::PlatformNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
    }
}
