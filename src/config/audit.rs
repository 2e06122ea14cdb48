//! Validation of `[audit]`: the backend, the signing key and checkpoints.
//! `[audit.anchor]` is validated in `anchor`.

use std::path::PathBuf;
use std::time::Duration;

use super::raw;
use super::types::{AuditBackend, AuditConfig, StateBackend, StateConfig};
use super::validate::Validator;

impl Validator<'_> {
    pub(super) fn audit(&mut self, raw: raw::RawAudit, state: &StateConfig, public_url: &url::Url) -> AuditConfig {
        let backend = match raw.backend.as_deref().unwrap_or("file") {
            "file" => AuditBackend::File {
                path: PathBuf::from(raw.path.unwrap_or_else(|| "var/audit.jsonl".into())),
            },
            "redis" => {
                if !matches!(state.backend, StateBackend::Redis { .. }) {
                    self.err(
                        "audit.backend",
                        "\"redis\" uses [state] url, so it needs state.backend = \"redis\"",
                    );
                }
                if raw.path.is_some() {
                    self.err("audit.path", "only applies to the \"file\" backend");
                }
                AuditBackend::Redis
            }
            other => {
                self.err("audit.backend", format!("`{other}` is not one of \"file\", \"redis\""));
                AuditBackend::File {
                    path: PathBuf::from("var/audit.jsonl"),
                }
            }
        };
        let signing_key = raw
            .signing_key
            .as_ref()
            .and_then(|k| self.secret("audit.signing_key", k));
        if let Some(key) = &signing_key
            && !key.expose().is_empty()
            && let Err(e) = crate::signing::SigningKey::from_pem("check", key.expose())
        {
            self.err("audit.signing_key", e.to_string());
        }
        let log_name = match raw.log_name {
            Some(name) if name.is_empty() || name.contains(['\n', ' ', '+']) => {
                self.err("audit.log_name", "must be non-empty, without spaces, `+` or newlines");
                name
            }
            Some(name) => name,
            None => format!("{}/portcullis", public_url.host_str().unwrap_or("localhost")),
        };
        let checkpoint_every = self.duration(
            "audit.checkpoint_every",
            raw.checkpoint_every.as_deref(),
            Duration::from_secs(10),
        );
        if checkpoint_every < Duration::from_millis(100) {
            self.err("audit.checkpoint_every", "must be at least 100ms");
        }
        AuditConfig {
            backend,
            require_persistence: raw.require_persistence.unwrap_or(true),
            signing_key,
            log_name,
            checkpoint_every,
            new_trail: false,
            anchor: raw.anchor.and_then(|a| self.anchor(a)),
        }
    }
}
