//! CI ID tokens: the whole verification path (header, claims, issuer,
//! signature, audience, times, claim mapping) with the issuer's keys given,
//! no network. Half the inputs are tokens signed with the issuer's key over
//! claims from the input (so the checks after the signature see arbitrary
//! claims); the other half are the input as a token.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use portcullis::config::IssuerConfig;
use portcullis::domain::Platform;
use portcullis::identity::Verifier;

const PRIVATE_JWK: &str = include_str!("../../tests/support/node/keys/es256.private.jwk.json");
const PRIVATE_PEM: &str = include_str!("../../tests/support/node/keys/es256.private.pem");
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn verifier() -> Verifier {
    let mut jwk: serde_json::Value = serde_json::from_str(PRIVATE_JWK).expect("test key");
    jwk.as_object_mut().expect("object").remove("d");
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string().into_bytes();
    let issuers = vec![IssuerConfig {
        name: "gha".into(),
        kind: Platform::Github,
        issuer: ISSUER.into(),
        audience: "portcullis".into(),
        jwks_url: None,
    }];
    Verifier::with_static_keys(issuers, &BTreeMap::from([("gha".to_string(), jwks)])).expect("static keys")
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: Verifier = verifier();
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    }
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let token = if selector & 1 == 0 {
        let Ok(mut claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        if let Some(map) = claims.as_object_mut()
            && selector & 2 == 0
        {
            map.insert("iss".into(), ISSUER.into());
        }
        let header = jsonwebtoken::Header {
            kid: Some("portcullis-test-es256".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let key = jsonwebtoken::EncodingKey::from_ec_pem(PRIVATE_PEM.as_bytes()).expect("test key");
        match jsonwebtoken::encode(&header, &claims, &key) {
            Ok(t) => t,
            Err(_) => return,
        }
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let result = VERIFIER.with(|v| RUNTIME.with(|rt| rt.block_on(v.verify(&token, now))));
    if let Ok(verified) = result {
        assert_eq!(verified.issuer, ISSUER);
        assert!(!verified.token_sha256.is_empty());
    }
});
