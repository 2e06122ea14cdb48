//! Scanner reports read for `portcullis evidence`: the format is told by the
//! content, and findings are counted by severity.
//!
//! - SARIF 2.1.0 (Semgrep, CodeQL, tfsec, Checkov, Gitleaks, Trivy): as
//!   GitHub code scanning ranks results: a `security-severity` (on the result
//!   or its rule) of 9.0 or more is critical, 7.0 high, 4.0 medium, anything
//!   lower low; without one, the result's level (else its rule's default
//!   level, else SARIF's default `warning`): `error` high, `warning` medium,
//!   `note` low, `none` not counted. Results whose `kind` is not `fail` and
//!   results with an accepted suppression are not findings.
//! - Trivy JSON (`SchemaVersion` 2): each vulnerability, failed
//!   misconfiguration and secret, by its `Severity`.
//! - Grype JSON: each match, by `vulnerability.severity` (`Negligible` is low).
//! - Gitleaks JSON (an array of findings): each is a finding, counted high.
//! - OSV-Scanner JSON: each vulnerability group of each package, by its
//!   `max_severity` (a CVSS score, ranked as above), else by the GitHub
//!   advisory's `database_specific.severity`.
//!
//! Severities a tool calls unknown are not counted in any bucket; they are
//! still in `findings`.

use serde_json::Value;
use time::OffsetDateTime;

/// Why a report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("is not JSON: {0}")]
    NotJson(String),
    #[error("is not a report portcullis reads (SARIF 2.1.0, Trivy, Grype, Gitleaks or OSV-Scanner JSON)")]
    UnknownFormat,
    #[error("is SARIF version {0}; only 2.1.0 is read")]
    SarifVersion(String),
}

/// Findings by severity.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    /// Every finding, whatever its severity (unknown ones included).
    pub findings: u64,
}

impl Counts {
    fn add(&mut self, severity: Severity) {
        self.findings += 1;
        match severity {
            Severity::Critical => self.critical += 1,
            Severity::High => self.high += 1,
            Severity::Medium => self.medium += 1,
            Severity::Low => self.low += 1,
            Severity::Unknown => {}
        }
    }

    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            critical: self.critical + o.critical,
            high: self.high + o.high,
            medium: self.medium + o.medium,
            low: self.low + o.low,
            findings: self.findings + o.findings,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Unknown,
}

/// A score on CVSS's scale, ranked as GitHub code scanning ranks
/// `security-severity`.
fn by_score(score: f64) -> Severity {
    match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        s if s >= 0.0 => Severity::Low,
        _ => Severity::Unknown,
    }
}

/// A tool's own severity word.
fn by_word(word: &str) -> Severity {
    match word.to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "high" | "error" => Severity::High,
        "medium" | "moderate" | "warning" => Severity::Medium,
        "low" | "negligible" | "note" | "info" => Severity::Low,
        _ => Severity::Unknown,
    }
}

/// One report, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The format it was read as: `sarif`, `trivy`, `grype`, `gitleaks`, `osv-scanner`.
    pub format: &'static str,
    /// The tool that wrote it, by its usual name (`semgrep`, `codeql`,
    /// `trivy`, ...), lower case.
    pub tool: String,
    pub version: Option<String>,
    /// When the scan ran, if the report says.
    pub time: Option<OffsetDateTime>,
    pub counts: Counts,
}

/// Reads a report, telling its format by its content.
pub fn read(bytes: &[u8]) -> Result<Report, ReportError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| ReportError::NotJson(e.to_string()))?;
    if let Some(runs) = doc.get("runs").and_then(Value::as_array) {
        let version = doc.get("version").and_then(Value::as_str).unwrap_or_default();
        if version != "2.1.0" {
            return Err(ReportError::SarifVersion(version.to_string()));
        }
        return Ok(sarif(runs));
    }
    if doc.get("SchemaVersion").is_some() && doc.get("ArtifactName").is_some() {
        return Ok(trivy(&doc));
    }
    if let Some(matches) = doc.get("matches").and_then(Value::as_array) {
        return Ok(grype(&doc, matches));
    }
    if let Some(items) = doc.as_array()
        && items.iter().all(|i| i.get("RuleID").is_some())
    {
        let mut counts = Counts::default();
        items.iter().for_each(|_| counts.add(Severity::High));
        return Ok(Report {
            format: "gitleaks",
            tool: "gitleaks".into(),
            version: None,
            time: None,
            counts,
        });
    }
    if let Some(results) = doc.get("results").and_then(Value::as_array)
        && results.iter().all(|r| r.get("packages").is_some())
    {
        return Ok(osv(results));
    }
    Err(ReportError::UnknownFormat)
}

