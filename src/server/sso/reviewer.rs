//! Who may review through SSO, and the names a signed-in reviewer is also
//! known by. Both are small functions on purpose: the sign-in handlers call
//! them and hold no eligibility rule of their own.

use crate::config::EnvironmentPolicy;

/// Is `email` one of the environment's `reviews.reviewers`? Compared without
/// regard to ASCII case.
pub(super) fn is_reviewer(policy: &EnvironmentPolicy, email: &str) -> bool {
    policy.reviews.reviewers.iter().any(|r| r.eq_ignore_ascii_case(email))
}

/// The aliases of a verified reviewer: the local part of `email`, then the
/// token's `preferred_username`, `nickname` and `name`, in that order;
/// trimmed, without empty ones, and without repeats (ignoring ASCII case).
pub(super) fn aliases(email: &str, claimed: [Option<String>; 3]) -> Vec<String> {
    let mut aliases: Vec<String> = Vec::new();
    let local = email.split_once('@').map(|(l, _)| l.to_string());
    for a in std::iter::once(local).chain(claimed).flatten() {
        let a = a.trim().to_string();
        if !a.is_empty() && !aliases.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            aliases.push(a);
        }
    }
    aliases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_start_with_the_local_part_and_skip_repeats_and_blanks() {
        let claimed = [Some("Octocat".into()), Some("  ".into()), Some("Mona Lisa ".into())];
        assert_eq!(aliases("octocat@example.com", claimed), vec!["octocat", "Mona Lisa"]);
        assert!(aliases("no-at-sign", [None, None, None]).is_empty());
    }
}
