//! OIDC ID token verification against a real OpenID Provider (npm
//! `oidc-provider`): tokens it mints verify through discovery and its JWKS;
//! forged tokens (signed in-process with the same committed test keys, or a
//! rogue key) are refused with the exact error.

use std::time::Instant;

use crate::support::oidc::{
    OidcProvider, ProviderStats, TestKey, forge, forge_hs256_with_public_key, forge_unsigned, github_claims,
    gitlab_claims, header, payload, tamper, unused_loopback_port, with_registered,
};
use portcullis::domain::Platform;
use portcullis::identity::{TokenError, VerifiedToken, Verifier};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

const AUDIENCE: &str = "portcullis";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn github_verifier(provider: &OidcProvider) -> Verifier {
    let issuer = provider.issuer_config("test-github", Platform::Github, AUDIENCE);
    Verifier::new(vec![issuer], reqwest::Client::new())
}

fn gitlab_verifier(provider: &OidcProvider) -> Verifier {
    let issuer = provider.issuer_config("test-gitlab", Platform::Gitlab, AUDIENCE);
    Verifier::new(vec![issuer], reqwest::Client::new())
}

/// GitHub-shaped claims of a token from `provider`, valid around now.
fn forged_claims(provider: &OidcProvider) -> Value {
    with_registered(
        github_claims(SHA),
        &provider.issuer(),
        AUDIENCE,
        now().unix_timestamp(),
        300,
    )
}

/// Asserts the exact refusal, and that its message leaks no part of the token.
fn assert_refused(result: Result<VerifiedToken, TokenError>, expected: TokenError, token: &str) {
    let err = match result {
        Ok(v) => panic!("expected {expected:?}, got a verified token for {}", v.subject),
        Err(err) => err,
    };
    assert_eq!(err, expected);
    let message = err.to_string();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !message.contains(part),
            "the error message contains token text: {message}"
        );
    }
}

#[tokio::test]
async fn github_rs256_token_verifies_through_discovery_and_jwks() {
    // Arrange
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;
    assert_eq!(header(&token)["alg"], "RS256");
    assert_eq!(header(&token)["typ"], "JWT");
    assert_eq!(header(&token)["kid"], TestKey::ProviderRs256.kid());

    // Act
    let v = verifier
        .verify(&token, now())
        .await
        .expect("a real provider token verifies");

    // Assert
    assert_eq!(v.issuer_name, "test-github");
    assert_eq!(v.issuer, provider.issuer());
    assert_eq!(v.platform, Platform::Github);
    assert_eq!(v.subject, "repo:octo-org/octo-repo:environment:production");
    assert_eq!(v.repository, "octo-org/octo-repo");
    assert_eq!(v.run, "9876543210");
    assert_eq!(v.actor, "octocat");
    assert_eq!(v.sha.as_deref(), Some(SHA));
    assert_eq!(v.token_sha256, portcullis::crypto::sha256_hex(token.as_bytes()));
    let minted = payload(&token);
    assert_eq!(v.expires_at.unix_timestamp(), minted["exp"].as_i64().unwrap());
    // Every claim is kept, the provider's registered ones included.
    for (name, value) in github_claims(SHA).as_object().unwrap() {
        assert_eq!(v.claims.get(name), Some(value), "claim {name}");
    }
    for name in ["iss", "aud", "iat", "exp", "jti"] {
        assert_eq!(v.claims.get(name), minted.get(name), "claim {name}");
    }
    assert_eq!(v.claims["iss"], json!(provider.issuer()));
    assert_eq!(v.claims["aud"], json!(AUDIENCE));
    assert_eq!(provider.stats().await, ProviderStats { discovery: 1, jwks: 1 });
}

