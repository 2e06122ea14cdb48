//! CI ID tokens for the setup phase: ES256, signed in process with the
//! committed test key (`tests/support/node/keys/es256.*`), whose public half
//! the mock serves as the issuer's JWKS. ES256 because signing tens of
//! thousands of tokens must not dominate the run; portcullis verifies both
//! algorithms, and `benches/identity.rs` measures RS256.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

pub const KID: &str = "portcullis-test-es256";

pub struct Minter {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    header: String,
    pub issuer: String,
}

impl Minter {
    pub fn new(keys_dir: &std::path::Path, issuer: String) -> Minter {
        let pem = std::fs::read_to_string(keys_dir.join("es256.private.pem")).expect("read es256.private.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(b64).expect("pem base64");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("es256 pkcs8");
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": KID}).to_string());
        Minter {
            key,
            rng: SystemRandom::new(),
            header,
            issuer,
        }
    }

    /// Signs `claims` plus `iss`, `aud`, `iat`, `nbf`, `exp` (one hour).
    pub fn mint(&self, mut claims: Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let obj = claims.as_object_mut().expect("claims object");
        obj.insert("iss".into(), json!(self.issuer));
        obj.insert("aud".into(), json!("portcullis"));
        obj.insert("iat".into(), json!(now));
        obj.insert("nbf".into(), json!(now));
        obj.insert("exp".into(), json!(now + 3600));
        let input = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(&self.rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// The JWKS serving the public half of the ES256 test key.
pub fn jwks(keys_dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(keys_dir.join("es256.private.jwk.json")).expect("read es256 jwk");
    let jwk: Value = serde_json::from_str(&text).expect("jwk json");
    json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KID, "x": jwk["x"], "y": jwk["y"]}]})
        .to_string()
}

/// Claims of the deploy job of run `run` of octo-org/payments at `sha`, as
/// GitHub Actions mints them.
pub fn deploy_job(run: u64, sha: &str) -> Value {
    json!({
        "jti": format!("bench-run-{run}"),
        "sub": "repo:octo-org/payments:environment:production",
        "ref": "refs/heads/main", "sha": sha,
        "repository": "octo-org/payments", "repository_owner": "octo-org", "repository_owner_id": "1234567",
        "repository_id": "7654321", "repository_visibility": "private",
        "run_id": run.to_string(), "run_number": "42", "run_attempt": "1",
        "actor": "octocat", "actor_id": "583231", "workflow": "deploy",
        "workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "workflow_sha": sha,
        "job_workflow_ref": "octo-org/payments/.github/workflows/deploy.yml@refs/heads/main", "job_workflow_sha": sha,
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch", "ref_protected": "true",
        "environment": "production", "runner_environment": "github-hosted",
    })
}

/// The policy-gate job that posts verdicts (a trusted producer).
pub const GATE_WORKFLOW: &str = "octo-org/compliance/.github/workflows/gate.yml@refs/heads/main";

pub fn gate_job(sha: &str) -> Value {
    let mut c = deploy_job(1, sha);
    c["jti"] = json!("bench-gate");
    c["sub"] = json!("repo:octo-org/payments:ref:refs/heads/main");
    c["actor"] = json!("compliance-bot");
    c["job_workflow_ref"] = json!(GATE_WORKFLOW);
    c
}
