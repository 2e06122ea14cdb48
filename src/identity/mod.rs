//! OIDC ID token verification: turns the bearer token a CI job presents into
//! a [`VerifiedToken`] (issuer, repository, run, actor and every claim), or a
//! [`TokenError`] with a stable code.
//!
//! Order of checks, each failing closed:
//! 1. the header's algorithm (RS256 or ES256 only), before anything else;
//! 2. the unverified `iss` picks one trusted issuer (else `issuer_not_trusted`);
//! 3. the signature, with that issuer's keys from discovery and its JWKS;
//! 4. `aud`, then `exp`/`nbf`/`iat` against the caller's clock, 60 s leeway;
//! 5. the platform's claims for repository, run and actor must be present.
//!
//! Verified tokens are cached by their SHA-256 until they expire, so a job
//! that presents the same token twice costs one hash and one lookup; the time
//! checks still run on every hit.
//!
//! Submodules: `claims` holds the pure rules, `jwks` the key fetching.

mod claims;
mod jwks;
pub mod reviewer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;
use time::OffsetDateTime;

use crate::config::IssuerConfig;
use crate::crypto::sha256_hex;
use crate::domain::{ErrorCode, Platform};

use self::claims::{Jws, LEEWAY};
use self::jwks::{IssuerKeys, KeySet};

/// Verified tokens remembered at most; beyond it, expired entries go first,
/// then the soonest to expire.
const CACHE_CAPACITY: usize = 10_000;

/// The claims of a verified CI ID token, mapped to what the gate works with.
/// Holds the token's SHA-256, never the token.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `[[issuers]].name` of the issuer that vouched for the token.
    pub issuer_name: String,
    pub issuer: String,
    pub platform: Platform,
    pub subject: String,
    /// GitHub `actor`, GitLab `user_login`.
    pub actor: String,
    /// GitHub `repository`, GitLab `project_path`.
    pub repository: String,
    /// GitHub `run_id`, GitLab `pipeline_id`.
    pub run: String,
    pub sha: Option<String>,
    /// Every claim of the token.
    pub claims: BTreeMap<String, Value>,
    /// Hex SHA-256 of the token text.
    pub token_sha256: String,
    pub expires_at: OffsetDateTime,
}

impl VerifiedToken {
    /// The attestation of this token's run, verified at `now`. Its id derives
    /// from the token's hash, so the same token gives the same attestation.
    pub fn into_attestation(self, now: OffsetDateTime) -> crate::domain::Attestation {
        crate::domain::Attestation {
            id: format!("att_{}", &self.token_sha256[..self.token_sha256.len().min(20)]),
            issuer_name: self.issuer_name,
            issuer: self.issuer,
            platform: self.platform,
            subject: self.subject,
            actor: self.actor,
            repository: self.repository,
            run: self.run,
            sha: self.sha,
            claims: self.claims,
            token_sha256: self.token_sha256,
            verified_at: now,
            expires_at: self.expires_at,
        }
    }
}

/// Why a token was refused. Messages never contain the token, its claims'
/// values or anything an issuer answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not trusted")]
    IssuerNotTrusted,
    #[error("the token's audience does not include this service")]
    AudienceMismatch,
    #[error("the token's signature does not verify")]
    SignatureInvalid,
    #[error("the token's signing algorithm is not allowed (RS256 or ES256 only)")]
    AlgorithmNotAllowed,
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The issuer's keys could not be fetched; says nothing about the token,
    /// so the caller may retry (the server answers 503).
    #[error("the issuer's keys are unavailable: {0}")]
    IssuerUnavailable(String),
}

impl TokenError {
    /// The stable error code of the HTTP API.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::NotYetValid => ErrorCode::TokenNotYetValid,
            TokenError::IssuerNotTrusted => ErrorCode::IssuerNotTrusted,
            TokenError::AudienceMismatch => ErrorCode::AudienceMismatch,
            TokenError::SignatureInvalid => ErrorCode::SignatureInvalid,
            TokenError::AlgorithmNotAllowed => ErrorCode::AlgorithmNotAllowed,
            TokenError::Malformed(_) => ErrorCode::TokenMalformed,
            TokenError::IssuerUnavailable(_) => ErrorCode::IssuerUnavailable,
        }
    }

    /// [`Self::error_code`] as the API writes it (for logs and audit details).
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

/// A refused token: why, and whether its signature had verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: TokenError,
    /// The signature verified against a trusted issuer's key; the token was
    /// refused for what it says (its audience, times or claims).
    pub signed: bool,
}

/// Verifies CI ID tokens against the trusted issuers. Cheap to share behind
/// an `Arc`: all state (keys, the verified-token cache) is inside and
/// synchronised.
pub struct Verifier {
    issuers: Vec<IssuerKeys>,
    http: reqwest::Client,
    cache: TokenCache,
    /// Keys were given, not discovered: never fetch (offline verification).
    static_keys: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.config().name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// No network happens here: each issuer's keys are fetched on first use.
    /// `http` is used for discovery and JWKS requests; per-request timeouts
    /// are set by the verifier.
    pub fn new(issuers: Vec<IssuerConfig>, http: reqwest::Client) -> Self {
        Verifier {
            issuers: issuers.into_iter().map(IssuerKeys::new).collect(),
            http,
            cache: TokenCache::new(CACHE_CAPACITY),
            static_keys: false,
        }
    }

