//! The in-process Rego engine (verdict mode `"evaluated"`).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value;
use time::OffsetDateTime;

use super::query::RulePath;
use super::sources::{FileKind, SourceFile};
use super::{Evaluation, PolicyError};

/// Longest one evaluation may run before it fails (a policy that loops must
/// not hold a worker): generous, the shipped policy takes tens of microseconds.
const EVALUATION_LIMIT: Duration = Duration::from_secs(2);

/// The compiled program asks the host for `time.now_ns()` (a host-await
/// builtin); this many answers are queued per rule evaluated. The shipped
/// policy asks five times; past the queue a policy gets no answer, so the
/// expression is undefined (or an error): never an allow.
const CLOCK_READS: usize = 256;

fn timer() -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: EVALUATION_LIMIT,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    }
}

/// Compiled Rego policies and data, loaded at start from the configured
/// `[policies] paths` (`*.rego` modules and `*.json` data files under them;
/// `*_test.rego` files only through [`PolicyEngine::load_with_tests`]).
///
/// Evaluation runs regorus's compiled form (its register VM, "RVM"), about
/// three to five times faster than its tree-walking interpreter on the shipped policy;
/// when a policy uses something the compiler does not support yet (`with`,
/// for one), every query goes to the interpreter instead. Both forms give
/// the same answers, tests check it, but for two failures that never allow
/// in either: rule values in conflict are an error interpreted and undefined
/// compiled; a builtin error is undefined in both (OPA's default).
///
/// It is `Send + Sync`: each evaluation runs on its own VM (or interpreter
/// clone) over the shared program, modules and data (reference-counted), so
/// concurrent tasks never contend on a lock.
#[derive(Debug)]
pub struct PolicyEngine {
    /// Prepared (analysed, scheduled) once at load; cloned per interpreted
    /// evaluation, and for the Rego tests.
    template: regorus::Engine,
    /// Every value rule as an entry point, or None when the policies do not compile to it.
    program: Option<Arc<Program>>,
    /// `data` as loaded: the approvers and the data files.
    data: regorus::Value,
    /// The value rules the modules declare (`data.<package>.<rule>`).
    rule_paths: BTreeSet<String>,
    revision: String,
    /// `data.<package>.test_*` rules of loaded `*_test.rego` files.
    test_rules: Vec<String>,
}

/// One Rego `test_` rule's outcome, from [`PolicyEngine::run_tests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoTestResult {
    /// The rule, e.g. `data.deploy.hipaa.test_stale_sast_denies`.
    pub rule: String,
    /// True when the rule evaluated to exactly `true`.
    pub passed: bool,
    /// The evaluation error, if it failed with one.
    pub error: Option<String>,
}

impl PolicyEngine {
    /// Loads and compiles every `*.rego` module (except `*_test.rego`) and
    /// merges every `*.json` data file (each a JSON object, merged at the root
    /// of `data`) under `paths`, directories walked recursively, hidden
    /// entries skipped. `approvers` (environment name to approver list) is
    /// exposed as `data.approvers[env]`.
    ///
    /// Fails with [`PolicyError::Read`] for an unreadable path,
    /// [`PolicyError::Compile`] naming the file and line of a module that does
    /// not parse, is unsafe, or calls a function that does not exist (or with
    /// an impossible argument count), and [`PolicyError::Data`] for a data
    /// file that is not a JSON object or conflicts with other data.
    pub fn load(paths: &[PathBuf], approvers: &BTreeMap<String, Vec<String>>) -> Result<PolicyEngine, PolicyError> {
        Self::load_inner(paths, approvers, false)
    }

    /// [`PolicyEngine::load`], plus the `*_test.rego` files, whose `test_`
    /// rules [`PolicyEngine::run_tests`] evaluates. For test suites and
    /// offline checks; the service loads without tests.
    pub fn load_with_tests(
        paths: &[PathBuf],
        approvers: &BTreeMap<String, Vec<String>>,
    ) -> Result<PolicyEngine, PolicyError> {
        Self::load_inner(paths, approvers, true)
    }

    fn load_inner(
        paths: &[PathBuf],
        approvers: &BTreeMap<String, Vec<String>>,
        with_tests: bool,
    ) -> Result<PolicyEngine, PolicyError> {
        let files = super::sources::read_paths(paths)?;
        Self::from_sources(&files, approvers, with_tests, None)
    }

