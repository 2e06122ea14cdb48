//! The source tree's structure, checked: the module graph of `src/` (from
//! every `crate::module` path) has no cycles, no source file outside tests
//! reaches 700 lines, and each decision rule's settings are read only where
//! the rule lives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    out
}

/// `src/gate/decide.rs` → `gate`; `src/cli.rs` → `cli`.
fn top_module(path: &Path) -> String {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .expect("under src");
    let first = rel.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// A unit-test file or module: not part of the shipped code's structure.
fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == "tests.rs" || n.to_string_lossy().ends_with("_tests.rs"))
}

/// The code of a file before its `#[cfg(test)]` module, if any.
fn shipped_part(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Every `crate::name` a text refers to, with `use crate::{a, b::c}` groups.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in src_files() {
        if is_test_file(&path) {
            continue;
        }
        let module = top_module(&path);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let refs = crate_refs(shipped_part(&text));
        let entry = graph.entry(module.clone()).or_default();
        for r in refs {
            if r != module {
                entry.insert(r);
            }
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

/// A cycle in `graph`, as the list of modules around it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|n| n == node) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = module_graph();
    assert!(
        graph.contains_key("gate") && graph["gate"].contains("decision"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default();
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_refs("use crate::{audit::X, config};\nlet y = crate::domain::Z;"),
        ["audit", "config", "domain"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn no_source_file_reaches_700_lines() {
    let mut long = Vec::new();
    for path in src_files() {
        if is_test_file(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines = text.lines().count();
        if lines >= 700 {
            long.push(format!("{} ({lines} lines)", path.display()));
        }
    }
    assert!(long.is_empty(), "files of 700 lines or more: {long:?}");
}

#[test]
fn the_self_review_setting_is_read_only_by_the_review_rule() {
    let mut readers = Vec::new();
    for path in src_files() {
        let module = top_module(&path);
        if module == "config" || module == "decision" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        if text.contains("allow_self_review") {
            readers.push(path.display().to_string());
        }
    }
    assert!(
        readers.is_empty(),
        "allow_self_review read outside config/ and decision/: {readers:?}"
    );
}
