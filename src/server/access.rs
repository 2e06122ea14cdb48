//! Who may use the read API (`GET /v1/requests/{id}`, `GET /v1/audit…`).
//!
//! With `server.read_token` configured, a caller must present it as
//! `Authorization: Bearer …`; the comparison is of the SHA-256 digests of
//! both, in constant time, so neither the token's bytes nor its length leak
//! through timing. Without a read token, only a caller whose own address
//! (the TCP peer) is loopback gets in: the address the service listens on
//! says nothing about who connects through a proxy on the same host. With
//! `server.trusted_proxy_header` configured, the client that header names
//! must be loopback too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use actix_web::HttpRequest;

use super::ApiError;
use super::ingress::header;
use crate::config::ServerConfig;
use crate::domain::ErrorCode;

/// The token of an `Authorization: Bearer <token>` header, if any.
pub(super) fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = header(req, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Lets the caller read requests and audit records, or says why not:
/// 401 `read_token_invalid` for a missing or wrong read token, 403
/// `read_token_required` for a caller off loopback when no read token is
/// configured.
pub(super) fn authorize_read(req: &HttpRequest, server: &ServerConfig) -> Result<(), ApiError> {
    match &server.read_token {
        Some(expected) => match bearer(req) {
            Some(given) if token_matches(given, expected.expose()) => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::ReadTokenInvalid,
                "a valid read token is required",
            )),
        },
        None if caller_is_loopback(req, server.trusted_proxy_header.as_deref()) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::ReadTokenRequired,
            "server.read_token must be configured to read requests and audit records from another address",
        )),
    }
}

/// The TCP peer is loopback, and so is the client a configured proxy
/// header names, when the request carries one.
fn caller_is_loopback(req: &HttpRequest, proxy_header: Option<&str>) -> bool {
    let peer = req.peer_addr().is_some_and(|p| p.ip().is_loopback());
    let forwarded = proxy_header.and_then(|h| header(req, h)).map(forwarded_ip);
    peer && forwarded.is_none_or(|ip| ip.is_some_and(|ip| ip.is_loopback()))
}