    /// A verifier whose issuers' keys are given (a JWKS document per issuer
    /// name) and never fetched: for verification without a network, such as
    /// fuzzing the whole verification path. An issuer without a document has
    /// no keys, so its tokens never verify.
    pub fn with_static_keys(issuers: Vec<IssuerConfig>, jwks: &BTreeMap<String, Vec<u8>>) -> Result<Self, String> {
        let mut verifier = Verifier::new(issuers, reqwest::Client::new());
        verifier.static_keys = true;
        for issuer in &verifier.issuers {
            let keys = match jwks.get(&issuer.config().name) {
                Some(doc) => jwks::parse_jwks(doc)?,
                None => Vec::new(),
            };
            issuer.preload(keys);
        }
        Ok(verifier)
    }

    /// Verifies a compact JWS ID token. `now` is the decision clock: `exp`,
    /// `nbf` and `iat` are judged against it (60 s leeway), never against the
    /// system clock, so decisions are reproducible.
    ///
    /// Fails with [`TokenError::IssuerUnavailable`] when the issuer's keys
    /// cannot be fetched, and with the variant naming the first failed check
    /// otherwise.
    pub async fn verify(&self, token: &str, now: OffsetDateTime) -> Result<VerifiedToken, TokenError> {
        self.verify_detailed(token, now).await.map_err(|r| r.error)
    }

    /// [`Verifier::verify`], saying of a refusal whether the token's
    /// signature had verified against a trusted issuer's key (so the refusal
    /// is about a real issuer's token: expired, for another audience, with
    /// unusable claims) or not (garbage, unsigned, forged, of an unknown
    /// issuer). Only the former are worth an audit record each.
    pub async fn verify_detailed(&self, token: &str, now: OffsetDateTime) -> Result<VerifiedToken, Refusal> {
        let unsigned = |error: TokenError| Refusal { error, signed: false };
        let signed = |error: TokenError| Refusal { error, signed: true };
        let jws = claims::parse_header(token).map_err(unsigned)?;
        let token_sha256 = sha256_hex(token.as_bytes());
        if let Some(hit) = self.cache.get(&token_sha256) {
            claims::check_times(&hit.claims, now).map_err(signed)?;
            return Ok(hit);
        }

        let token_claims = claims::decode_claims(jws.payload).map_err(unsigned)?;
        let iss = claims::issuer_of(&token_claims).map_err(unsigned)?;
        let Some(issuer) = self.issuers.iter().find(|i| i.config().issuer == iss) else {
            tracing::debug!(token_sha256 = %token_sha256, "token from an untrusted issuer");
            return Err(unsigned(TokenError::IssuerNotTrusted));
        };
        let config = issuer.config();
        self.verify_signature(issuer, &jws)
            .await
            .inspect_err(|e| {
                tracing::debug!(issuer = %config.name, token_sha256 = %token_sha256, code = e.code(), "token refused");
            })
            .map_err(unsigned)?;

        claims::check_audience(&token_claims, &config.audience).map_err(signed)?;
        let expires_at = claims::check_times(&token_claims, now).map_err(signed)?;
        let identity = claims::map_identity(config.kind, &token_claims).map_err(signed)?;
        let verified = VerifiedToken {
            issuer_name: config.name.clone(),
            issuer: config.issuer.clone(),
            platform: config.kind,
            subject: identity.subject,
            actor: identity.actor,
            repository: identity.repository,
            run: identity.run,
            sha: identity.sha,
            claims: token_claims,
            token_sha256,
            expires_at,
        };
        self.cache.insert(verified.token_sha256.clone(), verified.clone(), now);
        Ok(verified)
    }

    /// How many verified tokens are remembered (a gauge for metrics; also
    /// lets tests see that a repeat was served from the cache).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Finds the key the header names (refetching the issuer's keys, rate
    /// limited, when the key id is unknown) and checks the signature.
    async fn verify_signature(&self, issuer: &IssuerKeys, jws: &Jws<'_>) -> Result<(), TokenError> {
        if self.static_keys {
            let keys = issuer.preloaded().ok_or(TokenError::SignatureInvalid)?;
            return if signed_by_any(&keys, jws) {
                Ok(())
            } else {
                Err(TokenError::SignatureInvalid)
            };
        }
        let mut keys = issuer.keys(&self.http).await.map_err(TokenError::IssuerUnavailable)?;
        if let Some(kid) = jws.kid.as_deref().filter(|kid| !keys.knows_kid(kid)) {
            keys = issuer
                .refetch_for_unknown_kid(&self.http, &keys)
                .await
                .map_err(TokenError::IssuerUnavailable)?;
            if !keys.knows_kid(kid) {
                tracing::debug!(issuer = %issuer.config().name, "unknown key id");
                return Err(TokenError::SignatureInvalid);
            }
        }
        if signed_by_any(&keys, jws) {
            Ok(())
        } else {
            Err(TokenError::SignatureInvalid)
        }
    }
}

