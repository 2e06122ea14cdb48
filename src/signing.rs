//! The audit key and what it signs: checkpoints as C2SP signed notes, decision
//! receipts as DSSE envelopes, and the public keys as a JWKS.
//!
//! # Checkpoints (C2SP `tlog-checkpoint` in a C2SP `signed-note`)
//! ```text
//! <origin = log_name>
//! <tree size, decimal>
//! <root hash, standard base64>
//!
//! — <key name = log_name> <base64(key id ‖ Ed25519 signature)>
//! ```
//! The signature covers the note's text up to and including the newline
//! after the root hash. The key id is the first four bytes of
//! SHA-256(key name ‖ `\n` ‖ 0x01 ‖ public key), 0x01 naming Ed25519.
//!
//! # Receipts (DSSE)
//! `sig = Ed25519(PAE(payloadType, payload))` with
//! `PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in
//! decimal ASCII; `keyid` is the key's JWKS `kid`.
//!
//! # `kid`
//! The key's RFC 7638 JWK thumbprint: base64url (no padding) of the SHA-256 of
//! `{"crv":"Ed25519","kty":"OKP","x":"<base64url public key>"}`.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

type Hash = [u8; 32];

/// Why a key, a note or an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not an Ed25519 private key in PKCS#8 PEM ({0})")]
    BadPrivateKey(String),
    #[error("not an Ed25519 public key ({0})")]
    BadPublicKey(String),
    #[error("not a checkpoint: {0}")]
    BadNote(String),
    #[error("no signature by a known key")]
    NoKnownSignature,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("not a DSSE envelope: {0}")]
    BadEnvelope(String),
}

/// The payload type of a receipt's envelope.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A public Ed25519 key under a note key name (the log's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub key: [u8; 32],
}

impl PublicKey {
    /// From 32 raw bytes.
    pub fn new(name: &str, raw: &[u8]) -> Result<PublicKey, SignError> {
        let key: [u8; 32] = raw
            .try_into()
            .map_err(|_| SignError::BadPublicKey(format!("{} bytes, not 32", raw.len())))?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    /// The signed-note key id: SHA-256(name ‖ `\n` ‖ 0x01 ‖ key)[..4].
    pub fn note_key_id(&self) -> [u8; 4] {
        let mut data = Vec::with_capacity(self.name.len() + 34);
        data.extend_from_slice(self.name.as_bytes());
        data.push(b'\n');
        data.push(0x01);
        data.extend_from_slice(&self.key);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        id
    }

    /// The JWK thumbprint (RFC 7638), the `kid` of receipts and of `/v1/keys`.
    pub fn kid(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(self.key)
        );
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// The key as a JWK (`OKP`, `Ed25519`).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key),
            "kid": self.kid(),
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// A key from a JWK (`OKP`/`Ed25519`); `name` is the note key name.
    pub fn from_jwk(name: &str, jwk: &Value) -> Result<PublicKey, SignError> {
        if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
            return Err(SignError::BadPublicKey("not an OKP/Ed25519 JWK".into()));
        }
        let x = jwk["x"]
            .as_str()
            .ok_or_else(|| SignError::BadPublicKey("the JWK has no x".into()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|e| SignError::BadPublicKey(format!("x is not base64url: {e}")))?;
        PublicKey::new(name, &raw)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignError> {
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(message, signature)
            .map_err(|_| SignError::BadSignature)
    }
}

/// The audit signing key. Its `Debug` shows the public half only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.public).finish()
    }
}

