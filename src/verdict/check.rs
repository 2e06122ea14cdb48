//! A load-time check that every function a policy calls exists, with a
//! possible arity.
//!
//! regorus parses and analyses modules when they are loaded (syntax, unsafe
//! variables, imports), but resolves function calls only when it evaluates
//! them, so a typo in a rarely taken branch, or a builtin this build leaves
//! out, would surface as an evaluation error on some later deploy. OPA's
//! compiler rejects both up front; this walk gives portcullis the same
//! behaviour: the start fails, naming the file and line of the call.
//!
//! It reads regorus's AST through `regorus::unstable` (the crate's own
//! escape hatch for tools; the version is pinned by Cargo.lock, and a change
//! of shape fails the build, not a deploy).

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{BUILTINS, Expr, Literal, Module, Query, Rule, RuleHead};

use super::PolicyError;

/// User-defined functions: full path (`data.pkg.f`) to the arities declared.
type Functions = BTreeMap<String, BTreeSet<usize>>;

/// Checks every call in `modules`; the first unknown function or impossible
/// arity is an error naming its file, line and column.
pub(crate) fn check_calls(modules: &[regorus::unstable::Ref<Module>]) -> Result<(), PolicyError> {
    let functions = gather_functions(modules);
    for module in modules {
        let Some(package) = path_of(&module.package.refr) else {
            continue;
        };
        let package = format!("data.{package}");
        let imports = gather_imports(module);
        let checker = Checker {
            package: &package,
            imports: &imports,
            functions: &functions,
        };
        for rule in &module.policy {
            checker.rule(rule)?;
        }
    }
    Ok(())
}

fn gather_functions(modules: &[regorus::unstable::Ref<Module>]) -> Functions {
    let mut functions = Functions::new();
    for module in modules {
        let Some(package) = path_of(&module.package.refr) else {
            continue;
        };
        for rule in &module.policy {
            let (refr, arity) = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Func { refr, args, .. },
                    ..
                } => (refr, args.len()),
                Rule::Default { refr, args, .. } if !args.is_empty() => (refr, args.len()),
                _ => continue,
            };
            if let Some(name) = path_of(refr) {
                functions
                    .entry(format!("data.{package}.{name}"))
                    .or_default()
                    .insert(arity);
            }
        }
    }
    functions
}

/// Import aliases of a module: `import data.a.b` gives `b -> data.a.b`,
/// `import data.a.b as c` gives `c -> data.a.b`. Keyword imports
/// (`rego.v1`, `future.keywords`) and `input` imports name no functions.
fn gather_imports(module: &Module) -> BTreeMap<String, String> {
    let mut imports = BTreeMap::new();
    for import in &module.imports {
        let Some(target) = path_of(&import.refr) else { continue };
        if !target.starts_with("data.") {
            continue;
        }
        let alias = match &import.r#as {
            Some(span) => span.text().to_owned(),
            None => target.rsplit('.').next().unwrap_or_default().to_owned(),
        };
        imports.insert(alias, target);
    }
    imports
}

/// The dotted path of a reference made of a variable and field accesses
/// (`a`, `a.b.c`, `a["b"]`), or None for anything dynamic.
fn path_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { span, .. } => Some(span.text().to_owned()),
        Expr::RefDot { refr, field, .. } => Some(format!("{}.{}", path_of(refr)?, field.0.text())),
        Expr::RefBrack { refr, index, .. } => match index.as_ref() {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                Some(format!("{}.{}", path_of(refr)?, value.as_string().ok()?))
            }
            _ => None,
        },
        _ => None,
    }
}

struct Checker<'a> {
    package: &'a str,
    imports: &'a BTreeMap<String, String>,
    functions: &'a Functions,
}

