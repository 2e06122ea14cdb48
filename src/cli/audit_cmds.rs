//! `audit verify`, `audit query`, `keygen` and `receipt verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{audit_path, load, load_for_audit, runtime};
use crate::audit::checkpoints::{CheckpointStore, FileCheckpoints, StoredCheckpoint};
use crate::audit::tlog::{check_tree, tree_of_lines};
use crate::audit::{AuditError, AuditFilter};
use crate::config::AuditBackend;
use crate::config::Config;
use crate::signing::{PublicKey, SigningKey, public_from_pem, public_pem, verify_checkpoint, verify_dsse};

/// The configuration for reading the trail: without secrets, except a Redis
/// URL given as a secret (it holds a password), which is needed here.
fn audit_config(path: &Path) -> Result<Config, String> {
    let config = load_for_audit(path)?;
    if let crate::config::StateBackend::Redis { url, .. } = &config.state.backend
        && url.expose().is_empty()
        && matches!(config.audit.backend, AuditBackend::Redis)
    {
        return load(path);
    }
    Ok(config)
}

/// The trail's lines and its latest stored checkpoint and stored keys.
struct Trail {
    shown: String,
    lines: Vec<u8>,
    exists: bool,
    latest: Option<StoredCheckpoint>,
    keys: Vec<String>,
}

async fn read_trail(config: &Config) -> Result<Trail, String> {
    match audit_path(config)? {
        Some(path) => {
            let store = FileCheckpoints::beside(&path);
            let exists = path.exists();
            let lines = if exists {
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            } else {
                Vec::new()
            };
            Ok(Trail {
                shown: path.display().to_string(),
                lines,
                exists,
                latest: store.latest().await.map_err(|e| e.to_string())?,
                keys: store.keys().await.map_err(|e| e.to_string())?,
            })
        }
        None => {
            let reader = crate::audit::RedisAuditReader::from_config(config).map_err(|e| e.to_string())?;
            let mut lines = Vec::new();
            reader.export(&mut lines).await.map_err(|e| e.to_string())?;
            let store = reader.checkpoints();
            Ok(Trail {
                shown: reader.shown().to_string(),
                exists: true,
                lines,
                latest: store.latest().await.map_err(|e| e.to_string())?,
                keys: store.keys().await.map_err(|e| e.to_string())?,
            })
        }
    }
}

