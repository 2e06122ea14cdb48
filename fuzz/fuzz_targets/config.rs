//! The configuration: any text through the strict TOML parse and the
//! validation; a valid configuration's durations never overflow a deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = portcullis::config::Config::from_toml(text, &|_| Some("fuzz-secret".into())) else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    for policy in config.environments.values() {
        let deadline = portcullis::domain::deadline(now, policy.pending_timeout);
        assert!(deadline >= now);
    }
});
