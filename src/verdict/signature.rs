//! OPA bundle signatures: `.signatures.json` holds one JWT (RS256 or
//! ES256) whose payload lists every file of the bundle with its SHA-256
//! (`{"files": [{"name", "hash", "algorithm": "SHA-256"}], "keyid"?,
//! "scope"?}`), as `opa sign` writes it. Structured files (`data.json`,
//! `.manifest`) are hashed over OPA's canonical form of their JSON (object
//! keys sorted, numbers as written, no whitespace), so reformatting them
//! does not break a signature; every other file over its bytes.

use std::collections::{BTreeMap, HashSet};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The public key bundle signatures verify against.
#[derive(Clone)]
pub struct VerificationKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerificationKey({:?})", self.algorithm)
    }
}

/// Why a bundle's signature does not hold. The text names the file or the
/// step, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignatureError(pub String);

impl VerificationKey {
    /// An RSA public key (RS256) or an EC P-256 public key (ES256), PEM.
    pub fn from_pem(pem: &str) -> Result<VerificationKey, SignatureError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            return Ok(VerificationKey {
                key,
                algorithm: Algorithm::RS256,
            });
        }
        match DecodingKey::from_ec_pem(pem.as_bytes()) {
            Ok(key) => Ok(VerificationKey {
                key,
                algorithm: Algorithm::ES256,
            }),
            Err(_) => Err(SignatureError(
                "the verification key is not a PEM public key (RSA for RS256, or EC P-256 for ES256)".to_owned(),
            )),
        }
    }
}

#[derive(Deserialize)]
struct SignaturesFile {
    #[serde(default)]
    signatures: Vec<String>,
}

#[derive(Deserialize)]
struct Payload {
    files: Vec<FileEntry>,
}

#[derive(Deserialize)]
struct FileEntry {
    name: String,
    hash: String,
    #[serde(default)]
    algorithm: String,
}

/// Verifies `.signatures.json` (`signatures_json`) against `key`, and that it
/// lists exactly the bundle's `files` (name to bytes, `.signatures.json`
/// left out) with their hashes.
pub(crate) fn verify(
    signatures_json: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
    key: &VerificationKey,
) -> Result<(), SignatureError> {
    let err = |m: String| SignatureError(m);
    let parsed: SignaturesFile = serde_json::from_slice(signatures_json)
        .map_err(|e| err(format!(".signatures.json is not the signatures file: {e}")))?;
    let token = match parsed.signatures.as_slice() {
        [one] => one,
        [] => return Err(err(".signatures.json: missing JWT (expected exactly one)".to_owned())),
        _ => return Err(err(".signatures.json: several JWTs (expected exactly one)".to_owned())),
    };
    let header = jsonwebtoken::decode_header(token).map_err(|e| err(format!("the signature is not a JWT: {e}")))?;
    if header.alg != key.algorithm {
        return Err(err(format!(
            "the signature is {:?}, but the verification key is for {:?}",
            header.alg, key.algorithm
        )));
    }
    let mut validation = Validation::new(key.algorithm);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let payload = jsonwebtoken::decode::<Payload>(token, &key.key, &validation)
        .map_err(|e| err(format!("the signature does not verify: {e}")))?
        .claims;

    let mut listed: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for entry in &payload.files {
        listed.insert(entry.name.trim_start_matches('/'), entry);
    }
    for (name, bytes) in files {
        let Some(entry) = listed.remove(name.as_str()) else {
            return Err(err(format!("{name} is not included in the bundle signature")));
        };
        if entry.algorithm != "SHA-256" {
            return Err(err(format!(
                "{name}: hashing algorithm `{}` is not supported (SHA-256 is)",
                entry.algorithm
            )));
        }
        let actual = file_hash(name, bytes)?;
        if !actual.eq_ignore_ascii_case(&entry.hash) {
            return Err(err(format!("{name}: digest mismatch")));
        }
    }
    if let Some(missing) = listed.keys().next() {
        return Err(err(format!(
            "{missing} is in the bundle signature but not in the bundle"
        )));
    }
    Ok(())
}

/// The hex SHA-256 OPA signs for a file: over the canonical JSON of a
/// structured file (`data.json`, `data.yaml`, `.manifest`), over the bytes
/// of any other.
pub fn file_hash(name: &str, bytes: &[u8]) -> Result<String, SignatureError> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if matches!(base, "data.json" | ".manifest") {
        let text = std::str::from_utf8(bytes).map_err(|_| SignatureError(format!("{name}: is not UTF-8")))?;
        let canonical = super::canonical_json::canonical(text).map_err(|e| SignatureError(format!("{name}: {e}")))?;
        Ok(crate::crypto::sha256_hex(canonical.as_bytes()))
    } else {
        Ok(crate::crypto::sha256_hex(bytes))
    }
}
