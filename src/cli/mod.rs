//! The command line: `serve`, `check-config`, `decide`, `audit verify`,
//! `audit query`, `keygen`, `receipt verify`; and for CI jobs `attest`,
//! `evidence`, `verdict` (`pipeline.rs`, `evidence.rs`). Every failure prints one clear line on stderr and exits
//! non-zero; nothing here panics on bad input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use crate::config::{AuditBackend, Config, LogFormat};
use crate::decision::{self, Inputs, Outcome};
use crate::domain::{Producer, Verdict, VerdictSource};
use crate::server::Application;

mod audit_cmds;
mod evidence;
mod pipeline;
mod scanners;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A deploy authorizer for GitHub and GitLab protected environments"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Start a new, empty trail although checkpoints of an earlier one
        /// exist (the trail was lost): the checkpoints are set aside and the
        /// new trail's first record names the last of them.
        #[arg(long)]
        new_trail: bool,
    },
    /// Validates the configuration and prints a summary of it.
    CheckConfig(ConfigArg),
    /// Offline dry run: decides one webhook with an optional token and
    /// verdict, prints the decision and its reasons, and calls no platform.
    /// Exit status: 0 approved, 2 rejected, 3 pending, 1 error.
    Decide {
        #[command(flatten)]
        config: ConfigArg,
        /// A webhook payload (GitHub `deployment_protection_rule`).
        #[arg(long)]
        webhook: PathBuf,
        /// A file holding the CI job's OIDC ID token (verified against the
        /// configured issuers, which needs their keys).
        #[arg(long)]
        token: Option<PathBuf>,
        /// A verdict as posted to /v1/verdicts (`allow` form); taken as from
        /// a trusted producer.
        #[arg(long)]
        verdict: Option<PathBuf>,
        /// An evidence bundle (schemas/evidence.schema.json), evaluated with
        /// the environment's Rego policy from `[policies]`, as the service
        /// would for a policy-gate job that posts evidence.
        #[arg(long, conflicts_with = "verdict")]
        evidence: Option<PathBuf>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Writes a new Ed25519 audit signing key (PKCS#8 PEM, mode 0600) and
    /// prints its public half (SPKI PEM).
    Keygen {
        /// Where to write the private key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Decision receipts (DSSE envelopes from `/v1/requests/{id}/receipt`).
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// In a CI job: presents the job's OIDC ID token to the service
    /// (`POST /v1/attestations`) and prints the attestation.
    Attest(pipeline::Target),
    /// In a CI job: builds the evidence bundle from scanner reports.
    Evidence(evidence::EvidenceArgs),
    /// In the policy-gate job: posts a verdict (an evidence bundle, or
    /// --allow / --deny) with the job's OIDC ID token.
    Verdict(pipeline::VerdictArgs),
}

#[derive(Debug, Subcommand)]
enum ReceiptCommand {
    /// Checks a receipt's signature offline and prints its statement.
    Verify {
        /// The receipt (a DSSE envelope, JSON).
        file: PathBuf,
        /// The public keys: a JWKS file, a `/v1/keys` URL, or an SPKI PEM.
        #[arg(long)]
        keys: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walks the hash chain and checks the trail against its latest signed
    /// checkpoint (cut short, rewound, edited or missing records fail);
    /// exits 1 naming the problem.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Trust only this public key (SPKI PEM, from `portcullis keygen`)
        /// for checkpoints, instead of the keys stored beside the trail.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also check the trail against the checkpoints and segments anchored
        /// in write-once storage (`[audit.anchor]`).
        #[arg(long)]
        anchor: bool,
    },
    /// Prints matching records as JSON lines.
    Query {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        sha: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        request: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-01T00:00:00Z.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("portcullis: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| {
        let lines: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
        format!("invalid configuration {}:\n  {}", path.display(), lines.join("\n  "))
    })
}

fn load_for_audit(path: &Path) -> Result<Config, String> {
    Config::load_without_secrets(path).map_err(|e| {
        let lines: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
        format!("invalid configuration {}:\n  {}", path.display(), lines.join("\n  "))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve { config, new_trail } => {
            let mut config = load(&config.config)?;
            config.audit.new_trail = new_trail;
            init_tracing(config.server.log_format);
            let rt = runtime()?;
            rt.block_on(async {
                let app = Application::build(config).await.map_err(|e| e.to_string())?;
                app.run_until_stopped()
                    .await
                    .map_err(|e| format!("the server failed: {e}"))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(a) => {
            let config = load(&a.config)?;
            print!("{}", config.summary());
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::Decide {
            config,
            webhook,
            token,
            verdict,
            evidence,
        } => {
            let config = load(&config.config)?;
            runtime()?.block_on(decide(
                config,
                &webhook,
                token.as_deref(),
                verdict.as_deref(),
                evidence.as_deref(),
            ))
        }
        Command::Audit {
            command: AuditCommand::Verify { config, key, anchor },
        } => audit_cmds::verify(&config.config, key.as_deref(), anchor),
        Command::Audit {
            command:
                AuditCommand::Query {
                    config,
                    environment,
                    sha,
                    actor,
                    request,
                    since,
                },
        } => audit_cmds::query(
            &config.config,
            crate::audit::AuditFilter {
                environment,
                sha,
                actor,
                request,
                since: None,
                limit: None,
            },
            since.as_deref(),
        ),
        Command::Keygen { out } => audit_cmds::keygen(&out),
        Command::Receipt {
            command: ReceiptCommand::Verify { file, keys },
        } => audit_cmds::receipt_verify(&file, &keys),
        Command::Attest(target) => pipeline::attest(target),
        Command::Evidence(args) => evidence::run(args),
        Command::Verdict(args) => pipeline::verdict(args),
    }
}

/// The audit file, or `None` when the trail is in Redis (`[state]` url).
fn audit_path(config: &Config) -> Result<Option<PathBuf>, String> {
    match &config.audit.backend {
        AuditBackend::File { path } => Ok(Some(path.clone())),
        AuditBackend::Redis => Ok(None),
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if meta.len() > 16 * 1024 * 1024 {
        return Err(format!("{what} {} is larger than 16 MiB", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

async fn decide(
    config: Config,
    webhook: &Path,
    token: Option<&Path>,
    verdict: Option<&Path>,
    evidence: Option<&Path>,
) -> Result<ExitCode, String> {
    let now = OffsetDateTime::now_utc();
    let body = read_file(webhook, "webhook")?;
    let api_url = config
        .github
        .as_ref()
        .map(|g| g.api_url.clone())
        .unwrap_or_else(|| url::Url::parse("https://api.github.com").expect("static URL"));
    let parsed = match crate::webhook::github::parse("deployment_protection_rule", &body, &api_url) {
        Ok(crate::webhook::github::GithubEvent::ProtectionRule(p)) => p,
        Ok(_) => return Err("the webhook is not a requested deployment_protection_rule".into()),
        Err(e) => return Err(format!("webhook {}: {e}", webhook.display())),
    };
    let timeout = config
        .environment(&parsed.environment)
        .map(|e| e.pending_timeout)
        .unwrap_or_default();
    let request = crate::webhook::github::deployment_request(
        config.github.as_ref().map_or("", |g| g.issuer.as_str()),
        timeout,
        "offline",
        &parsed,
        now,
    );

    let attestation = match token {
        None => None,
        Some(path) => {
            let text =
                String::from_utf8(read_file(path, "token")?).map_err(|_| "the token file is not text".to_string())?;
            let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            let verifier = crate::identity::Verifier::new(config.issuers.clone(), http);
            let v = verifier
                .verify(text.trim(), now)
                .await
                .map_err(|e| format!("token refused ({}): {e}", e.code()))?;
            Some(v.into_attestation(now))
        }
    };

    let mut policy = config.environment(&request.environment).cloned();
    // A verdict file (`allow` or `evidence`) or a bare evidence bundle.
    let posted: Option<(crate::domain::VerdictBody, String)> = match (verdict, evidence) {
        (Some(path), _) => {
            let body: crate::domain::VerdictBody = serde_json::from_slice(&read_file(path, "verdict")?)
                .map_err(|e| format!("verdict {}: {e}", path.display()))?;
            Some((body, path.display().to_string()))
        }
        (None, Some(path)) => {
            let bundle: serde_json::Value = serde_json::from_slice(&read_file(path, "evidence")?)
                .map_err(|e| format!("evidence {}: {e}", path.display()))?;
            let body = crate::domain::VerdictBody {
                environment: request.environment.clone(),
                sha: request.sha.clone(),
                policy: None,
                allow: None,
                evidence: Some(bundle),
                evidence_digest: None,
                reasons: Vec::new(),
            };
            Some((body, path.display().to_string()))
        }
        (None, None) => None,
    };
    let verdict = match posted {
        None => None,
        Some((body, source)) => {
            // The file stands for a trusted producer's post: accept any producer.
            if let Some(p) = policy.as_mut() {
                p.verdict.producers = vec![Default::default()];
            }
            let mut v = Verdict {
                platform: request.platform,
                repository: request.repository.clone(),
                sha: body.sha.to_ascii_lowercase(),
                environment: body.environment.clone(),
                allow: body.allow.unwrap_or(false),
                source: VerdictSource::Asserted,
                policy: body.policy.clone(),
                evidence_digest: body.evidence_digest.clone(),
                policy_revision: None,
                reasons: body.reasons.clone(),
                producer: Producer {
                    issuer_name: request.issuer.clone(),
                    issuer: "file".into(),
                    subject: source,
                    actor: String::new(),
                    claims: Default::default(),
                    token_sha256: String::new(),
                },
                recorded_at: now,
            };
            match (&body.evidence, body.allow) {
                (Some(bundle), None) => {
                    evaluate_offline(&config, policy.as_ref(), &mut v, bundle, attestation.as_ref(), now).await?
                }
                (None, Some(_)) => {}
                _ => return Err("the verdict file needs exactly one of `allow` or `evidence`".into()),
            }
            Some(v)
        }
    };
    let decision = decision::evaluate(&Inputs {
        policy: policy.as_ref(),
        request: &request,
        attestation: attestation.as_ref(),
        verdict: verdict.as_ref(),
        reviews: &[],
        now,
    });
    let out = serde_json::json!({
        "request": request.id,
        "repository": request.repository,
        "run": request.run,
        "environment": request.environment,
        "sha": request.sha,
        "decision": decision.outcome,
        "reasons": decision.reasons,
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(match decision.outcome {
        Outcome::Approved => ExitCode::SUCCESS,
        Outcome::Rejected => ExitCode::from(2),
        Outcome::Pending => ExitCode::from(3),
    })
}

/// Evaluates an evidence bundle as the service does for `POST /v1/verdicts`
/// with `evidence`, in every verdict mode (the configured Rego policies in
/// process, or the environment's OPA server); the attested actor (if a token
/// was given) stands for the poster.
async fn evaluate_offline(
    config: &Config,
    policy: Option<&crate::config::EnvironmentPolicy>,
    verdict: &mut Verdict,
    bundle: &serde_json::Value,
    attestation: Option<&crate::domain::Attestation>,
    now: OffsetDateTime,
) -> Result<(), String> {
    let policy = policy.ok_or_else(|| format!("environment `{}` is not configured", verdict.environment))?;
    let mut policy = policy.clone();
    if policy.verdict.policy.is_none() {
        policy.verdict.policy = verdict.policy.clone();
    }
    if policy.verdict.policy.is_none() {
        return Err(format!(
            "environments.{}.verdict.policy names no query to evaluate",
            policy.name
        ));
    }
    let engine = match policy.verdict.mode {
        crate::config::VerdictMode::Opa => None,
        _ => Some(
            crate::server::load_policies(config)
                .map_err(|e| e.to_string())?
                .ok_or("no [policies] paths are configured")?,
        ),
    };
    let http = crate::outbound::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let opa = crate::verdict::OpaClient::new(http);
    let (actor, claims) = attestation
        .map(|a| (a.actor.clone(), a.claims.clone()))
        .unwrap_or_default();
    let poster = crate::verdict::Poster {
        repository: &verdict.repository,
        actor: &actor,
        claims: &claims,
    };
    let evaluated = crate::verdict::evaluate_evidence(
        engine.as_deref(),
        &opa,
        &policy,
        bundle,
        &verdict.sha,
        poster,
        verdict.evidence_digest.as_deref(),
        now,
    )
    .await
    .map_err(|e| match e {
        crate::verdict::EvaluateError::Invalid { message, .. } => format!("invalid evidence: {message}"),
        crate::verdict::EvaluateError::Unavailable(message) => message,
    })?;
    verdict.allow = evaluated.allow;
    verdict.reasons = evaluated.reasons;
    verdict.source = evaluated.source;
    verdict.policy = Some(evaluated.policy);
    verdict.evidence_digest = Some(evaluated.evidence_digest);
    verdict.policy_revision = Some(evaluated.policy_revision);
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
