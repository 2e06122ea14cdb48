//! The command line: `serve`, `check-config`, `decide`, `audit verify`,
//! `audit query`, `keygen`, `receipt verify`, `policy test`/`eval`; and for
//! CI jobs `attest`, `evidence`, `verdict` (`pipeline.rs`, `evidence.rs`).
//! Every failure prints one clear line on stderr and exits non-zero; nothing
//! here panics on bad input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{AuditBackend, Config, LogFormat};
use crate::server::Application;

mod audit_bench;
mod audit_cmds;
mod decide;
mod evidence;
mod pipeline;
mod policy;
pub mod scanners;

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
        /// A webhook payload: GitHub `deployment_protection_rule`, or a
        /// GitLab Deployment Hook (`object_kind` `deployment`, status `blocked`).
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
        /// GitLab: the deployment's full commit sha (the hook carries only
        /// the short one); by default the token's, when the short sha agrees.
        #[arg(long)]
        sha: Option<String>,
        /// GitLab: the deployment's pipeline id (the hook carries none); by
        /// default the token's.
        #[arg(long)]
        pipeline: Option<u64>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Rego policies: run their tests, evaluate one input.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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
enum PolicyCommand {
    /// Runs the `test_` rules of `*_test.rego` files, as `opa test` does:
    /// one line per failing test, then the counts; exit 2 when one fails.
    Test {
        /// Policy directories, `.rego` files or bundles (`.tar.gz`); by
        /// default the configuration's `[policies]`.
        paths: Vec<PathBuf>,
        /// The configuration (its approvers become `data.approvers`).
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Also list the tests that pass.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Evaluates a query over an input file and prints the decision and
    /// its reasons; exit 0 when it allows, 2 when it denies.
    Eval {
        /// Policy directories, `.rego` files or bundles (`.tar.gz`); by
        /// default the configuration's `[policies]`.
        paths: Vec<PathBuf>,
        /// The policy input, `{"evidence": …, "context": …}`.
        #[arg(long)]
        input: PathBuf,
        /// The rule to evaluate, e.g. `data.deploy.hipaa.allow`.
        #[arg(long)]
        query: Option<String>,
        /// Evaluate this environment's `verdict.policy`.
        #[arg(long)]
        environment: Option<String>,
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Also time the evaluation: run it this many times in process and
        /// add `timing` (median, p99 and fastest, in µs) to the output.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        repeat: Option<u32>,
    },
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
    /// Measures how many records a second a trail takes in DIR (its disk,
    /// its fsync), with the Merkle tree and signed checkpoints as the
    /// service keeps them; prints one JSON object. The trail is thrown away.
    Bench {
        /// A directory on the disk to measure.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        records: u64,
        /// Appends in flight at once (the service's concurrent decisions).
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        concurrency: u32,
        /// How often a checkpoint is signed, as `[audit] checkpoint_every`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        checkpoint_every: std::time::Duration,
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
        Command::CheckConfig(a) => policy::check_config(&a.config),
        Command::Policy {
            command: PolicyCommand::Test { paths, config, verbose },
        } => policy::test(config.as_deref(), &paths, verbose),
        Command::Policy {
            command:
                PolicyCommand::Eval {
                    paths,
                    input,
                    query,
                    environment,
                    config,
                    repeat,
                },
        } => policy::eval(
            config.as_deref(),
            &paths,
            &input,
            query.as_deref(),
            environment.as_deref(),
            repeat,
        ),
        Command::Decide {
            config,
            webhook,
            token,
            verdict,
            evidence,
            sha,
            pipeline,
        } => {
            let config = load(&config.config)?;
            runtime()?.block_on(decide::decide(
                config,
                decide::DecideFiles {
                    webhook: &webhook,
                    token: token.as_deref(),
                    verdict: verdict.as_deref(),
                    evidence: evidence.as_deref(),
                    sha: sha.as_deref(),
                    pipeline,
                },
            ))
        }
        Command::Audit {
            command:
                AuditCommand::Bench {
                    dir,
                    records,
                    concurrency,
                    checkpoint_every,
                },
        } => audit_bench::bench(audit_bench::BenchArgs {
            dir: &dir,
            records,
            concurrency,
            checkpoint_every,
        }),
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