#[tokio::test]
async fn es256_token_verifies() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint_es256(AUDIENCE, github_claims(SHA)).await;
    assert_eq!(header(&token)["alg"], "ES256");
    assert_eq!(header(&token)["kid"], TestKey::ProviderEs256.kid());

    let v = verifier.verify(&token, now()).await.expect("an ES256 token verifies");

    assert_eq!(
        (v.repository.as_str(), v.run.as_str(), v.actor.as_str()),
        ("octo-org/octo-repo", "9876543210", "octocat")
    );
}

#[tokio::test]
async fn gitlab_token_maps_project_pipeline_and_user() {
    let provider = OidcProvider::start().await;
    let verifier = gitlab_verifier(&provider);
    let token = provider.mint(AUDIENCE, gitlab_claims(SHA)).await;

    let v = verifier
        .verify(&token, now())
        .await
        .expect("a GitLab-shaped token verifies");

    assert_eq!(v.platform, Platform::Gitlab);
    assert_eq!(v.issuer_name, "test-gitlab");
    assert_eq!(v.subject, "project_path:group/project:ref_type:branch:ref:main");
    assert_eq!(v.repository, "group/project");
    assert_eq!(v.run, "574");
    assert_eq!(v.actor, "alice");
    assert_eq!(v.sha.as_deref(), Some(SHA));
    // GitLab sends booleans as strings; they are kept exactly as sent.
    assert_eq!(v.claims["ref_protected"], json!("true"));
    assert_eq!(v.claims["environment_protected"], json!("true"));
    assert_eq!(v.claims["project_id"], json!("20"));
    assert_eq!(
        v.claims["ci_config_ref_uri"],
        json!("gitlab.example.com/group/project//.gitlab-ci.yml@refs/heads/main")
    );
}

#[tokio::test]
async fn gitlab_token_is_malformed_for_a_github_issuer() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint(AUDIENCE, gitlab_claims(SHA)).await;

    let result = verifier.verify(&token, now()).await;

    assert_refused(
        result,
        TokenError::Malformed("missing claim `repository`".into()),
        &token,
    );
}

#[tokio::test]
async fn configured_jwks_url_skips_discovery() {
    let provider = OidcProvider::start().await;
    let mut issuer = provider.issuer_config("test-github", Platform::Github, AUDIENCE);
    issuer.jwks_url = Some(format!("{}/jwks", provider.issuer()).parse().unwrap());
    let verifier = Verifier::new(vec![issuer], reqwest::Client::new());
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;

    verifier
        .verify(&token, now())
        .await
        .expect("verifies with the configured JWKS");

    assert_eq!(provider.stats().await, ProviderStats { discovery: 0, jwks: 1 });
}

#[tokio::test]
async fn audience_array_must_contain_ours() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut claims = forged_claims(&provider);

    claims["aud"] = json!(["https://github.com/octo-org", AUDIENCE]);
    let token = forge(TestKey::ProviderRs256, &claims);
    verifier
        .verify(&token, now())
        .await
        .expect("an array holding our audience verifies");

    claims["aud"] = json!(["https://github.com/octo-org", "sts.amazonaws.com"]);
    let token = forge(TestKey::ProviderRs256, &claims);
    assert_refused(
        verifier.verify(&token, now()).await,
        TokenError::AudienceMismatch,
        &token,
    );
}

#[tokio::test]
async fn token_for_another_audience_is_audience_mismatch() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint("sts.amazonaws.com", github_claims(SHA)).await;
    assert_eq!(payload(&token)["aud"], "sts.amazonaws.com");

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::AudienceMismatch, &token);
}

#[tokio::test]
async fn expiry_is_judged_by_the_callers_clock_with_60s_leeway() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;
    let exp = OffsetDateTime::from_unix_timestamp(payload(&token)["exp"].as_i64().unwrap()).unwrap();

    // Separate verifiers, so the second judgement is not a cache hit.
    let late = verifier.verify(&token, exp + Duration::seconds(61)).await;
    let within = github_verifier(&provider)
        .verify(&token, exp + Duration::seconds(59))
        .await;

    assert_refused(late, TokenError::Expired, &token);
    assert!(within.is_ok(), "{within:?}");
}