fn signed_by_any(keys: &KeySet, jws: &Jws<'_>) -> bool {
    keys.candidates(jws.alg, jws.kid.as_deref()).any(|key| {
        // An Err is a signature that is not even base64url or a key the
        // crypto backend refuses; either way the token is not verified.
        jsonwebtoken::crypto::verify(jws.signature, jws.signing_input.as_bytes(), &key.key, jws.alg.as_jwt())
            .unwrap_or(false)
    })
}

/// Verified tokens by SHA-256. A std mutex: every critical section is a map
/// operation, never an await.
struct TokenCache {
    entries: Mutex<HashMap<String, VerifiedToken>>,
    capacity: usize,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifiedToken>> {
        // The map stays consistent even if a holder panicked: each operation
        // is a single insert, remove or lookup.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, digest: &str) -> Option<VerifiedToken> {
        self.lock().get(digest).cloned()
    }

    fn insert(&self, digest: String, token: VerifiedToken, now: OffsetDateTime) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            entries.retain(|_, t| t.expires_at.checked_add(LEEWAY).is_none_or(|end| end >= now));
            if entries.len() >= self.capacity {
                // Evict the soonest-expiring tenth in one pass, so a full
                // cache pays this O(n) scan once per `capacity / 10` new
                // tokens instead of on every one.
                let evict = (self.capacity / 10).max(1).min(entries.len());
                let mut by_expiry: Vec<(OffsetDateTime, String)> =
                    entries.iter().map(|(k, t)| (t.expires_at, k.clone())).collect();
                by_expiry.select_nth_unstable(evict - 1);
                for (_, key) in by_expiry.into_iter().take(evict) {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(digest, token);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    fn verified(digest: &str, expires_at: OffsetDateTime) -> VerifiedToken {
        VerifiedToken {
            issuer_name: "gh".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            platform: Platform::Github,
            subject: "repo:o/r".into(),
            actor: "octocat".into(),
            repository: "o/r".into(),
            run: "1".into(),
            sha: None,
            claims: BTreeMap::new(),
            token_sha256: digest.into(),
            expires_at,
        }
    }

    #[test]
    fn codes_are_stable() {
        let cases = [
            (TokenError::Expired, "token_expired"),
            (TokenError::NotYetValid, "token_not_yet_valid"),
            (TokenError::IssuerNotTrusted, "issuer_not_trusted"),
            (TokenError::AudienceMismatch, "audience_mismatch"),
            (TokenError::SignatureInvalid, "signature_invalid"),
            (TokenError::AlgorithmNotAllowed, "algorithm_not_allowed"),
            (TokenError::Malformed("x".into()), "token_malformed"),
            (TokenError::IssuerUnavailable("x".into()), "issuer_unavailable"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn cache_is_bounded_and_evicts_expired_then_soonest() {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let cache = TokenCache::new(3);
        cache.insert("old".into(), verified("old", now - Duration::hours(1)), now);
        cache.insert("soon".into(), verified("soon", now + Duration::minutes(1)), now);
        cache.insert("late".into(), verified("late", now + Duration::hours(1)), now);
        cache.insert("new1".into(), verified("new1", now + Duration::hours(2)), now);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("old").is_none(), "the expired entry goes first");
        cache.insert("new2".into(), verified("new2", now + Duration::hours(2)), now);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("soon").is_none(), "then the soonest to expire");
        assert!(cache.get("late").is_some() && cache.get("new2").is_some());
    }

    #[test]
    fn a_full_cache_evicts_the_soonest_tenth_at_once() {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let cache = TokenCache::new(20);
        for i in 0..20 {
            let key = format!("t{i:02}");
            cache.insert(key.clone(), verified(&key, now + Duration::minutes(i + 1)), now);
        }
        cache.insert("new".into(), verified("new", now + Duration::hours(2)), now);
        assert_eq!(cache.len(), 19, "two evicted, one inserted");
        assert!(cache.get("t00").is_none() && cache.get("t01").is_none());
        assert!(cache.get("t02").is_some() && cache.get("new").is_some());
    }

    #[tokio::test]
    async fn untrusted_issuer_needs_no_network() {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "RS256", "kid": "k"})),
            b64(serde_json::json!({"iss": "https://elsewhere.example", "exp": 1}))
        );
        let verifier = Verifier::new(Vec::new(), reqwest::Client::new());
        let err = verifier.verify(&token, OffsetDateTime::UNIX_EPOCH).await.unwrap_err();
        assert_eq!(err, TokenError::IssuerNotTrusted);
    }
}
