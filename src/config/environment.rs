//! Validation of `[environments.E]` tables (who may deploy, the claims
//! required, the verdict and reviews each needs) and of `[policies]` (the
//! Rego sources: loose paths, OPA bundles, the bundle verification key).

use std::path::PathBuf;
use std::time::Duration;

use super::raw;
use super::types::*;
use super::validate::Validator;

impl Validator<'_> {
    pub(super) fn environment(&mut self, name: &str, raw: raw::RawEnvironment) -> Option<EnvironmentPolicy> {
        let key = format!("environments.{name}");
        if name.is_empty() || name.len() > 255 {
            self.err(&key, "environment names are 1 to 255 characters");
        }
        let approvers = raw.approvers.unwrap_or_default();
        if approvers.is_empty() {
            self.err(
                format!("{key}.approvers"),
                "at least one approver is required (nobody could deploy)",
            );
        }
        let require_claims = self.claim_rule(&format!("{key}.require_claims"), &raw.require_claims);
        let pending_timeout = self.duration(
            &format!("{key}.pending_timeout"),
            raw.pending_timeout.as_deref(),
            Duration::from_secs(30 * 60),
        );
        let verdict = match raw.verdict {
            None => {
                self.err(
                    format!("{key}.verdict"),
                    "is required: say `required = false` explicitly to deploy without a policy verdict",
                );
                VerdictPolicy {
                    required: true,
                    max_age: Duration::from_secs(86400),
                    mode: VerdictMode::Asserted,
                    policy: None,
                    opa_url: None,
                    evidence_schema: None,
                    producers: Vec::new(),
                }
            }
            Some(v) => {
                let vkey = format!("{key}.verdict");
                let required = v.required.unwrap_or(true);
                let mode = match v.mode.as_deref().unwrap_or("asserted") {
                    "asserted" => VerdictMode::Asserted,
                    "evaluated" => VerdictMode::Evaluated,
                    "opa" => VerdictMode::Opa,
                    other => {
                        self.err(
                            format!("{vkey}.mode"),
                            format!("`{other}` is not one of \"asserted\", \"evaluated\", \"opa\""),
                        );
                        VerdictMode::Asserted
                    }
                };
                if matches!(mode, VerdictMode::Evaluated | VerdictMode::Opa) {
                    match &v.policy {
                        Some(p) if p.starts_with("data.") => {}
                        Some(p) => self.err(
                            format!("{vkey}.policy"),
                            format!("`{p}` is not a query such as data.deploy.hipaa.allow"),
                        ),
                        None => self.err(
                            format!("{vkey}.policy"),
                            "is required for modes \"evaluated\" and \"opa\"",
                        ),
                    }
                }
                let opa_url = v
                    .opa_url
                    .as_deref()
                    .and_then(|u| self.url(&format!("{vkey}.opa_url"), u));
                let evidence_schema = v.evidence_schema.as_deref().map(PathBuf::from);
                if evidence_schema.is_some() && mode == VerdictMode::Asserted {
                    self.err(
                        format!("{vkey}.evidence_schema"),
                        "applies to posted evidence, so only to modes \"evaluated\" and \"opa\"",
                    );
                }
                if mode == VerdictMode::Opa && v.opa_url.is_none() {
                    self.err(format!("{vkey}.opa_url"), "is required for mode \"opa\"");
                }
                let mut producers = Vec::new();
                for (i, p) in v.producers.iter().enumerate() {
                    let pkey = format!("{vkey}.producers[{i}]");
                    if p.is_empty() {
                        self.err(&pkey, "an empty producer rule would trust every token");
                        continue;
                    }
                    producers.push(self.claim_rule(&pkey, p));
                }
                if required && v.producers.is_empty() {
                    self.err(
                        format!("{vkey}.producers"),
                        "a required verdict needs at least one trusted producer",
                    );
                }
                VerdictPolicy {
                    required,
                    max_age: self.duration(
                        &format!("{vkey}.max_age"),
                        v.max_age.as_deref(),
                        Duration::from_secs(86400),
                    ),
                    mode,
                    policy: v.policy,
                    opa_url,
                    evidence_schema,
                    producers,
                }
            }
        };
        let reviews = self.reviews(&key, raw.reviews);
        let break_glass = raw
            .break_glass
            .map(|b| self.break_glass(&format!("{key}.break_glass"), b));
        let slack_channel = raw.slack.and_then(|s| s.channel);
        Some(EnvironmentPolicy {
            name: name.to_string(),
            approvers,
            require_claims,
            pending_timeout,
            verdict,
            reviews,
            slack_channel,
            break_glass,
        })
    }
    /// `[policies]`: loose paths, bundles (a file path, or an https URL:
    /// http only on loopback), the verification key, the polling interval.
    pub(super) fn policies(&mut self, raw: raw::RawPolicies) -> PoliciesConfig {
        let mut bundles = Vec::new();
        for (i, b) in raw.bundles.iter().enumerate() {
            let key = format!("policies.bundles[{i}]");
            if b.starts_with("https://") || b.starts_with("http://") {
                if let Some(url) = self.url(&key, b) {
                    bundles.push(BundleSource::Url(url));
                }
            } else if b.contains("://") {
                self.err(key, format!("`{b}` is neither a file path nor an http(s) URL"));
            } else if b.is_empty() {
                self.err(key, "is empty");
            } else {
                bundles.push(BundleSource::File(PathBuf::from(b)));
            }
        }
        let verification_key = raw
            .verification_key
            .as_ref()
            .and_then(|k| self.secret("policies.verification_key", k));
        if let Some(key) = &verification_key
            && !key.expose().is_empty()
            && jsonwebtoken::DecodingKey::from_rsa_pem(key.expose().as_bytes())
                .or_else(|_| jsonwebtoken::DecodingKey::from_ec_pem(key.expose().as_bytes()))
                .is_err()
        {
            self.err(
                "policies.verification_key",
                "is not a PEM public key (RSA for RS256, or EC P-256 for ES256)",
            );
        }
        if verification_key.is_some() && bundles.is_empty() {
            self.err(
                "policies.verification_key",
                "verifies bundles, but no bundles are configured",
            );
        }
        let polling_interval = self.duration(
            "policies.polling_interval",
            raw.polling_interval.as_deref(),
            Duration::from_secs(60),
        );
        if polling_interval < Duration::from_secs(1) {
            self.err("policies.polling_interval", "must be at least 1s");
        }
        PoliciesConfig {
            paths: raw.paths.into_iter().map(PathBuf::from).collect(),
            bundles,
            verification_key,
            polling_interval,
        }
    }
}
