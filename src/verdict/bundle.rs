//! OPA bundles: a `.tar.gz` holding `.manifest` (`revision`, `roots`),
//! `*.rego` modules and `data.json` files, each placed in `data` by its
//! directory (`roles/bindings/data.json` is `data.roles.bindings`), and
//! optionally `.signatures.json` (see [`super::signature`]). Other files
//! are carried (and signed) but not loaded, as OPA does.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use super::signature::{self, VerificationKey};
use super::sources::{FileKind, SourceFile};

/// Largest bundle archive read, compressed and uncompressed, and most entries.
pub(crate) const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
const MAX_UNPACKED_BYTES: u64 = 128 * 1024 * 1024;
const MAX_ENTRIES: usize = 10_000;

/// A bundle read and checked: its revision, roots and policy files.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Where it came from (its file path or URL), naming it in messages.
    pub source: String,
    /// The manifest's `revision` (empty when it names none).
    pub revision: String,
    /// The manifest's `roots`, `/`-separated (`[""]`, everything, by default).
    pub roots: Vec<String>,
    /// True when `.signatures.json` was verified.
    pub signed: bool,
    pub(crate) files: Vec<SourceFile>,
}

/// Why a bundle was refused. Names the bundle and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {bundle}: cannot be read: {message}")]
    Read { bundle: String, message: String },
    #[error("bundle {bundle}: not a bundle archive (.tar.gz): {message}")]
    Archive { bundle: String, message: String },
    #[error("bundle {bundle}: .manifest: {message}")]
    Manifest { bundle: String, message: String },
    #[error("bundle {bundle}: unsigned, but [policies] verification_key requires a signature")]
    Unsigned { bundle: String },
    #[error("bundle {bundle}: signed, but [policies] verification_key is not set to verify it")]
    NoKey { bundle: String },
    #[error("bundle {bundle}: signature refused: {message}")]
    Signature { bundle: String, message: String },
    #[error("bundle {bundle}: {message}")]
    Roots { bundle: String, message: String },
}

#[derive(Deserialize, Default)]
struct Manifest {
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    roots: Option<Vec<String>>,
}

/// Reads a bundle archive (`bytes`, from `source`); verifies its signature
/// against `key` when one is configured (then an unsigned bundle is
/// refused; a signed bundle without a key is refused too, as OPA does).
pub fn read_bundle(source: &str, bytes: &[u8], key: Option<&VerificationKey>) -> Result<Bundle, BundleError> {
    read(source, bytes, key, true)
}

/// [`read_bundle`] without looking at `.signatures.json` at all: for
/// `portcullis policy test` and `policy eval` on a bundle file, as `opa
/// test` does. Never for what the service evaluates with.
pub fn read_bundle_unverified(source: &str, bytes: &[u8]) -> Result<Bundle, BundleError> {
    read(source, bytes, None, false)
}

fn read(source: &str, bytes: &[u8], key: Option<&VerificationKey>, verify: bool) -> Result<Bundle, BundleError> {
    let mut files = unpack(source, bytes)?;
    let signatures = files.remove(".signatures.json").filter(|_| verify);
    match (signatures, key) {
        (Some(sig), Some(key)) => signature::verify(&sig, &files, key).map_err(|e| BundleError::Signature {
            bundle: source.to_owned(),
            message: e.0,
        })?,
        (None, Some(_)) if verify => {
            return Err(BundleError::Unsigned {
                bundle: source.to_owned(),
            });
        }
        (Some(_), None) => {
            return Err(BundleError::NoKey {
                bundle: source.to_owned(),
            });
        }
        (None, _) => {}
    }
    let manifest_err = |message: String| BundleError::Manifest {
        bundle: source.to_owned(),
        message,
    };
    let manifest: Manifest = match files.get(".manifest") {
        Some(text) => serde_json::from_slice(text).map_err(|e| manifest_err(format!("not a manifest: {e}")))?,
        None => Manifest::default(),
    };
    let roots: Vec<String> = manifest
        .roots
        .unwrap_or_else(|| vec![String::new()])
        .into_iter()
        .map(|r| r.trim_matches('/').to_owned())
        .collect();

    let mut sources = Vec::new();
    for (name, bytes) in &files {
        let base = name.rsplit('/').next().unwrap_or(name);
        let dir: Vec<String> = match name.rsplit_once('/') {
            Some((dir, _)) => dir.split('/').map(str::to_owned).collect(),
            None => Vec::new(),
        };
        let kind = match super::sources::kind_of(base) {
            Some(FileKind::Data) if base == "data.json" => FileKind::Data,
            Some(FileKind::Data) | None => continue,
            Some(kind) => kind,
        };
        let display = format!("{}/{name}", source.trim_end_matches('/'));
        match kind {
            FileKind::Data => check_data_roots(source, &display, &dir, bytes, &roots)?,
            _ => check_package_root(source, &display, bytes, &roots)?,
        }
        sources.push(SourceFile {
            display,
            relative: name.clone(),
            kind,
            bytes: bytes.clone(),
            data_path: if kind == FileKind::Data { dir } else { Vec::new() },
        });
    }
    Ok(Bundle {
        source: source.to_owned(),
        revision: manifest.revision.unwrap_or_default(),
        roots,
        signed: verify && key.is_some(),
        files: sources,
    })
}

