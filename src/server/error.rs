//! One error body everywhere: `{"error": {"code", "message"}}`, with a stable
//! `code`. Upstream error text and secrets never reach a caller; internal
//! causes go to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::ErrorCode;
use crate::gate::GateError;
use crate::identity::TokenError;
use crate::slack::signature::SignatureError;
use crate::webhook::WebhookError;

/// An error answer: its code, which alone chooses the HTTP status (through
/// [`status_of`]), and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    /// Seconds for a `Retry-After` header, when the caller should wait.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After: secs` header to the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.code)
    }
    fn error_response(&self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            answer.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        answer.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let message = match &e {
            // The cause (a network error) is for the log, not the caller.
            TokenError::IssuerUnavailable(_) => "the issuer's keys could not be fetched; try again".to_string(),
            other => other.to_string(),
        };
        ApiError::new(e.error_code(), message)
    }
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<GateError> for ApiError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Token(t) => t.into(),
            GateError::State(s) => {
                tracing::error!(error = %s, "state backend error");
                ApiError::new(
                    ErrorCode::StateUnavailable,
                    "the state backend is unavailable; try again",
                )
            }
            GateError::Audit(s) => {
                tracing::error!(error = %s, "audit error");
                ApiError::new(ErrorCode::AuditUnavailable, "the audit trail is unavailable; try again")
            }
            GateError::Refused { code, message } => ApiError::new(code, message),
        }
    }
}

/// The HTTP status of each error code: the one table.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::NotFound
        | E::RequestNotFound
        | E::AuditRecordNotFound
        | E::PlatformNotConfigured
        | E::CheckpointNotFound
        | E::ReceiptNotFound
        | E::GrantNotFound => StatusCode::NOT_FOUND,
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
        | E::InvalidQuery
        | E::ProofOutOfRange
        | E::BreakGlassNotEnabled
        | E::JustificationTooShort => StatusCode::BAD_REQUEST,
        E::SignatureMissing
        | E::SignatureInvalid
        | E::SignatureStale
        | E::TokenExpired
        | E::TokenNotYetValid
        | E::TokenMalformed
        | E::IssuerNotTrusted
        | E::AudienceMismatch
        | E::AlgorithmNotAllowed
        | E::ReadTokenInvalid => StatusCode::UNAUTHORIZED,
        E::ProducerNotTrusted
        | E::ShaMismatch
        | E::ReadTokenRequired
        | E::NotABreakGlassRequester
        | E::NotABreakGlassConfirmer
        | E::SelfConfirmation => StatusCode::FORBIDDEN,
        E::GrantClosed | E::GrantAlreadyOpen => StatusCode::CONFLICT,
        E::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        E::IssuerUnavailable
        | E::StateUnavailable
        | E::AuditUnavailable
        | E::PolicyUnavailable
        | E::PlatformUnavailable
        | E::SlackUnavailable
        | E::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;
    use actix_web::body::MessageBody;

    use super::*;

    #[test]
    fn the_status_comes_from_the_code_and_the_body_names_it() {
        let cases = [
            (ErrorCode::PlatformNotConfigured, 404, "platform_not_configured"),
            (ErrorCode::ReadTokenRequired, 403, "read_token_required"),
            (ErrorCode::ReadTokenInvalid, 401, "read_token_invalid"),
            (ErrorCode::SlackUnavailable, 503, "slack_unavailable"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::Overloaded, 503, "overloaded"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::CheckpointNotFound, 404, "checkpoint_not_found"),
            (ErrorCode::ProofOutOfRange, 400, "proof_out_of_range"),
        ];
        for (code, status, wire) in cases {
            let answer = ApiError::new(code, "why").error_response();
            assert_eq!(answer.status().as_u16(), status, "{wire}");
            let body = answer.into_body().try_into_bytes().unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({"error": {"code": wire, "message": "why"}}));
        }
    }

    #[test]
    fn retry_after_becomes_a_header() {
        let answer = ApiError::new(ErrorCode::RateLimited, "slow down")
            .retry_after(3)
            .error_response();
        assert_eq!(answer.headers().get("retry-after").unwrap(), "3");
        let plain = ApiError::new(ErrorCode::Overloaded, "busy").error_response();
        assert!(plain.headers().get("retry-after").is_none());
    }

    #[test]
    fn webhook_and_token_refusals_keep_their_codes_and_statuses() {
        let e = ApiError::from(WebhookError::Malformed("x".into()));
        assert_eq!(
            (e.status_code().as_u16(), e.code().as_str()),
            (400, "payload_malformed")
        );
        let e = ApiError::from(WebhookError::BadSignature);
        assert_eq!(
            (e.status_code().as_u16(), e.code().as_str()),
            (401, "signature_invalid")
        );
        let e = ApiError::from(TokenError::IssuerUnavailable("connection refused to 10.0.0.1".into()));
        assert_eq!(
            (e.status_code().as_u16(), e.code().as_str()),
            (503, "issuer_unavailable")
        );
        assert!(!e.message().contains("10.0.0.1"), "the cause stays in the log");
        let e = ApiError::from(SignatureError::Stale);
        assert_eq!((e.status_code().as_u16(), e.code().as_str()), (401, "signature_stale"));
    }
}
