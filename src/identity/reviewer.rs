//! Human reviewers' identities. A reviewer is known by a verified email
//! (from Slack's directory or an SSO sign-in); the names the same person
//! goes by elsewhere are kept as aliases, so that a review by the deploying
//! CI login can be recognised as self-review.

/// The aliases of a reviewer from the names they go by (a Slack handle,
/// display or real name; an SSO preferred username, nickname or name; the
/// email's [`local_part`]), in the order given. Blank and repeated
/// (case-insensitively) names are dropped.
pub fn aliases(names: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names.into_iter().flatten() {
        let name = name.trim().to_string();
        if !name.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&name)) {
            out.push(name);
        }
    }
    out
}

/// The local part of an email (`octocat` for `octocat@example.com`): often
/// the person's login elsewhere.
pub fn local_part(email: &str) -> Option<String> {
    email.split_once('@').map(|(l, _)| l.to_string())
}

#[cfg(test)]
mod tests {
    use super::{aliases, local_part};

    #[test]
    fn names_in_order_without_blanks_or_repeats() {
        let got = aliases([
            Some("octo".into()),
            Some("  ".into()),
            None,
            Some("OCTO".into()),
            Some("Mona Lisa".into()),
            local_part("octocat@example.com"),
        ]);
        assert_eq!(got, vec!["octo", "Mona Lisa", "octocat"]);
        assert!(aliases([None]).is_empty());
        assert_eq!(local_part("no-at-sign"), None);
    }
}
