//! OPA bundles as a bundle server or a file hands them over: any bytes
//! through the gzip and tar readers, the manifest, the roots and the
//! placement of data; and the canonical JSON hash of signed data files,
//! which is the same for a document and for its canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = portcullis::verdict::read_bundle_unverified("fuzz.tar.gz", data);
    if let Ok(hash) = portcullis::verdict::file_hash("data.json", data)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && !value.to_string().contains(['\u{2028}', '\u{2029}', '\u{8}', '\u{c}'])
    {
        // Pretty-printed again, the same document hashes the same.
        let again = serde_json::to_vec_pretty(&value).unwrap();
        if serde_json::to_string(&value).unwrap() == String::from_utf8_lossy(data).trim() {
            assert_eq!(Ok(hash), portcullis::verdict::file_hash("data.json", &again));
        }
    }
});
