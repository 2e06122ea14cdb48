//! Policy queries: rule paths such as `data.deploy.hipaa.allow`.
//!
//! Only plain rule paths are accepted, so a query can be spliced into a Rego
//! query (`<path> with time.now_ns as <ns>`) and into an OPA Data API URL
//! without escaping, and its sibling `deny`/`reasons` rule is well defined.

use super::PolicyError;

/// A validated rule path: `data`, then at least a package name and a rule
/// name, each an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RulePath {
    /// The components after `data`.
    components: Vec<String>,
}

impl RulePath {
    pub(crate) fn parse(query: &str) -> Result<RulePath, PolicyError> {
        let invalid = || PolicyError::InvalidQuery {
            query: query.chars().take(200).collect(),
        };
        let mut parts = query.split('.');
        if parts.next() != Some("data") {
            return Err(invalid());
        }
        let components: Vec<String> = parts.map(str::to_owned).collect();
        if components.len() < 2 || !components.iter().all(|c| is_identifier(c)) {
            return Err(invalid());
        }
        Ok(RulePath { components })
    }

    /// The same package's rule `name`, e.g. `data.deploy.hipaa.deny` for
    /// `data.deploy.hipaa.allow`.
    pub(crate) fn sibling(&self, name: &str) -> RulePath {
        let mut components = self.components.clone();
        if let Some(last) = components.last_mut() {
            *last = name.to_owned();
        }
        RulePath { components }
    }

    /// The components after `data`, e.g. `["deploy", "hipaa", "allow"]`.
    pub(crate) fn components(&self) -> &[String] {
        &self.components
    }

    /// The package's Rego reference, e.g. `data.deploy.hipaa`.
    pub(crate) fn package_rego(&self) -> String {
        let package = &self.components[..self.components.len().saturating_sub(1)];
        format!("data.{}", package.join("."))
    }

    /// The Rego reference, e.g. `data.deploy.hipaa.allow`.
    pub(crate) fn rego(&self) -> String {
        format!("data.{}", self.components.join("."))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks that `query` is a rule path such as `data.deploy.hipaa.allow`
/// (`data`, a package, a rule; identifiers only), the only form
/// [`super::PolicyEngine::evaluate`] and [`super::OpaClient::evaluate`] accept.
pub fn validate_query(query: &str) -> Result<(), PolicyError> {
    RulePath::parse(query).map(|_| ())
}
