//! moto's standalone server (PyPI `moto[server]`, installed by scripts/test)
//! as a real S3 that enforces Object Lock, for the anchor's tests: each on a
//! free port of its own, stopped on drop.
//!
//! [`Moto::start`] creates an IAM user allowed `s3:*` and its key pair, and a
//! bucket with Object Lock enabled, then turns on moto's request
//! authentication (its `/moto-api/reset-auth`): from then on every request
//! must carry a valid SigV4 signature by a known key pair, as on S3.
//! [`Moto::boto3`] runs a Python snippet with a boto3 S3 client `s3` bound to
//! the server, for checks independent of the client under test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub access_key_id: String,
    pub secret_access_key: String,
    dir: tempfile::TempDir,
}

/// A boto3 client `s3` on the server (path-style, no retries, checksums only
/// when an operation requires one), before each snippet.
const PREAMBLE: &str = r#"
import datetime, json, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["MOTO_ENDPOINT"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["MOTO_KEY_ID"],
    aws_secret_access_key=os.environ["MOTO_SECRET"],
    config=Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    ),
)
"#;

/// Before authentication is on: a user allowed `s3:*`, its key pair (printed
/// as JSON), and the bucket (`argv[1]`) with Object Lock enabled.
const SETUP: &str = r#"
import json, os, sys, urllib.request
import boto3
endpoint = os.environ["MOTO_ENDPOINT"]
setup = dict(endpoint_url=endpoint, region_name="us-east-1",
             aws_access_key_id="AKIASETUPSETUPSETUP1", aws_secret_access_key="setup")
iam = boto3.client("iam", **setup)
iam.create_user(UserName="anchor")
iam.put_user_policy(UserName="anchor", PolicyName="s3", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}))
key = iam.create_access_key(UserName="anchor")["AccessKey"]
boto3.client("s3", **setup).create_bucket(Bucket=sys.argv[1], ObjectLockEnabledForBucket=True)
request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
urllib.request.urlopen(request).read()
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"#;

impl Moto {
    /// Starts moto on a free port with `bucket` (Object Lock enabled), and
    /// turns request authentication on. Waits up to 30 s for it to answer.
    pub fn start(bucket: &str) -> Moto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::redis::free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("python3 must be installed, with moto[server] (scripts/test installs it)");
        let mut moto = Moto {
            child: Some(child),
            port,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "moto exited ({status}); is moto[server] installed? (scripts/test installs it)\n{}",
                    moto.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = moto.python(SETUP, &[bucket]);
        let keys: serde_json::Value = serde_json::from_str(out.trim()).expect("setup prints the key pair");
        moto.access_key_id = keys["id"].as_str().expect("id").to_string();
        moto.secret_access_key = keys["secret"].as_str().expect("secret").to_string();
        moto
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `snippet` after [`PREAMBLE`] (a boto3 client `s3` signed by the
    /// test user) and returns what it printed; panics if it fails.
    pub fn boto3(&self, snippet: &str) -> String {
        self.python(&format!("{PREAMBLE}\n{snippet}"), &[])
    }

    fn python(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .env("MOTO_ENDPOINT", self.endpoint())
            .env("MOTO_KEY_ID", &self.access_key_id)
            .env("MOTO_SECRET", &self.secret_access_key)
            // Only the keys given: no profile, no shared files, no metadata service.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "python failed ({}):\n{}\n--- moto log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        let path: PathBuf = self.dir.path().join("moto.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
