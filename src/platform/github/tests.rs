//! Unit tests of the GitHub App client: App JWT claims and signing,
//! construction errors, name checks and the reading of GitHub's messages.

use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use time::OffsetDateTime;

use super::app_auth::AppClaims;
use super::*;

const TEST_KEY: &str = include_str!("../../../tests/fixtures/github-app/test-only-app-private-key.pem");
const TEST_PUBLIC_KEY: &str = include_str!("../../../tests/fixtures/github-app/test-only-app-public-key.pem");
/// A P-256 key, generated for this test only: a PEM key of the wrong kind.
const TEST_EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBd8/jJq6xakSmb08
aY6vR1Q1J9H8G/8JmqjUrGLqsxuhRANCAAQAblDKKa2tXGPfhR8QzLPRzfpzdadb
L08ifT/2zIiA5HbueffZjVMpi/uFukBXscwKR+cQJWqYsqbfi8JC5GpJ
-----END PRIVATE KEY-----
";

fn config(key: Option<&str>, app_id: Option<u64>, api_url: &str) -> GithubConfig {
    GithubConfig {
        issuer: String::new(),
        status_reports_per_minute: 60,
        app_id,
        private_key: key.map(Secret::new),
        webhook_secrets: vec![Secret::new("s")],
        api_url: Url::parse(api_url).expect("test URL"),
        request_timeout: Duration::from_secs(5),
        redeliver: crate::config::RedeliverConfig {
            enabled: false,
            interval: Duration::from_secs(300),
            lookback: Duration::from_secs(3600),
            max_per_run: 50,
        },
    }
}

#[test]
fn app_claims_are_backdated_and_expire_within_ten_minutes() {
    let claims = AppClaims::new(1012345, 1_800_000_000);
    assert_eq!(
        claims,
        AppClaims {
            iat: 1_799_999_940,
            exp: 1_800_000_540,
            iss: "1012345".into()
        }
    );
    assert!(claims.exp - claims.iat <= 600);
}

#[test]
fn app_jwt_is_rs256_and_verifies_against_the_app_public_key() {
    let client = GithubClient::new(&config(Some(TEST_KEY), Some(1012345), "https://api.github.com"))
        .expect("client from the test key");
    let jwt = client.app_jwt().expect("signs");
    let header = jsonwebtoken::decode_header(&jwt).expect("header");
    assert_eq!(header.alg, Algorithm::RS256);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["1012345"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).expect("public key");
    let data = jsonwebtoken::decode::<AppClaims>(&jwt, &key, &validation).expect("verifies");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - 62..=now - 58).contains(&data.claims.iat),
        "iat {} now {now}",
        data.claims.iat
    );
    assert!(
        (now + 538..=now + 542).contains(&data.claims.exp),
        "exp {} now {now}",
        data.claims.exp
    );
}

#[test]
fn new_fails_clearly_without_app_id_or_key_or_with_a_bad_key() {
    let cases: [(&str, GithubConfig, &str); 5] = [
        (
            "no app id",
            config(Some(TEST_KEY), None, "https://api.github.com"),
            "github.app_id is required",
        ),
        (
            "no key",
            config(None, Some(1), "https://api.github.com"),
            "github.private_key is required",
        ),
        (
            "not PEM",
            config(Some("hello"), Some(1), "https://api.github.com"),
            "not a usable RSA private key",
        ),
        (
            "public key",
            config(Some(TEST_PUBLIC_KEY), Some(1), "https://api.github.com"),
            "not a usable RSA private key",
        ),
        (
            "EC key",
            config(Some(TEST_EC_KEY), Some(1), "https://api.github.com"),
            "not a usable RSA private key",
        ),
    ];
    for (name, cfg, expected) in cases {
        let err = GithubClient::new(&cfg).expect_err(name);
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
}

#[test]
fn names_that_would_walk_the_path_are_refused() {
    for bad in ["", ".", "..", "a/b", "a b", "a%2e", &"x".repeat(101)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    for good in ["octo-org", "payments", "my.repo", "a_b", "A1"] {
        assert!(check_name(good).is_ok(), "{good:?}");
    }
}

#[test]
fn github_message_is_one_line_and_capped() {
    assert_eq!(
        github_message(br#"{"message":"Bad credentials","documentation_url":"x"}"#).as_deref(),
        Some("Bad credentials")
    );
    assert_eq!(github_message(b"<html>oops</html>"), None);
    assert_eq!(github_message(br#"{"token":"ghs_secret"}"#), None);
    let long = format!(r#"{{"message":"a\nb{}"}}"#, "c".repeat(500));
    let m = github_message(long.as_bytes()).expect("message");
    assert!(m.starts_with("a b"));
    assert_eq!(m.chars().count(), 200);
}
