//! The stable error codes of the HTTP API. A code is part of the contract:
//! it never changes meaning, and serde renders it in `snake_case`. The HTTP
//! status of each is chosen in one table, in the server.

use serde::Serialize;

/// Every error code the HTTP API answers with (outside the HTML review
/// pages, whose codes name their page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not found: no such route.
    NotFound,
    /// Not found: no such deployment request.
    RequestNotFound,
    /// Not found: no such audit record.
    AuditRecordNotFound,
    /// Bad request: the environment is not configured.
    EnvironmentNotConfigured,
    /// Bad request: the body does not parse.
    PayloadMalformed,
    /// Bad request: the body could not be read.
    PayloadUnreadable,
    /// Bad request: a required header is missing.
    HeaderMissing,
    /// Bad request: a header is malformed.
    HeaderInvalid,
    /// Bad request: not a full commit sha.
    InvalidSha,
    /// Bad request: the verdict body is malformed.
    InvalidVerdict,
    /// Bad request: the evidence fails its schema.
    InvalidEvidence,
    /// Bad request: evidence_digest is not sha256:HEX.
    InvalidEvidenceDigest,
    /// Bad request: evidence_digest is not the evidence's digest.
    EvidenceDigestMismatch,
    /// Bad request: the environment evaluates evidence itself.
    EvidenceRequired,
    /// Bad request: the environment takes asserted verdicts.
    EvidenceNotSupported,
    /// Bad request: a query parameter is malformed.
    InvalidQuery,
    /// Unauthorized: the webhook signature header is missing.
    SignatureMissing,
    /// Unauthorized: the signature does not verify.
    SignatureInvalid,
    /// Unauthorized: the signature's timestamp is outside the window.
    SignatureStale,
    /// Unauthorized: the token has expired.
    TokenExpired,
    /// Unauthorized: the token is not valid yet.
    TokenNotYetValid,
    /// Unauthorized: the token is malformed.
    TokenMalformed,
    /// Unauthorized: the token's issuer is not trusted.
    IssuerNotTrusted,
    /// Unauthorized: the token's audience is not this service.
    AudienceMismatch,
    /// Unauthorized: the token's algorithm is not allowed.
    AlgorithmNotAllowed,
    /// Forbidden: no read token is configured and the caller is not on a
    /// loopback address.
    ReadTokenRequired,
    /// Unauthorized: the read token is wrong.
    ReadTokenInvalid,
    /// Forbidden: the poster is not a trusted verdict producer.
    ProducerNotTrusted,
    /// Forbidden: a verdict for another commit than the posting job's.
    ShaMismatch,
    /// Payload too large.
    PayloadTooLarge,
    /// Unavailable: the issuer's keys could not be fetched.
    IssuerUnavailable,
    /// Unavailable: the state backend is down.
    StateUnavailable,
    /// Unavailable: the audit trail cannot be written.
    AuditUnavailable,
    /// Unavailable: no policy evaluator could answer.
    PolicyUnavailable,
    /// Unavailable: the platform API could not be reached.
    PlatformUnavailable,
    /// Not found: the webhook's platform is not configured.
    PlatformNotConfigured,
    /// Unavailable: the Slack client could not be built.
    SlackUnavailable,
    /// Too many requests from one source: slow down (`Retry-After`).
    RateLimited,
    /// Unavailable: a bounded queue is full; try again.
    Overloaded,
    /// Not found: no signed checkpoint yet (or no audit signing key).
    CheckpointNotFound,
    /// Not found: the request has no final decision to give a receipt for.
    ReceiptNotFound,
    /// Bad request: a proof was asked for sizes or records the log cannot
    /// prove (beyond the trail, or `from > to`).
    ProofOutOfRange,
    /// Bad request: the environment has no break glass (or not through this channel).
    BreakGlassNotEnabled,
    /// Bad request: a break-glass justification is shorter than 20 characters.
    JustificationTooShort,
    /// Forbidden: the person may not ask for break glass here.
    NotABreakGlassRequester,
    /// Forbidden: the person may not confirm (or review) break glass here.
    NotABreakGlassConfirmer,
    /// Forbidden: the requester cannot confirm their own grant.
    SelfConfirmation,
    /// Not found: no such break-glass grant.
    GrantNotFound,
    /// Conflict: the grant is not open for this step (already confirmed, expired, not used, or reviewed).
    GrantClosed,
    /// Conflict: a grant for this commit and environment is already open.
    GrantAlreadyOpen,
}

