//! Rules 1 to 6 of the contract, one function each. Rule 7 (reviews) is in
//! [`super::reviews`].

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;

use super::Findings;
use crate::config::{EnvironmentPolicy, rule_matches};
use crate::domain::{Attestation, DeploymentRequest, Platform, Reason, ReasonCode, RunAttempt, Verdict};

/// Rule 1: the request's environment is configured.
pub fn environment_configured<'p>(
    policy: Option<&'p EnvironmentPolicy>,
    request: &DeploymentRequest,
) -> Result<&'p EnvironmentPolicy, Reason> {
    policy.ok_or_else(|| {
        Reason::new(
            ReasonCode::EnvironmentNotConfigured,
            format!("environment `{}` is not configured in portcullis", request.environment),
        )
    })
}

/// Rule 2: an attestation of the request's run was verified. Without one,
/// the request waits for it.
pub(crate) fn attestation_present<'a>(
    request: &DeploymentRequest,
    attestation: Option<&'a Attestation>,
    f: &mut Findings,
) -> Option<&'a Attestation> {
    if attestation.is_none() {
        f.missing.push(Reason::new(
            ReasonCode::AttestationMissing,
            format!(
                "no verified OIDC token has been presented for run {} of {}",
                request.run, request.repository
            ),
        ));
    }
    attestation
}

/// Rule 3: the attestation agrees with the request (its issuer is the one
/// bound to the request's platform instance; platform and repository; the
/// sha where the token carries one).
pub(crate) fn attestation_matches(request: &DeploymentRequest, att: &Attestation, f: &mut Findings) {
    let mut ok = true;
    if !request.issuer.is_empty() && att.issuer_name != request.issuer {
        ok = false;
        f.violations.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!(
                "the token is from issuer `{}`; this platform's runs are attested by `{}`",
                att.issuer_name, request.issuer
            ),
        ));
    }
    if att.platform != request.platform || !att.repository.eq_ignore_ascii_case(&request.repository) {
        ok = false;
        f.violations.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!(
                "the token is for {} `{}`, the request for {} `{}`",
                att.platform, att.repository, request.platform, request.repository
            ),
        ));
    }
    if let Some(sha) = &att.sha
        && !sha.eq_ignore_ascii_case(&request.sha)
    {
        ok = false;
        f.violations.push(Reason::new(
            ReasonCode::IdentityMismatch,
            format!("the token is for commit {sha}, the request deploys {}", request.sha),
        ));
    }
    if ok {
        f.satisfied.push(Reason::new(
            ReasonCode::AttestationVerified,
            format!("{} attested by {} ({})", att.actor, att.issuer_name, att.subject),
        ));
    }
}