#[tokio::test]
async fn forged_expired_token_is_token_expired() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let issued = now().unix_timestamp() - 3600;
    let claims = with_registered(github_claims(SHA), &provider.issuer(), AUDIENCE, issued, 300);
    let token = forge(TestKey::ProviderRs256, &claims);

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::Expired, &token);
}

#[tokio::test]
async fn future_nbf_or_iat_is_not_yet_valid() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let t = now().unix_timestamp();

    let mut nbf_future = forged_claims(&provider);
    nbf_future["nbf"] = json!(t + 300);
    nbf_future["exp"] = json!(t + 900);
    let token = forge(TestKey::ProviderRs256, &nbf_future);
    assert_refused(verifier.verify(&token, now()).await, TokenError::NotYetValid, &token);

    let mut iat_future = forged_claims(&provider);
    iat_future.as_object_mut().unwrap().remove("nbf");
    iat_future["iat"] = json!(t + 300);
    iat_future["exp"] = json!(t + 900);
    let token = forge(TestKey::ProviderRs256, &iat_future);
    assert_refused(verifier.verify(&token, now()).await, TokenError::NotYetValid, &token);

    // Within the leeway, a clock slightly ahead at the issuer is tolerated.
    let mut skewed = forged_claims(&provider);
    skewed["nbf"] = json!(t + 30);
    skewed["iat"] = json!(t + 30);
    let token = forge(TestKey::ProviderRs256, &skewed);
    assert!(verifier.verify(&token, now()).await.is_ok());
}

#[tokio::test]
async fn untrusted_issuer_is_issuer_not_trusted() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut claims = forged_claims(&provider);
    claims["iss"] = json!("https://token.actions.githubusercontent.com");
    let token = forge(TestKey::ProviderRs256, &claims);

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::IssuerNotTrusted, &token);
    // The issuer must match exactly: a trailing slash is another issuer.
    claims["iss"] = json!(format!("{}/", provider.issuer()));
    let token = forge(TestKey::ProviderRs256, &claims);
    assert_refused(
        verifier.verify(&token, now()).await,
        TokenError::IssuerNotTrusted,
        &token,
    );
    // Nothing was fetched for tokens of untrusted issuers.
    assert_eq!(provider.stats().await, ProviderStats { discovery: 0, jwks: 0 });
}

#[tokio::test]
async fn real_token_from_an_untrusted_provider_is_issuer_not_trusted() {
    let trusted = OidcProvider::start().await;
    let other = OidcProvider::start().await;
    let verifier = github_verifier(&trusted);
    let token = other.mint(AUDIENCE, github_claims(SHA)).await;

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::IssuerNotTrusted, &token);
}

#[tokio::test]
async fn alg_none_is_algorithm_not_allowed() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = forge_unsigned(&forged_claims(&provider));

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::AlgorithmNotAllowed, &token);
    assert_eq!(provider.stats().await, ProviderStats { discovery: 0, jwks: 0 });
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_algorithm_not_allowed() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    // Warm the key cache, so the refusal cannot be a fetch failure.
    verifier
        .verify(&provider.mint(AUDIENCE, github_claims(SHA)).await, now())
        .await
        .unwrap();
    let token = forge_hs256_with_public_key(&forged_claims(&provider));
    assert_eq!(header(&token)["alg"], "HS256");

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::AlgorithmNotAllowed, &token);
}

