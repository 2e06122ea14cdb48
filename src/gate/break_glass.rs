//! Break glass in the gate: asking for a grant, confirming it, using it,
//! its expiry, its review afterwards and the reminders of overdue reviews.
//!
//! Who may take each step is the engine's rule
//! ([`decision::break_glass_eligibility`]), asked here again whatever the
//! channel (Slack or the SSO pages) asked first. A confirmation is audited
//! durably before it is written, so no decision can weigh a grant whose
//! confirmation is not yet in the trail; a use is audited durably before
//! the platform is called. Every step is told to the notifier (the alert
//! channel) and counted in the metrics. A confirmed grant re-evaluates the
//! pending requests of its (repository, sha, environment).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::{Gate, GateError, events};
use crate::audit::EventKind;
use crate::config::ReviewVia;
use crate::decision::{self, Act, BreakGlassRefusal};
use crate::domain::break_glass::{GrantReview, GrantUse, MAX_JUSTIFICATION};
use crate::domain::{
    CommitSha, DeploymentRequest, ErrorCode, Grant, GrantState, Person, Platform, SlackRef, grant_key, verdict_key,
};
use crate::state::StateError;

/// How often an overdue review is reminded in the alert channel.
const REMINDER_EVERY: Duration = Duration::from_secs(24 * 3600);

/// A step in a grant's life, as the notifier (the alert channel) is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStep {
    Requested,
    /// A confirmation (the grant may still wait for more).
    Confirmed,
    Used,
    Expired,
    Reviewed,
    /// The review is overdue (reminded daily).
    Overdue,
}

impl GrantStep {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStep::Requested => "requested",
            GrantStep::Confirmed => "confirmed",
            GrantStep::Used => "used",
            GrantStep::Expired => "expired",
            GrantStep::Reviewed => "reviewed",
            GrantStep::Overdue => "overdue",
        }
    }
}

/// An ask for a grant.
#[derive(Debug, Clone)]
pub struct GrantAsk {
    pub environment: String,
    pub repository: String,
    pub sha: String,
    pub justification: String,
    pub requester: Person,
}

impl From<BreakGlassRefusal> for GateError {
    fn from(r: BreakGlassRefusal) -> Self {
        GateError::refused(r.code(), r.to_string())
    }
}

fn conflict() -> GateError {
    GateError::State(StateError("the grant kept changing; try again".into()))
}

