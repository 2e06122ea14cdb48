//! Evidence shapes: an environment's own JSON Schema (2020-12, its
//! `[environments.E.verdict] evidence_schema`), or none, when any JSON
//! object goes to the policy as it is. The shipped `schemas/evidence.schema.json`
//! is the pair of the shipped `deploy.hipaa` policy; [`validate_evidence`]
//! checks against it.

use std::path::Path;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

/// The shipped schema of the `deploy.hipaa` policy's evidence.
const SHIPPED_SCHEMA: &str = include_str!("../../schemas/evidence.schema.json");

/// Evidence that does not have the expected shape: the first failing field
/// as a JSON pointer (`/` for the evidence itself) and what was expected
/// there. Its text never echoes the posted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct EvidenceError {
    /// JSON pointer of the field, e.g. `/scans/container/critical`.
    pub path: String,
    /// What is wrong, e.g. `expected integer`.
    pub message: String,
}

/// Why a configured evidence schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read evidence schema {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}:{line}:{column}: not JSON: {message}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The JSON is not a valid JSON Schema (2020-12 unless its `$schema` says otherwise).
    #[error("{path}: not a valid JSON Schema: {message}")]
    Invalid { path: String, message: String },
}

/// A compiled evidence schema.
#[derive(Debug)]
pub struct EvidenceSchema {
    validator: jsonschema::Validator,
    /// Where it was read from, for logs.
    source: String,
}

impl EvidenceSchema {
    /// Reads and compiles the schema at `path` (formats are checked, remote
    /// `$ref`s are not fetched).
    pub fn load(path: &Path) -> Result<EvidenceSchema, SchemaError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: display.clone(),
            source,
        })?;
        Self::from_text(&display, &text)
    }

    /// Compiles schema text; `source` names it in errors.
    pub fn from_text(source: &str, text: &str) -> Result<EvidenceSchema, SchemaError> {
        let schema: Value = serde_json::from_str(text).map_err(|e| SchemaError::Json {
            path: source.to_owned(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        if !schema.is_object() && !schema.is_boolean() {
            return Err(SchemaError::Invalid {
                path: source.to_owned(),
                message: "a schema is a JSON object (or true/false)".to_owned(),
            });
        }
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SchemaError::Invalid {
                path: source.to_owned(),
                message: describe_schema_error(&e),
            })?;
        Ok(EvidenceSchema {
            validator,
            source: source.to_owned(),
        })
    }

    /// The shipped schema (`schemas/evidence.schema.json`), compiled once.
    pub fn shipped() -> &'static EvidenceSchema {
        static SHIPPED: OnceLock<EvidenceSchema> = OnceLock::new();
        SHIPPED.get_or_init(|| {
            EvidenceSchema::from_text("schemas/evidence.schema.json", SHIPPED_SCHEMA)
                .expect("the shipped evidence schema compiles (a unit test checks it)")
        })
    }

    /// Where the schema was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first error of `evidence` against the schema, naming the field.
    pub fn validate(&self, evidence: &Value) -> Result<(), EvidenceError> {
        match self.validator.validate(evidence) {
            Ok(()) => Ok(()),
            Err(error) => Err(describe(&error)),
        }
    }
}

/// Checks posted evidence: a JSON object, and valid against `schema` when
/// the environment configures one.
pub fn check_evidence(schema: Option<&EvidenceSchema>, evidence: &Value) -> Result<(), EvidenceError> {
    if !evidence.is_object() {
        return Err(EvidenceError {
            path: "/".to_owned(),
            message: "expected object".to_owned(),
        });
    }
    match schema {
        Some(schema) => schema.validate(evidence),
        None => Ok(()),
    }
}

/// Validates `evidence` against the shipped schema (the `deploy.hipaa`
/// policy's), returning the first error with the field's path (e.g.
/// `/scans/container/critical: expected integer`).
pub fn validate_evidence(evidence: &Value) -> Result<(), EvidenceError> {
    EvidenceSchema::shipped().validate(evidence)
}

/// serde_json's "… at line 3 column 5": the position is reported apart.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A schema compile error: where in the schema, and what.
fn describe_schema_error(error: &jsonschema::ValidationError<'_>) -> String {
    let at = error.instance_path().as_str();
    let text = error.to_string();
    let text = text.lines().next().unwrap_or_default();
    if at.is_empty() {
        text.to_owned()
    } else {
        format!("at {at}: {text}")
    }
}

/// Turns a validation error into a field path and a message that names the
/// expectation, never the posted value.
fn describe(error: &jsonschema::ValidationError<'_>) -> EvidenceError {
    let at = error.instance_path().as_str().to_owned();
    let child = |name: &str| format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
    let (path, message) = match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            (at, format!("expected {expected}"))
        }
        ValidationErrorKind::Required { property } => {
            (child(property.as_str().unwrap_or_default()), "is required".to_owned())
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => match unexpected.first() {
            Some(name) => (child(name), "is not a field the schema allows".to_owned()),
            None => (at, "has unknown fields".to_owned()),
        },
        ValidationErrorKind::Format { format } if format == "date-time" => (
            at,
            "expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z".to_owned(),
        ),
        ValidationErrorKind::Format { format } => (at, format!("expected format {format}")),
        ValidationErrorKind::Pattern { pattern } if pattern.starts_with("^sha256:") => {
            (at, "expected sha256: and 64 lower-case hex digits".to_owned())
        }
        ValidationErrorKind::Pattern { pattern } if pattern.contains("T([01]") => (
            at,
            "expected an RFC 3339 date-time such as 2026-03-01T12:00:00Z".to_owned(),
        ),
        ValidationErrorKind::Pattern { pattern } => (at, format!("does not match {pattern}")),
        ValidationErrorKind::Enum { options } => (at, format!("expected one of {options}")),
        ValidationErrorKind::Constant { expected_value } => (at, format!("expected {expected_value}")),
        ValidationErrorKind::Minimum { limit } => (at, format!("must be at least {limit}")),
        ValidationErrorKind::Maximum { limit } => (at, format!("must be at most {limit}")),
        ValidationErrorKind::MinLength { limit: 1 } => (at, "must not be empty".to_owned()),
        ValidationErrorKind::MinLength { limit } => (at, format!("must be at least {limit} characters")),
        ValidationErrorKind::MaxLength { limit } => (at, format!("must be at most {limit} characters")),
        ValidationErrorKind::MinItems { limit } => (at, format!("must have at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => (at, format!("must have at most {limit} items")),
        ValidationErrorKind::UniqueItems => (at, "must not repeat items".to_owned()),
        other => (at, format!("fails the schema's `{}` rule", other.keyword())),
    };
    EvidenceError {
        path: if path.is_empty() { "/".to_owned() } else { path },
        message,
    }
}
