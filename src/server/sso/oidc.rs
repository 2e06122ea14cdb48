//! The OpenID Provider: its metadata (discovered and cached), the
//! openidconnect client, openidconnect's HTTP calls through our reqwest
//! client, and the code exchange that ends in a verified ID token.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse,
};
use serde_json::Value;
use tracing::{info, warn};

use super::pages::refused;
use super::session::s;
use crate::config::SsoConfig;
use crate::gate::Gate;

/// Provider metadata (endpoints and keys) is refetched after this long.
const METADATA_TTL: Duration = Duration::from_secs(600);
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The ID token's claims beyond the standard ones (the groups claim).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ExtraClaims {
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}
impl AdditionalClaims for ExtraClaims {}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenAnswer = StandardTokenResponse<IdFields, CoreTokenType>;
type SsoClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenAnswer,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// openidconnect's HTTP calls, made by our reqwest client (one HTTP stack),
/// without following redirects (RFC 6749 §10.6 / the crate's advice).
struct OidcHttp(reqwest::Client);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct OidcHttpError(String);

impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, OidcHttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    OidcHttpError(if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "request failed".into()
                    })
                })?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| OidcHttpError("reading the answer failed".into()))?
            {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(OidcHttpError("the answer is too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            builder
                .body(body)
                .map_err(|_| OidcHttpError("an invalid answer".into()))
        })
    }
}

/// Route state (per worker): the HTTP client and the provider's metadata.
#[derive(Default)]
pub(crate) struct Sso {
    http: OnceLock<Option<OidcHttp>>,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl Sso {
    fn http(&self) -> Option<&OidcHttp> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .ok()
                    .map(OidcHttp)
            })
            .as_ref()
    }

    /// The provider's metadata (discovery document and keys), cached.
    async fn metadata(&self, sso: &SsoConfig, refresh: bool) -> Result<CoreProviderMetadata, String> {
        let http = self.http().ok_or("no HTTP client")?;
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && !refresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        // The configured URL is normalised with a trailing slash; issuers
        // differ on whether their identifier has one, and it must match exactly.
        let raw = sso.issuer.as_str();
        let mut candidates = vec![raw.trim_end_matches('/').to_string()];
        if raw.ends_with('/') {
            candidates.push(raw.to_string());
        }
        let mut last = String::new();
        for candidate in candidates {
            let issuer = IssuerUrl::new(candidate).map_err(|_| "sso.issuer is not a URL".to_string())?;
            match CoreProviderMetadata::discover_async(issuer, http).await {
                Ok(m) => {
                    *cached = Some((Instant::now(), m.clone()));
                    return Ok(m);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Starts a sign-in: the provider's authorization URL (scopes `email`
    /// and `profile`, PKCE S256) and the secrets the callback needs.
    pub(super) async fn begin_sign_in(&self, gate: &Gate, sso: &SsoConfig) -> Result<SignIn, String> {
        let client = self.client(gate, sso, false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok(SignIn {
            url,
            state: csrf.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    async fn client(&self, gate: &Gate, sso: &SsoConfig, refresh: bool) -> Result<SsoClient, String> {
        let metadata = self.metadata(sso, refresh).await?;
        let base = gate.config.server.public_url.as_str().trim_end_matches('/');
        let redirect =
            RedirectUrl::new(format!("{base}/reviews/callback")).map_err(|_| "server.public_url is not a URL")?;
        Ok(SsoClient::from_provider_metadata(
            metadata,
            ClientId::new(sso.client_id.clone()),
            sso.client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(redirect))
    }
}

/// A sign-in just started: where to send the browser, and the state, nonce
/// and PKCE verifier to seal into the flow cookie.
pub(super) struct SignIn {
    pub(super) url: url::Url,
    pub(super) state: String,
    pub(super) nonce: String,
    pub(super) verifier: String,
}

/// What the callback verified.
pub(super) struct Verified {
    pub(super) email: String,
    pub(super) aliases: Vec<String>,
    pub(super) groups: Vec<String>,
    /// The ID token's issuer and subject, and whether the token itself said
    /// `email_verified: true` (rather than the configuration trusting it):
    /// how the identity was verified, for the audit.
    pub(super) issuer: String,
    pub(super) subject: String,
    pub(super) email_claim_verified: bool,
}

/// Exchanges the code and verifies the ID token; refuses with a page.
pub(super) async fn verify_sign_in(
    gate: &Gate,
    state: &Sso,
    sso: &SsoConfig,
    flow: &Value,
    code: String,
) -> Result<Verified, HttpResponse> {
    let unavailable = || {
        refused(
            StatusCode::BAD_GATEWAY,
            "sign_in_failed",
            "Sign-in failed",
            "The sign-in could not be completed with the provider; start again.",
        )
    };
    let http = state.http().ok_or_else(unavailable)?;
    let client = state.client(gate, sso, false).await.map_err(|e| {
        warn!(error = %e, "sso: the provider is unavailable");
        unavailable()
    })?;
    let exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| unavailable())?;
    let answer = exchange
        .set_pkce_verifier(PkceCodeVerifier::new(s(flow, "v").to_string()))
        .request_async(http)
        .await
        .map_err(|e| {
            warn!(error = %e, "sso: the code exchange failed");
            unavailable()
        })?;
    let Some(id_token) = answer.extra_fields().id_token() else {
        warn!("sso: the token answer has no ID token");
        return Err(unavailable());
    };
    let nonce = Nonce::new(s(flow, "n").to_string());
    let verifier = client.id_token_verifier();
    let claims = match id_token.claims(&verifier, &nonce) {
        Ok(c) => c,
        Err(openidconnect::ClaimsVerificationError::InvalidNonce(_)) => {
            info!("sso: an ID token whose nonce is not the one this sign-in sent");
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "nonce_mismatch",
                "Sign-in not accepted",
                "The identity token was not issued for this sign-in (nonce mismatch).",
            ));
        }
        Err(e) => {
            if matches!(e, openidconnect::ClaimsVerificationError::SignatureVerification(_)) {
                // Perhaps rotated keys: fetch them again for the next attempt.
                let _ = state.client(gate, sso, true).await;
            }
            info!(error = %e, "sso: the ID token did not verify");
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "id_token_invalid",
                "Sign-in not accepted",
                "The identity token did not verify.",
            ));
        }
    };
    let Some(email) = claims
        .email()
        .map(|e| e.as_str().trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
    else {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "email_missing",
            "No email",
            "The identity token carries no email address.",
        ));
    };
    // The email is the reviewer's identity: it counts only when the provider
    // says it verified it (or the configuration trusts every email it issues).
    let email_claim_verified = claims.email_verified() == Some(true);
    let verified = email_claim_verified || sso.trust_unverified_email;
    if !verified {
        info!(reviewer = %email, "sso review refused: the email is not verified");
        return Err(refused(
            StatusCode::FORBIDDEN,
            "email_unverified",
            "Email not verified",
            "The provider does not say this email address is verified.",
        ));
    }
    let groups: Vec<String> = match claims.additional_claims().other.get(&sso.groups_claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    let preferred = claims.preferred_username().map(|u| u.as_str().to_string());
    let nickname = claims
        .nickname()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_string());
    let name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_string());
    let aliases =
        crate::identity::reviewer::aliases([crate::identity::reviewer::local_part(&email), preferred, nickname, name]);
    Ok(Verified {
        email,
        aliases,
        groups,
        issuer: claims.issuer().as_str().to_string(),
        subject: claims.subject().as_str().to_string(),
        email_claim_verified,
    })
}
