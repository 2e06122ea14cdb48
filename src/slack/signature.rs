//! Slack's v0 request signatures.
//!
//! `X-Slack-Signature` is `v0=` followed by the hex HMAC-SHA256, under the
//! app's signing secret, of `v0:{X-Slack-Request-Timestamp}:{raw body}`.
//! The signature is checked first (in constant time), then the timestamp
//! must be within [`WINDOW`] of now, so a captured request cannot be
//! replayed later: a forged request is `signature_invalid`, a genuine but
//! old one `signature_stale`.

use time::OffsetDateTime;

use crate::domain::ErrorCode;

/// How far a request's timestamp may be from now, either way.
pub const WINDOW: i64 = 5 * 60;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Slack signature is missing or does not verify")]
    Invalid,
    #[error("the Slack request timestamp is more than five minutes from now")]
    Stale,
}

impl SignatureError {
    /// The stable error code of the HTTP API.
    pub fn code(self) -> ErrorCode {
        match self {
            SignatureError::Invalid => ErrorCode::SignatureInvalid,
            SignatureError::Stale => ErrorCode::SignatureStale,
        }
    }
}

/// Verifies a request's signature headers (`None` when absent) over `body`
/// at `now`.
pub fn verify(
    signing_secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Invalid);
    };
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Invalid)?;
    let tag = signature
        .trim()
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Invalid)?;
    if !crate::crypto::hmac_sha256_verify(signing_secret, &[b"v0:", timestamp.as_bytes(), b":", body], &tag) {
        return Err(SignatureError::Invalid);
    }
    if (now.unix_timestamp() - ts).abs() > WINDOW {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The `X-Slack-Signature` value for `body` at `timestamp` (what Slack sends;
/// tests sign with it).
pub fn sign(signing_secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let tag = crate::crypto::hmac_sha256(signing_secret, &[b"v0:", ts.as_bytes(), b":", body]);
    format!("v0={}", hex::encode(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn slacks_documented_example_verifies() {
        // The example of Slack's "Verifying requests from Slack" guide.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let now = OffsetDateTime::from_unix_timestamp(1531420618).unwrap();
        assert_eq!(verify(SECRET, Some("1531420618"), Some(sig), body, now), Ok(()));
    }

    /// (name, timestamp header, signature header, body, expected)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<String>,
        &'a [u8],
        Result<(), SignatureError>,
    );

    #[test]
    fn each_failure_has_its_code() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let body = b"payload=%7B%7D";
        let good = sign(SECRET, 1_700_000_000, body);
        let cases: [Case; 8] = [
            ("signed now", Some("1700000000"), Some(good.clone()), body, Ok(())),
            (
                "signed 4 minutes ago",
                Some("1699999760"),
                Some(sign(SECRET, 1_699_999_760, body)),
                body,
                Ok(()),
            ),
            (
                "signed 6 minutes ago",
                Some("1699999640"),
                Some(sign(SECRET, 1_699_999_640, body)),
                body,
                Err(SignatureError::Stale),
            ),
            (
                "signed 6 minutes ahead",
                Some("1700000360"),
                Some(sign(SECRET, 1_700_000_360, body)),
                body,
                Err(SignatureError::Stale),
            ),
            (
                "another secret",
                Some("1700000000"),
                Some(sign(b"other", 1_700_000_000, body)),
                body,
                Err(SignatureError::Invalid),
            ),
            (
                "another body",
                Some("1700000000"),
                Some(good.clone()),
                b"payload=%7B%7D ",
                Err(SignatureError::Invalid),
            ),
            (
                "timestamp changed",
                Some("1700000001"),
                Some(good.clone()),
                body,
                Err(SignatureError::Invalid),
            ),
            (
                "no signature",
                Some("1700000000"),
                None,
                body,
                Err(SignatureError::Invalid),
            ),
        ];
        for (name, ts, sig, body, want) in cases {
            assert_eq!(verify(SECRET, ts, sig.as_deref(), body, now), want, "{name}");
        }
        assert_eq!(
            verify(SECRET, None, Some(&good), body, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some("v1=00"), body, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(SECRET, Some("soon"), Some(&good), body, now),
            Err(SignatureError::Invalid)
        );
    }
}
