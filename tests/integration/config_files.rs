//! The configuration files the repository ships pass `portcullis
//! check-config` through the real binary: `config/portcullis.full.toml`
//! (every key) and `deploy/compose/portcullis.toml` (the Compose try-out),
//! with their secrets' variables set and their files in place.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A working directory with `secrets/github-app.pem` (the TEST-ONLY App
/// key), `secrets/audit-key.pem` (a new one) and `config/policies`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::copy(
        repo("tests/fixtures/github-app/test-only-app-private-key.pem"),
        dir.path().join("secrets/github-app.pem"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo("config/policies"), dir.path().join("config/policies")).unwrap();
    std::os::unix::fs::symlink(repo("schemas"), dir.path().join("schemas")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keygen", "--out"])
        .arg(dir.path().join("secrets/audit-key.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn check_config(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_full_reference_configuration_passes_check_config() {
    let dir = workdir();
    let env = [
        ("PORTCULLIS_READ_TOKEN", "test-read-token"),
        ("PORTCULLIS_REDIS_URL", "redis://:test-password@127.0.0.1:6379/0"),
        ("AUDIT_S3_KEY_ID", "test-key-id"),
        ("AUDIT_S3_SECRET", "test-secret"),
        ("PORTCULLIS_GITHUB_WEBHOOK_SECRET", "test-webhook-secret"),
        ("PORTCULLIS_GITHUB_WEBHOOK_SECRET_NEXT", "test-webhook-secret-next"),
        ("PORTCULLIS_GITLAB_TOKEN", "test-gitlab-token"),
        ("PORTCULLIS_GITLAB_WEBHOOK_TOKEN", "test-gitlab-webhook-token"),
        ("PORTCULLIS_GITLAB_SIGNING_TOKEN", "whsec_dGVzdC1vbmx5LXNpZ25pbmcta2V5"),
        ("PORTCULLIS_SLACK_BOT_TOKEN", "xoxb-test"),
        ("PORTCULLIS_SLACK_SIGNING_SECRET", "test-slack-signing-secret"),
        ("PORTCULLIS_SSO_CLIENT_SECRET", "test-sso-secret"),
    ];
    let (ok, stdout, stderr) = check_config(&repo("config/portcullis.full.toml"), dir.path(), &env);
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
    for env in ["production", "gitlab-production", "staging"] {
        assert!(stdout.contains(env), "{stdout}");
    }
    // No secret reaches the summary.
    for (_, secret) in env {
        assert!(!stdout.contains(secret), "{secret} in the summary");
    }
    // Without one of its variables it names the key.
    let (ok, _, stderr) = check_config(&repo("config/portcullis.full.toml"), dir.path(), &env[1..]);
    assert!(!ok);
    assert!(stderr.contains("server.read_token"), "{stderr}");
}

#[test]
fn the_compose_configuration_passes_check_config() {
    let dir = workdir();
    let text = std::fs::read_to_string(repo("deploy/compose/portcullis.toml")).unwrap();
    let key = dir.path().join("secrets/audit-key.pem");
    assert!(text.contains("/keys/audit-key.pem"));
    let config = dir.path().join("compose.toml");
    std::fs::write(&config, text.replace("/keys/audit-key.pem", &key.display().to_string())).unwrap();
    let env = [
        ("PORTCULLIS_GITHUB_WEBHOOK_SECRET", "dev-only-secret"),
        ("AUDIT_S3_KEY_ID", "portcullis-local"),
        ("AUDIT_S3_SECRET", "portcullis-local-only"),
    ];
    let (ok, stdout, stderr) = check_config(&config, dir.path(), &env);
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with("configuration OK\n"), "{stdout}");
}

/// Every key the configuration parser takes (the fields of the `Raw*`
/// structs) appears in `config/portcullis.full.toml`, so that a new key
/// cannot go undocumented there.
#[test]
fn the_full_reference_configuration_names_every_key() {
    let full = std::fs::read_to_string(repo("config/portcullis.full.toml")).unwrap();
    let mut missing = Vec::new();
    for file in ["src/config/raw.rs", "src/config/anchor.rs"] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let mut in_raw = false;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("pub(super) struct Raw") || t.starts_with("pub struct Raw") {
                in_raw = !t.ends_with(';');
                continue;
            }
            if in_raw && t == "}" {
                in_raw = false;
                continue;
            }
            let Some(field) = t.strip_prefix("pub ").and_then(|f| f.split(':').next()) else {
                continue;
            };
            // Tables are named as [table] or [parent.table]; keys as `key =`.
            let named = full.contains(&format!("{field} ="))
                || full.contains(&format!("[{field}."))
                || full.contains(&format!("[{field}]"))
                || full.contains(&format!(".{field}]"))
                || full.contains(&format!("[[{field}]]"))
                || full.contains(&format!(".{field}]]"));
            if in_raw && !named {
                missing.push(format!("{file}: {field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from config/portcullis.full.toml (add each, with its default and a comment): {missing:?}"
    );
}