impl Checker<'_> {
    fn rule(&self, rule: &Rule) -> Result<(), PolicyError> {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr)?;
                        if let Some(assign) = assign {
                            self.expr(&assign.value)?;
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr)?;
                        if let Some(key) = key {
                            self.expr(key)?;
                        }
                    }
                    RuleHead::Func { args, assign, .. } => {
                        for arg in args {
                            self.expr(arg)?;
                        }
                        if let Some(assign) = assign {
                            self.expr(&assign.value)?;
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        self.expr(&assign.value)?;
                    }
                    self.query(&body.query)?;
                }
                Ok(())
            }
            Rule::Default { value, .. } => self.expr(value),
        }
    }

    fn query(&self, query: &Query) -> Result<(), PolicyError> {
        for stmt in &query.stmts {
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key, value, collection, ..
                } => {
                    if let Some(key) = key {
                        self.expr(key)?;
                    }
                    self.expr(value)?;
                    self.expr(collection)?;
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr)?,
                Literal::Every { domain, query, .. } => {
                    self.expr(domain)?;
                    self.query(query)?;
                }
            }
            // `with` targets may name functions being replaced; only the
            // replacement values are evaluated code.
            for with in &stmt.with_mods {
                if !matches!(with.r#as.as_ref(), Expr::Var { .. } | Expr::RefDot { .. }) {
                    self.expr(&with.r#as)?;
                }
            }
        }
        Ok(())
    }

    #[allow(unreachable_patterns)] // a future (or feature-gated) variant is not checked
    fn expr(&self, expr: &Expr) -> Result<(), PolicyError> {
        match expr {
            Expr::Call { span, fcn, params, .. } => {
                for p in params {
                    self.expr(p)?;
                }
                self.call(span, fcn, params.len())
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().try_for_each(|e| self.expr(e)),
            Expr::Object { fields, .. } => fields.iter().try_for_each(|(_, k, v)| {
                self.expr(k)?;
                self.expr(v)
            }),
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term)?;
                self.query(query)
            }
            Expr::ObjectCompr { key, value, query, .. } => {
                self.expr(key)?;
                self.expr(value)?;
                self.query(query)
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr)?;
                self.expr(index)
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs)?;
                self.expr(rhs)
            }
            Expr::Membership {
                key, value, collection, ..
            } => {
                if let Some(key) = key {
                    self.expr(key)?;
                }
                self.expr(value)?;
                self.expr(collection)
            }
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => Ok(()),
            _ => Ok(()),
        }
    }

    /// Resolves a call the way regorus does at evaluation (import alias,
    /// then the package's own functions, then builtins) and checks that the
    /// argument count fits: the declared arity, or one more for Rego's
    /// output-argument form (`count(xs, n)`).
    fn call(&self, span: &regorus::unstable::Span, fcn: &Expr, args: usize) -> Result<(), PolicyError> {
        let Some(name) = path_of(fcn) else {
            return Err(compile_error(span, "a function call needs a function name".to_owned()));
        };
        let resolved = match name.split_once('.') {
            Some((head, rest)) => self.imports.get(head).map(|target| format!("{target}.{rest}")),
            None => self.imports.get(&name).cloned(),
        }
        .unwrap_or_else(|| name.clone());

        let user = if resolved.starts_with("data.") {
            self.functions.get(&resolved)
        } else {
            self.functions.get(&format!("{}.{resolved}", self.package))
        };
        if let Some(arities) = user {
            if arities.iter().any(|&n| args == n || args == n + 1) {
                return Ok(());
            }
            return Err(compile_error(
                span,
                format!("function {name} takes {} arguments", describe_arities(arities)),
            ));
        }
        if resolved == "print" {
            return Ok(());
        }
        match BUILTINS.get(resolved.as_str()) {
            Some((_, arity)) => {
                let n = usize::from(*arity);
                if args == n || args == n + 1 {
                    Ok(())
                } else {
                    Err(compile_error(
                        span,
                        format!("function {name} takes {n} arguments, not {args}"),
                    ))
                }
            }
            None => Err(compile_error(span, format!("unknown function {name}"))),
        }
    }
}

fn describe_arities(arities: &BTreeSet<usize>) -> String {
    arities.iter().map(usize::to_string).collect::<Vec<_>>().join(" or ")
}

fn compile_error(span: &regorus::unstable::Span, message: String) -> PolicyError {
    PolicyError::Compile {
        file: span.source.get_path().clone(),
        line: span.line,
        column: span.col,
        message,
    }
}

/// The path (`data.<package>.<rule>`) of every value rule (not functions),
/// for the compiled program's entry points.
pub(crate) fn rule_paths(modules: &[regorus::unstable::Ref<Module>]) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for module in modules {
        let Some(package) = path_of(&module.package.refr) else {
            continue;
        };
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                    ..
                } => refr,
                Rule::Default { refr, args, .. } if args.is_empty() => refr,
                _ => continue,
            };
            if let Some(name) = static_prefix(refr) {
                paths.insert(format!("data.{package}.{name}"));
            }
        }
    }
    paths
}

/// The static part of a rule head: `deny` for `deny contains ...`, `facts`
/// for `facts[name] := ...`, `a.b` for `a.b := ...`.
fn static_prefix(expr: &Expr) -> Option<String> {
    match expr {
        Expr::RefBrack { refr, index, .. }
            if !matches!(index.as_ref(), Expr::String { .. } | Expr::RawString { .. }) =>
        {
            static_prefix(refr)
        }
        other => path_of(other),
    }
}
