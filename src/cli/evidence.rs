//! `portcullis evidence`: builds the evidence bundle
//! (`schemas/evidence.schema.json`) from scanner reports, for a policy-gate
//! job to post with `portcullis verdict --evidence`.
//!
//! Each `--scan KIND=FILE` is read by [`super::scanners`]; the scan records
//! the tool, its counts, the report's SHA-256 and its time (the report's own,
//! else the file's modification time). Several IaC reports (tfsec and
//! Checkov) add up: their counts are summed, the scan's time is the oldest
//! of theirs, and `report_digest` is the SHA-256 of their digests, one a
//! line, in the order given. Any other kind may be given once.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::scanners::{self, Counts, Report};

#[derive(Debug, clap::Args)]
pub(super) struct EvidenceArgs {
    /// A scanner report: KIND=FILE, KIND one of sast, container, iac,
    /// secrets, dependencies (repeat the option for each).
    #[arg(long = "scan", value_name = "KIND=FILE", required = true)]
    scans: Vec<String>,
    /// The artifact's cosign signature was verified (`cosign verify` passed).
    #[arg(long)]
    cosign_verified: bool,
    /// Who signed it: a KMS key URI or a keyless certificate identity.
    #[arg(long, value_name = "ID")]
    signed_by: Option<String>,
    /// The image's digest (sha256:…): the scanned and deployed artifact.
    #[arg(long, value_name = "D")]
    image_digest: Option<String>,
    /// The image repository, for people (deploys use the digest).
    #[arg(long)]
    image: Option<String>,
    /// The environment the artifact was built and signed for.
    #[arg(long, value_name = "E")]
    environment: Option<String>,
    /// Write the bundle here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum EvidenceError {
    #[error("--scan `{0}`: expected KIND=FILE, KIND one of sast, container, iac, secrets, dependencies")]
    BadScan(String),
    #[error("--scan {kind}= is given twice; only iac takes several reports")]
    Twice { kind: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} {source}")]
    Report {
        path: String,
        #[source]
        source: scanners::ReportError,
    },
    #[error("--image-digest `{0}` is not sha256: followed by 64 lower-case hex digits")]
    BadDigest(String),
    #[error("a container scan needs --image-digest (the scanned image, by digest)")]
    ContainerWithoutDigest,
}

const KINDS: [&str; 5] = ["sast", "container", "iac", "secrets", "dependencies"];

/// One report, read, with its digest and time.
struct Scan {
    report: Report,
    digest: String,
    time: OffsetDateTime,
}

fn read_scan(path: &str) -> Result<Scan, EvidenceError> {
    let io = |source| EvidenceError::Read {
        path: path.to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let report = scanners::read(&bytes).map_err(|source| EvidenceError::Report {
        path: path.to_string(),
        source,
    })?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(io)?;
    let time = report.time.unwrap_or_else(|| OffsetDateTime::from(mtime));
    Ok(Scan {
        report,
        digest: format!("sha256:{}", crate::crypto::sha256_hex(&bytes)),
        time,
    })
}

/// RFC 3339 in UTC with a `Z`, to the second (the schema's form).
fn timestamp(t: OffsetDateTime) -> String {
    crate::time_fmt::rfc3339(t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t))
}

fn counts_into(obj: &mut Map<String, Value>, c: Counts) {
    obj.insert("critical".into(), json!(c.critical));
    obj.insert("high".into(), json!(c.high));
    obj.insert("medium".into(), json!(c.medium));
    obj.insert("low".into(), json!(c.low));
}

/// The bundle for these arguments.
pub(super) fn bundle(args: &EvidenceArgs) -> Result<Value, EvidenceError> {
    if let Some(d) = &args.image_digest {
        let hex = d.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(EvidenceError::BadDigest(d.clone()));
        }
    }
    let mut by_kind: Vec<(&str, Vec<Scan>)> = Vec::new();
    for spec in &args.scans {
        let (kind, path) = spec
            .split_once('=')
            .filter(|(k, p)| KINDS.contains(k) && !p.is_empty())
            .ok_or_else(|| EvidenceError::BadScan(spec.clone()))?;
        let scan = read_scan(path)?;
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, list)) if kind == "iac" => list.push(scan),
            Some(_) => return Err(EvidenceError::Twice { kind: kind.into() }),
            None => by_kind.push((kind, vec![scan])),
        }
    }
    let mut scans = Map::new();
    for (kind, list) in by_kind {
        let mut obj = Map::new();
        let first = &list[0];
        let total = list.iter().fold(Counts::default(), |acc, s| acc.plus(s.report.counts));
        let oldest = list.iter().map(|s| s.time).min().unwrap_or(first.time);
        if kind == "iac" {
            let mut tools: Vec<String> = Vec::new();
            for s in &list {
                if !tools.contains(&s.report.tool) {
                    tools.push(s.report.tool.clone());
                }
            }
            obj.insert("tools".into(), json!(tools));
        } else {
            obj.insert("tool".into(), json!(first.report.tool));
            if let Some(v) = &first.report.version {
                obj.insert("version".into(), json!(v));
            }
        }
        obj.insert("timestamp".into(), json!(timestamp(oldest)));
        if kind == "container" {
            let digest = args
                .image_digest
                .as_ref()
                .ok_or(EvidenceError::ContainerWithoutDigest)?;
            if let Some(image) = &args.image {
                obj.insert("image".into(), json!(image));
            }
            obj.insert("image_digest".into(), json!(digest));
        }
        if kind == "secrets" {
            obj.insert("findings".into(), json!(total.findings));
        } else {
            counts_into(&mut obj, total);
        }
        let digest = if list.len() == 1 {
            first.digest.clone()
        } else {
            let lines: String = list.iter().map(|s| format!("{}\n", s.digest)).collect();
            format!("sha256:{}", crate::crypto::sha256_hex(lines.as_bytes()))
        };
        obj.insert("report_digest".into(), json!(digest));
        scans.insert(kind.to_string(), Value::Object(obj));
    }
    let mut bundle = json!({ "scans": scans });
    if let Some(digest) = &args.image_digest {
        let mut artifact = json!({ "digest": digest, "cosign_verified": args.cosign_verified });
        if let Some(image) = &args.image {
            artifact["image"] = json!(image);
        }
        if let Some(by) = &args.signed_by {
            artifact["signed_by"] = json!(by);
        }
        if let Some(env) = &args.environment {
            artifact["target_environment"] = json!(env);
        }
        bundle["artifact"] = artifact;
    }
    Ok(bundle)
}

/// Runs `portcullis evidence`: prints (or writes) the bundle.
pub(super) fn run(args: EvidenceArgs) -> Result<ExitCode, String> {
    let bundle = bundle(&args).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&bundle).map_err(|e| e.to_string())? + "\n";
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
