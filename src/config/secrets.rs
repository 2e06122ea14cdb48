//! Secrets: `{ env = "VAR" }` and `{ file = "path" }` resolved into a
//! [`Secret`], which never prints its value.

use super::raw::RawSecret;
use super::validate::Validator;

/// A secret value. `Debug` prints `[redacted]`; there is no `Display`, and
/// the value is read only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Validator<'_> {
    /// Whether the secret of `key` is left unresolved.
    pub(super) fn skips(&self, key: &str) -> bool {
        self.skip_secrets && (self.secrets_under.is_empty() || !key.starts_with(self.secrets_under))
    }

    pub(super) fn secret(&mut self, key: &str, raw: &RawSecret) -> Option<Secret> {
        match raw {
            RawSecret::Inline(_) => {
                self.err(
                    key,
                    "secrets are never written inline; use { env = \"VAR\" } or { file = \"path\" }",
                );
                None
            }
            RawSecret::Env(_) | RawSecret::File(_) if self.skips(key) => Some(Secret::new(String::new())),
            RawSecret::Env(r) => match (self.env)(&r.env) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    self.err(key, format!("environment variable `{}` is not set", r.env));
                    None
                }
            },
            RawSecret::File(r) => match std::fs::read_to_string(&r.file) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim_end_matches(['\n', '\r']))),
                Ok(_) => {
                    self.err(key, format!("secret file `{}` is empty", r.file));
                    None
                }
                Err(e) => {
                    self.err(key, format!("cannot read secret file `{}`: {}", r.file, e.kind()));
                    None
                }
            },
        }
    }
}
