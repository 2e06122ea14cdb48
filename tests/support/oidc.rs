//! A real OpenID Provider for the integration tests, and forged tokens for
//! what a real provider will not mint.
//!
//! [`OidcProvider::start`] runs npm `oidc-provider` v9
//! (`tests/support/node/oidc-provider.mjs`) on a free loopback port. It
//! serves discovery and a JWKS with the fixed, test-only keys under
//! `tests/support/node/keys/`, and mints RS256 or ES256 JWTs with the claims
//! a test asks for (GitHub Actions or GitLab CI shaped).
//!
//! The `forge_*` functions sign tokens in-process with those same committed
//! keys (or a rogue key no issuer publishes): expired tokens, `alg: none`,
//! HS256 with the public key as secret, and so on.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::config::IssuerConfig;
use portcullis::domain::Platform;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CLIENT_RS256: &str = "portcullis-rs256";
const CLIENT_ES256: &str = "portcullis-es256";
const CLIENT_SECRET: &str = "test-only-secret";
/// Resource indicators must be absolute URIs; a plain audience such as
/// `portcullis` travels inside this URN and the provider unwraps it.
const AUDIENCE_URN: &str = "urn:portcullis:audience:";

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/node")
}

/// A running `oidc-provider`; killed when dropped.
pub struct OidcProvider {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

/// How often the provider served each key document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct ProviderStats {
    pub discovery: u64,
    pub jwks: u64,
}

