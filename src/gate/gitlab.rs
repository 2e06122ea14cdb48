//! GitLab's later word on a deployment (status hooks), and the poller that
//! finds blocked deployments on GitLab versions that send no `blocked` hook.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Gate, GateError, events};
use crate::domain::{ErrorCode, RequestStatus};
use crate::state::Cas;
use crate::webhook::gitlab::{self as hook, BlockedDeployment, DeploymentHook, DeploymentStatus};

/// The statuses after which a deployment no longer waits for an answer.
fn closes(status: &DeploymentStatus) -> bool {
    matches!(
        status,
        DeploymentStatus::Running
            | DeploymentStatus::Success
            | DeploymentStatus::Failed
            | DeploymentStatus::Canceled
            | DeploymentStatus::Skipped
    )
}

impl Gate {
    /// Records a GitLab deployment's later status (approved or rejected by
    /// someone, running, finished). It never approves anything: a request
    /// still pending whose deployment went ahead, failed or was canceled is
    /// closed as superseded; an approval or rejection by a person is recorded
    /// as such, and portcullis still gives its own answer.
    pub async fn gitlab_status(self: &Arc<Self>, hook: &DeploymentHook) -> Result<(), GateError> {
        let id = hook::request_id(hook.project_id, hook.deployment_id, &hook.environment);
        let mut ev = events::gitlab_status(&id, hook);
        let mut confirmed = None;
        for _ in 0..8 {
            let Some(mut req) = self.store.get_request(&id).await? else {
                break;
            };
            ev.sha = Some(req.sha.clone());
            ev.run = Some(req.run.clone());
            ev.slack = req.slack.clone();
            if !(closes(&hook.status) && req.status == RequestStatus::Pending) {
                break;
            }
            // A hook is only a claim: GitLab's own API must say the deployment
            // moved on before a pending request is closed.
            if confirmed.is_none() {
                confirmed = Some(self.gitlab_confirms(hook, &req.repository).await);
            }
            if confirmed != Some(true) {
                break;
            }
            req.status = RequestStatus::Superseded;
            if let Cas::Written(_) = self.store.update_request(&req).await? {
                info!(request = %id, status = hook.status.as_str(), "closed: the deployment moved on without portcullis");
                self.notify(&id);
                break;
            }
        }
        if let (Some(confirmed), Some(serde_json::Value::Object(detail))) = (confirmed, ev.detail.as_mut()) {
            detail.insert("confirmed_by_api".into(), confirmed.into());
        }
        self.audit
            .append(ev)
            .await
            .map_err(|e| GateError::Audit(e.to_string()))?;
        Ok(())
    }

    /// Does GitLab's deployments API agree that the hook's deployment, of
    /// the request's project, is past waiting? Unknown (no API, no answer)
    /// is no.
    async fn gitlab_confirms(&self, hook: &DeploymentHook, repository: &str) -> bool {
        let Some(api) = self.gitlab_api() else {
            warn!(
                deployment = hook.deployment_id,
                "a status hook cannot be confirmed without gitlab.token; the request stays open"
            );
            return false;
        };
        match api.deployment(hook.project_id, hook.deployment_id).await {
            Ok(info) => {
                let status_agrees = closes(&DeploymentStatus::parse(&info.status));
                let project_agrees = info.project_id == hook.project_id
                    && info
                        .project_path
                        .as_deref()
                        .is_none_or(|p| p.eq_ignore_ascii_case(repository));
                if !(status_agrees && project_agrees) {
                    warn!(deployment = hook.deployment_id, api_status = %info.status,
                          "a status hook that GitLab's API does not confirm; the request stays open");
                }
                status_agrees && project_agrees
            }
            Err(e) => {
                warn!(deployment = hook.deployment_id, error = %e, "cannot confirm a status hook; the request stays open");
                false
            }
        }
    }

    /// Polls one GitLab project for blocked deployments (older GitLab sends
    /// no `blocked` hook) every `poll.interval` until `stop`. One replica
    /// polls a project at a time (a lease per project).
    pub async fn run_gitlab_poller(self: Arc<Self>, poll: crate::config::GitlabPoll, stop: CancellationToken) {
        let mut tick = tokio::time::interval(poll.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.poll_gitlab_once(&poll.project, poll.interval).await {
                Ok(n) if n > 0 => info!(project = %poll.project, new = n, "poller found blocked deployments"),
                Ok(_) => {}
                Err(e) => warn!(project = %poll.project, error = %e, "poll failed; retrying at the next interval"),
            }
        }
    }

    /// One poll: feeds every blocked deployment of `project` into the same
    /// path as a `blocked` hook. Returns how many requests were new.
    pub async fn poll_gitlab_once(self: &Arc<Self>, project: &str, interval: Duration) -> Result<usize, GateError> {
        let Some(api) = self.gitlab_api().cloned() else {
            return Ok(0);
        };
        let Some(lease) = self
            .store
            .acquire_lease(&format!("poll:{project}"), &self.holder, interval)
            .await?
        else {
            return Ok(0);
        };
        let blocked = api.blocked_deployments(project).await.map_err(|e| {
            GateError::refused(
                ErrorCode::PlatformUnavailable,
                format!("listing blocked deployments failed: {e}"),
            )
        });
        let issuer = self
            .config
            .gitlab
            .as_ref()
            .map(|g| g.issuer.clone())
            .unwrap_or_default();
        let mut created = 0;
        for info in blocked.unwrap_or_default() {
            let Some(path) = info.project_path.as_deref() else {
                continue;
            };
            let blocked = BlockedDeployment {
                project_id: info.project_id,
                project_path: path,
                deployment_id: info.id,
                environment: &info.environment,
                job_id: info.job_id,
            };
            let now = OffsetDateTime::now_utc();
            let timeout = self.pending_timeout(&info.environment);
            let req = hook::deployment_request(&issuer, timeout, &format!("poll:{}", info.id), blocked, &info, now);
            if self.store.get_request(&req.id).await?.is_none() {
                let (_, new) = self.receive_request(req).await?;
                created += usize::from(new);
            }
        }
        let _ = lease; // held until its TTL: one poll per interval across replicas
        Ok(created)
    }
}