impl ErrorCode {
    /// The code as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::RequestNotFound => "request_not_found",
            ErrorCode::AuditRecordNotFound => "audit_record_not_found",
            ErrorCode::EnvironmentNotConfigured => "environment_not_configured",
            ErrorCode::PayloadMalformed => "payload_malformed",
            ErrorCode::PayloadUnreadable => "payload_unreadable",
            ErrorCode::HeaderMissing => "header_missing",
            ErrorCode::HeaderInvalid => "header_invalid",
            ErrorCode::InvalidSha => "invalid_sha",
            ErrorCode::InvalidVerdict => "invalid_verdict",
            ErrorCode::InvalidEvidence => "invalid_evidence",
            ErrorCode::InvalidEvidenceDigest => "invalid_evidence_digest",
            ErrorCode::EvidenceDigestMismatch => "evidence_digest_mismatch",
            ErrorCode::EvidenceRequired => "evidence_required",
            ErrorCode::EvidenceNotSupported => "evidence_not_supported",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::SignatureMissing => "signature_missing",
            ErrorCode::SignatureInvalid => "signature_invalid",
            ErrorCode::SignatureStale => "signature_stale",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::TokenMalformed => "token_malformed",
            ErrorCode::IssuerNotTrusted => "issuer_not_trusted",
            ErrorCode::AudienceMismatch => "audience_mismatch",
            ErrorCode::AlgorithmNotAllowed => "algorithm_not_allowed",
            ErrorCode::ReadTokenRequired => "read_token_required",
            ErrorCode::ReadTokenInvalid => "read_token_invalid",
            ErrorCode::ProducerNotTrusted => "producer_not_trusted",
            ErrorCode::ShaMismatch => "sha_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::IssuerUnavailable => "issuer_unavailable",
            ErrorCode::StateUnavailable => "state_unavailable",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::PolicyUnavailable => "policy_unavailable",
            ErrorCode::PlatformUnavailable => "platform_unavailable",
            ErrorCode::PlatformNotConfigured => "platform_not_configured",
            ErrorCode::SlackUnavailable => "slack_unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::CheckpointNotFound => "checkpoint_not_found",
            ErrorCode::ReceiptNotFound => "receipt_not_found",
            ErrorCode::ProofOutOfRange => "proof_out_of_range",
            ErrorCode::BreakGlassNotEnabled => "break_glass_not_enabled",
            ErrorCode::JustificationTooShort => "justification_too_short",
            ErrorCode::NotABreakGlassRequester => "not_a_break_glass_requester",
            ErrorCode::NotABreakGlassConfirmer => "not_a_break_glass_confirmer",
            ErrorCode::SelfConfirmation => "self_confirmation",
            ErrorCode::GrantNotFound => "grant_not_found",
            ErrorCode::GrantClosed => "grant_closed",
            ErrorCode::GrantAlreadyOpen => "grant_already_open",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn serde_renders_the_same_code_as_as_str() {
        for code in [
            ErrorCode::RequestNotFound,
            ErrorCode::EvidenceDigestMismatch,
            ErrorCode::TokenNotYetValid,
            ErrorCode::PlatformNotConfigured,
            ErrorCode::SlackUnavailable,
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
            ErrorCode::CheckpointNotFound,
            ErrorCode::ReceiptNotFound,
            ErrorCode::ProofOutOfRange,
            ErrorCode::BreakGlassNotEnabled,
            ErrorCode::JustificationTooShort,
            ErrorCode::NotABreakGlassRequester,
            ErrorCode::NotABreakGlassConfirmer,
            ErrorCode::SelfConfirmation,
            ErrorCode::GrantNotFound,
            ErrorCode::GrantClosed,
            ErrorCode::GrantAlreadyOpen,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
        }
        assert_eq!(ErrorCode::ReadTokenInvalid.as_str(), "read_token_invalid");
    }
}
