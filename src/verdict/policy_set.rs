//! The policies the service evaluates with, live: the Rego engine built
//! from loose `[policies] paths` and OPA bundles, each environment's
//! evidence schema, and the OPA client.
//!
//! A new bundle revision (a remote bundle polled with `If-None-Match`, or a
//! SIGHUP re-reading the local files) is compiled beside the running engine
//! and replaces it in one step; one that fails to read, verify or compile
//! leaves the running engine in place, is logged, counted
//! (`reloads_failed`) and shown by [`PolicySet::status`] (`/readyz`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bundle::{Bundle, BundleError, MAX_BUNDLE_BYTES, read_bundle};
use super::schema::{EvidenceSchema, SchemaError};
use super::signature::VerificationKey;
use super::sources::SourceFile;
use super::{OpaClient, PolicyEngine, PolicyError};
use crate::config::{BundleSource, Config, VerdictMode};

/// How long one bundle download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the policies could not be loaded (at start, or by `check-config`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("environments.{environment}.verdict.evidence_schema: {source}")]
    Schema {
        environment: String,
        #[source]
        source: SchemaError,
    },
    #[error("policies.verification_key: {0}")]
    Key(String),
    /// An evaluated environment's query names no rule of the policies.
    #[error("environments.{environment}.verdict.policy: {query} names no rule of the loaded policies")]
    Query { environment: String, query: String },
}

/// A reload that did not replace the running policies: what was refused
/// (logged and shown by `/readyz` too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReloadError(pub String);

/// Why a bundle could not be downloaded. Never the server's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer in time")]
    Timeout,
    #[error("unreachable")]
    Unreachable,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("larger than {} MiB", MAX_BUNDLE_BYTES >> 20)]
    TooLarge,
    #[error("the download broke off")]
    BrokenOff,
}

/// What `/readyz` and `/metrics` say about the policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The running revision, if policies are loaded.
    pub revision: Option<String>,
    /// The last reload's failure, until a reload succeeds.
    pub last_error: Option<String>,
    /// False while a configured bundle has never loaded (evaluations wait).
    pub loaded: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

#[derive(Default)]
struct RemoteState {
    etag: Option<String>,
}

/// The live policy set; see the module's documentation.
pub struct PolicySet {
    engine: RwLock<Option<Arc<PolicyEngine>>>,
    schemas: BTreeMap<String, Arc<EvidenceSchema>>,
    opa: OpaClient,
    http: reqwest::Client,
    paths: Vec<std::path::PathBuf>,
    bundles: Vec<BundleSource>,
    key: Option<VerificationKey>,
    approvers: BTreeMap<String, Vec<String>>,
    /// Each evaluated environment's query: a revision without its rule is refused.
    queries: Vec<(String, String)>,
    polling_interval: Duration,
    /// The active bundle of each configured source (same order).
    active: Mutex<Vec<Option<Bundle>>>,
    remote: Mutex<BTreeMap<usize, RemoteState>>,
    last_error: Mutex<Option<String>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Serializes reloads (a poll and a SIGHUP at once).
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet").field("status", &self.status()).finish()
    }
}

/// The approvers of every environment, as policies see them in `data.approvers`.
pub fn approvers_of(config: &Config) -> BTreeMap<String, Vec<String>> {
    config
        .environments
        .iter()
        .map(|(name, e)| (name.clone(), e.approvers.clone()))
        .collect()
}

impl PolicySet {
    /// No policies, no schemas: evidence goes only to OPA servers.
    pub fn empty(opa: OpaClient) -> PolicySet {
        Self::bare(
            opa,
            reqwest::Client::new(),
            &crate::config::PoliciesConfig::default(),
            BTreeMap::new(),
            None,
        )
    }

