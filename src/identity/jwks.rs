//! An issuer's signing keys: discovery, JWKS fetch and the per-issuer cache.
//!
//! Keys are fetched on first use, refreshed when they grow old, and refetched
//! when a token names a key id the cache does not hold (the issuer rotated),
//! at most once per [`KID_REFETCH_INTERVAL`] so that tokens with made-up key
//! ids cannot turn portcullis into a request amplifier against the issuer.
//! One fetch runs at a time per issuer; concurrent verifications wait for it
//! instead of each starting their own.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use jsonwebtoken::DecodingKey;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::{Duration, Instant};
use url::{Host, Url};

use super::claims::Alg;
use crate::config::IssuerConfig;

/// Per request: discovery and JWKS each get this long, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovery documents and key sets are a few KiB; a larger answer is not one.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// More keys than any issuer publishes; bounds the work a JWKS can cause.
const MAX_KEYS: usize = 64;
/// Rate limit of refetches caused by unknown key ids.
const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys are refreshed this long after they were fetched, so a key the issuer
/// withdrew stops being trusted within this time.
const KEYS_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// After a failed fetch, the next attempt waits this long; meanwhile callers
/// get the failure at once instead of queueing behind a fetch that will
/// likely time out again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The three intervals above, as values, so unit tests can shrink them
/// instead of waiting minutes.
#[derive(Debug, Clone, Copy)]
struct Intervals {
    kid_refetch: Duration,
    keys_max_age: Duration,
    retry_after_failure: Duration,
}

const INTERVALS: Intervals = Intervals {
    kid_refetch: KID_REFETCH_INTERVAL,
    keys_max_age: KEYS_MAX_AGE,
    retry_after_failure: RETRY_AFTER_FAILURE,
};

/// One usable public key of an issuer.
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Alg,
    pub(crate) key: DecodingKey,
}

/// The keys of one fetch.
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyingKey>,
    fetched_at: Instant,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.alg)))
            .finish()
    }
}

impl KeySet {
    /// The keys that may have signed a token with this header: the one
    /// named by `kid`, or, when the token names none, every key of `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }

    pub(crate) fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Fetch bookkeeping, guarded by the per-issuer fetch lock.
#[derive(Default)]
struct FetchState {
    last_kid_refetch: Option<Instant>,
    last_failure: Option<(Instant, String)>,
}

/// The cached keys of one issuer and the lock that serialises fetching them.
pub(crate) struct IssuerKeys {
    config: IssuerConfig,
    /// Read on every verification; a std lock because it is held only to
    /// clone an `Arc`, never across an await.
    current: RwLock<Option<Arc<KeySet>>>,
    fetch: Mutex<FetchState>,
    intervals: Intervals,
}

impl IssuerKeys {
    pub(crate) fn new(config: IssuerConfig) -> Self {
        Self::with_intervals(config, INTERVALS)
    }

    fn with_intervals(config: IssuerConfig, intervals: Intervals) -> Self {
        IssuerKeys {
            config,
            current: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
            intervals,
        }
    }

    pub(crate) fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Installs `keys` as the issuer's keys (for a verifier whose keys are
    /// given, not fetched).
    pub(crate) fn preload(&self, keys: Vec<VerifyingKey>) {
        self.store(Arc::new(KeySet {
            keys,
            fetched_at: Instant::now(),
        }));
    }

    /// The keys installed by [`IssuerKeys::preload`] (or last fetched).
    pub(crate) fn preloaded(&self) -> Option<Arc<KeySet>> {
        self.cached()
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        // A poisoned lock only means a panic elsewhere while cloning an Arc;
        // the value inside is still whole.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, set: Arc<KeySet>) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(set);
    }

