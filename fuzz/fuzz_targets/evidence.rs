//! Posted evidence: any JSON through the evidence schema and the digest.
//! The digest is the same for the same value, however it was written.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = portcullis::verdict::validate_evidence(&value);
    let digest = portcullis::verdict::evidence_digest(&value);
    let again: serde_json::Value = serde_json::from_str(&serde_json::to_string_pretty(&value).unwrap()).unwrap();
    assert_eq!(digest, portcullis::verdict::evidence_digest(&again));
});
