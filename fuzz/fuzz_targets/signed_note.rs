//! Checkpoints and receipts from outside: a signed note (a checkpoint read
//! back from the trail's store or a bucket) and a DSSE envelope (a receipt
//! given to `portcullis receipt verify`). Any bytes are refused or verified,
//! never a panic, and nothing verifies under a key that did not sign it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::signing::{PublicKey, SigningKey, verify_checkpoint, verify_dsse, verify_note};

fn key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = SigningKey::generate_pem().expect("key");
        SigningKey::from_pem("fuzz/log", &pem).expect("key").public().clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let keys = [key().clone()];
    if let Ok(text) = std::str::from_utf8(data) {
        // A key made here signed nothing the fuzzer could give.
        assert!(verify_note(text, &keys).is_err());
        assert!(verify_checkpoint(text, "fuzz/log", &keys).is_err());
    }
    if let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(data) {
        assert!(verify_dsse(&envelope, &keys).is_err());
    }
});
