//! The HTTP client for calls to outside services that are not a platform
//! API: OIDC discovery and JWKS, OPA servers, and the audit trail's S3
//! anchor. It follows no redirect: the https-or-loopback rule is checked on
//! the configured URL, and a redirect could lead anywhere (to plain http,
//! or another host).

use std::time::Duration;

/// A client with a 10 s timeout, portcullis's user agent, and no redirects.
pub fn client() -> reqwest::Result<reqwest::Client> {
    client_with_timeout(Duration::from_secs(10))
}

/// The same client with another timeout for each whole request.
pub fn client_with_timeout(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
}