/// The address requests are counted against: the client named in
/// `proxy_header` (its last entry, the one the trusted proxy wrote) when
/// configured and readable, else the TCP peer (unspecified when unknown).
pub(super) fn source_ip(req: &HttpRequest, proxy_header: Option<&str>) -> IpAddr {
    proxy_header
        .and_then(|h| header(req, h))
        .and_then(forwarded_ip)
        .or_else(|| req.peer_addr().map(|p| p.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The last entry of an `x-forwarded-for`-style list: an address, with or
/// without a port.
fn forwarded_ip(value: &str) -> Option<IpAddr> {
    let last = value.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Compares the digests, which have one length whatever the inputs'.
fn token_matches(given: &str, expected: &str) -> bool {
    let given = crate::crypto::sha256_hex(given.as_bytes());
    let expected = crate::crypto::sha256_hex(expected.as_bytes());
    crate::crypto::secrets_equal(given.as_bytes(), expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;
    use actix_web::test::TestRequest;

    use super::*;
    use crate::config::Config;

    const MINIMAL: &str = r#"
[[issuers]]
name = "gha"
kind = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = "portcullis"

[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
producers = [{ job_workflow_ref = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main" }]
"#;

    fn server(extra: &str) -> ServerConfig {
        let text = format!("[server]\n{extra}\n{MINIMAL}");
        Config::from_toml(&text, &|k| (k == "READ").then(|| "s3cr3t-read".to_string()))
            .unwrap()
            .server
    }

    fn code_of(r: Result<(), ApiError>) -> Option<(u16, &'static str)> {
        r.err().map(|e| (e.status_code().as_u16(), e.code().as_str()))
    }

    #[test]
    fn without_a_read_token_only_loopback_peers_get_in() {
        // Listening on loopback, as behind a proxy on the same host.
        let config = server("listen = \"127.0.0.1:8080\"");
        let local = TestRequest::default().peer_addr("127.0.0.1:50000".parse().unwrap());
        assert_eq!(code_of(authorize_read(&local.to_http_request(), &config)), None);
        let local6 = TestRequest::default().peer_addr("[::1]:50000".parse().unwrap());
        assert_eq!(code_of(authorize_read(&local6.to_http_request(), &config)), None);
        let remote = TestRequest::default().peer_addr("10.1.2.3:50000".parse().unwrap());
        assert_eq!(
            code_of(authorize_read(&remote.to_http_request(), &config)),
            Some((403, "read_token_required"))
        );
        let unknown = TestRequest::default();
        assert_eq!(
            code_of(authorize_read(&unknown.to_http_request(), &config)),
            Some((403, "read_token_required"))
        );
    }

    #[test]
    fn without_a_read_token_a_loopback_peer_gets_in_whatever_the_listen_address() {
        let config = server("listen = \"0.0.0.0:8080\"");
        let local = TestRequest::default().peer_addr("127.0.0.1:50000".parse().unwrap());
        assert_eq!(code_of(authorize_read(&local.to_http_request(), &config)), None);
    }

    #[test]
    fn with_a_read_token_every_caller_must_present_it() {
        let config = server("read_token = { env = \"READ\" }");
        let with = |auth: Option<&str>| {
            let mut r = TestRequest::default().peer_addr("127.0.0.1:50000".parse().unwrap());
            if let Some(a) = auth {
                r = r.insert_header(("authorization", a));
            }
            code_of(authorize_read(&r.to_http_request(), &config))
        };
        assert_eq!(with(Some("Bearer s3cr3t-read")), None);
        assert_eq!(with(Some("bearer s3cr3t-read")), None);
        let refused = Some((401, "read_token_invalid"));
        assert_eq!(with(None), refused, "loopback is no way around the token");
        assert_eq!(with(Some("Bearer s3cr3t-rea")), refused, "a prefix");
        assert_eq!(with(Some("Bearer s3cr3t-read-and-more")), refused, "a longer token");
        assert_eq!(with(Some("Basic s3cr3t-read")), refused);
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_client_must_be_loopback_too() {
        let config = server("trusted_proxy_header = \"x-forwarded-for\"");
        let via_proxy = |forwarded: Option<&str>| {
            let mut r = TestRequest::default().peer_addr("127.0.0.1:50000".parse().unwrap());
            if let Some(f) = forwarded {
                r = r.insert_header(("x-forwarded-for", f));
            }
            code_of(authorize_read(&r.to_http_request(), &config))
        };
        assert_eq!(via_proxy(Some("203.0.113.9")), Some((403, "read_token_required")));
        assert_eq!(
            via_proxy(Some("127.0.0.1, 203.0.113.9")),
            Some((403, "read_token_required")),
            "the proxy's own entry is the last"
        );
        assert_eq!(via_proxy(Some("garbage")), Some((403, "read_token_required")));
        assert_eq!(via_proxy(Some("203.0.113.9, 127.0.0.1")), None);
        assert_eq!(via_proxy(None), None, "a local process, not through the proxy");
        // A remote peer cannot claim loopback through the header.
        let r = TestRequest::default()
            .peer_addr("203.0.113.9:50000".parse().unwrap())
            .insert_header(("x-forwarded-for", "127.0.0.1"));
        assert_eq!(
            code_of(authorize_read(&r.to_http_request(), &config)),
            Some((403, "read_token_required"))
        );
    }

    #[test]
    fn the_source_is_the_peer_unless_a_proxy_header_is_configured() {
        let r = TestRequest::default()
            .peer_addr("10.0.0.7:50000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.1, 203.0.113.9:4711"))
            .to_http_request();
        assert_eq!(source_ip(&r, None), "10.0.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            source_ip(&r, Some("x-forwarded-for")),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_ip(&r, Some("x-real-ip")),
            "10.0.0.7".parse::<IpAddr>().unwrap(),
            "absent header: the peer"
        );
        let v6 = TestRequest::default()
            .insert_header(("x-forwarded-for", "[2001:db8::1]:443"))
            .to_http_request();
        assert_eq!(
            source_ip(&v6, Some("x-forwarded-for")),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn tokens_are_compared_by_digest() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("", "abc"));
        assert!(!token_matches("abc", ""));
    }
}