    /// The issuer's keys: cached, or fetched if there are none yet or they
    /// are older than [`KEYS_MAX_AGE`]. With no keys at all, a fetch failure
    /// is returned. Old keys stay in use while a refresh fails, and while
    /// another task is refreshing them, so an issuer outage stalls at most
    /// the one verification that attempts the refresh.
    pub(crate) async fn keys(&self, http: &reqwest::Client) -> Result<Arc<KeySet>, String> {
        let max_age = self.intervals.keys_max_age;
        let fresh = |set: &Arc<KeySet>| set.fetched_at.elapsed() < max_age;
        let (mut state, stale) = match self.cached() {
            Some(set) if fresh(&set) => return Ok(set),
            Some(stale) => match self.fetch.try_lock() {
                Ok(state) => (state, Some(stale)),
                Err(_) => return Ok(stale),
            },
            None => (self.fetch.lock().await, None),
        };
        // Another task may have fetched while this one waited for the lock.
        if let Some(set) = self.cached().filter(fresh) {
            return Ok(set);
        }
        if let Some((_, why)) = state
            .last_failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.intervals.retry_after_failure)
        {
            return stale.ok_or_else(|| why.clone());
        }
        match (self.fetch_now(http, &mut state).await, stale) {
            (Ok(set), _) => Ok(set),
            (Err(why), Some(stale)) => {
                tracing::warn!(issuer = %self.config.name, error = %why, "key refresh failed; keeping the previous keys");
                Ok(stale)
            }
            (Err(why), None) => Err(why),
        }
    }

    /// Called when a token names a key id that `seen` does not hold: fetches
    /// the keys again unless that was done less than
    /// [`KID_REFETCH_INTERVAL`] ago, and returns the newest keys either way.
    pub(crate) async fn refetch_for_unknown_kid(
        &self,
        http: &reqwest::Client,
        seen: &Arc<KeySet>,
    ) -> Result<Arc<KeySet>, String> {
        let mut state = self.fetch.lock().await;
        if let Some(current) = self.cached().filter(|c| !Arc::ptr_eq(c, seen)) {
            // Someone refetched while this task waited; use their result.
            return Ok(current);
        }
        if state
            .last_kid_refetch
            .is_some_and(|at| at.elapsed() < self.intervals.kid_refetch)
        {
            return Ok(seen.clone());
        }
        state.last_kid_refetch = Some(Instant::now());
        self.fetch_now(http, &mut state).await
    }

    async fn fetch_now(&self, http: &reqwest::Client, state: &mut FetchState) -> Result<Arc<KeySet>, String> {
        match fetch_keys(http, &self.config).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.name, keys = keys.len(), "fetched issuer keys");
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                });
                self.store(set.clone());
                state.last_failure = None;
                Ok(set)
            }
            Err(why) => {
                tracing::warn!(issuer = %self.config.name, error = %why, "could not fetch issuer keys");
                state.last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// Discovery (unless a JWKS URL is configured), then the JWKS.
async fn fetch_keys(http: &reqwest::Client, config: &IssuerConfig) -> Result<Vec<VerifyingKey>, String> {
    let jwks_url = match &config.jwks_url {
        Some(url) => url.clone(),
        None => {
            let url = Url::parse(&format!("{}/.well-known/openid-configuration", config.issuer))
                .map_err(|_| "the issuer is not a URL".to_owned())?;
            let body = get_capped(http, &url, "discovery document").await?;
            jwks_uri_from_discovery(&body, &config.issuer)?
        }
    };
    let body = get_capped(http, &jwks_url, "JWKS").await?;
    parse_jwks(&body)
}

/// Reads `jwks_uri` from a discovery document, after checking that the
/// document speaks for the configured issuer (OpenID Connect Discovery 4.3):
/// otherwise one issuer's URL could hand out another's keys.
pub(crate) fn jwks_uri_from_discovery(body: &[u8], issuer: &str) -> Result<Url, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "the discovery document is not JSON".to_owned())?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("the discovery document names a different issuer".to_owned());
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| "the discovery document has no jwks_uri".to_owned())?;
    let url = Url::parse(uri).map_err(|_| "the discovery document's jwks_uri is not a URL".to_owned())?;
    if !fetchable(&url) {
        return Err("the discovery document's jwks_uri is neither https nor loopback".to_owned());
    }
    Ok(url)
}

/// The same rule as for configured URLs: https, or http on a loopback
/// address; never credentials in the URL.
fn fetchable(url: &Url) -> bool {
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    };
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    scheme_ok && url.username().is_empty() && url.password().is_none()
}

