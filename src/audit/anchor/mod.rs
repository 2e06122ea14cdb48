//! Write-once anchoring of the audit trail: objects copied to S3-compatible
//! storage under Object Lock in COMPLIANCE mode, which nobody (not even the
//! bucket's owner) can delete or overwrite before their retention ends.
//!
//! - `sigv4`: AWS Signature Version 4, by hand over [`crate::crypto`].
//! - `s3`: [`S3Anchor`], the client: [`S3Anchor::put_once`] (never
//!   overwrites; an existing key with other bytes is a [`AnchorError::Conflict`]),
//!   [`S3Anchor::get`] and [`S3Anchor::list`].
//! - `xml`: just enough XML for S3's listings and errors.
//!
//! The credentials the anchor needs: `s3:PutObject`, `s3:PutObjectRetention`,
//! `s3:GetObject` and `s3:ListBucket` on the bucket (without `s3:ListBucket`
//! S3 answers 403 rather than 404 for a missing key). The bucket must have
//! Object Lock enabled; the anchor sets each object's retention itself.

mod s3;
mod sigv4;
mod trail;
mod xml;

pub use s3::{S3Anchor, S3Settings};
pub use trail::{S3TrailAnchor, verify_anchored};

/// What [`S3Anchor::put_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written, with its retention.
    Written,
    /// The key already held these very bytes (an earlier attempt landed).
    AlreadyIdentical,
}

/// Why an anchor call failed. Never holds the secret key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// Worth retrying: a timeout, a connection failure, a 5xx, or S3 asking
    /// to slow down (429, 503 `SlowDown`).
    #[error("S3 is unavailable for now: {reason}")]
    Transient { reason: String },
    /// S3 refused the request (a 3xx or 4xx such as `AccessDenied`,
    /// `InvalidRequest`, `NoSuchBucket`): `code` is the S3 error `<Code>`,
    /// or the HTTP reason phrase when the answer had none.
    #[error("S3 refused the request: HTTP {status} {code}")]
    Refused { status: u16, code: String },
    /// A different object already holds `key` (the object's full key in the
    /// bucket, prefix included): the trail was forked.
    #[error("a different object already holds `{key}`: the audit trail was forked")]
    Conflict { key: String },
    /// The key's current version is a delete marker: someone deleted the
    /// object without naming a version, which Object Lock allows. Its
    /// locked versions remain (listed by ListObjectVersions); the anchor
    /// writes nothing beside them.
    #[error("a delete marker hides `{key}` (its locked versions remain): the audit trail was tampered with")]
    Hidden { key: String },
    /// S3 answered something this client cannot read (a listing without
    /// its continuation token, malformed XML).
    #[error("S3 answered what this client cannot read: {reason}")]
    Protocol { reason: String },
    /// The settings or the key cannot make a request (no host in the
    /// endpoint, a key with `..` segments, a retention out of range).
    #[error("invalid S3 anchor request: {reason}")]
    Invalid { reason: String },
}

impl AnchorError {
    /// Is the failure worth retrying later?
    pub fn is_transient(&self) -> bool {
        matches!(self, AnchorError::Transient { .. })
    }
}

#[cfg(test)]
mod tests;