impl SigningKey {
    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey
    /// -algorithm ed25519` and `portcullis keygen` write; `name` is the
    /// log's name, the note key name.
    pub fn from_pem(name: &str, pem: &str) -> Result<SigningKey, SignError> {
        let der = pem_body(pem, "PRIVATE KEY").map_err(SignError::BadPrivateKey)?;
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| SignError::BadPrivateKey(e.to_string()))?;
        let public = PublicKey::new(name, pair.public_key().as_ref())?;
        Ok(SigningKey { pair, public })
    }

    /// A new key as PKCS#8 v1 PEM.
    pub fn generate_pem() -> Result<String, SignError> {
        let pair = Ed25519KeyPair::generate().map_err(|e| SignError::BadPrivateKey(e.to_string()))?;
        let der = pair.to_pkcs8v1().map_err(|e| SignError::BadPrivateKey(e.to_string()))?;
        Ok(to_pem("PRIVATE KEY", der.as_ref()))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs a checkpoint of `size` records with root `root`.
    pub fn sign_checkpoint(&self, size: u64, root: &Hash) -> String {
        let body = checkpoint_body(&self.public.name, size, root);
        let signature = self.pair.sign(body.as_bytes());
        let mut blob = self.public.note_key_id().to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{body}\n\u{2014} {} {}\n", self.public.name, STANDARD.encode(blob))
    }

    /// A DSSE envelope over `payload`.
    pub fn sign_dsse(&self, payload_type: &str, payload: &[u8]) -> Value {
        let sig = self.pair.sign(&pae(payload_type, payload));
        json!({
            "payloadType": payload_type,
            "payload": STANDARD.encode(payload),
            "signatures": [{"keyid": self.public.kid(), "sig": STANDARD.encode(sig.as_ref())}],
        })
    }
}

/// The public half of a PKCS#8 PEM private key, as SPKI PEM.
pub fn public_pem(key: &PublicKey) -> String {
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed 12-byte prefix.
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&key.key);
    to_pem("PUBLIC KEY", &der)
}

/// A public key from SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_from_pem(name: &str, pem: &str) -> Result<PublicKey, SignError> {
    let der = pem_body(pem, "PUBLIC KEY").map_err(SignError::BadPublicKey)?;
    if der.len() != 44 || der[..12] != [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00] {
        return Err(SignError::BadPublicKey("not an Ed25519 SubjectPublicKeyInfo".into()));
    }
    PublicKey::new(name, &der[12..])
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_body(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| format!("no {begin} line"))? + begin.len();
    let stop = pem[start..].find(&end).ok_or_else(|| format!("no {end} line"))? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(|e| format!("bad base64: {e}"))
}

/// The text a checkpoint signature covers.
fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root))
}

/// A checkpoint's contents, once its signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Checks that a signed note carries a valid signature by one of `keys`
/// (matched by key name and key id); returns the signed text (ending in a
/// newline).
pub fn verify_note(note: &str, keys: &[PublicKey]) -> Result<String, SignError> {
    let bad = |why: &str| SignError::BadNote(why.to_string());
    let (body, sigs) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let body = format!("{body}\n");
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return Err(bad("a signature line does not start with an em dash"));
        };
        let Some((name, blob)) = rest.split_once(' ') else {
            return Err(bad("a signature line has no signature"));
        };
        let Ok(blob) = STANDARD.decode(blob) else {
            return Err(bad("a signature is not base64"));
        };
        if blob.len() < 4 {
            continue;
        }
        if let Some(key) = keys.iter().find(|k| k.name == name && k.note_key_id() == blob[..4]) {
            key.verify(body.as_bytes(), &blob[4..])?;
            return Ok(body);
        }
    }
    Err(SignError::NoKnownSignature)
}