impl OidcProvider {
    /// Starts the provider on a free port (it binds port 0 and reports the
    /// port it got, so there is no race for the port) and waits for it.
    pub async fn start() -> OidcProvider {
        let dir = node_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm install --no-audit --no-fund` in {}",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("oidc-provider.mjs"))
            .arg("0")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn `node` (is Node.js installed?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read provider stdout") {
                if let Some(port) = line.strip_prefix("READY ") {
                    return port.trim().parse::<u16>().expect("READY <port>");
                }
            }
            panic!("oidc-provider exited before it was ready");
        })
        .await
        .expect("oidc-provider did not get ready within 30 s");
        // Keep draining stdout so the provider never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OidcProvider {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The issuer identifier, as in tokens and discovery (no trailing slash).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An `[[issuers]]` entry trusting this provider.
    pub fn issuer_config(&self, name: &str, kind: Platform, audience: &str) -> IssuerConfig {
        IssuerConfig {
            name: name.to_owned(),
            kind,
            issuer: self.issuer(),
            audience: audience.to_owned(),
            jwks_url: None,
        }
    }

    /// Mints an RS256 token for `audience` carrying `claims` (`sub` included;
    /// `iss`, `aud`, `iat`, `exp` and `jti` are the provider's own).
    pub async fn mint(&self, audience: &str, claims: Value) -> String {
        self.mint_as(CLIENT_RS256, audience, claims).await
    }

    /// As [`OidcProvider::mint`], signed with ES256.
    pub async fn mint_es256(&self, audience: &str, claims: Value) -> String {
        self.mint_as(CLIENT_ES256, audience, claims).await
    }

    async fn mint_as(&self, client: &str, audience: &str, claims: Value) -> String {
        let resource = if url::Url::parse(audience).is_ok() {
            audience.to_owned()
        } else {
            let encoded: String = url::form_urlencoded::byte_serialize(audience.as_bytes()).collect();
            format!("{AUDIENCE_URN}{encoded}")
        };
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("resource", &resource)
            .append_pair("test_claims", &claims.to_string())
            .finish();
        let response = self
            .http
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(CLIENT_SECRET))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let answer: Value = response.json().await.expect("token response is JSON");
        assert!(status.is_success(), "token endpoint answered {status}: {answer}");
        answer["access_token"].as_str().expect("access_token").to_owned()
    }

    /// How often discovery and the JWKS were served so far.
    pub async fn stats(&self) -> ProviderStats {
        self.http
            .get(format!("{}/__stats", self.issuer()))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // kill_on_drop covers this too; being explicit frees the port at once.
        let _ = self.child.start_kill();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn unused_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// The committed test keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// The provider's RS256 key: its JWKS publishes the public half.
    ProviderRs256,
    /// The provider's ES256 key.
    ProviderEs256,
    /// A key no issuer publishes.
    Rogue,
}

impl TestKey {
    fn file(self) -> &'static str {
        match self {
            TestKey::ProviderRs256 => "rs256",
            TestKey::ProviderEs256 => "es256",
            TestKey::Rogue => "rogue-rs256",
        }
    }

    pub fn kid(self) -> &'static str {
        match self {
            TestKey::ProviderRs256 => "portcullis-test-rs256",
            TestKey::ProviderEs256 => "portcullis-test-es256",
            TestKey::Rogue => "portcullis-test-rogue",
        }
    }

    pub fn alg(self) -> Algorithm {
        match self {
            TestKey::ProviderEs256 => Algorithm::ES256,
            TestKey::ProviderRs256 | TestKey::Rogue => Algorithm::RS256,
        }
    }

    /// The public key, PEM (SPKI).
    pub fn public_pem(self) -> Vec<u8> {
        std::fs::read(node_dir().join(format!("keys/{}.public.pem", self.file()))).expect("read public key")
    }

    fn encoding_key(self) -> EncodingKey {
        let pem =
            std::fs::read(node_dir().join(format!("keys/{}.private.pem", self.file()))).expect("read private key");
        match self.alg() {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("parse private key")
    }
}

/// Signs `claims` with `key`, its kid in the header, as the provider would.
pub fn forge(key: TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg());
    header.kid = Some(key.kid().to_owned());
    forge_with_header(key, header, claims)
}

/// Signs `claims` with `key` under a header of the test's choosing.
pub fn forge_with_header(key: TestKey, header: Header, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, &key.encoding_key()).expect("sign")
}

/// An unsecured JWS (`alg: none`, empty signature).
pub fn forge_unsigned(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": TestKey::ProviderRs256.kid()});
    format!("{}.{}.", b64_json(&header), b64_json(claims))
}

/// The classic key-confusion forgery: HS256 keyed with the bytes of the
/// issuer's public RSA key, which anyone can fetch from its JWKS.
pub fn forge_hs256_with_public_key(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(TestKey::ProviderRs256.kid().to_owned());
    let secret = TestKey::ProviderRs256.public_pem();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret).expect("HMAC key")).expect("sign")
}

/// Replaces a signed token's payload, keeping its header and signature.
pub fn tamper(token: &str, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    let bytes = URL_SAFE_NO_PAD.decode(parts[1]).expect("payload base64url");
    let mut claims: Value = serde_json::from_slice(&bytes).expect("payload JSON");
    change(claims.as_object_mut().expect("payload object"));
    format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2])
}

/// The decoded payload of a token (no verification).
pub fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// The decoded header of a token (no verification).
pub fn header(token: &str) -> Value {
    let part = token.split('.').next().expect("header part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The claims of a GitHub Actions ID token for a deployment job of
/// `octo-org/octo-repo`, run 9876543210, commit `sha`, as GitHub mints them
/// (string ids and booleans-as-strings included). Without `iss`, `aud`,
/// `iat`, `exp`: the minting side adds those.
pub fn github_claims(sha: &str) -> Value {
    json!({
        "sub": "repo:octo-org/octo-repo:environment:production",
        "ref": "refs/heads/main",
        "sha": sha,
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_owner_id": "1234567",
        "repository_id": "7654321",
        "repository_visibility": "private",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "deploy",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": sha,
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": sha,
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "true",
        "environment": "production",
        "runner_environment": "github-hosted",
    })
}

/// The claims of a GitLab CI `id_tokens` token for project `group/project`,
/// pipeline 574, commit `sha`.
pub fn gitlab_claims(sha: &str) -> Value {
    json!({
        "sub": "project_path:group/project:ref_type:branch:ref:main",
        "namespace_id": "72",
        "namespace_path": "group",
        "project_id": "20",
        "project_path": "group/project",
        "user_id": "5",
        "user_login": "alice",
        "user_email": "alice@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "runner_id": "1",
        "runner_environment": "self-hosted",
        "sha": sha,
        "ci_config_ref_uri": "gitlab.example.com/group/project//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": sha,
        "project_visibility": "private",
    })
}

/// `claims` plus the registered claims of a token issued by `issuer` for
/// `audience`, valid from `iat` for `ttl_secs` seconds (`nbf` = `iat`).
pub fn with_registered(mut claims: Value, issuer: &str, audience: &str, iat: i64, ttl_secs: i64) -> Value {
    let obj = claims.as_object_mut().expect("claims object");
    obj.insert("iss".into(), json!(issuer));
    obj.insert("aud".into(), json!(audience));
    obj.insert("iat".into(), json!(iat));
    obj.insert("nbf".into(), json!(iat));
    obj.insert("exp".into(), json!(iat + ttl_secs));
    obj.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    claims
}