/// Rule 4: the attested claims satisfy the environment's `require_claims`.
pub(crate) fn claims_satisfied(policy: &EnvironmentPolicy, att: &Attestation, f: &mut Findings) {
    let mut ok = true;
    for (claim, matcher) in &policy.require_claims {
        let problem = match att.claims.get(claim) {
            Some(value) if matcher.matches(value) => continue,
            Some(value) => format!("claim `{claim}` is {value}, required {}", matcher.describe()),
            None => format!("claim `{claim}` is absent, required {}", matcher.describe()),
        };
        ok = false;
        f.violations.push(Reason::new(ReasonCode::ClaimNotSatisfied, problem));
    }
    if ok && !policy.require_claims.is_empty() {
        f.satisfied.push(Reason::new(
            ReasonCode::ClaimsSatisfied,
            format!(
                "claims {} satisfied",
                policy.require_claims.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
}

/// Which attempt of the run asks to deploy. GitHub requests wait until the
/// run has been read (a re-run keeps the first attempt's token actor, so the
/// attempt's own starter must be known); GitLab retries are new deployments
/// and need nothing more. `None` while unknown.
///
/// The gate reads a run only once the run has an attestation (until then
/// the request can only wait, and a read would spend API quota on nothing),
/// so an unread run is named as missing only when the attestation is not.
pub(crate) fn run_attempt_known<'r>(
    request: &'r DeploymentRequest,
    attested: bool,
    f: &mut Findings,
) -> Option<Option<&'r RunAttempt>> {
    match (request.platform, &request.run_attempt) {
        (Platform::Gitlab, attempt) => Some(attempt.as_ref()),
        (Platform::Github, Some(attempt)) => Some(Some(attempt)),
        (Platform::Github, None) => {
            if attested {
                f.missing.push(Reason::new(
                    ReasonCode::RunAttemptUnknown,
                    format!(
                        "the attempt of run {} and who started it have not been read from GitHub yet",
                        request.run
                    ),
                ));
            }
            None
        }
    }
}

/// Rule 5: the triggering identity is one of the environment's
/// `approvers`. That is the attested actor, except on a re-run of a GitHub
/// run, where it is the person who started the current attempt; when the
/// two differ, the reason names both.
pub(crate) fn actor_is_approver(
    policy: &EnvironmentPolicy,
    request: &DeploymentRequest,
    attempt: Option<&RunAttempt>,
    attested_actor: &str,
    f: &mut Findings,
) {
    let actor = attempt.map_or(attested_actor, |a| a.deploying_actor(attested_actor));
    let who = match attempt {
        Some(_) if actor.eq_ignore_ascii_case(attested_actor) => actor.to_string(),
        Some(a) if request.platform == Platform::Github => format!(
            "{actor} (who started attempt {} of run {}; its first attempt and token are {attested_actor}'s)",
            a.number, request.run
        ),
        Some(_) => format!(
            "{actor} (who started this deployment's job in pipeline {}; the pipeline's token is {attested_actor}'s)",
            request.run
        ),
        None => actor.to_string(),
    };
    if policy.approvers.iter().any(|a| a.eq_ignore_ascii_case(actor)) {
        f.satisfied.push(Reason::new(
            ReasonCode::ActorApproved,
            format!("{who} may deploy to {}", policy.name),
        ));
    } else {
        f.violations.push(Reason::new(
            ReasonCode::ActorNotApprover,
            format!("{who} is not an approver of {}", policy.name),
        ));
    }
}

/// Part of rule 6, asked both when a verdict is posted (an untrusted poster
/// is refused) and when a held verdict is weighed: do the poster's verified
/// claims match one of the environment's `verdict.producers` rules?
pub fn producer_trusted(policy: &EnvironmentPolicy, claims: &BTreeMap<String, Value>) -> bool {
    policy.verdict.producers.iter().any(|rule| rule_matches(rule, claims))
}

/// Rule 6: where the environment requires a verdict, the latest one for
/// (repository, sha, environment) allows, is fresh, and came from a trusted
/// producer. A missing, stale or untrusted verdict leaves the request
/// waiting; a denying one rejects it.
pub(crate) fn verdict_allows(
    policy: &EnvironmentPolicy,
    request: &DeploymentRequest,
    verdict: Option<&Verdict>,
    now: OffsetDateTime,
    f: &mut Findings,
) {
    if !policy.verdict.required {
        f.satisfied.push(Reason::new(
            ReasonCode::VerdictNotRequired,
            "this environment requires no policy verdict",
        ));
        return;
    }
    let Some(v) = verdict else {
        f.missing.push(Reason::new(
            ReasonCode::VerdictMissing,
            format!("no policy verdict for {} at {}", request.repository, request.sha),
        ));
        return;
    };
    // A verdict for another commit, repository or environment is no verdict
    // for this request; the store keys make this impossible, the engine does
    // not rely on it.
    if !v.sha.eq_ignore_ascii_case(&request.sha)
        || !v.repository.eq_ignore_ascii_case(&request.repository)
        || v.environment != request.environment
        || (!request.issuer.is_empty() && v.producer.issuer_name != request.issuer)
    {
        f.missing.push(Reason::new(
            ReasonCode::VerdictMissing,
            "the verdict held is for another commit or environment",
        ));
        return;
    }
    if !producer_trusted(policy, &v.producer.claims) {
        f.missing.push(Reason::new(
            ReasonCode::VerdictProducerUntrusted,
            format!(
                "the verdict was posted by {}, who is not a trusted producer",
                v.producer.subject
            ),
        ));
        return;
    }
    let max_age = time::Duration::try_from(policy.verdict.max_age).unwrap_or(time::Duration::MAX);
    if now - v.recorded_at > max_age {
        f.missing.push(Reason::new(
            ReasonCode::VerdictStale,
            format!(
                "the verdict is older than {} (recorded {})",
                humantime::format_duration(policy.verdict.max_age),
                crate::time_fmt::rfc3339(v.recorded_at)
            ),
        ));
        return;
    }
    let policy_name = v.policy.as_deref().unwrap_or("policy");
    if v.allow {
        f.satisfied.push(Reason::new(
            ReasonCode::VerdictAllowed,
            format!("{policy_name} allowed {}", request.sha),
        ));
    } else {
        let why = if v.reasons.is_empty() {
            "no reasons given".to_string()
        } else {
            v.reasons.join("; ")
        };
        f.violations.push(Reason::new(
            ReasonCode::VerdictDenied,
            format!("{policy_name} denied: {why}"),
        ));
    }
}
