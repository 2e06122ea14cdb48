//! Policy sources as files in memory: loose `*.rego`, `*_test.rego` and
//! `*.json` files under the configured `[policies] paths`, and the contents
//! of OPA bundles (see [`super::bundle`]). The engine compiles whatever
//! this gives it, so both kinds load, reload and check alike.

use std::path::{Path, PathBuf};

use super::PolicyError;

/// Nesting depth of policy directories walked (a guard against symlink loops).
const MAX_DEPTH: usize = 16;

/// The largest policy or data file read from a configured path.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FileKind {
    Module,
    Test,
    Data,
}

/// One policy file's contents.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// How errors name the file: the path as loaded (the configured path
    /// joined with the file's place under it), or `bundle.tar.gz:/dir/x.rego`.
    pub display: String,
    /// The file's place under its configured path or in its bundle: what
    /// the revision hashes, so that moving a directory does not change it.
    pub relative: String,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
    /// For data: where in `data` it is merged (a bundle's `a/b/data.json`
    /// goes to `data.a.b`); empty for the root.
    pub data_path: Vec<String>,
}

/// The kind of a file by its name, or None for a file that is not policy.
pub(crate) fn kind_of(name: &str) -> Option<FileKind> {
    if name.ends_with("_test.rego") {
        Some(FileKind::Test)
    } else if name.ends_with(".rego") {
        Some(FileKind::Module)
    } else if name.ends_with(".json") {
        Some(FileKind::Data)
    } else {
        None
    }
}

/// Reads every policy file under `paths` (directories walked recursively
/// in sorted order, hidden entries skipped), so load order (and the
/// revision) do not depend on the directory's listing order.
pub(crate) fn read_paths(paths: &[PathBuf]) -> Result<Vec<SourceFile>, PolicyError> {
    let mut found = Vec::new();
    for root in paths {
        collect(root, root, 0, &mut found)?;
    }
    found
        .into_iter()
        .map(|(path, relative, kind)| {
            let display = path.display().to_string();
            let read_err = |source| PolicyError::Read {
                path: display.clone(),
                source,
            };
            let meta = std::fs::metadata(&path).map_err(read_err)?;
            if meta.len() > MAX_FILE_BYTES {
                return Err(PolicyError::Data {
                    file: display.clone(),
                    message: format!("is larger than {} MiB", MAX_FILE_BYTES >> 20),
                });
            }
            let bytes = std::fs::read(&path).map_err(read_err)?;
            Ok(SourceFile {
                display,
                relative,
                kind,
                bytes,
                data_path: Vec::new(),
            })
        })
        .collect()
}

fn collect(
    root: &Path,
    path: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, String, FileKind)>,
) -> Result<(), PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let Some(kind) = kind_of(name) else {
            return Ok(());
        };
        let relative = match path.strip_prefix(root) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().replace('\\', "/"),
            _ => name.to_owned(),
        };
        out.push((path.to_path_buf(), relative, kind));
        return Ok(());
    }
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for entry in entries {
        collect(root, &entry, depth + 1, out)?;
    }
    Ok(())
}