pub(super) fn verify(config_path: &Path, key: Option<&Path>, anchor: bool) -> Result<ExitCode, String> {
    let config = audit_config(config_path)?;
    let rt = runtime()?;
    let trail = rt.block_on(read_trail(&config))?;
    let name = &config.audit.log_name;
    if !trail.exists {
        return match &trail.latest {
            Some(cp) => Err(format!(
                "the audit trail {} is missing; checkpoint covers {} records",
                trail.shown, cp.size
            )),
            None => Err(format!("the audit trail {} does not exist", trail.shown)),
        };
    }
    let report = crate::audit::verify_lines(&trail.lines[..]).map_err(|e| {
        let e = AuditError::Chain {
            path: trail.shown.clone(),
            source: e,
        };
        format!("audit chain broken in {}: {e}", trail.shown)
    })?;
    println!(
        "audit chain OK: {} record(s), last seq {}, head {}",
        report.records, report.last_seq, report.head_hash
    );
    let keys: Vec<PublicKey> = match key {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            vec![public_from_pem(name, &pem).map_err(|e| format!("{}: {e}", path.display()))?]
        }
        None => trail
            .keys
            .iter()
            .filter_map(|k| STANDARD.decode(k).ok())
            .filter_map(|k| PublicKey::new(name, &k).ok())
            .collect(),
    };
    let tree = tree_of_lines(&trail.lines);
    match &trail.latest {
        None => println!("no signed checkpoint: completeness is not proven (set [audit] signing_key)"),
        Some(cp) => {
            let checkpoint = verify_checkpoint(&cp.note, name, &keys)
                .map_err(|e| format!("the latest checkpoint of {} does not verify: {e}", trail.shown))?;
            check_tree(&tree, checkpoint.size, &checkpoint.root).map_err(|e| format!("{}: {e}", trail.shown))?;
            println!(
                "checkpoint OK: {} record(s) signed by {}, root {}",
                checkpoint.size,
                if key.is_some() {
                    "the given key"
                } else {
                    "a key stored with the trail"
                },
                hex::encode(checkpoint.root)
            );
        }
    }
    if anchor {
        // The anchor's credentials are secrets: load them now.
        let full = Config::load_with_secrets_under(config_path, "audit.anchor.").map_err(|e| {
            let lines: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
            format!(
                "invalid configuration {}:\n  {}",
                config_path.display(),
                lines.join("\n  ")
            )
        })?;
        let settings = full
            .audit
            .anchor
            .as_ref()
            .ok_or("--anchor needs [audit.anchor] in the configuration")?;
        let anchored = rt.block_on(crate::audit::anchor::verify_anchored(settings, name, &keys, &tree))?;
        println!("anchor OK: {anchored}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn query(config_path: &Path, mut filter: AuditFilter, since: Option<&str>) -> Result<ExitCode, String> {
    let config = audit_config(config_path)?;
    filter.since = match since {
        Some(s) => {
            Some(crate::time_fmt::parse_rfc3339(s).ok_or_else(|| format!("--since `{s}` is not an RFC 3339 time"))?)
        }
        None => None,
    };
    let records = match audit_path(&config)? {
        Some(path) => crate::audit::query_file(&path, &filter),
        // Redis: a walk of the stream with the same filter.
        None => runtime()?.block_on(async {
            crate::audit::RedisAuditReader::from_config(&config)?
                .query(&filter)
                .await
        }),
    }
    .map_err(|e| e.to_string())?;
    for r in records {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn keygen(out: &Path) -> Result<ExitCode, String> {
    let pem = SigningKey::generate_pem().map_err(|e| e.to_string())?;
    let key = SigningKey::from_pem("portcullis", &pem).map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .map_err(|e| format!("cannot create {} (it must not exist): {e}", out.display()))?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote the private key to {}; its public key:", out.display());
    print!("{}", public_pem(key.public()));
    Ok(ExitCode::SUCCESS)
}

/// Public keys from a JWKS file, a JWKS URL or an SPKI PEM file.
fn load_keys(source: &str) -> Result<Vec<PublicKey>, String> {
    let text = if source.starts_with("https://") || source.starts_with("http://") {
        runtime()?.block_on(async {
            let client = crate::outbound::client().map_err(|e| e.to_string())?;
            let response = client
                .get(source)
                .send()
                .await
                .map_err(|e| format!("cannot fetch {source}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{source} answered {}", response.status()));
            }
            response.text().await.map_err(|e| format!("cannot read {source}: {e}"))
        })?
    } else {
        std::fs::read_to_string(PathBuf::from(source)).map_err(|e| format!("cannot read {source}: {e}"))?
    };
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        return Ok(vec![public_from_pem("", &text).map_err(|e| format!("{source}: {e}"))?]);
    }
    let jwks: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{source} is not a JWKS: {e}"))?;
    let keys: Vec<PublicKey> = jwks["keys"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| PublicKey::from_jwk("", k).ok()).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(format!("{source} holds no Ed25519 key"));
    }
    Ok(keys)
}

pub(super) fn receipt_verify(file: &Path, keys: &str) -> Result<ExitCode, String> {
    let keys = load_keys(keys)?;
    let raw = super::read_file(file, "receipt")?;
    let envelope: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let payload = verify_dsse(&envelope, &keys).map_err(|e| format!("receipt {}: {e}", file.display()))?;
    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| format!("the receipt's payload is not JSON: {e}"))?;
    let p = &statement["predicate"];
    println!(
        "receipt OK: {} for {}@{} ({}), record {}",
        p["verificationResult"].as_str().unwrap_or("?"),
        statement["subject"][0]["name"].as_str().unwrap_or("?"),
        statement["subject"][0]["digest"]["gitCommit"].as_str().unwrap_or("?"),
        p["portcullis"]["environment"].as_str().unwrap_or("?"),
        p["portcullis"]["record"].as_str().unwrap_or("?"),
    );
    println!("{}", serde_json::to_string_pretty(&statement).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
