//! The pure parts of token verification: splitting a compact JWS, reading its
//! header and claims, the audience and time rules, and mapping CI claims to
//! repository, run and actor. No I/O and no clock: time is an argument.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use super::TokenError;
use crate::domain::Platform;

/// Clock skew tolerated between the issuer and the decision clock, for `exp`,
/// `nbf` and `iat`.
pub(crate) const LEEWAY: Duration = Duration::seconds(60);

/// Real CI ID tokens are 1 to 3 KiB; anything far larger is refused before
/// any decoding work is spent on it.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The only signing algorithms accepted. GitHub Actions signs with RS256 and
/// GitLab with RS256; ES256 is accepted for other conforming issuers.
/// Symmetric algorithms and `none` are refused by construction: a verifier
/// that holds only public keys must never let the token choose HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    pub(crate) fn as_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::Rs256 => jsonwebtoken::Algorithm::RS256,
            Alg::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

/// A compact JWS whose header has been read and whose algorithm is allowed;
/// the payload is still undecoded and nothing is verified yet.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    /// `header.payload`: the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
}

/// Splits a compact JWS and checks its header, the algorithm first, before
/// any other part of the token is looked at.
pub(crate) fn parse_header(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("the token is too large"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a compact JWS (three dot-separated parts)"));
    };
    let header = decode_json_object(header_b64, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::parse(name).ok_or(TokenError::AlgorithmNotAllowed)?,
        Some(_) => return Err(TokenError::AlgorithmNotAllowed),
        None => return Err(malformed("the header has no `alg`")),
    };
    // RFC 7515 4.1.11: an extension the verifier does not understand must
    // not be ignored, and portcullis understands none.
    if header.contains_key("crit") {
        return Err(malformed("the header lists critical extensions"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("the header's `kid` is not a string")),
    };
    // `header.payload`; the dot is ASCII, so this is a char boundary.
    let signing_input = token
        .get(..header_b64.len() + 1 + payload.len())
        .ok_or_else(|| malformed("not a compact JWS"))?;
    Ok(Jws {
        alg,
        kid,
        signing_input,
        payload,
        signature,
    })
}

/// Decodes the (not yet verified) claims set.
pub(crate) fn decode_claims(payload: &str) -> Result<BTreeMap<String, Value>, TokenError> {
    decode_json_object(payload, "payload")
}

fn decode_json_object(part: &str, what: &str) -> Result<BTreeMap<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(&format!("the {what} is not base64url")))?;
    serde_json::from_slice::<BTreeMap<String, Value>>(&bytes)
        .map_err(|_| malformed(&format!("the {what} is not a JSON object")))
}

/// The `iss` claim, read before verification to choose the issuer whose keys
/// must then verify the signature.
pub(crate) fn issuer_of(claims: &BTreeMap<String, Value>) -> Result<&str, TokenError> {
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss),
        Some(_) => Err(malformed("claim `iss` is not a string")),
        None => Err(malformed("missing claim `iss`")),
    }
}

/// `aud` may be one string or an array of strings (RFC 7519 4.1.3); the
/// configured audience must be it or one of them. A token with no audience
/// was not minted for anyone in particular, so it is not minted for us.
pub(crate) fn check_audience(claims: &BTreeMap<String, Value>, expected: &str) -> Result<(), TokenError> {
    let matches = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expected,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expected)),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(TokenError::AudienceMismatch)
    }
}

/// Checks `exp` (required), `nbf` and `iat` against the decision clock `now`
/// with [`LEEWAY`], and returns the expiry. Run on every verification,
/// including cache hits, since `now` moves on.
pub(crate) fn check_times(claims: &BTreeMap<String, Value>, now: OffsetDateTime) -> Result<OffsetDateTime, TokenError> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| malformed("missing claim `exp`"))?;
    // An expiry so far away that adding the leeway overflows is not past.
    if exp.checked_add(LEEWAY).is_some_and(|limit| limit < now) {
        return Err(TokenError::Expired);
    }
    let horizon = now.checked_add(LEEWAY).unwrap_or(now);
    for name in ["nbf", "iat"] {
        if numeric_date(claims, name)?.is_some_and(|t| t > horizon) {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(exp)
}

/// A NumericDate claim (seconds since the epoch, possibly fractional).
fn numeric_date(claims: &BTreeMap<String, Value>, name: &str) -> Result<Option<OffsetDateTime>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = if let Some(s) = value.as_i64() {
        s
    } else {
        match value.as_f64() {
            // 1e15 s is far beyond what `time` can represent anyway; the bound
            // keeps the float-to-int conversion exact and in range.
            Some(f) if f.is_finite() && f.abs() < 1e15 => f.floor() as i64,
            _ => return Err(malformed(&format!("claim `{name}` is not a NumericDate"))),
        }
    };
    OffsetDateTime::from_unix_timestamp(seconds)
        .map(Some)
        .map_err(|_| malformed(&format!("claim `{name}` is out of range")))
}

