//! The trail's layout in the bucket, under the configured prefix:
//!
//! - `segments/{from:020}-{to:020}.jsonl`: records `from + 1 ..= to`, one
//!   line each as stored in the trail; consecutive segments meet end to
//!   start (replicas may anchor overlapping ones), so together they are the
//!   trail.
//! - `checkpoints/{size:020}.note`: the signed checkpoint of the first
//!   `size` records, written after its segment.
//!
//! Both are write-once (COMPLIANCE retention, `If-None-Match: *`). Sizes are
//! zero-padded so that listings sort as numbers do.

use async_trait::async_trait;

use super::{AnchorError, PutOutcome, S3Anchor, S3Settings};
use crate::audit::checkpoints::StoredCheckpoint;
use crate::audit::merkle::Tree;
use crate::audit::tlog::{Anchor, check_tree, tree_of_lines};
use crate::config::AnchorConfig;
use crate::signing::{PublicKey, verify_checkpoint};

fn checkpoint_key(size: u64) -> String {
    format!("checkpoints/{size:020}.note")
}

fn segment_key(from: u64, to: u64) -> String {
    format!("segments/{from:020}-{to:020}.jsonl")
}

/// The trail's anchor in an S3 bucket.
pub struct S3TrailAnchor {
    s3: S3Anchor,
}

impl S3TrailAnchor {
    pub fn new(config: &AnchorConfig) -> Result<S3TrailAnchor, AnchorError> {
        Ok(S3TrailAnchor {
            s3: S3Anchor::new(S3Settings::from_config(config))?,
        })
    }
}

fn shown(e: AnchorError) -> String {
    e.to_string()
}

#[async_trait]
impl Anchor for S3TrailAnchor {
    async fn anchor(&self, cp: &StoredCheckpoint, from: u64, segment: &[u8]) -> Result<(), String> {
        let put = |key: String, body: &[u8], kind: &'static str| {
            let s3 = &self.s3;
            let body = body.to_vec();
            async move {
                match s3.put_once(&key, &body, kind).await {
                    Ok(PutOutcome::Written | PutOutcome::AlreadyIdentical) => Ok(()),
                    Err(e) => Err(shown(e)),
                }
            }
        };
        put(segment_key(from, cp.size), segment, "application/x-ndjson").await?;
        put(checkpoint_key(cp.size), cp.note.as_bytes(), "text/plain; charset=utf-8").await
    }

    async fn anchored_size(&self, candidates: &[u64]) -> Result<u64, String> {
        // Most recent first: usually the latest stored checkpoint is there.
        for &size in candidates.iter().rev() {
            if self.s3.get(&checkpoint_key(size)).await.map_err(shown)?.is_some() {
                return Ok(size);
            }
        }
        Ok(0)
    }
}

/// Checks the local trail (its tree) against the bucket: the largest
/// anchored checkpoint verifies with `keys` and matches the trail's root at
/// its size, and the segments, end to end, are the trail's records.
pub async fn verify_anchored(
    config: &AnchorConfig,
    origin: &str,
    keys: &[PublicKey],
    tree: &Tree,
) -> Result<String, String> {
    let s3 = S3Anchor::new(S3Settings::from_config(config)).map_err(shown)?;
    // One listing of the trail's prefix, split here.
    let all = s3.list("").await.map_err(shown)?;
    let sizes: Vec<u64> = all
        .iter()
        .filter_map(|k| k.strip_prefix("checkpoints/")?.strip_suffix(".note")?.parse().ok())
        .collect();
    let Some(&size) = sizes.iter().max() else {
        return Err("the bucket holds no checkpoint".into());
    };
    let note = s3
        .get(&checkpoint_key(size))
        .await
        .map_err(shown)?
        .ok_or_else(|| format!("checkpoint {size} vanished from the bucket"))?;
    let note = String::from_utf8(note).map_err(|_| format!("anchored checkpoint {size} is not text"))?;
    let cp = verify_checkpoint(&note, origin, keys).map_err(|e| format!("anchored checkpoint {size}: {e}"))?;
    if cp.size != size {
        return Err(format!("anchored checkpoint {size} says it covers {} records", cp.size));
    }
    check_tree(tree, cp.size, &cp.root).map_err(|e| format!("against the anchored checkpoint: {e}"))?;
    // The segments, end to end, give the same tree.
    let mut segments: Vec<(u64, u64, String)> = all
        .into_iter()
        .filter_map(|k| {
            let (from, to) = k.strip_prefix("segments/")?.strip_suffix(".jsonl")?.split_once('-')?;
            Some((from.parse().ok()?, to.parse().ok()?, k))
        })
        .collect();
    segments.sort();
    let mut lines = Vec::new();
    let mut at = 0;
    for (from, to, key) in &segments {
        if *to <= at {
            continue;
        }
        if *from > at {
            return Err(format!("the anchored segments skip records {} to {from}", at + 1));
        }
        let body = s3
            .get(key)
            .await
            .map_err(shown)?
            .ok_or_else(|| format!("segment {key} vanished"))?;
        // Replicas may anchor overlapping segments: take what is new.
        let mut rest = &body[..];
        for _ in *from..at {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => rest = &rest[end + 1..],
                None => return Err(format!("segment {key} holds fewer records than its name says")),
            }
        }
        lines.extend_from_slice(rest);
        at = *to;
    }
    let anchored = tree_of_lines(&lines);
    if anchored.size() < size {
        return Err(format!(
            "the anchored segments hold {} records; the anchored checkpoint covers {size}",
            anchored.size()
        ));
    }
    check_tree(&anchored, cp.size, &cp.root).map_err(|e| format!("the anchored segments: {e}"))?;
    Ok(format!(
        "checkpoint of {size} records in the bucket matches the trail; {} segment(s) hold records 1 to {at}",
        segments.len()
    ))
}