    fn bare(
        opa: OpaClient,
        http: reqwest::Client,
        config: &crate::config::PoliciesConfig,
        schemas: BTreeMap<String, Arc<EvidenceSchema>>,
        key: Option<VerificationKey>,
    ) -> PolicySet {
        PolicySet {
            engine: RwLock::new(None),
            schemas,
            opa,
            http,
            paths: config.paths.clone(),
            bundles: config.bundles.clone(),
            key,
            approvers: BTreeMap::new(),
            queries: Vec::new(),
            polling_interval: config.polling_interval,
            active: Mutex::new(vec![None; config.bundles.len()]),
            remote: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads everything the configuration names: each environment's
    /// evidence schema, the loose policy paths, every bundle (remote ones
    /// fetched once; one that cannot be fetched now leaves evaluations
    /// waiting until a poll gets it). A policy that does not compile, a
    /// bundle that fails verification, a schema that is not one: an error.
    pub async fn load(config: &Config, http: reqwest::Client, opa: OpaClient) -> Result<PolicySet, LoadError> {
        let mut schemas = BTreeMap::new();
        for (name, env) in &config.environments {
            if let Some(path) = &env.verdict.evidence_schema {
                let schema = EvidenceSchema::load(path).map_err(|source| LoadError::Schema {
                    environment: name.clone(),
                    source,
                })?;
                schemas.insert(name.clone(), Arc::new(schema));
            }
        }
        let key = match &config.policies.verification_key {
            Some(pem) => Some(VerificationKey::from_pem(pem.expose()).map_err(|e| LoadError::Key(e.0))?),
            None => None,
        };
        let mut set = Self::bare(opa, http, &config.policies, schemas, key);
        set.approvers = approvers_of(config);
        set.queries = config
            .environments
            .iter()
            .filter(|(_, e)| e.verdict.mode == VerdictMode::Evaluated)
            .filter_map(|(name, e)| e.verdict.policy.clone().map(|q| (name.clone(), q)))
            .collect();
        if set.paths.is_empty() && set.bundles.is_empty() {
            return Ok(set);
        }
        let mut active = Vec::new();
        for (i, source) in set.bundles.iter().enumerate() {
            let bundle = match source {
                BundleSource::File(path) => Some(set.read_file_bundle(path)?),
                BundleSource::Url(url) => match fetch(&set.http, url, None).await {
                    Ok(Fetched::New { bytes, etag }) => {
                        let bundle = read_bundle(&display_url(url), &bytes, set.key.as_ref())?;
                        set.remote_state(i, |s| s.etag = etag);
                        Some(bundle)
                    }
                    Ok(Fetched::NotModified) | Err(_) => {
                        let message = format!("bundle {} could not be fetched yet", display_url(url));
                        tracing::warn!(bundle = %display_url(url), "{message}; evaluations wait for it");
                        *lock(&set.last_error) = Some(message);
                        None
                    }
                },
            };
            active.push(bundle);
        }
        let loose = super::sources::read_paths(&set.paths)?;
        if active.iter().all(Option::is_some) {
            let engine = set.compose(&loose, &active, false)?;
            tracing::info!(revision = engine.revision(), "policies loaded");
            *set.engine.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(engine));
        }
        *lock(&set.active) = active;
        Ok(set)
    }

    /// The engine to evaluate with now, if policies are loaded.
    pub fn engine(&self) -> Option<Arc<PolicyEngine>> {
        self.engine.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `environment`'s evidence schema, if it configures one.
    pub fn schema(&self, environment: &str) -> Option<&EvidenceSchema> {
        self.schemas.get(environment).map(Arc::as_ref)
    }

    pub fn opa(&self) -> &OpaClient {
        &self.opa
    }

    /// True when any source can change while running (bundles or paths).
    pub fn reloadable(&self) -> bool {
        !self.paths.is_empty() || !self.bundles.is_empty()
    }

    pub fn status(&self) -> PolicyStatus {
        let engine = self.engine();
        PolicyStatus {
            revision: engine.as_ref().map(|e| e.revision().to_owned()),
            last_error: lock(&self.last_error).clone(),
            loaded: engine.is_some() || !self.reloadable(),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
        }
    }

    /// Re-reads the local sources (loose paths and bundle files), as on
    /// SIGHUP, and replaces the engine if they compile and verify.
    pub async fn reload_local(&self) -> Result<(), ReloadError> {
        let _guard = self.reloading.lock().await;
        let mut active = lock(&self.active).clone();
        let result = (|| -> Result<PolicyEngine, LoadError> {
            for (i, source) in self.bundles.iter().enumerate() {
                if let BundleSource::File(path) = source {
                    active[i] = Some(self.read_file_bundle(path)?);
                }
            }
            let loose = super::sources::read_paths(&self.paths)?;
            self.compose(&loose, &active, false)
        })();
        self.settle("local files", result.map(|e| (e, active)))
    }

    /// Asks remote bundle `index` for a new revision once; a new one that
    /// reads, verifies and compiles replaces the engine.
    pub async fn poll(&self, index: usize) -> Result<(), ReloadError> {
        let Some(BundleSource::Url(url)) = self.bundles.get(index) else {
            return Ok(());
        };
        let etag = self.remote_state(index, |s| s.etag.clone());
        let fetched = fetch(&self.http, url, etag.as_deref()).await;
        let (bytes, etag) = match fetched {
            Ok(Fetched::NotModified) => return Ok(()),
            Ok(Fetched::New { bytes, etag }) => (bytes, etag),
            Err(e) => {
                // Unreachable is not a new revision: the running one stays, said once per poll.
                tracing::warn!(bundle = %display_url(url), error = %e, "bundle poll failed");
                return Err(ReloadError(format!("bundle {}: {e}", display_url(url))));
            }
        };
        let _guard = self.reloading.lock().await;
        // A revision that fails is not asked for again until it changes.
        self.remote_state(index, |s| s.etag = etag);
        let mut active = lock(&self.active).clone();
        let result = (|| -> Result<PolicyEngine, LoadError> {
            active[index] = Some(read_bundle(&display_url(url), &bytes, self.key.as_ref())?);
            let loose = super::sources::read_paths(&self.paths)?;
            self.compose(&loose, &active, false)
        })();
        self.settle(&display_url(url), result.map(|e| (e, active)))
    }

    /// Polls every remote bundle each `polling_interval` until `stop`.
    pub async fn run_pollers(self: Arc<Self>, stop: CancellationToken) {
        let remote: Vec<usize> = (0..self.bundles.len())
            .filter(|&i| matches!(self.bundles[i], BundleSource::Url(_)))
            .collect();
        if remote.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.polling_interval) => {}
            }
            for &i in &remote {
                let _ = self.poll(i).await;
            }
        }
    }

    fn settle(
        &self,
        what: &str,
        result: Result<(PolicyEngine, Vec<Option<Bundle>>), LoadError>,
    ) -> Result<(), ReloadError> {
        match result {
            // Another bundle has not loaded yet: this one waits beside it,
            // and nothing is evaluated with half the policies.
            Ok((_, active)) if active.iter().any(Option::is_none) => {
                *lock(&self.active) = active;
                tracing::info!(from = %what, "bundle loaded; waiting for the other configured bundles");
                Ok(())
            }
            Ok((engine, active)) => {
                let revision = engine.revision().to_owned();
                let previous = self.engine().map(|e| e.revision().to_owned());
                *self.engine.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(engine));
                *lock(&self.active) = active;
                *lock(&self.last_error) = None;
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(from = %what, revision = %revision, previous = ?previous, "policies reloaded");
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(from = %what, error = %message, "policy reload refused; the running revision stays");
                *lock(&self.last_error) = Some(message.clone());
                Err(ReloadError(message))
            }
        }
    }

    fn read_file_bundle(&self, path: &std::path::Path) -> Result<Bundle, BundleError> {
        let display = path.display().to_string();
        let bytes = read_limited(path)?;
        read_bundle(&display, &bytes, self.key.as_ref())
    }

    /// One engine from the loose files and every bundle; the revision is the
    /// bundles' manifest revisions (joined by `,`) when only bundles with
    /// revisions are loaded, else a hash of every input.
    fn compose(
        &self,
        loose: &[SourceFile],
        bundles: &[Option<Bundle>],
        with_tests: bool,
    ) -> Result<PolicyEngine, LoadError> {
        let partial = bundles.iter().any(Option::is_none);
        let bundles: Vec<&Bundle> = bundles.iter().flatten().collect();
        super::bundle::check_overlap(&bundles)?;
        let mut files: Vec<SourceFile> = loose.to_vec();
        for b in &bundles {
            files.extend(b.files.iter().cloned());
        }
        let revision = (loose.is_empty() && !bundles.is_empty() && bundles.iter().all(|b| !b.revision.is_empty()))
            .then(|| {
                bundles
                    .iter()
                    .map(|b| b.revision.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            });
        let engine = PolicyEngine::from_sources(&files, &self.approvers, with_tests, revision)?;
        // A partial set (another bundle still loading) is only compiled, not checked.
        if partial {
            return Ok(engine);
        }
        for (environment, query) in &self.queries {
            if !engine.rules().contains(query) {
                return Err(LoadError::Query {
                    environment: environment.clone(),
                    query: query.clone(),
                });
            }
        }
        Ok(engine)
    }

    fn remote_state<T>(&self, index: usize, f: impl FnOnce(&mut RemoteState) -> T) -> T {
        f(lock(&self.remote).entry(index).or_default())
    }
}

