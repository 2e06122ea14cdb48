//! Parse errors that point: the key path (`environments.production.approvers`),
//! the line and column in the file, and for an unknown key the nearest valid
//! one ("unknown key `listen_typo` in [server]; did you mean `listen`?").
//!
//! The TOML text goes through `serde_path_to_error` over toml's own
//! deserializer, which keeps the byte span of the failing value; the span
//! becomes a line and a column (1-based, columns in characters). Messages
//! never echo a value from the file: a value in the wrong place may be a
//! secret.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::ConfigError;

/// Deserializes `text` into `T`, or the one error that stopped it, pointing
/// at its key and place.
pub(super) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = match toml::de::Deserializer::parse(text) {
        Ok(de) => de,
        // Not TOML at all: the span is all there is.
        Err(e) => return Err(syntax_error(text, &e)),
    };
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = render_path(e.path());
        let inner = e.inner();
        let location = inner.span().map(|s| line_column(text, s.start));
        let message = inner.message().to_owned();
        match unknown_key(&message) {
            Some((key, expected)) => {
                // The path ends at the unknown key itself; its table is the rest.
                let table = match path.strip_suffix(key.as_str()) {
                    Some(t) => t.trim_end_matches('.'),
                    None => path.as_str(),
                };
                let table = Some(table).filter(|t| !t.is_empty() && *t != ".");
                let table_name = table.map_or_else(|| "the top level".to_owned(), |t| format!("[{t}]"));
                let mut message = format!("unknown key `{key}` in {table_name}");
                match nearest(&key, &expected) {
                    Some(near) => message.push_str(&format!("; did you mean `{near}`?")),
                    None if !expected.is_empty() => {
                        message.push_str(&format!("; the keys here are {}", quoted_list(&expected)))
                    }
                    None => {}
                }
                ConfigError::at(table.map_or(key.clone(), |t| format!("{t}.{key}")), location, message)
            }
            None => ConfigError::at(
                if path.is_empty() {
                    "configuration".to_owned()
                } else {
                    path
                },
                location,
                without_values(&message),
            ),
        }
    })
}

/// Line and column of the key `path` (`environments.production.verdict.policy`,
/// `issuers[1].name`) in `text`, when it is written there: its value's
/// place, or the nearest table of it that is written.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut found: Option<usize> = None;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        found = Some(key.span().start);
        let mut value = value;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            value = items.get(i)?;
            found = Some(value.span().start);
        }
        match value.get_ref() {
            DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ if parts.peek().is_some() => break,
            _ => {
                // The value's place, as type errors point at it.
                found = Some(value.span().start).filter(|_| index.is_none()).or(found);
            }
        }
    }
    found.map(|offset| line_column(text, offset))
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e.span().map(|s| line_column(text, s.start));
    ConfigError::at(
        "configuration",
        location,
        format!("not valid TOML: {}", first_line(e.message())),
    )
}

/// The path as the configuration's keys are written: tables and keys joined
/// by dots, array entries as `[i]`.
fn render_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`",
/// or "there are no fields") as the key and the valid ones.
fn unknown_key(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    Some((key.to_owned(), expected))
}

/// The valid key nearest to `key` by edit distance, when it is near enough
/// to be a typo (at most a third of the longer one's length, and at least
/// 1) or one holds the other (`listen_typo`, `listen`).
fn nearest(key: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (levenshtein(key, c), c))
        .filter(|(d, c)| {
            *d <= (key.chars().count().max(c.chars().count()) / 3).max(1)
                || (c.len() >= 3 && key.contains(c.as_str()))
                || (key.len() >= 3 && c.contains(key))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// Edit distance (insertions, deletions, substitutions), over characters.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// serde's messages quote the value that did not fit (`invalid type: string
/// "hunter2", expected a sequence`); the value is dropped, the kind kept.
fn without_values(message: &str) -> String {
    let message = first_line(message);
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Skip a quoted value, escapes included, and the space before it.
                let mut escaped = false;
                for n in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if n == '\\' {
                        escaped = true;
                    } else if n == '"' {
                        break;
                    }
                }
                if out.ends_with(' ') {
                    out.pop();
                }
            }
            '`' if out.ends_with("integer ") || out.ends_with("float ") || out.ends_with("value ") => {
                for n in chars.by_ref() {
                    if n == '`' {
                        break;
                    }
                }
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_located_by_their_path() {
        let text = "[server]\nlisten = 1\n[[issuers]]\nname = \"a\"\n[[issuers]]\nname = \"b\"\n[environments.production.verdict]\npolicy = \"x\"\n";
        assert_eq!(locate(text, "server.listen"), Some((2, 10)));
        assert_eq!(locate(text, "issuers[1].name"), Some((6, 8)));
        assert_eq!(locate(text, "environments.production.verdict.policy"), Some((8, 10)));
        assert_eq!(locate(text, "environments.production.verdict.missing"), Some((7, 26)));
        assert_eq!(locate(text, "nothing"), None);
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("listen", "listen"), 0);
        assert_eq!(levenshtein("listen_typo", "listen"), 5);
        assert_eq!(levenshtein("lisen", "listen"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("approvers", "aprovers"), 1);
    }

    #[test]
    fn nearest_picks_a_typo_and_not_a_stranger() {
        let keys: Vec<String> = ["listen", "public_url", "dry_run"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nearest("lisen", &keys).as_deref(), Some("listen"));
        assert_eq!(nearest("dryrun", &keys).as_deref(), Some("dry_run"));
        assert_eq!(nearest("listen_typo", &keys).as_deref(), Some("listen"));
        assert_eq!(nearest("colour", &keys), None);
    }

    #[test]
    fn values_are_never_echoed() {
        assert_eq!(
            without_values(r#"invalid type: string "hunter\"2", expected a sequence"#),
            "invalid type: string, expected a sequence"
        );
        assert_eq!(
            without_values("invalid type: integer `42`, expected a string"),
            "invalid type: integer, expected a string"
        );
    }

    #[test]
    fn line_and_column_are_one_based_in_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        assert_eq!(line_column(text, text.find('"').unwrap()), (2, 6));
    }
}
