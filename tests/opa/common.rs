//! Shared by tests/policy_differential.rs and tests/policy_opa_mode.rs: the
//! shipped policy's location, its approvers, and Go OPA through Python.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use portcullis::verdict::PolicyEngine;
use time::OffsetDateTime;
use time::macros::datetime;

pub const QUERY: &str = "data.deploy.hipaa.allow";
pub const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
pub const PROD_SIGNER: &str = "awskms:///alias/hipaa-production-cosign";
pub const STAGING_SIGNER: &str = "awskms:///alias/hipaa-staging-cosign";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn policies_dir() -> PathBuf {
    repo().join("config/policies")
}

pub fn approvers() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("production".to_owned(), vec!["octocat".to_owned(), "hubot".to_owned()]),
        ("staging".to_owned(), vec!["octocat".to_owned()]),
    ])
}

pub fn shipped() -> PolicyEngine {
    PolicyEngine::load(&[policies_dir()], &approvers()).expect("the shipped policy loads")
}

/// The Python that runs Go OPA (`PORTCULLIS_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails (never skips) when Python or the OPA bindings are missing: these
/// tests are the evidence that portcullis agrees with OPA.
pub fn require_opa_bindings() {
    let out = Command::new(python())
        .args(["-c", "import opa_bindings"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; scripts/test installs Python's OPA bindings",
                python()
            )
        });
    assert!(
        out.status.success(),
        "Python's OPA bindings are missing (module opa_bindings, PyPI opa-golib-python-bindings); \
         scripts/test installs them: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn script(name: &str) -> PathBuf {
    repo().join("tests/opa").join(name)
}

/// Go OPA's Data API (tests/opa/server.py) over `paths`; killed when dropped.
pub struct OpaServer {
    child: Child,
    pub url: url::Url,
}

impl OpaServer {
    /// Serves the policies under `paths` with `approvers` as
    /// `data.approvers`; `now_ns` fixes `time.now_ns()`.
    pub fn start_with(paths: &[&Path], approvers: &BTreeMap<String, Vec<String>>, now_ns: Option<i128>) -> OpaServer {
        require_opa_bindings();
        let mut command = Command::new(python());
        command.arg(script("server.py"));
        for p in paths {
            command.arg("--policies").arg(p);
        }
        command
            .arg("--approvers")
            .arg(serde_json::to_string(approvers).unwrap());
        if let Some(ns) = now_ns {
            command.arg("--now-ns").arg(ns.to_string());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/opa/server.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server.py prints its port");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("server.py said {line:?}"));
        OpaServer {
            child,
            url: url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        }
    }
}

impl Drop for OpaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