/// The identity a CI token asserts, in platform-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) subject: String,
    pub(crate) actor: String,
    pub(crate) repository: String,
    pub(crate) run: String,
    pub(crate) sha: Option<String>,
}

/// Which claim carries what, per platform.
struct ClaimNames {
    repository: &'static str,
    run: &'static str,
    actor: &'static str,
}

const GITHUB: ClaimNames = ClaimNames {
    repository: "repository",
    run: "run_id",
    actor: "actor",
};

const GITLAB: ClaimNames = ClaimNames {
    repository: "project_path",
    run: "pipeline_id",
    actor: "user_login",
};

/// Maps the claims of a GitHub Actions or GitLab CI ID token to the identity
/// the decision engine works with. Every field it needs must be present: a
/// token that cannot name its run cannot be matched to a deployment.
pub(crate) fn map_identity(kind: Platform, claims: &BTreeMap<String, Value>) -> Result<Identity, TokenError> {
    let names = match kind {
        Platform::Github => &GITHUB,
        Platform::Gitlab => &GITLAB,
    };
    Ok(Identity {
        subject: required_string(claims, "sub")?,
        repository: required_string(claims, names.repository)?,
        run: numeric_id(claims, names.run)?,
        actor: required_string(claims, names.actor)?,
        sha: optional_string(claims, "sha")?,
    })
}

fn required_string(claims: &BTreeMap<String, Value>, name: &str) -> Result<String, TokenError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(malformed(&format!("claim `{name}` is empty"))),
        Some(_) => Err(malformed(&format!("claim `{name}` is not a string"))),
        None => Err(malformed(&format!("missing claim `{name}`"))),
    }
}

fn optional_string(claims: &BTreeMap<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => required_string(claims, name).map(Some),
    }
}

/// A run or pipeline id. Both platforms send a decimal string (GitHub's
/// `run_id`, GitLab's `pipeline_id`); a JSON number is accepted too. Only
/// digits are accepted, because the id becomes part of storage keys.
fn numeric_id(claims: &BTreeMap<String, Value>, name: &str) -> Result<String, TokenError> {
    let id = match claims.get(name) {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| malformed(&format!("claim `{name}` is not a numeric id")))?,
        Some(Value::String(_)) => required_string(claims, name)?,
        Some(_) => return Err(malformed(&format!("claim `{name}` is not a numeric id"))),
        None => return Err(malformed(&format!("missing claim `{name}`"))),
    };
    if id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(malformed(&format!("claim `{name}` is not a numeric id")))
    }
}