/// Parses a signed checkpoint: [`verify_note`], then the origin must be
/// `origin` and the body exactly origin, size and root hash.
pub fn verify_checkpoint(note: &str, origin: &str, keys: &[PublicKey]) -> Result<Checkpoint, SignError> {
    let bad = |why: &str| SignError::BadNote(why.to_string());
    let body = verify_note(note, keys)?;
    let mut lines = body.lines();
    let (Some(o), Some(size), Some(root), None) = (lines.next(), lines.next(), lines.next(), lines.next()) else {
        return Err(bad("expected origin, size and root hash lines"));
    };
    if o != origin {
        return Err(SignError::BadNote(format!("origin is {o:?}, expected {origin:?}")));
    }
    let size: u64 = size.parse().map_err(|_| bad("the size is not a decimal number"))?;
    let root: Hash = STANDARD
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| bad("the root is not a base64 SHA-256"))?;
    Ok(Checkpoint {
        origin: o.to_string(),
        size,
        root,
    })
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Verifies a DSSE envelope against `keys` (matched by `kid`); returns the
/// payload.
pub fn verify_dsse(envelope: &Value, keys: &[PublicKey]) -> Result<Vec<u8>, SignError> {
    let bad = |why: &str| SignError::BadEnvelope(why.to_string());
    let payload_type = envelope["payloadType"].as_str().ok_or_else(|| bad("no payloadType"))?;
    let payload = envelope["payload"]
        .as_str()
        .and_then(|p| STANDARD.decode(p).ok())
        .ok_or_else(|| bad("no base64 payload"))?;
    let sigs = envelope["signatures"].as_array().ok_or_else(|| bad("no signatures"))?;
    for sig in sigs {
        let (Some(keyid), Some(raw)) = (sig["keyid"].as_str(), sig["sig"].as_str()) else {
            continue;
        };
        let Ok(raw) = STANDARD.decode(raw) else { continue };
        if let Some(key) = keys.iter().find(|k| k.kid() == keyid) {
            key.verify(&pae(payload_type, &payload), &raw)?;
            return Ok(payload);
        }
    }
    Err(SignError::NoKnownSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pem("portcullis.test/audit", &SigningKey::generate_pem().unwrap()).unwrap()
    }

    #[test]
    fn a_checkpoint_round_trips_and_a_changed_byte_fails() {
        let k = key();
        let root = [7u8; 32];
        let note = k.sign_checkpoint(42, &root);
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[..4], ["portcullis.test/audit", "42", &STANDARD.encode(root), ""]);
        assert!(lines[4].starts_with("\u{2014} portcullis.test/audit "), "{note}");
        let keys = [k.public().clone()];
        let cp = verify_checkpoint(&note, "portcullis.test/audit", &keys).unwrap();
        assert_eq!((cp.size, cp.root), (42, root));
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            verify_checkpoint(&forged, "portcullis.test/audit", &keys),
            Err(SignError::BadSignature)
        );
        let other = [key().public().clone()];
        assert_eq!(
            verify_checkpoint(&note, "portcullis.test/audit", &other),
            Err(SignError::NoKnownSignature)
        );
        assert!(matches!(
            verify_checkpoint(&note, "another/log", &keys),
            Err(SignError::BadNote(_))
        ));
    }

    #[test]
    fn the_note_key_id_is_the_c2sp_one() {
        // The Go sumdb note package's test key: name "PeterNeumann",
        // key id c74f20a3 (from its verifier string).
        let raw = STANDARD.decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
        assert_eq!(raw[0], 0x01);
        let key = PublicKey::new("PeterNeumann", &raw[1..]).unwrap();
        assert_eq!(hex::encode(key.note_key_id()), "c74f20a3");
        // And its published signed note verifies; a changed byte does not.
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let body = verify_note(note, std::slice::from_ref(&key)).unwrap();
        assert!(body.ends_with("what your problem is.\n"));
        assert_eq!(
            verify_note(&note.replace("answer", "Answer"), &[key]),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn dsse_round_trips_over_pae() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        let k = key();
        let env = k.sign_dsse(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}");
        assert_eq!(env["signatures"][0]["keyid"], k.public().kid());
        assert_eq!(verify_dsse(&env, &[k.public().clone()]).unwrap(), b"{\"a\":1}");
        let mut tampered = env.clone();
        tampered["payload"] = STANDARD.encode(b"{\"a\":2}").into();
        assert_eq!(
            verify_dsse(&tampered, &[k.public().clone()]),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn pems_round_trip_and_debug_hides_the_private_key() {
        let pem = SigningKey::generate_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let k = SigningKey::from_pem("n", &pem).unwrap();
        let public = public_from_pem("n", &public_pem(k.public())).unwrap();
        assert_eq!(&public, k.public());
        assert_eq!(PublicKey::from_jwk("n", &k.public().jwk()).unwrap(), public);
        let shown = format!("{k:?}");
        assert!(shown.contains("public") && !shown.contains(pem.lines().nth(1).unwrap()));
        assert!(matches!(
            SigningKey::from_pem("n", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(SignError::BadPrivateKey(_))
        ));
    }
}