/// Loads the configured policies with their `*_test.rego` files (loose and
/// in local bundles), for `portcullis policy test`; remote bundles are fetched.
pub async fn load_with_tests(config: &Config, http: reqwest::Client) -> Result<PolicyEngine, LoadError> {
    let set = PolicySet::load(config, http, OpaClient::new(reqwest::Client::new())).await?;
    let loose = super::sources::read_paths(&set.paths)?;
    let active = lock(&set.active).clone();
    set.compose(&loose, &active, true)
}

/// Compiles `paths` as given on a command line: directories and `.rego` /
/// `.json` files as loose sources, `.tar.gz` (`.tgz`) files as bundles
/// (their signatures not checked: this is for tests and trials, never for
/// what the service evaluates with).
pub fn compile_paths(
    paths: &[std::path::PathBuf],
    approvers: &BTreeMap<String, Vec<String>>,
    with_tests: bool,
) -> Result<PolicyEngine, LoadError> {
    let is_bundle = |p: &std::path::Path| {
        let name = p.to_string_lossy();
        p.is_file() && (name.ends_with(".tar.gz") || name.ends_with(".tgz"))
    };
    let loose: Vec<std::path::PathBuf> = paths.iter().filter(|p| !is_bundle(p)).cloned().collect();
    let mut bundles = Vec::new();
    for path in paths.iter().filter(|p| is_bundle(p)) {
        let display = path.display().to_string();
        let bytes = read_limited(path)?;
        bundles.push(Some(super::bundle::read_bundle_unverified(&display, &bytes)?));
    }
    let mut set = PolicySet::empty(OpaClient::new(reqwest::Client::new()));
    set.approvers = approvers.clone();
    let loose = super::sources::read_paths(&loose)?;
    set.compose(&loose, &bundles, with_tests)
}