fn malformed(why: &str) -> TokenError {
    TokenError::Malformed(why.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn claims(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn encode(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", encode(&header), encode(&payload))
    }

    #[test]
    fn header_alg_is_checked_first() {
        let cases = [
            ("none", json!({"alg": "none"})),
            ("hs256", json!({"alg": "HS256"})),
            ("rs512", json!({"alg": "RS512"})),
            ("es384", json!({"alg": "ES384"})),
            ("lowercase", json!({"alg": "rs256"})),
            ("number", json!({"alg": 256})),
        ];
        for (name, header) in cases {
            // An undecodable payload proves the payload was never looked at.
            let t = format!("{}.!!!.sig", encode(&header));
            let err = parse_header(&t).unwrap_err();
            assert_eq!(err.code(), "algorithm_not_allowed", "case {name}");
        }
    }

    #[test]
    fn header_reads_alg_and_kid_and_signing_input() {
        let t = token(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}), json!({}));
        let jws = parse_header(&t).unwrap();
        assert_eq!(jws.alg, Alg::Es256);
        assert_eq!(jws.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signature, "c2ln");
        assert_eq!(format!("{}.{}", jws.signing_input, jws.signature), t);
        assert!(jws.signing_input.ends_with(jws.payload));
    }

    #[test]
    fn malformed_shapes_are_token_malformed() {
        let ok_header = encode(&json!({"alg": "RS256"}));
        let cases = [
            ("empty", String::new()),
            ("garbage", "not a token".to_owned()),
            ("two parts", format!("{ok_header}.e30")),
            ("jwe", format!("{ok_header}.a.b.c.d")),
            ("header not base64", "%%%.e30.sig".to_owned()),
            ("header not object", format!("{}.e30.sig", encode(&json!([1])))),
            ("no alg", format!("{}.e30.sig", encode(&json!({"typ": "JWT"})))),
            (
                "crit",
                format!("{}.e30.sig", encode(&json!({"alg": "RS256", "crit": ["b64"]}))),
            ),
            (
                "kid number",
                format!("{}.e30.sig", encode(&json!({"alg": "RS256", "kid": 1}))),
            ),
            ("too large", format!("{ok_header}.{}.sig", "A".repeat(MAX_TOKEN_BYTES))),
        ];
        for (name, t) in cases {
            let err = parse_header(&t).unwrap_err();
            assert_eq!(err.code(), "token_malformed", "case {name}");
        }
        assert_eq!(decode_claims("e30").unwrap(), BTreeMap::new());
        assert_eq!(decode_claims("WzFd").unwrap_err().code(), "token_malformed");
    }

    #[test]
    fn audience_string_or_array() {
        let cases = [
            ("string equal", json!({"aud": "portcullis"}), true),
            ("string other", json!({"aud": "someone-else"}), false),
            ("array containing", json!({"aud": ["a", "portcullis"]}), true),
            ("array without", json!({"aud": ["a", "b"]}), false),
            ("array of non-strings", json!({"aud": [1, null]}), false),
            ("empty array", json!({"aud": []}), false),
            ("missing", json!({}), false),
            ("number", json!({"aud": 5}), false),
            ("prefix only", json!({"aud": "portcullis-staging"}), false),
        ];
        for (name, c, ok) in cases {
            let got = check_audience(&claims(c), "portcullis");
            match (ok, got) {
                (true, Ok(())) => {}
                (false, Err(TokenError::AudienceMismatch)) => {}
                (_, other) => panic!("case {name}: {other:?}"),
            }
        }
    }

    #[test]
    fn times_with_leeway() {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let at = |offset: i64| now.unix_timestamp() + offset;
        let cases: [(&str, Value, Option<&str>); 11] = [
            ("valid", json!({"exp": at(300), "iat": at(-10), "nbf": at(-10)}), None),
            ("expired within leeway", json!({"exp": at(-60)}), None),
            ("expired beyond leeway", json!({"exp": at(-61)}), Some("token_expired")),
            ("nbf within leeway", json!({"exp": at(300), "nbf": at(60)}), None),
            (
                "nbf beyond leeway",
                json!({"exp": at(300), "nbf": at(61)}),
                Some("token_not_yet_valid"),
            ),
            (
                "iat beyond leeway",
                json!({"exp": at(300), "iat": at(3600)}),
                Some("token_not_yet_valid"),
            ),
            ("fractional exp", json!({"exp": at(300) as f64 + 0.5}), None),
            ("missing exp", json!({"iat": at(0)}), Some("token_malformed")),
            ("string exp", json!({"exp": "soon"}), Some("token_malformed")),
            ("exp out of range", json!({"exp": i64::MAX}), Some("token_malformed")),
            ("exp huge float", json!({"exp": 1e300}), Some("token_malformed")),
        ];
        for (name, c, want) in cases {
            let got = check_times(&claims(c.clone()), now);
            match (want, got) {
                (None, Ok(exp)) => assert_eq!(
                    exp.unix_timestamp(),
                    c["exp"].as_f64().unwrap().floor() as i64,
                    "case {name}"
                ),
                (Some(code), Err(e)) => assert_eq!(e.code(), code, "case {name}"),
                (_, other) => panic!("case {name}: {other:?}"),
            }
        }
    }

    #[test]
    fn far_future_expiry_does_not_overflow() {
        let far = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap(); // 9999-12-31
        let c = claims(json!({"exp": far.unix_timestamp()}));
        assert_eq!(check_times(&c, OffsetDateTime::UNIX_EPOCH).unwrap(), far);
        assert!(check_times(&c, far).is_ok());
    }

    fn github_claims() -> Value {
        json!({
            "sub": "repo:octo-org/octo-repo:environment:production",
            "repository": "octo-org/octo-repo",
            "run_id": "1234567890",
            "actor": "octocat",
            "sha": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "ref": "refs/heads/main",
        })
    }

    fn gitlab_claims() -> Value {
        json!({
            "sub": "project_path:group/project:ref_type:branch:ref:main",
            "project_path": "group/project",
            "pipeline_id": "574",
            "user_login": "alice",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "ref_protected": "true",
        })
    }

    #[test]
    fn github_mapping() {
        let id = map_identity(Platform::Github, &claims(github_claims())).unwrap();
        assert_eq!(
            id,
            Identity {
                subject: "repo:octo-org/octo-repo:environment:production".into(),
                actor: "octocat".into(),
                repository: "octo-org/octo-repo".into(),
                run: "1234567890".into(),
                sha: Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4".into()),
            }
        );
    }

    #[test]
    fn gitlab_mapping() {
        let id = map_identity(Platform::Gitlab, &claims(gitlab_claims())).unwrap();
        assert_eq!(
            id,
            Identity {
                subject: "project_path:group/project:ref_type:branch:ref:main".into(),
                actor: "alice".into(),
                repository: "group/project".into(),
                run: "574".into(),
                sha: Some("714a629c0b401fdce83e847fc9589983fc6f46bc".into()),
            }
        );
        // A GitLab token does not satisfy the GitHub mapping, and back.
        let err = map_identity(Platform::Github, &claims(gitlab_claims())).unwrap_err();
        assert_eq!(err.to_string(), "malformed token: missing claim `repository`");
        let err = map_identity(Platform::Gitlab, &claims(github_claims())).unwrap_err();
        assert_eq!(err.to_string(), "malformed token: missing claim `project_path`");
    }

    #[test]
    fn run_id_as_number_and_sha_optional() {
        let mut c = github_claims();
        c["run_id"] = json!(1234567890u64);
        c.as_object_mut().unwrap().remove("sha");
        let id = map_identity(Platform::Github, &claims(c)).unwrap();
        assert_eq!(id.run, "1234567890");
        assert_eq!(id.sha, None);
    }

    #[test]
    fn missing_or_bad_claims_are_malformed() {
        let cases: [(&str, &str, Option<Value>, &str); 9] = [
            ("no run_id", "run_id", None, "missing claim `run_id`"),
            ("no repository", "repository", None, "missing claim `repository`"),
            ("no actor", "actor", None, "missing claim `actor`"),
            ("no sub", "sub", None, "missing claim `sub`"),
            ("empty actor", "actor", Some(json!("")), "claim `actor` is empty"),
            ("actor number", "actor", Some(json!(5)), "claim `actor` is not a string"),
            (
                "negative run",
                "run_id",
                Some(json!(-1)),
                "claim `run_id` is not a numeric id",
            ),
            (
                "run with colon",
                "run_id",
                Some(json!("1:2")),
                "claim `run_id` is not a numeric id",
            ),
            ("sha number", "sha", Some(json!(1)), "claim `sha` is not a string"),
        ];
        for (name, claim, value, message) in cases {
            let mut c = github_claims();
            let obj = c.as_object_mut().unwrap();
            match value {
                Some(v) => {
                    obj.insert(claim.into(), v);
                }
                None => {
                    obj.remove(claim);
                }
            }
            match map_identity(Platform::Github, &claims(c)) {
                Err(TokenError::Malformed(m)) => assert_eq!(m, message, "case {name}"),
                other => panic!("case {name}: {other:?}"),
            }
        }
    }

    #[test]
    fn issuer_claim() {
        assert_eq!(issuer_of(&claims(json!({"iss": "https://x"}))).unwrap(), "https://x");
        assert_eq!(issuer_of(&claims(json!({}))).unwrap_err().code(), "token_malformed");
        assert_eq!(
            issuer_of(&claims(json!({"iss": 1}))).unwrap_err().code(),
            "token_malformed"
        );
    }
}
