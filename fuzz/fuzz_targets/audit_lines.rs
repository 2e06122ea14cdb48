//! The audit trail reader: any bytes through the chain verification that
//! `portcullis audit verify` runs. It reports a broken chain; it never
//! panics, and it never calls a trail with a broken line intact.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = portcullis::audit::verify_lines(data) {
        // Every complete line was a record of the chain.
        let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert!(report.records <= lines);
    }
});