/// Compiles `bundles` (already read and verified, see
/// [`super::read_bundle`]) as the service would, `approvers` as
/// `data.approvers`: the revision is their manifests'.
pub fn compile_bundles(
    bundles: Vec<Bundle>,
    approvers: &BTreeMap<String, Vec<String>>,
) -> Result<PolicyEngine, LoadError> {
    let mut set = PolicySet::empty(OpaClient::new(reqwest::Client::new()));
    set.approvers = approvers.clone();
    let bundles: Vec<Option<Bundle>> = bundles.into_iter().map(Some).collect();
    set.compose(&[], &bundles, false)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bundle file's bytes, or why not (as the message of a [`BundleError::Read`]).
fn read_limited(path: &std::path::Path) -> Result<Vec<u8>, BundleError> {
    let err = |message: String| BundleError::Read {
        bundle: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_BUNDLE_BYTES as u64 {
        return Err(err(format!("is larger than {} MiB", MAX_BUNDLE_BYTES >> 20)));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// A URL as messages name it: without its query (which may carry a token).
fn display_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

enum Fetched {
    NotModified,
    New { bytes: Vec<u8>, etag: Option<String> },
}

async fn fetch(http: &reqwest::Client, url: &url::Url, etag: Option<&str>) -> Result<Fetched, FetchError> {
    let mut request = http.get(url.clone()).timeout(FETCH_TIMEOUT);
    if let Some(etag) = etag {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            FetchError::Timeout
        } else {
            FetchError::Unreachable
        }
    })?;
    match response.status() {
        reqwest::StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
        reqwest::StatusCode::OK => {}
        other => return Err(FetchError::Status(other.as_u16())),
    }
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| FetchError::BrokenOff)? {
        if bytes.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(FetchError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::New { bytes, etag })
}

/// Which environments' queries name no rule of `engine` (mode
/// `"evaluated"`): `(environment, query, nearest existing rule)`.
pub fn missing_rules(config: &Config, engine: &PolicyEngine) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (name, env) in &config.environments {
        if env.verdict.mode != VerdictMode::Evaluated {
            continue;
        }
        let Some(query) = &env.verdict.policy else { continue };
        if engine.rules().contains(query) {
            continue;
        }
        let nearest = engine
            .rules()
            .iter()
            .map(|r| (crate::config::levenshtein(query, r), r))
            .filter(|(d, _)| *d <= 3)
            .min_by_key(|(d, _)| *d)
            .map(|(_, r)| r.clone());
        out.push((name.clone(), query.clone(), nearest));
    }
    out
}