/// The archive's regular files, by path without a leading `/` or `./`.
fn unpack(source: &str, bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let err = |message: String| BundleError::Archive {
        bundle: source.to_owned(),
        message,
    };
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_UNPACKED_BYTES + 1);
    let mut archive = tar::Archive::new(gz);
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(e.to_string()))?;
        if files.len() >= MAX_ENTRIES {
            return Err(err(format!("more than {MAX_ENTRIES} files")));
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path().map_err(|e| err(e.to_string()))?;
        let path = raw.to_string_lossy().replace('\\', "/");
        let path = path.trim_start_matches("./").trim_start_matches('/').to_owned();
        if path.is_empty() || path.split('/').any(|s| s == ".." || s.is_empty() || s == ".") {
            return Err(err(format!("unsafe path {path:?}")));
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(|e| err(e.to_string()))?;
        total += content.len() as u64;
        if total > MAX_UNPACKED_BYTES {
            return Err(err(format!("unpacks to more than {} MiB", MAX_UNPACKED_BYTES >> 20)));
        }
        if files.insert(path.clone(), content).is_some() {
            return Err(err(format!("{path} appears twice")));
        }
    }
    Ok(files)
}

fn segments(path: &str) -> Vec<&str> {
    path.split(['/', '.']).filter(|s| !s.is_empty()).collect()
}

/// Is `path` (segments) under one of `roots` (a root is a prefix of it)?
fn under_root(path: &[&str], roots: &[String]) -> bool {
    roots.iter().any(|r| {
        let r: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
        path.starts_with(&r)
    })
}

fn check_package_root(source: &str, display: &str, bytes: &[u8], roots: &[String]) -> Result<(), BundleError> {
    let text = String::from_utf8_lossy(bytes);
    let Some(package) = text.lines().find_map(|l| l.trim().strip_prefix("package ")) else {
        // The engine reports a module without a package, with its line.
        return Ok(());
    };
    let package = package.split('#').next().unwrap_or_default().trim();
    if under_root(&segments(package), roots) {
        Ok(())
    } else {
        Err(BundleError::Roots {
            bundle: source.to_owned(),
            message: format!(
                "{display}: package {package} is outside the manifest's roots {}",
                roots_text(roots)
            ),
        })
    }
}

/// Every place a data file writes must be under a root: its directory when
/// that is under one, else each of its keys, down to the roots' depth.
fn check_data_roots(
    source: &str,
    display: &str,
    dir: &[String],
    bytes: &[u8],
    roots: &[String],
) -> Result<(), BundleError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    fn walk(path: &mut Vec<String>, value: &serde_json::Value, roots: &[String]) -> Option<String> {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        if under_root(&segs, roots) {
            return None;
        }
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    path.push(k.clone());
                    let bad = walk(path, v, roots);
                    path.pop();
                    if bad.is_some() {
                        return bad;
                    }
                }
                None
            }
            _ => Some(path.join(".")),
        }
    }
    let mut path = dir.to_vec();
    match walk(&mut path, &value, roots) {
        None => Ok(()),
        Some(bad) => Err(BundleError::Roots {
            bundle: source.to_owned(),
            message: format!(
                "{display}: data.{bad} is outside the manifest's roots {}",
                roots_text(roots)
            ),
        }),
    }
}

fn roots_text(roots: &[String]) -> String {
    format!(
        "[{}]",
        roots.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
    )
}

/// Two bundles may not claim overlapping roots (one a prefix of the other),
/// as in OPA.
pub(crate) fn check_overlap(bundles: &[&Bundle]) -> Result<(), BundleError> {
    for (i, a) in bundles.iter().enumerate() {
        for b in &bundles[i + 1..] {
            for ra in &a.roots {
                for rb in &b.roots {
                    let sa: Vec<&str> = ra.split('/').filter(|s| !s.is_empty()).collect();
                    let sb: Vec<&str> = rb.split('/').filter(|s| !s.is_empty()).collect();
                    if sa.starts_with(&sb) || sb.starts_with(&sa) {
                        return Err(BundleError::Roots {
                            bundle: b.source.clone(),
                            message: format!("root {rb:?} overlaps root {ra:?} of bundle {}", a.source),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}