/// GET with a timeout and a size cap. Failures are described without the
/// upstream body, which is neither trusted nor useful to a caller.
async fn get_capped(http: &reqwest::Client, url: &Url, what: &str) -> Result<Vec<u8>, String> {
    if !fetchable(url) {
        return Err(format!("the {what} URL is neither https nor loopback"));
    }
    let describe = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("the {what} request timed out")
        } else if e.is_connect() {
            format!("could not connect to fetch the {what}")
        } else {
            format!("the {what} request failed")
        }
    };
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the {what} request answered HTTP {}", status.as_u16()));
    }
    let too_large = || format!("the {what} is larger than {MAX_DOCUMENT_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The usable keys of a JWKS: RSA keys for RS256 and P-256 keys for ES256,
/// meant for signatures. Other keys are skipped, not errors, since issuers
/// may publish keys for other purposes; a set with no usable key is an error.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "the JWKS is not JSON".to_owned())?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| "the JWKS has no `keys` array".to_owned())?;
    let keys: Vec<VerifyingKey> = entries.iter().take(MAX_KEYS).filter_map(usable_key).collect();
    if keys.is_empty() {
        return Err("the JWKS holds no RS256 or ES256 signing key".to_owned());
    }
    Ok(keys)
}

fn usable_key(jwk: &Value) -> Option<VerifyingKey> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if jwk.get("use").is_some() && field("use") != Some("sig") {
        return None;
    }
    let (alg, key) = match field("kty")? {
        "RSA" => (
            Alg::Rs256,
            DecodingKey::from_rsa_components(field("n")?, field("e")?).ok()?,
        ),
        "EC" if field("crv")? == "P-256" => (
            Alg::Es256,
            DecodingKey::from_ec_components(field("x")?, field("y")?).ok()?,
        ),
        _ => return None,
    };
    // A key restricted to another algorithm (RS384, PS256, ...) must not
    // verify RS256 or ES256 signatures.
    let declared = jwk.get("alg");
    let alg_ok = match declared {
        None => true,
        Some(v) => {
            v.as_str()
                == Some(match alg {
                    Alg::Rs256 => "RS256",
                    Alg::Es256 => "ES256",
                })
        }
    };
    if !alg_ok {
        return None;
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return None,
    };
    Some(VerifyingKey { kid, alg, key })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RSA_N: &str = "10zWBUmwp4I33PxmLjBWGLfGXXOZ2l7s4I_TWE-dcA3t908cLdTfPhLjnn3182e0ZmLyMdXg6wplMkV7K557XW2TWnxxTEt6XU0_jFCWnVCPdogvg2otwmwQOHFOKD7ZF6PJyvIq9QcD3K2dt6egWaGDRbk0Spp8TWOFjorrkfUTeJbTMl_JDRhfp8Wscupu_Hr_9QLbOSsRlgZ1JTAWEonD--uSe_lSqI83xaQPFhQerfvkWBllA0M7baVasI8FhXsVNlZgk4qskPGEmpft7Osgj_XbcPZgbXe-5aZqeIkrPaJqpIlOz4xC42l-oyaGzPAxYCYmLnb4vTswkGi3KQ";

    #[test]
    fn jwks_keeps_only_signing_keys_of_allowed_algorithms() {
        let body = json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-nokid-alg", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-ps", "alg": "PS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": 7, "n": RSA_N, "e": "AQAB"},
            "not an object",
        ]});
        let keys = parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap();
        let got: Vec<(Option<&str>, Alg)> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(
            got,
            vec![
                (Some("rsa"), Alg::Rs256),
                (Some("rsa-nokid-alg"), Alg::Rs256),
                (Some("ec"), Alg::Es256)
            ]
        );
    }

    #[test]
    fn jwks_without_usable_keys_is_an_error() {
        for body in [
            json!({"keys": []}),
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            json!({"no": "keys"}),
        ] {
            assert!(parse_jwks(&serde_json::to_vec(&body).unwrap()).is_err(), "{body}");
        }
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn candidates_by_kid_or_by_alg() {
        let body = json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": RSA_N, "e": "AQAB"},
        ]});
        let set = KeySet {
            keys: parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap(),
            fetched_at: Instant::now(),
        };
        let kids = |alg, kid| {
            set.candidates(alg, kid)
                .map(|k| k.kid.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(Alg::Rs256, Some("b")), ["b"]);
        assert_eq!(kids(Alg::Rs256, None), ["a", "b"]);
        assert!(kids(Alg::Rs256, Some("c")).is_empty());
        assert!(kids(Alg::Es256, Some("a")).is_empty());
        assert!(set.knows_kid("a") && !set.knows_kid("c"));
    }

    #[test]
    fn discovery_must_name_the_configured_issuer() {
        let doc = |issuer: &str, jwks: &str| serde_json::to_vec(&json!({"issuer": issuer, "jwks_uri": jwks})).unwrap();
        let issuer = "https://token.actions.githubusercontent.com";
        let ok = jwks_uri_from_discovery(&doc(issuer, "https://keys.example/jwks"), issuer);
        assert_eq!(ok.unwrap().as_str(), "https://keys.example/jwks");
        let cases = [
            ("other issuer", doc("https://evil.example", "https://keys.example/jwks")),
            (
                "trailing slash",
                doc(&format!("{issuer}/"), "https://keys.example/jwks"),
            ),
            ("plain http", doc(issuer, "http://keys.example/jwks")),
            ("credentials", doc(issuer, "https://u:p@keys.example/jwks")),
            ("not a url", doc(issuer, "keys")),
            ("no jwks_uri", serde_json::to_vec(&json!({"issuer": issuer})).unwrap()),
            ("not json", b"<html>".to_vec()),
        ];
        for (name, body) in cases {
            assert!(jwks_uri_from_discovery(&body, issuer).is_err(), "case {name}");
        }
        let loopback = jwks_uri_from_discovery(
            &doc("http://127.0.0.1:9", "http://127.0.0.1:9/jwks"),
            "http://127.0.0.1:9",
        );
        assert!(loopback.is_ok());
        let v6 = jwks_uri_from_discovery(&doc("http://[::1]:9", "http://[::1]:9/jwks"), "http://[::1]:9");
        assert!(v6.is_ok());
    }

    fn rsa_set() -> Arc<KeySet> {
        let body = json!({"keys": [{"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"}]});
        Arc::new(KeySet {
            keys: parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap(),
            fetched_at: Instant::now(),
        })
    }

    const SHORT: Duration = Duration::from_millis(200);

    /// An issuer on a loopback port where nothing listens, with intervals
    /// short enough to wait out; keys are stale as soon as they are stored.
    fn unreachable_issuer() -> IssuerKeys {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = IssuerConfig {
            name: "down".into(),
            kind: crate::domain::Platform::Github,
            issuer: format!("http://127.0.0.1:{port}"),
            audience: "portcullis".into(),
            jwks_url: None,
        };
        let intervals = Intervals {
            kid_refetch: SHORT,
            keys_max_age: Duration::ZERO,
            retry_after_failure: SHORT,
        };
        IssuerKeys::with_intervals(config, intervals)
    }

    async fn last_failure_at(issuer: &IssuerKeys) -> Option<Instant> {
        issuer.fetch.lock().await.last_failure.as_ref().map(|(at, _)| *at)
    }

    #[tokio::test]
    async fn old_keys_stay_in_use_while_a_refresh_fails() {
        let issuer = unreachable_issuer();
        let http = reqwest::Client::new();
        let old = rsa_set();
        issuer.store(old.clone());

        let got = issuer.keys(&http).await.expect("stale keys, not an error");

        assert!(Arc::ptr_eq(&got, &old));
        assert!(last_failure_at(&issuer).await.is_some(), "a refresh was attempted");
    }

    #[tokio::test]
    async fn without_keys_a_failure_is_returned_and_retried_only_after_the_backoff() {
        let issuer = unreachable_issuer();
        let http = reqwest::Client::new();

        let first = issuer.keys(&http).await.unwrap_err();
        let failed_at = last_failure_at(&issuer).await;
        let second = issuer.keys(&http).await.unwrap_err();
        let unchanged = last_failure_at(&issuer).await;
        tokio::time::sleep(SHORT).await;
        let third = issuer.keys(&http).await.unwrap_err();
        let retried = last_failure_at(&issuer).await;

        assert_eq!(first, "could not connect to fetch the discovery document");
        assert_eq!((&second, &third), (&first, &first));
        assert_eq!(failed_at, unchanged, "no new attempt within the backoff");
        assert_ne!(failed_at, retried, "a new attempt after it");
    }

    #[tokio::test]
    async fn unknown_kid_refetch_is_rate_limited() {
        let issuer = unreachable_issuer();
        let http = reqwest::Client::new();
        let seen = rsa_set();
        issuer.store(seen.clone());

        // The first refetch is attempted (and fails: the issuer is down).
        assert!(issuer.refetch_for_unknown_kid(&http, &seen).await.is_err());
        // Within the interval, no attempt: the known keys come back.
        let again = issuer.refetch_for_unknown_kid(&http, &seen).await.unwrap();
        assert!(Arc::ptr_eq(&again, &seen));
        tokio::time::sleep(SHORT).await;
        assert!(issuer.refetch_for_unknown_kid(&http, &seen).await.is_err());
    }
}