/// The usual name of a tool from what it calls itself.
fn tool_name(driver: &str) -> String {
    let lower = driver.to_ascii_lowercase();
    for known in [
        "semgrep",
        "codeql",
        "tfsec",
        "checkov",
        "gitleaks",
        "trivy",
        "grype",
        "osv-scanner",
    ] {
        if lower.contains(known) {
            return known.to_string();
        }
    }
    lower
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn rfc3339(s: &str) -> Option<OffsetDateTime> {
    crate::time_fmt::parse_rfc3339(s)
}

/// `security-severity` as SARIF producers write it: a string, or a number.
fn security_severity(properties: Option<&Value>) -> Option<f64> {
    match properties?.get("security-severity")? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn sarif(runs: &[Value]) -> Report {
    let mut counts = Counts::default();
    let mut tool = None;
    let mut version = None;
    let mut time = None;
    for run in runs {
        let driver = run.pointer("/tool/driver").cloned().unwrap_or(Value::Null);
        if tool.is_none() {
            tool = str_at(&driver, "/name").map(tool_name);
            version = str_at(&driver, "/semanticVersion")
                .or_else(|| str_at(&driver, "/version"))
                .map(str::to_string);
        }
        let rules: Vec<Value> = driver
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rule_of = |result: &Value| -> Option<Value> {
            if let Some(i) = result.get("ruleIndex").and_then(Value::as_u64) {
                return rules.get(i as usize).cloned();
            }
            let id = result
                .get("ruleId")
                .and_then(Value::as_str)
                .or_else(|| str_at(result, "/rule/id"))?;
            rules
                .iter()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
                .cloned()
        };
        for invocation in run.get("invocations").and_then(Value::as_array).into_iter().flatten() {
            if let Some(end) = str_at(invocation, "/endTimeUtc").and_then(rfc3339) {
                time = Some(time.map_or(end, |t: OffsetDateTime| t.max(end)));
            }
        }
        for result in run.get("results").and_then(Value::as_array).into_iter().flatten() {
            if result.get("kind").and_then(Value::as_str).is_some_and(|k| k != "fail") {
                continue;
            }
            let suppressed = result.get("suppressions").and_then(Value::as_array).is_some_and(|s| {
                s.iter()
                    .any(|x| x.get("status").and_then(Value::as_str) != Some("rejected"))
            });
            if suppressed {
                continue;
            }
            let rule = rule_of(result);
            let score = security_severity(result.get("properties"))
                .or_else(|| security_severity(rule.as_ref().and_then(|r| r.get("properties"))));
            let severity = match score {
                Some(s) => by_score(s),
                None => {
                    let level = result
                        .get("level")
                        .and_then(Value::as_str)
                        .or_else(|| rule.as_ref().and_then(|r| str_at(r, "/defaultConfiguration/level")))
                        .unwrap_or("warning");
                    if level == "none" {
                        continue;
                    }
                    by_word(level)
                }
            };
            counts.add(severity);
        }
    }
    Report {
        format: "sarif",
        tool: tool.unwrap_or_else(|| "unknown".into()),
        version,
        time,
        counts,
    }
}

fn trivy(doc: &Value) -> Report {
    let mut counts = Counts::default();
    for result in doc.get("Results").and_then(Value::as_array).into_iter().flatten() {
        for v in result
            .get("Vulnerabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            counts.add(by_word(str_at(v, "/Severity").unwrap_or_default()));
        }
        for m in result
            .get("Misconfigurations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if str_at(m, "/Status") == Some("FAIL") {
                counts.add(by_word(str_at(m, "/Severity").unwrap_or_default()));
            }
        }
        for s in result.get("Secrets").and_then(Value::as_array).into_iter().flatten() {
            counts.add(by_word(str_at(s, "/Severity").unwrap_or_default()));
        }
    }
    Report {
        format: "trivy",
        tool: "trivy".into(),
        version: str_at(doc, "/Trivy/Version").map(str::to_string),
        time: str_at(doc, "/CreatedAt").and_then(rfc3339),
        counts,
    }
}

fn grype(doc: &Value, matches: &[Value]) -> Report {
    let mut counts = Counts::default();
    for m in matches {
        counts.add(by_word(str_at(m, "/vulnerability/severity").unwrap_or_default()));
    }
    Report {
        format: "grype",
        tool: "grype".into(),
        version: str_at(doc, "/descriptor/version")
            .filter(|v| !v.is_empty() && !v.starts_with('['))
            .map(str::to_string),
        time: str_at(doc, "/descriptor/timestamp").and_then(rfc3339),
        counts,
    }
}

fn osv(results: &[Value]) -> Report {
    let mut counts = Counts::default();
    for package in results
        .iter()
        .flat_map(|r| r.get("packages").and_then(Value::as_array).into_iter().flatten())
    {
        let vulns: Vec<&Value> = package
            .get("vulnerabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let advisory_severity = |ids: &[Value]| {
            vulns
                .iter()
                .filter(|v| ids.iter().any(|id| Some(id) == v.get("id")))
                .find_map(|v| str_at(v, "/database_specific/severity"))
                .map(by_word)
        };
        let groups: Vec<&Value> = package
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        if groups.is_empty() {
            for v in &vulns {
                counts.add(str_at(v, "/database_specific/severity").map_or(Severity::Unknown, by_word));
            }
            continue;
        }
        for group in groups {
            let ids = group.get("ids").and_then(Value::as_array).cloned().unwrap_or_default();
            let severity = str_at(group, "/max_severity")
                .and_then(|s| s.trim().parse::<f64>().ok())
                .map(by_score)
                .or_else(|| advisory_severity(&ids))
                .unwrap_or(Severity::Unknown);
            counts.add(severity);
        }
    }
    Report {
        format: "osv-scanner",
        tool: "osv-scanner".into(),
        version: None,
        time: None,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn counts(v: Value) -> Counts {
        read(v.to_string().as_bytes()).unwrap().counts
    }

    #[test]
    fn sarif_security_severity_then_level_then_the_rules_default() {
        let doc = json!({"version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "CodeQL", "semanticVersion": "2.20.1", "rules": [
            {"id": "a", "properties": {"security-severity": "9.8"}},
            {"id": "b", "properties": {"security-severity": 7.0}},
            {"id": "c", "defaultConfiguration": {"level": "note"}},
            {"id": "d"}
        ]}},
        "invocations": [{"endTimeUtc": "2026-03-01T10:00:00Z", "executionSuccessful": true}],
        "results": [
            {"ruleId": "a", "message": {"text": "x"}},
            {"ruleIndex": 1, "message": {"text": "x"}},
            {"ruleId": "c", "message": {"text": "x"}},
            {"ruleId": "c", "level": "error", "message": {"text": "x"}},
            {"ruleId": "d", "message": {"text": "x"}},
            {"ruleId": "d", "level": "none", "message": {"text": "x"}},
            {"ruleId": "d", "kind": "pass", "message": {"text": "x"}},
            {"ruleId": "a", "suppressions": [{"kind": "inSource"}], "message": {"text": "x"}},
            {"ruleId": "d", "properties": {"security-severity": "3.1"}, "message": {"text": "x"}}
        ]}]});
        let r = read(doc.to_string().as_bytes()).unwrap();
        assert_eq!((r.tool.as_str(), r.version.as_deref()), ("codeql", Some("2.20.1")));
        assert_eq!(r.time, rfc3339("2026-03-01T10:00:00Z"));
        assert_eq!(
            r.counts,
            Counts {
                critical: 1,
                high: 2,
                medium: 1,
                low: 2,
                findings: 6
            }
        );
    }

    #[test]
    fn tool_formats_and_their_own_severities() {
        let trivy = json!({"SchemaVersion": 2, "ArtifactName": "x", "Results": [{
            "Vulnerabilities": [{"Severity": "CRITICAL"}, {"Severity": "UNKNOWN"}],
            "Misconfigurations": [{"Status": "FAIL", "Severity": "HIGH"}, {"Status": "PASS", "Severity": "HIGH"}],
            "Secrets": [{"Severity": "LOW"}]}]});
        assert_eq!(
            counts(trivy),
            Counts {
                critical: 1,
                high: 1,
                medium: 0,
                low: 1,
                findings: 4
            }
        );
        let osv = json!({"results": [{"packages": [{
            "vulnerabilities": [{"id": "GHSA-1", "database_specific": {"severity": "MODERATE"}}, {"id": "OSV-2"}],
            "groups": [{"ids": ["GHSA-1"], "max_severity": ""}, {"ids": ["OSV-2"], "max_severity": "9.1"}]}]}]});
        assert_eq!(
            counts(osv),
            Counts {
                critical: 1,
                high: 0,
                medium: 1,
                low: 0,
                findings: 2
            }
        );
    }

    #[test]
    fn unknown_and_malformed_reports_are_named() {
        assert_eq!(read(b"{\"a\": 1}"), Err(ReportError::UnknownFormat));
        assert!(matches!(read(b"<xml/>"), Err(ReportError::NotJson(_))));
        assert_eq!(
            read(br#"{"version": "2.0.0", "runs": []}"#),
            Err(ReportError::SarifVersion("2.0.0".into()))
        );
    }
}
