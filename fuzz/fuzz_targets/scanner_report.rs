//! Scanner reports read by `portcullis evidence` (SARIF, Trivy, Grype,
//! Gitleaks, OSV-Scanner JSON): any bytes either read or are refused with a
//! reason, never a panic, and the counts add up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = portcullis::cli::scanners::read(data) {
        let c = report.counts;
        assert!(c.critical + c.high + c.medium + c.low <= c.findings);
    }
});
