//! Just enough XML for S3's answers: the text of named elements (`<Key>`,
//! `<NextContinuationToken>`, an error's `<Code>`), with the five named
//! entities and numeric character references decoded. S3's answers are
//! flat and have no CDATA; an element that is not closed, or an unknown
//! entity, makes the answer unreadable rather than guessed at.

/// The text of every `<tag>…</tag>` in document order, decoded; `None` when
/// one is not closed or holds an entity this cannot decode.
pub(crate) fn all(xml: &str, tag: &str) -> Option<Vec<String>> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let end = rest.find(&close)?;
        out.push(unescape(&rest[..end])?);
        rest = &rest[end + close.len()..];
    }
    Some(out)
}

/// The text of the first `<tag>…</tag>`, decoded.
pub(crate) fn first(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    unescape(&xml[start..start + end])
}

/// Decodes `&amp; &lt; &gt; &quot; &apos;` and `&#N;`/`&#xH;`.
pub(crate) fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let end = rest.find(';')?;
        let entity = &rest[..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    entity.strip_prefix('#')?.parse().ok()?
                };
                char::from_u32(code)?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<IsTruncated>true</IsTruncated><ContinuationToken>t0</ContinuationToken>
<Contents><Key>p/a&amp;b&lt;c&gt;.json</Key><ETag>&quot;x&quot;</ETag></Contents>
<Contents><Key>p/caf&#233;&#x2F;&apos;.json</Key></Contents>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken></ListBucketResult>"#;

    #[test]
    fn keys_and_tokens_are_read_and_decoded() {
        assert_eq!(
            all(LISTING, "Key"),
            Some(vec!["p/a&b<c>.json".to_string(), "p/café/'.json".to_string()])
        );
        assert_eq!(
            first(LISTING, "NextContinuationToken").as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        assert_eq!(first(LISTING, "ContinuationToken").as_deref(), Some("t0"));
        assert_eq!(first(LISTING, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(first(LISTING, "Code"), None);
        assert_eq!(all("<R></R>", "Key"), Some(vec![]));
    }

    #[test]
    fn unclosed_elements_and_unknown_entities_are_unreadable() {
        assert_eq!(all("<Key>a</Key><Key>b", "Key"), None);
        assert_eq!(all("<Key>a&nbsp;b</Key>", "Key"), None);
        assert_eq!(unescape("a &amp b"), None);
        assert_eq!(unescape("&#xD800;"), None);
        assert_eq!(unescape("plain"), Some("plain".to_string()));
    }
}
