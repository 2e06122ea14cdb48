//! Each platform's limit on the comment posted with an answer:
//! GitHub takes a review comment of up to 1024 characters, GitLab an
//! approval comment of up to 255 (`Deployments::Approval` validates
//! `comment, length: { maximum: 255 }`).

use super::http::truncate_chars;
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

/// `comment` within `platform`'s limit, ending in "…" when cut: the guard
/// of the clients, which take any comment.
pub(crate) fn cap(platform: Platform, comment: &str) -> String {
    truncate_chars(comment, max_chars(platform))
}

#[cfg(test)]
mod tests {
    use super::*;

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