impl Gate {
    /// Asks for a grant for (repository, sha, environment).
    pub async fn request_grant(self: &Arc<Self>, ask: GrantAsk, via: ReviewVia) -> Result<Grant, GateError> {
        let now = OffsetDateTime::now_utc();
        let policy = self.config.environment(&ask.environment);
        let bg = decision::break_glass_eligibility(
            &ask.environment,
            policy,
            via,
            Act::Request,
            Some(&ask.requester.email),
            now,
        )?;
        let justification = decision::break_glass::justification(&ask.justification)?;
        let sha = CommitSha::parse(ask.sha.trim())
            .map_err(|m| GateError::refused(ErrorCode::InvalidSha, format!("sha: {m}")))?;
        let repository = ask.repository.trim().to_string();
        if repository.is_empty() || repository.len() > 255 || repository.contains(char::is_whitespace) {
            return Err(GateError::refused(
                ErrorCode::PayloadMalformed,
                "repository must be a repository or project path such as octo-org/payments",
            ));
        }
        let key = grant_key(&repository, sha.as_str(), &ask.environment);
        if let Some(open) = self
            .store
            .grants_for(&key)
            .await?
            .into_iter()
            .find(|g| g.state != GrantState::Expired && now < g.expires_at)
        {
            return Err(GateError::refused(
                ErrorCode::GrantAlreadyOpen,
                format!("grant {} for this commit is already {}", open.id, open.state.as_str()),
            ));
        }
        let grant = Grant {
            id: format!("bg_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]),
            repository,
            sha: sha.to_string(),
            environment: ask.environment.clone(),
            justification,
            requester: ask.requester,
            confirmations: Vec::new(),
            required: bg.confirmations,
            state: GrantState::Requested,
            requested_at: now,
            confirmed_at: None,
            expires_at: now + time_of(bg.window),
            uses: Vec::new(),
            review_due: None,
            review: None,
            reminded_at: None,
            alert: None,
            version: 0,
        };
        if !self.store.insert_grant(&grant).await? {
            return Err(conflict());
        }
        self.audit
            .append(events::break_glass(
                EventKind::BreakGlassRequested,
                &grant,
                Some(&grant.requester),
            ))
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;
        self.metrics.break_glass.requested.inc();
        warn!(grant = %grant.id, environment = %grant.environment, repository = %grant.repository, sha = %grant.sha,
              requester = %grant.requester.email, "break glass asked for");
        self.after_grant_change(&grant, GrantStep::Requested).await;
        Ok(grant)
    }

    /// A confirmer confirms a grant. The confirmation is audited durably
    /// first; once enough distinct confirmers confirmed, the grant's window
    /// starts and the pending requests of its commit are evaluated again.
    pub async fn confirm_grant(
        self: &Arc<Self>,
        id: &str,
        confirmer: Person,
        via: ReviewVia,
    ) -> Result<Grant, GateError> {
        let mut audited = false;
        for _ in 0..8 {
            let now = OffsetDateTime::now_utc();
            let mut grant = self.grant(id).await?;
            let bg = decision::break_glass_eligibility(
                &grant.environment,
                self.config.environment(&grant.environment),
                via,
                Act::Confirm(&grant),
                Some(&confirmer.email),
                now,
            )?;
            grant.confirmations.push(confirmer.clone());
            if grant.confirmations.len() >= grant.required.max(1) as usize {
                grant.state = GrantState::Confirmed;
                grant.confirmed_at = Some(now);
                grant.expires_at = now + time_of(bg.window);
            }
            if !audited {
                self.audit
                    .append(events::break_glass(
                        EventKind::BreakGlassConfirmed,
                        &grant,
                        Some(&confirmer),
                    ))
                    .await
                    .map_err(|e| GateError::Audit(e.to_string()))?;
                audited = true;
            }
            if !self.store.update_grant(&grant).await? {
                continue;
            }
            grant.version += 1;
            self.metrics.break_glass.confirmed.inc();
            warn!(grant = %grant.id, confirmer = %confirmer.email, state = grant.state.as_str(),
                  "break glass confirmed by {} of {} confirmer(s)", grant.confirmations.len(), grant.required);
            self.after_grant_change(&grant, GrantStep::Confirmed).await;
            return Ok(grant);
        }
        Err(conflict())
    }

    /// A confirmer reviews a used grant afterwards, with notes.
    pub async fn review_grant(
        self: &Arc<Self>,
        id: &str,
        reviewer: Person,
        notes: &str,
        via: ReviewVia,
    ) -> Result<Grant, GateError> {
        let notes = notes.trim();
        if notes.is_empty() {
            return Err(GateError::refused(
                ErrorCode::PayloadMalformed,
                "the review needs notes: what was done under the grant, and was it right",
            ));
        }
        for _ in 0..8 {
            let mut grant = self.grant(id).await?;
            decision::break_glass_eligibility(
                &grant.environment,
                self.config.environment(&grant.environment),
                via,
                Act::Review(&grant),
                Some(&reviewer.email),
                OffsetDateTime::now_utc(),
            )?;
            let review = GrantReview {
                reviewer: reviewer.clone(),
                notes: notes.chars().take(MAX_JUSTIFICATION).collect(),
            };
            grant.review = Some(review.clone());
            if !self.store.update_grant(&grant).await? {
                continue;
            }
            grant.version += 1;
            self.audit
                .append(events::break_glass_reviewed(&grant, &review))
                .await
                .map_err(|e| GateError::Audit(e.to_string()))?;
            self.metrics.break_glass.reviewed.inc();
            info!(grant = %grant.id, reviewer = %reviewer.email, "break glass reviewed");
            self.after_grant_change(&grant, GrantStep::Reviewed).await;
            return Ok(grant);
        }
        Err(conflict())
    }

    /// The grant `id`, or 404 `grant_not_found`.
    pub async fn grant(&self, id: &str) -> Result<Grant, GateError> {
        self.store
            .get_grant(id)
            .await?
            .ok_or_else(|| GateError::refused(ErrorCode::GrantNotFound, format!("no break-glass grant `{id}`")))
    }

    /// The grants held for a request's commit and environment.
    pub async fn grants_for_request(&self, req: &DeploymentRequest) -> Result<Vec<Grant>, GateError> {
        Ok(self
            .store
            .grants_for(&grant_key(&req.repository, &req.sha, &req.environment))
            .await?)
    }

    /// Records the alert channel's message of a grant's ask (its Confirm
    /// button), so later steps can update it.
    pub async fn set_grant_alert(&self, id: &str, alert: SlackRef) -> Result<(), GateError> {
        for _ in 0..8 {
            let mut grant = self.grant(id).await?;
            if grant.alert.is_some() {
                return Ok(());
            }
            grant.alert = Some(alert.clone());
            if self.store.update_grant(&grant).await? {
                return Ok(());
            }
        }
        Err(conflict())
    }

    /// A request approved under `grant` (its `decision` record written):
    /// the use is audited durably, before the platform is called, and kept
    /// on the grant, whose review falls due `review_within` after its first
    /// use. Idempotent: a re-driven decision records nothing twice.
    pub(super) async fn grant_used(
        self: &Arc<Self>,
        req: &DeploymentRequest,
        grant_id: &str,
        record: &str,
    ) -> Result<(), GateError> {
        let mut audited = false;
        for _ in 0..8 {
            let mut grant = self.grant(grant_id).await?;
            if grant.uses.iter().any(|u| u.request == req.id) {
                return Ok(());
            }
            let now = OffsetDateTime::now_utc();
            let review_within = self
                .config
                .environment(&grant.environment)
                .and_then(|p| p.break_glass.as_ref())
                .map_or(Duration::from_secs(72 * 3600), |b| b.review_within);
            grant.uses.push(GrantUse {
                request: req.id.clone(),
                decision_record: record.to_string(),
                at: now,
            });
            grant.review_due.get_or_insert(now + time_of(review_within));
            if !audited {
                self.audit
                    .append(events::break_glass_used(req, &grant, record))
                    .await
                    .map_err(|e| GateError::Audit(e.to_string()))?;
                audited = true;
            }
            if !self.store.update_grant(&grant).await? {
                continue;
            }
            grant.version += 1;
            self.metrics.break_glass.used.inc();
            warn!(grant = %grant.id, request = %req.id, "break glass used: a deployment was approved under the grant");
            self.notify_grant(&grant, GrantStep::Used);
            return Ok(());
        }
        Err(conflict())
    }

    /// Expires grants past their window and reminds overdue reviews (once a
    /// day each). Every replica sweeps; compare-and-set lets one act.
    pub(super) async fn sweep_grants(self: &Arc<Self>, now: OffsetDateTime) -> Result<(), GateError> {
        for mut grant in self.store.open_grants().await? {
            if grant.state != GrantState::Expired && now >= grant.expires_at {
                grant.state = GrantState::Expired;
                if self.store.update_grant(&grant).await? {
                    grant.version += 1;
                    self.audit
                        .append(events::break_glass(EventKind::BreakGlassExpired, &grant, None))
                        .await
                        .map_err(|e| GateError::Audit(e.to_string()))?;
                    self.metrics.break_glass.expired.inc();
                    info!(grant = %grant.id, used = grant.used(), "break glass expired");
                    self.after_grant_change(&grant, GrantStep::Expired).await;
                }
                continue;
            }
            let due_reminder = grant.reminded_at.is_none_or(|at| now - at >= time_of(REMINDER_EVERY));
            if grant.overdue(now) && due_reminder {
                grant.reminded_at = Some(now);
                if self.store.update_grant(&grant).await? {
                    grant.version += 1;
                    warn!(grant = %grant.id, "break glass used and its review is overdue");
                    self.notify_grant(&grant, GrantStep::Overdue);
                }
            }
        }
        Ok(())
    }

    /// Tells the notifier of a grant's step, in the background.
    fn notify_grant(self: &Arc<Self>, grant: &Grant, step: GrantStep) {
        if let Some(n) = self.notifier.get() {
            let (n, gate, id) = (n.clone(), Arc::clone(self), grant.id.clone());
            self.tasks
                .spawn_on(async move { n.grant_changed(gate, id, step).await }, &self.runtime);
        }
    }

    /// After a grant changed: the alert channel hears of it, and the pending
    /// requests of its commit are evaluated again (their messages show it).
    async fn after_grant_change(self: &Arc<Self>, grant: &Grant, step: GrantStep) {
        self.notify_grant(grant, step);
        match self.pending_for(grant).await {
            Ok(ids) => {
                for id in ids {
                    self.notify(&id);
                    self.spawn_evaluate(id);
                }
            }
            Err(e) => warn!(grant = %grant.id, error = %e, "could not find the requests of the grant's commit"),
        }
    }

    /// The pending requests for the grant's (repository, sha, environment),
    /// on every configured platform.
    async fn pending_for(&self, grant: &Grant) -> Result<Vec<String>, GateError> {
        let mut out = Vec::new();
        let platforms = [
            self.config
                .github
                .as_ref()
                .map(|g| (Platform::Github, g.issuer.clone())),
            self.config
                .gitlab
                .as_ref()
                .map(|g| (Platform::Gitlab, g.issuer.clone())),
        ];
        for (platform, issuer) in platforms.into_iter().flatten() {
            let key = verdict_key(&issuer, platform, &grant.repository, &grant.sha, &grant.environment);
            out.extend(self.store.requests_for_verdict(&key).await?);
        }
        Ok(out)
    }
}

fn time_of(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}