    /// Compiles `files` (loose files and bundle contents alike: modules,
    /// tests, data placed at their `data_path`). `revision` is the verdicts'
    /// `policy_revision` (a bundle's manifest revision); without it, a hash
    /// of every input.
    pub(crate) fn from_sources(
        files: &[SourceFile],
        approvers: &BTreeMap<String, Vec<String>>,
        with_tests: bool,
        revision: Option<String>,
    ) -> Result<PolicyEngine, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        // As an OPA server does by default, and as regorus's compiled form
        // always does: a builtin error makes its expression undefined.
        engine.set_strict_builtin_errors(false);
        engine.set_execution_timer_config(timer());

        let approvers_data = serde_json::json!({ "approvers": approvers });
        engine
            .add_data(to_rego(&approvers_data))
            .map_err(|e| PolicyError::Data {
                file: "[environments] approvers".to_owned(),
                message: e.to_string(),
            })?;

        // The revision hashes every input in a fixed order: the approvers,
        // then each file's kind, place and bytes, length-prefixed.
        let mut hashed: Vec<u8> = Vec::new();
        push_field(&mut hashed, b"approvers");
        push_field(&mut hashed, super::evidence::canonical(&approvers_data).as_bytes());

        let mut modules = Vec::new();
        for file in files.iter().filter(|f| with_tests || f.kind != FileKind::Test) {
            let display = file.display.clone();
            push_field(&mut hashed, kind_tag(file.kind));
            push_field(&mut hashed, file.relative.as_bytes());
            push_field(&mut hashed, &file.bytes);
            let text = String::from_utf8(file.bytes.clone()).map_err(|_| PolicyError::Compile {
                file: display.clone(),
                line: 1,
                column: 1,
                message: "is not UTF-8".to_owned(),
            })?;
            match file.kind {
                FileKind::Module | FileKind::Test => {
                    let package = engine
                        .add_policy(display.clone(), text.clone())
                        .map_err(|e| compile_error(&display, &e))?;
                    if file.kind == FileKind::Test {
                        modules.push((package, text));
                    }
                }
                FileKind::Data => {
                    let value: Value = serde_json::from_str(&text).map_err(|e| PolicyError::Data {
                        file: display.clone(),
                        message: e.to_string(),
                    })?;
                    if !value.is_object() {
                        return Err(PolicyError::Data {
                            file: display,
                            message: "must be a JSON object".to_owned(),
                        });
                    }
                    // Placed at its directory's path (bundles), or at the root.
                    let value = file
                        .data_path
                        .iter()
                        .rev()
                        .fold(value, |v, k| serde_json::json!({ k.as_str(): v }));
                    engine.add_data(to_rego(&value)).map_err(|e| PolicyError::Data {
                        file: display.clone(),
                        message: first_line(&e.to_string()),
                    })?;
                }
            }
        }

        super::check::check_calls(engine.get_modules())?;

        // Analyse and schedule now (unsafe variables, recursion), so that a
        // module that does not compile stops the start, and so that every
        // evaluation clones an engine that is already prepared.
        engine
            .eval_query("true".to_owned(), false)
            .map_err(|e| compile_error("", &e))?;