#[tokio::test]
async fn unknown_kid_refetches_the_jwks_once_then_is_signature_invalid() {
    // Arrange: keys fetched once by a valid token.
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    verifier
        .verify(&provider.mint(AUDIENCE, github_claims(SHA)).await, now())
        .await
        .unwrap();
    assert_eq!(provider.stats().await, ProviderStats { discovery: 1, jwks: 1 });
    let rogue = forge(TestKey::Rogue, &forged_claims(&provider));
    assert_eq!(header(&rogue)["kid"], TestKey::Rogue.kid());

    // Act: the first unknown kid refetches (the issuer may have rotated)...
    let first = verifier.verify(&rogue, now()).await;
    assert_refused(first, TokenError::SignatureInvalid, &rogue);
    assert_eq!(provider.stats().await, ProviderStats { discovery: 2, jwks: 2 });

    // ...repeats within 30 s, even with other unknown kids, do not.
    for i in 0..10 {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(format!("made-up-{i}"));
        let token = crate::support::oidc::forge_with_header(TestKey::Rogue, h, &forged_claims(&provider));
        assert_refused(
            verifier.verify(&token, now()).await,
            TokenError::SignatureInvalid,
            &token,
        );
        assert_refused(
            verifier.verify(&rogue, now()).await,
            TokenError::SignatureInvalid,
            &rogue,
        );
    }

    // Assert
    assert_eq!(provider.stats().await, ProviderStats { discovery: 2, jwks: 2 });
    // Known keys still verify meanwhile.
    verifier
        .verify(&provider.mint_es256(AUDIENCE, github_claims(SHA)).await, now())
        .await
        .unwrap();
}

#[tokio::test]
async fn rogue_key_under_a_known_kid_is_signature_invalid() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(TestKey::ProviderRs256.kid().to_owned());
    let token = crate::support::oidc::forge_with_header(TestKey::Rogue, h, &forged_claims(&provider));

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::SignatureInvalid, &token);
    // A known kid is no reason to refetch.
    assert_eq!(provider.stats().await, ProviderStats { discovery: 1, jwks: 1 });
}

#[tokio::test]
async fn es256_header_naming_the_rsa_kid_is_signature_invalid() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(TestKey::ProviderRs256.kid().to_owned());
    let token = crate::support::oidc::forge_with_header(TestKey::ProviderEs256, h, &forged_claims(&provider));

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::SignatureInvalid, &token);
}

#[tokio::test]
async fn tampered_payload_is_signature_invalid() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;
    let tampered = tamper(&token, |claims| {
        claims.insert("actor".into(), json!("mallory"));
    });

    let result = verifier.verify(&tampered, now()).await;

    assert_refused(result, TokenError::SignatureInvalid, &tampered);
    // The original still verifies: the refusal was about the change.
    assert_eq!(verifier.verify(&token, now()).await.unwrap().actor, "octocat");
}

