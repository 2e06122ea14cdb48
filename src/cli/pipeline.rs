//! The CI side of portcullis, in the same binary: `portcullis attest` and
//! `portcullis verdict` get the job's OIDC ID token and post it to the
//! service.
//!
//! The token: on GitLab CI, the variable named by `--token-env` (default
//! `PORTCULLIS_ID_TOKEN`, declared under the job's `id_tokens:` with the
//! audience); on GitHub Actions (`permissions: id-token: write`), from
//! `ACTIONS_ID_TOKEN_REQUEST_URL` with the bearer
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN`, asking for `--audience`. The token is
//! never printed or logged.
//!
//! Exit status: 0 when the service took the post; 2 when it refused it
//! (its error code and message are printed); 3 when it stayed unavailable
//! (503, 429) after a few tries; 1 for any other failure.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

/// The environment variable of GitHub's token endpoint.
const GITHUB_TOKEN_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
const GITHUB_TOKEN_BEARER: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
/// How many times an unavailable service is tried.
const ATTEMPTS: u32 = 4;

#[derive(Debug, clap::Args)]
pub(super) struct Target {
    /// The portcullis service, e.g. https://portcullis.example.com.
    #[arg(long, env = "PORTCULLIS_URL")]
    server: String,
    /// The protected environment the deployment goes to.
    #[arg(long)]
    environment: String,
    /// The audience to ask GitHub for (GitLab: set it in `id_tokens:`).
    #[arg(long, default_value = "portcullis")]
    audience: String,
    /// The variable holding the ID token (GitLab's `id_tokens:`); when it
    /// is not set, the token is asked of GitHub Actions.
    #[arg(long, default_value = "PORTCULLIS_ID_TOKEN")]
    token_env: String,
}

#[derive(Debug, clap::Args)]
pub(super) struct VerdictArgs {
    #[command(flatten)]
    target: Target,
    /// An evidence bundle (`portcullis evidence`), for the service's policy to evaluate.
    #[arg(long, group = "what")]
    evidence: Option<std::path::PathBuf>,
    /// An asserted verdict: the commit may deploy.
    #[arg(long, group = "what")]
    allow: bool,
    /// An asserted verdict: the commit may not deploy, for this reason.
    #[arg(long, group = "what", value_name = "REASON")]
    deny: Option<String>,
    /// The commit (default: GITHUB_SHA or CI_COMMIT_SHA, the job's own).
    #[arg(long)]
    sha: Option<String>,
}

/// Why a pipeline command failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum PipelineError {
    #[error("no ID token: set {0} (GitLab `id_tokens:`), or run on GitHub Actions with `permissions: id-token: write`")]
    NoToken(String),
    #[error("{name} `{value}` must be an https URL (plain http only on a loopback address)")]
    BadUrl { name: &'static str, value: String },
    #[error("GitHub's token endpoint: {0}")]
    GithubToken(String),
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("no commit: pass --sha, or run where GITHUB_SHA or CI_COMMIT_SHA is set")]
    NoSha,
    #[error("one of --evidence, --allow or --deny is required")]
    NoVerdict,
    #[error("evidence {path}: {message}")]
    Evidence { path: String, message: String },
    #[error("refused ({status}): {code}: {message}")]
    Refused { status: u16, code: String, message: String },
    #[error("unavailable ({status}): {code}: {message}")]
    Unavailable { status: u16, code: String, message: String },
}

impl PipelineError {
    fn exit_code(&self) -> ExitCode {
        match self {
            PipelineError::Refused { .. } => ExitCode::from(2),
            PipelineError::Unavailable { .. } => ExitCode::from(3),
            _ => ExitCode::FAILURE,
        }
    }
}

/// A URL portcullis may send a bearer token to: https, or http on loopback.
fn checked_url(name: &'static str, value: &str) -> Result<Url, PipelineError> {
    let bad = || PipelineError::BadUrl {
        name,
        value: value.to_string(),
    };
    let url = Url::parse(value).map_err(|_| bad())?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(bad()),
    }
}

/// The service's base URL, ending in `/` so that API paths join below it.
fn server_url(value: &str) -> Result<Url, PipelineError> {
    let mut url = checked_url("--server", value)?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn client() -> Result<reqwest::Client, PipelineError> {
    crate::outbound::client_with_timeout(Duration::from_secs(30))
        .map_err(|e| PipelineError::Unreachable(format!("the HTTP client: {e}")))
}

/// The job's ID token (see the module's documentation).
async fn id_token(http: &reqwest::Client, target: &Target) -> Result<String, PipelineError> {
    if let Some(token) = std::env::var(&target.token_env).ok().filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_string());
    }
    let (Ok(url), Ok(bearer)) = (std::env::var(GITHUB_TOKEN_URL), std::env::var(GITHUB_TOKEN_BEARER)) else {
        return Err(PipelineError::NoToken(target.token_env.clone()));
    };
    let mut url = checked_url(GITHUB_TOKEN_URL, &url)?;
    url.query_pairs_mut().append_pair("audience", &target.audience);
    let response = http
        .get(url)
        .bearer_auth(bearer)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| PipelineError::GithubToken(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(PipelineError::GithubToken(format!("answered {status}")));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|_| PipelineError::GithubToken("the answer is not JSON".into()))?;
    body.get("value")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| PipelineError::GithubToken("the answer has no `value`".into()))
}

/// Posts `body` (or nothing) to `{server}{path}` with the token; retries
/// while the service is unavailable (503, 429, no connection), waiting as
/// `Retry-After` says (at most 10 s). Returns the service's JSON answer.
async fn post(
    http: &reqwest::Client,
    server: &Url,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Value, PipelineError> {
    let url = server
        .join(path)
        .map_err(|_| PipelineError::Unreachable(server.to_string()))?;
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        let mut request = http.post(url.clone()).bearer_auth(token);
        if let Some(b) = body {
            request = request.json(b);
        }
        let wait = match request.send().await {
            Err(e) => {
                last = Some(PipelineError::Unreachable(format!("{url}: {}", e.without_url())));
                Duration::from_secs(1 << attempt)
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let text = response.text().await.unwrap_or_default();
                let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if (200..300).contains(&status) {
                    return Ok(answer);
                }
                let code = answer
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .unwrap_or("unexpected_answer")
                    .to_string();
                let message = answer
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| text.chars().take(200).collect());
                if status != 503 && status != 429 {
                    return Err(PipelineError::Refused { status, code, message });
                }
                last = Some(PipelineError::Unavailable { status, code, message });
                Duration::from_secs(retry_after.unwrap_or(1 << attempt).min(10))
            }
        };
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
        }
    }
    Err(last.unwrap_or_else(|| PipelineError::Unreachable(url.to_string())))
}

fn finish(result: Result<Value, PipelineError>) -> Result<ExitCode, String> {
    match result {
        Ok(answer) => {
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            Ok(e.exit_code())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `portcullis attest`: posts the job's token to `/v1/attestations` and
/// prints the attestation.
pub(super) fn attest(target: Target) -> Result<ExitCode, String> {
    finish(runtime()?.block_on(async {
        let server = server_url(&target.server)?;
        let http = client()?;
        let token = id_token(&http, &target).await?;
        post(&http, &server, "v1/attestations", &token, None).await
    }))
}

/// `portcullis verdict`: posts an asserted verdict or an evidence bundle to
/// `/v1/verdicts` and prints the recorded verdict.
pub(super) fn verdict(args: VerdictArgs) -> Result<ExitCode, String> {
    finish(runtime()?.block_on(async {
        let server = server_url(&args.target.server)?;
        let sha = args
            .sha
            .clone()
            .or_else(|| std::env::var("GITHUB_SHA").ok())
            .or_else(|| std::env::var("CI_COMMIT_SHA").ok())
            .filter(|s| !s.is_empty())
            .ok_or(PipelineError::NoSha)?;
        let mut body = json!({ "environment": args.target.environment, "sha": sha });
        match (&args.evidence, args.allow, &args.deny) {
            (Some(path), _, _) => {
                let fail = |message: String| PipelineError::Evidence {
                    path: path.display().to_string(),
                    message,
                };
                let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
                body["evidence"] = serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
            }
            (None, true, _) => body["allow"] = json!(true),
            (None, false, Some(reason)) => {
                body["allow"] = json!(false);
                body["reasons"] = json!([reason]);
            }
            (None, false, None) => return Err(PipelineError::NoVerdict),
        }
        let http = client()?;
        let token = id_token(&http, &args.target).await?;
        post(&http, &server, "v1/verdicts", &token, Some(&body)).await
    }))
}