        let test_rules: Vec<String> = modules
            .iter()
            .flat_map(|(package, text)| test_rule_names(package, text))
            .collect();
        let mut rule_paths = super::check::rule_paths(engine.get_modules());
        rule_paths.retain(|p| !test_rules.contains(p));
        let program = compile(&engine, &rule_paths);
        let data = engine.get_data();
        let revision = revision.unwrap_or_else(|| format!("sha256:{}", crate::crypto::sha256_hex(&hashed)));
        Ok(PolicyEngine {
            template: engine,
            program,
            data,
            rule_paths,
            revision,
            test_rules,
        })
    }

    /// True when evaluations run the compiled program (see the type's docs),
    /// false when they fall back to the interpreter.
    pub fn compiled(&self) -> bool {
        self.program.is_some()
    }

    /// The same engine without its compiled program, for tests comparing the two forms.
    #[cfg(test)]
    pub(crate) fn interpreted(mut self) -> PolicyEngine {
        self.program = None;
        self
    }

    /// Content hash (`sha256:<hex>`) of all loaded modules and data, the
    /// approvers included: the verdict's `policy_revision`.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Evaluates `query` (a rule path such as `data.deploy.hipaa.allow`) over
    /// `input`, with `time.now_ns()` fixed to `now` (the decision's clock).
    ///
    /// Also evaluates the package's `deny` set (or, when the package defines
    /// no `deny`, its `reasons` set) into `reasons`. `allow` is true only when
    /// the query yields exactly `true` and that set is empty; an undefined or
    /// non-boolean result is a denial with a reason saying so.
    ///
    /// Fails with [`PolicyError::InvalidQuery`] for anything but a rule path,
    /// and [`PolicyError::Evaluation`] when the policy raises an error.
    pub fn evaluate(&self, query: &str, input: &Value, now: OffsetDateTime) -> Result<Evaluation, PolicyError> {
        let path = RulePath::parse(query)?;
        let input = to_rego(input);
        // The deny set, or failing that the reasons set; an undeclared rule
        // is undefined without evaluating anything.
        let listed: Vec<RulePath> = [path.sibling("deny"), path.sibling("reasons")]
            .into_iter()
            .filter(|p| self.rule_paths.contains(&p.rego()))
            .collect();

        let (allow, reasons) = match &self.program {
            Some(program) if self.rule_paths.contains(&path.rego()) => {
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                vm.set_data(self.data.clone()).map_err(evaluation_error)?;
                vm.set_strict_builtin_errors(false);
                vm.set_execution_timer_config(Some(timer()));
                vm.set_input(input);
                let now_ns = super::evidence::unix_nanos(now);
                let allow = run(&mut vm, &path, now_ns)?;
                let mut reasons = None;
                for p in &listed {
                    reasons = run(&mut vm, p, now_ns)?;
                    if reasons.is_some() {
                        break;
                    }
                }
                (allow, reasons)
            }
            _ => {
                let now_ns = now.unix_timestamp_nanos();
                let mut engine = self.template.clone();
                engine.set_input(input);
                let allow = eval_rule(&mut engine, &path, now_ns)?;
                let mut reasons = None;
                for p in &listed {
                    reasons = eval_rule(&mut engine, p, now_ns)?;
                    if reasons.is_some() {
                        break;
                    }
                }
                (allow, reasons)
            }
        };
        Ok(Evaluation::from_results(
            &path,
            allow.map(to_json).as_ref(),
            reasons.map(to_json).as_ref(),
        ))
    }

    /// Evaluates every loaded `test_` rule (from `*_test.rego` files, see
    /// [`PolicyEngine::load_with_tests`]) with `time.now_ns()` fixed to `now`,
    /// in file order.
    pub fn run_tests(&self, now: OffsetDateTime) -> Vec<RegoTestResult> {
        let now_ns = now.unix_timestamp_nanos();
        self.test_rules
            .iter()
            .map(|rule| {
                let mut engine = self.template.clone();
                let outcome = RulePath::parse(rule).and_then(|path| eval_rule(&mut engine, &path, now_ns));
                match outcome {
                    Ok(value) => RegoTestResult {
                        rule: rule.clone(),
                        passed: value == Some(regorus::Value::Bool(true)),
                        error: None,
                    },
                    Err(e) => RegoTestResult {
                        rule: rule.clone(),
                        passed: false,
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect()
    }

    /// The `data.<package>.test_*` rules loaded from `*_test.rego` files.
    pub fn test_rules(&self) -> &[String] {
        &self.test_rules
    }

    /// The value rules the loaded modules declare (`data.<package>.<rule>`),
    /// tests left out: what a verdict query may name.
    pub fn rules(&self) -> &BTreeSet<String> {
        &self.rule_paths
    }
}

/// Compiles every value rule into one program, the clock a host-await
/// builtin; None (with a warning) when the compiler does not support the
/// policies, which then run on the interpreter.
fn compile(engine: &regorus::Engine, rule_paths: &BTreeSet<String>) -> Option<Arc<Program>> {
    let first = rule_paths.first()?;
    let entry_points: Vec<&str> = rule_paths.iter().map(String::as_str).collect();
    // On a clone: compiling switches on print gathering, which evaluations
    // of the template must not inherit.
    let mut engine = engine.clone();
    let compiled = engine
        .compile_with_entrypoint(&first.as_str().into())
        .map_err(|e| e.to_string());
    let program = compiled.and_then(|policy| {
        Compiler::compile_from_policy_with_host_await(&policy, &entry_points, &[("time.now_ns", 0)])
            .map_err(|e| e.to_string())
    });
    match program {
        Ok(program) => Some(program),
        Err(reason) => {
            tracing::warn!(reason = %first_line_with_location(&reason), "policies run on regorus's interpreter: its compiler does not support them");
            None
        }
    }
}

/// Runs one compiled rule with `time.now_ns()` answered by `now_ns`; `None`
/// when undefined.
fn run(vm: &mut RegoVM, path: &RulePath, now_ns: i64) -> Result<Option<regorus::Value>, PolicyError> {
    let clock = std::iter::repeat_n(regorus::Value::from(now_ns), CLOCK_READS);
    vm.set_host_await_responses([(regorus::Value::from("time.now_ns"), clock)]);
    let value = vm.execute_entry_point_by_name(&path.rego()).map_err(evaluation_error)?;
    Ok(Some(value).filter(|v| *v != regorus::Value::Undefined))
}

fn evaluation_error(error: impl std::fmt::Display) -> PolicyError {
    PolicyError::Evaluation {
        message: first_line_with_location(&error.to_string()),
    }
}

/// Evaluates one rule path with the clock fixed; `None` when undefined.
fn eval_rule(
    engine: &mut regorus::Engine,
    path: &RulePath,
    now_ns: i128,
) -> Result<Option<regorus::Value>, PolicyError> {
    // `with time.now_ns as <ns>` is how both regorus and OPA let a caller fix
    // the policy's clock: neither engine takes a clock otherwise.
    let query = format!("{} with time.now_ns as {now_ns}", path.rego());
    let results = engine.eval_query(query, false).map_err(|e| PolicyError::Evaluation {
        message: first_line_with_location(&e.to_string()),
    })?;
    let value = results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map(|e| e.value);
    Ok(value.filter(|v| *v != regorus::Value::Undefined))
}

/// A JSON value as regorus's, built directly (regorus's own `From` goes
/// through serde and needs an owned copy: a twentieth of an evaluation).
fn to_rego(value: &Value) -> regorus::Value {
    match value {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::from(*b),
        Value::Number(n) => n
            .as_i64()
            .map(regorus::Value::from)
            .or_else(|| n.as_u64().map(regorus::Value::from))
            .or_else(|| n.as_f64().map(regorus::Value::from))
            .unwrap_or(regorus::Value::Undefined),
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(items) => regorus::Value::from(items.iter().map(to_rego).collect::<Vec<_>>()),
        Value::Object(map) => regorus::Value::from(
            map.iter()
                .map(|(k, v)| (regorus::Value::from(k.as_str()), to_rego(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

fn to_json(value: regorus::Value) -> Value {
    serde_json::to_value(&value).unwrap_or(Value::Null)
}

fn kind_tag(kind: FileKind) -> &'static [u8] {
    match kind {
        FileKind::Module => b"module",
        FileKind::Test => b"test",
        FileKind::Data => b"data",
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// The `test_` rules a test module declares, as full rule paths.
fn test_rule_names(package: &str, text: &str) -> Vec<String> {
    let package = package.strip_prefix("data.").unwrap_or(package);
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with("test_") {
            let rule = format!("data.{package}.{name}");
            if !names.contains(&rule) {
                names.push(rule);
            }
        }
    }
    names
}

/// Reads the location regorus puts in its messages:
/// `--> <file>:<line>:<col>`, then the source excerpt, then `error: <message>`.
fn compile_error(fallback_file: &str, error: &dyn std::fmt::Display) -> PolicyError {
    let text = error.to_string();
    let (file, line, column) = parse_location(&text).unwrap_or((fallback_file.to_owned(), 0, 0));
    PolicyError::Compile {
        file,
        line,
        column,
        message: error_message(&text),
    }
}

fn parse_location(text: &str) -> Option<(String, u32, u32)> {
    let location = text.lines().find_map(|l| l.trim_start().strip_prefix("--> "))?;
    let mut parts = location.rsplitn(3, ':');
    let column = parts.next()?.trim().parse().ok()?;
    let line = parts.next()?.trim().parse().ok()?;
    let file = parts.next()?.to_owned();
    Some((file, line, column))
}

fn error_message(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| first_line(text))
}

/// `<file>:<line>: <message>` when regorus gave a location, else the first line.
fn first_line_with_location(text: &str) -> String {
    match parse_location(text) {
        Some((file, line, _)) => format!("{file}:{line}: {}", error_message(text)),
        None => error_message(text),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}