#[tokio::test]
async fn garbage_is_token_malformed() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let cases = [
        "",
        "garbage",
        "Bearer abc.def.ghi",
        "a.b",
        "eyJhbGciOiJSUzI1NiJ9.!!!.sig",
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.sig",
        "\u{0}\u{1}.\u{2}.\u{3}",
    ];
    for token in cases {
        match verifier.verify(token, now()).await {
            Err(TokenError::Malformed(_)) => {}
            other => panic!("{token:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn missing_run_id_is_token_malformed() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut claims = github_claims(SHA);
    claims.as_object_mut().unwrap().remove("run_id");
    let token = provider.mint(AUDIENCE, claims).await;

    let result = verifier.verify(&token, now()).await;

    assert_refused(result, TokenError::Malformed("missing claim `run_id`".into()), &token);
    assert_eq!(verifier.cached_tokens(), 0, "a refused token is not cached");
}

#[tokio::test]
async fn run_id_as_a_number_is_accepted() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let mut claims = github_claims(SHA);
    claims["run_id"] = json!(9876543210u64);
    let token = provider.mint(AUDIENCE, claims).await;

    let v = verifier.verify(&token, now()).await.unwrap();

    assert_eq!(v.run, "9876543210");
}

#[tokio::test]
async fn issuer_down_is_issuer_unavailable() {
    let port = unused_loopback_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let config = portcullis::config::IssuerConfig {
        name: "down".into(),
        kind: Platform::Github,
        issuer: issuer.clone(),
        audience: AUDIENCE.into(),
        jwks_url: None,
    };
    let verifier = Verifier::new(vec![config], reqwest::Client::new());
    let claims = with_registered(github_claims(SHA), &issuer, AUDIENCE, now().unix_timestamp(), 300);
    let token = forge(TestKey::ProviderRs256, &claims);

    let started = Instant::now();
    let result = verifier.verify(&token, now()).await;
    let again = verifier.verify(&token, now()).await;

    match (&result, &again) {
        (Err(TokenError::IssuerUnavailable(a)), Err(TokenError::IssuerUnavailable(b))) => {
            assert_eq!(a, "could not connect to fetch the discovery document");
            assert_eq!(a, b, "the retry within the backoff answers the same");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(result.unwrap_err().code(), "issuer_unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn provider_gone_after_keys_were_fetched_still_verifies_with_cached_keys() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    verifier
        .verify(&provider.mint(AUDIENCE, github_claims(SHA)).await, now())
        .await
        .unwrap();
    let claims = forged_claims(&provider);
    drop(provider);

    let token = forge(TestKey::ProviderRs256, &claims);
    let v = verifier.verify(&token, now()).await.expect("cached keys verify");

    assert_eq!(v.actor, "octocat");
}

#[tokio::test]
async fn cache_hit_returns_the_same_result_and_still_checks_expiry() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;
    let first = verifier.verify(&token, now()).await.unwrap();
    assert_eq!(verifier.cached_tokens(), 1);

    let second = verifier.verify(&token, now()).await.unwrap();

    assert_eq!(verifier.cached_tokens(), 1, "the repeat was served from the cache");
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    // On a hit, expiry is still judged against the caller's clock.
    let after_expiry = first.expires_at + Duration::seconds(61);
    assert_refused(verifier.verify(&token, after_expiry).await, TokenError::Expired, &token);
    // And a token issued in the caller's future is still not yet valid.
    let before_issue =
        OffsetDateTime::from_unix_timestamp(first.claims["iat"].as_i64().unwrap()).unwrap() - Duration::minutes(5);
    assert_refused(
        verifier.verify(&token, before_issue).await,
        TokenError::NotYetValid,
        &token,
    );
    assert_eq!(provider.stats().await, ProviderStats { discovery: 1, jwks: 1 });
}

#[tokio::test]
async fn concurrent_first_verifications_fetch_the_keys_once() {
    let provider = OidcProvider::start().await;
    let verifier = std::sync::Arc::new(github_verifier(&provider));
    let tokens: Vec<String> = (0..32)
        .map(|_| forge(TestKey::ProviderRs256, &forged_claims(&provider)))
        .collect();

    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let verifier = verifier.clone();
            tokio::spawn(async move { verifier.verify(&token, now()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("verifies");
    }

    assert_eq!(provider.stats().await, ProviderStats { discovery: 1, jwks: 1 });
    assert_eq!(verifier.cached_tokens(), 32);
}

/// Not a benchmark: a rough measurement printed with `--nocapture`, and a
/// generous bound that only catches an accidental fetch per verification.
#[tokio::test]
async fn verify_time() {
    let provider = OidcProvider::start().await;
    let verifier = github_verifier(&provider);
    let first_token = provider.mint(AUDIENCE, github_claims(SHA)).await;
    let started = Instant::now();
    verifier.verify(&first_token, now()).await.unwrap();
    let first = started.elapsed();

    const N: u32 = 200;
    let tokens: Vec<String> = (0..N)
        .map(|_| forge(TestKey::ProviderRs256, &forged_claims(&provider)))
        .collect();
    let started = Instant::now();
    for token in &tokens {
        verifier.verify(token, now()).await.unwrap();
    }
    let uncached = started.elapsed() / N;
    let started = Instant::now();
    for token in &tokens {
        verifier.verify(token, now()).await.unwrap();
    }
    let cached = started.elapsed() / N;

    eprintln!("verify: first (with discovery + JWKS) {first:?}, signature check {uncached:?}, cache hit {cached:?}");
    assert!(uncached < std::time::Duration::from_millis(20), "{uncached:?}");
    assert!(cached <= uncached, "cache hit {cached:?} vs {uncached:?}");
}

#[tokio::test]
async fn static_keys_verify_offline_and_never_fetch() {
    // The issuer URL points nowhere: any fetch would fail with
    // `issuer_unavailable`, so each answer below shows no fetch was made.
    let issuer = portcullis::config::IssuerConfig {
        name: "offline".into(),
        kind: Platform::Github,
        issuer: "https://issuer.invalid".into(),
        audience: AUDIENCE.into(),
        jwks_url: None,
    };
    let mut jwk: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/node/keys/es256.private.jwk.json"
        ))
        .expect("test key"),
    )
    .expect("json");
    jwk.as_object_mut().expect("object").remove("d");
    let jwks = json!({ "keys": [jwk] }).to_string().into_bytes();
    let verifier = Verifier::with_static_keys(
        vec![issuer],
        &std::collections::BTreeMap::from([("offline".to_string(), jwks)]),
    )
    .expect("static keys");
    let claims = with_registered(
        github_claims(SHA),
        "https://issuer.invalid",
        AUDIENCE,
        now().unix_timestamp(),
        300,
    );

    let good = forge(TestKey::ProviderEs256, &claims);
    let verified = verifier.verify(&good, now()).await.expect("verifies offline");
    assert_eq!(
        (verified.issuer_name.as_str(), verified.actor.as_str()),
        ("offline", "octocat")
    );

    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("a-kid-nobody-published".into());
    let unknown_kid = crate::support::oidc::forge_with_header(TestKey::ProviderEs256, header, &claims);
    assert_refused(
        verifier.verify(&unknown_kid, now()).await,
        TokenError::SignatureInvalid,
        &unknown_kid,
    );
    let rogue = forge(TestKey::Rogue, &claims);
    assert_refused(
        verifier.verify(&rogue, now()).await,
        TokenError::SignatureInvalid,
        &rogue,
    );
}

/// A server that answers every path with a 302 to the same path on `to`.
async fn redirector(to: String) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = HttpServer::new(move || {
        let to = to.clone();
        App::new().default_service(actix_web::web::to(move |req: HttpRequest| {
            let location = format!("{to}{}", req.path());
            async move { HttpResponse::Found().insert_header(("location", location)).finish() }
        }))
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}"), handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_behind_a_redirect_are_not_fetched() {
    let provider = OidcProvider::start().await;
    let jwks = format!("{}/jwks", provider.issuer());
    // The configured JWKS URL redirects to the provider's real one.
    let (redirecting, handle) = redirector(provider.issuer()).await;
    let mut issuer = provider.issuer_config("test-github", Platform::Github, AUDIENCE);
    issuer.jwks_url = Some(url::Url::parse(&format!("{redirecting}/jwks")).unwrap());
    let token = provider.mint(AUDIENCE, github_claims(SHA)).await;

    // portcullis's client does not follow it: the keys are unavailable.
    let strict = Verifier::new(vec![issuer.clone()], portcullis::outbound::client().unwrap());
    assert!(
        matches!(
            strict.verify(&token, now()).await,
            Err(TokenError::IssuerUnavailable(_))
        ),
        "a redirected JWKS URL must not be followed"
    );
    // The same configuration with a client that follows redirects would
    // verify: the refusal above is the redirect rule, nothing else.
    let following = Verifier::new(vec![issuer], reqwest::Client::new());
    following
        .verify(&token, now())
        .await
        .expect("verifies through the redirect");
    assert!(jwks.ends_with("/jwks"));
    handle.stop(false).await;
}
