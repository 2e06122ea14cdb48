//! OPA's canonical form of a JSON document, the one its bundle signatures
//! hash: objects with keys sorted (by bytes), `{`, `key:value` pairs joined
//! by `,`, `}`; arrays alike; numbers exactly as written (OPA reads them as
//! `json.Number`); strings as Go's encoder writes them without HTML
//! escaping. A small parser of its own, since serde_json would re-format
//! numbers (`1.0` as `1.0`, but `1e3` as `1000.0`).

/// Where a document stopped being JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not JSON: {what} at byte {at}")]
pub struct JsonError {
    pub what: &'static str,
    pub at: usize,
}

/// The canonical text of the JSON document `text`.
pub(crate) fn canonical(text: &str) -> Result<String, JsonError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
        depth: 0,
    };
    p.ws();
    let mut out = String::with_capacity(text.len());
    p.value(&mut out)?;
    p.ws();
    if p.at != p.bytes.len() {
        return p.fail("trailing characters");
    }
    Ok(out)
}

/// Deeper documents are refused rather than recursed into.
const MAX_DEPTH: usize = 256;

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.at < self.bytes.len() && matches!(self.bytes[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, JsonError> {
        Err(JsonError { what, at: self.at })
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.bytes.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, out: &mut String) -> Result<(), JsonError> {
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(out),
            Some(b'[') => self.array(out),
            Some(b'"') => {
                let s = self.string()?;
                write_string(&s, out);
                Ok(())
            }
            Some(b't') => self.literal("true", out),
            Some(b'f') => self.literal("false", out),
            Some(b'n') => self.literal("null", out),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => self.fail("expected a value"),
        }
    }

    fn nest(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail("nested too deep");
        }
        Ok(())
    }

    fn object(&mut self, out: &mut String) -> Result<(), JsonError> {
        self.nest()?;
        self.at += 1;
        let mut entries: Vec<(String, String)> = Vec::new();
        self.ws();
        if !self.eat(b'}') {
            loop {
                self.ws();
                if self.bytes.get(self.at) != Some(&b'"') {
                    return self.fail("expected a key");
                }
                let key = self.string()?;
                self.ws();
                if !self.eat(b':') {
                    return self.fail("expected `:`");
                }
                self.ws();
                let mut value = String::new();
                self.value(&mut value)?;
                // A repeated key keeps its last value, as Go's decoder does.
                entries.retain(|(k, _)| *k != key);
                entries.push((key, value));
                self.ws();
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    break;
                }
                return self.fail("expected `,` or `}`");
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out.push('{');
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(k, out);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        self.depth -= 1;
        Ok(())
    }

    fn array(&mut self, out: &mut String) -> Result<(), JsonError> {
        self.nest()?;
        self.at += 1;
        out.push('[');
        self.ws();
        if !self.eat(b']') {
            let mut first = true;
            loop {
                self.ws();
                if !first {
                    out.push(',');
                }
                first = false;
                self.value(out)?;
                self.ws();
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b']') {
                    break;
                }
                return self.fail("expected `,` or `]`");
            }
        }
        out.push(']');
        self.depth -= 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, out: &mut String) -> Result<(), JsonError> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            out.push_str(word);
            Ok(())
        } else {
            self.fail("expected a value")
        }
    }

    fn number(&mut self, out: &mut String) -> Result<(), JsonError> {
        let start = self.at;
        self.eat(b'-');
        let digits = |p: &mut Self| {
            let s = p.at;
            while p.at < p.bytes.len() && p.bytes[p.at].is_ascii_digit() {
                p.at += 1;
            }
            p.at - s
        };
        if self.eat(b'0') {
        } else if digits(self) == 0 {
            return self.fail("expected digits");
        }
        if self.eat(b'.') && digits(self) == 0 {
            return self.fail("expected digits");
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if digits(self) == 0 {
                return self.fail("expected digits");
            }
        }
        out.push_str(&self.text[start..self.at]);
        Ok(())
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1;
        let mut s = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return self.fail("unterminated string");
            };
            match b {
                b'"' => {
                    self.at += 1;
                    return Ok(s);
                }
                b'\\' => {
                    self.at += 1;
                    let Some(&e) = self.bytes.get(self.at) else {
                        return self.fail("unterminated string");
                    };
                    self.at += 1;
                    match e {
                        b'"' => s.push('"'),
                        b'\\' => s.push('\\'),
                        b'/' => s.push('/'),
                        b'b' => s.push('\u{8}'),
                        b'f' => s.push('\u{c}'),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&first) {
                                if self.text[self.at..].starts_with("\\u") {
                                    self.at += 2;
                                    let second = self.hex4()?;
                                    if (0xDC00..0xE000).contains(&second) {
                                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                                    } else {
                                        0xFFFD
                                    }
                                } else {
                                    0xFFFD
                                }
                            } else {
                                first
                            };
                            s.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                        }
                        _ => return self.fail("bad escape"),
                    }
                }
                0..=0x1f => return self.fail("control character in string"),
                _ => {
                    let rest = &self.text[self.at..];
                    let c = rest.chars().next().unwrap_or('\u{FFFD}');
                    s.push(c);
                    self.at += c.len_utf8();
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(h) = self.text.get(self.at..self.at + 4) else {
            return self.fail("bad \\u escape");
        };
        let v = u32::from_str_radix(h, 16).or_else(|_| self.fail("bad \\u escape"))?;
        self.at += 4;
        Ok(v)
    }
}

/// A string as Go's `encoding/json` writes it with HTML escaping off.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn keys_sorted_numbers_as_written_no_whitespace() {
        assert_eq!(
            canonical("{ \"b\": [1.50, 1e3, -0], \"a\": {\"y\": null, \"x\": \"<é\\u0001\\n>\"} }").unwrap(),
            "{\"a\":{\"x\":\"<é\\u0001\\n>\",\"y\":null},\"b\":[1.50,1e3,-0]}"
        );
        assert_eq!(canonical("\"\\ud83d\\ude00\"").unwrap(), "\"😀\"");
        assert_eq!(canonical("{\"a\":1,\"a\":2}").unwrap(), "{\"a\":2}");
        assert!(canonical("{\"a\":1,}").is_err());
        assert!(canonical("[1] x").is_err());
        assert!(canonical(&"[".repeat(300)).is_err());
    }
}
