//! The comment posted with an answer, and each platform's limit on it:
//! GitHub takes a review comment of up to 1024 characters, GitLab an
//! approval comment of up to 255 (`Deployments::Approval` validates
//! `comment, length: { maximum: 255 }`).

use super::http::truncate_chars;
use crate::decision::Reason;
use crate::domain::Platform;

/// GitHub's limit on a review comment, in characters.
pub(crate) const GITHUB_MAX_CHARS: usize = 1024;
/// GitLab's limit on an approval comment, in characters.
pub(crate) const GITLAB_MAX_CHARS: usize = 255;

/// The comment limit of `platform`, in characters.
pub(crate) fn max_chars(platform: Platform) -> usize {
    match platform {
        Platform::Github => GITHUB_MAX_CHARS,
        Platform::Gitlab => GITLAB_MAX_CHARS,
    }
}

/// The answer comment: the outcome, the commit (its first 12 characters)
/// and environment, one line per reason (a break-glass waiver first), and the audit link. Within
/// `platform`'s limit the link stays whole: when the whole would be longer,
/// the reasons are cut and `…` marks the cut. Only a link longer than the
/// limit by itself is cut like any text.
pub(crate) fn answer_comment(
    platform: Platform,
    outcome: &str,
    sha: &str,
    environment: &str,
    reasons: &[Reason],
    audit_link: &str,
) -> String {
    let max = max_chars(platform);
    let mut out = format!(
        "portcullis {outcome} the deployment of {} to {environment}.",
        &sha[..sha.len().min(12)]
    );
    // An approval under break glass says so first: it survives the cut.
    let (glass, rest): (Vec<&Reason>, Vec<&Reason>) = reasons
        .iter()
        .partition(|r| r.code == crate::decision::ReasonCode::BreakGlass);
    for r in glass.into_iter().chain(rest) {
        out.push_str(&format!("\n- {}: {}", r.code.as_str(), r.message));
    }
    out.push_str(&format!("\nAudit: {audit_link}"));
    if out.chars().count() <= max {
        return out;
    }
    let link = format!("\n…\nAudit: {audit_link}");
    match max.checked_sub(link.chars().count()) {
        Some(keep) => out.chars().take(keep).collect::<String>() + &link,
        None => truncate_chars(&out, max),
    }
}

/// `comment` within `platform`'s limit, ending in "…" when cut: the guard
/// of the clients, which take any comment.
pub(crate) fn cap(platform: Platform, comment: &str) -> String {
    truncate_chars(comment, max_chars(platform))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::ReasonCode;

    const SHA: &str = "9f4ac2e5b1d3c0a7e8f6b5d4c3a2b1e0f9d8c7b6";
    const LINK: &str = "https://portcullis.example.com/v1/audit/aud_0123456789abcdef";

    fn reasons(n: usize, message: &str) -> Vec<Reason> {
        (0..n)
            .map(|_| Reason::new(ReasonCode::VerdictDenied, message))
            .collect()
    }

    #[test]
    fn a_short_comment_is_whole() {
        let out = answer_comment(
            Platform::Github,
            "rejected",
            SHA,
            "production",
            &reasons(1, "container: 2 critical CVEs"),
            LINK,
        );
        assert_eq!(
            out,
            format!(
                "portcullis rejected the deployment of 9f4ac2e5b1d3 to production.\n\
                 - verdict_denied: container: 2 critical CVEs\nAudit: {LINK}"
            )
        );
        let same = answer_comment(
            Platform::Gitlab,
            "rejected",
            SHA,
            "production",
            &reasons(1, "container: 2 critical CVEs"),
            LINK,
        );
        assert_eq!(same, out);
    }

    #[test]
    fn long_reasons_are_cut_and_the_link_kept_whole_on_each_platform() {
        for (platform, max) in [(Platform::Github, 1024), (Platform::Gitlab, 255)] {
            let out = answer_comment(
                platform,
                "rejected",
                SHA,
                "production",
                &reasons(40, &"é".repeat(50)),
                LINK,
            );
            assert_eq!(out.chars().count(), max, "{platform:?}");
            assert!(out.ends_with(&format!("\n…\nAudit: {LINK}")), "{platform:?}: {out}");
            assert!(
                out.starts_with(
                    "portcullis rejected the deployment of 9f4ac2e5b1d3 to production.\n- verdict_denied: é"
                ),
                "{platform:?}: {out}"
            );
        }
    }

    #[test]
    fn a_comment_exactly_at_the_limit_is_not_cut() {
        let head = "portcullis approved the deployment of 9f4ac2e5b1d3 to production.\nAudit: "
            .chars()
            .count();
        let link = "x".repeat(GITLAB_MAX_CHARS - head);
        let out = answer_comment(Platform::Gitlab, "approved", SHA, "production", &[], &link);
        assert_eq!(out.chars().count(), GITLAB_MAX_CHARS);
        assert!(out.ends_with(&format!("Audit: {link}")));
        assert!(!out.contains('…'));
    }

    #[test]
    fn a_link_longer_than_the_limit_is_cut_like_any_text() {
        let link = "x".repeat(300);
        let out = answer_comment(Platform::Gitlab, "approved", SHA, "production", &[], &link);
        assert_eq!(out.chars().count(), GITLAB_MAX_CHARS);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn the_cap_cuts_on_a_char_boundary() {
        let cases: [(&str, String, String); 5] = [
            ("empty", String::new(), String::new()),
            ("short", "ok".into(), "ok".into()),
            ("exactly 1024", "a".repeat(1024), "a".repeat(1024)),
            ("1025 ascii", "a".repeat(1025), format!("{}…", "a".repeat(1023))),
            ("multibyte", "é".repeat(2000), format!("{}…", "é".repeat(1023))),
        ];
        for (name, input, expected) in cases {
            let out = cap(Platform::Github, &input);
            assert_eq!(out, expected, "{name}");
        }
        assert_eq!(cap(Platform::Github, &"🚀".repeat(1500)).chars().count(), 1024);
        assert_eq!(cap(Platform::Gitlab, "ok"), "ok");
        assert_eq!(cap(Platform::Gitlab, &"a".repeat(255)), "a".repeat(255));
        assert_eq!(cap(Platform::Gitlab, &"a".repeat(256)), format!("{}…", "a".repeat(254)));
        assert_eq!(cap(Platform::Gitlab, &"é".repeat(300)).chars().count(), 255);
    }
}
