//! The gate's notifier for Slack: one living message per request, in the
//! channel of the request's environment (`environments.E.slack.channel`;
//! environments without one are skipped).
//!
//! Each change re-reads the request and renders it whole, so changes that
//! arrive close together coalesce into the latest state. Work is serialized
//! per request (a per-request async mutex), so two changes racing never
//! post two messages. The first render posts the message, asks for its
//! permalink and records `{channel, ts, permalink}` on the request
//! ([`Gate::set_slack_ref`]), from where the audit records copy it; later
//! renders update the message in place, and an unchanged render is not sent.
//!
//! Everything here runs in the gate's background tasks: a slow, rate-limited
//! or failing Slack delays and changes nothing but the message.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::config::SlackConfig;
use crate::domain::{RequestStatus, SlackRef};
use crate::gate::{Gate, GrantStep, Notifier};

use super::client::{SlackClient, SlackError};
use super::message::{self, Links};

/// What the notifier remembers of a request between changes.
#[derive(Default)]
struct Mirror {
    /// The message, once posted (kept here too until the request holds it).
    posted: Option<SlackRef>,
    /// A hash of the last render sent, so an unchanged render is skipped.
    last: Option<u64>,
}

/// Mirrors requests to Slack. Install with [`Gate::set_notifier`].
pub struct SlackNotifier {
    client: SlackClient,
    mirrors: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Mirror>>>>,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Slack(#[from] SlackError),
    #[error("{0}")]
    Gate(#[from] crate::gate::GateError),
}

impl SlackNotifier {
    pub fn new(client: SlackClient) -> SlackNotifier {
        SlackNotifier {
            client,
            mirrors: Mutex::new(HashMap::new()),
        }
    }

    /// A notifier for `[slack]`.
    pub fn from_config(config: &SlackConfig) -> Result<Arc<SlackNotifier>, String> {
        Ok(Arc::new(SlackNotifier::new(SlackClient::new(config)?)))
    }

    fn mirror(&self, id: &str) -> Arc<tokio::sync::Mutex<Mirror>> {
        let mut map = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    /// Forgets a finished request, unless another change is waiting on it.
    fn forget(&self, id: &str, mirror: &Arc<tokio::sync::Mutex<Mirror>>) {
        let mut map = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(mirror) <= 2 {
            map.remove(id);
        }
    }

    /// Brings the request's message up to date. Returns whether the request
    /// is finished and its reference recorded (nothing more to mirror).
    async fn sync(&self, gate: &Gate, id: &str, m: &mut Mirror) -> Result<bool, SyncError> {
        let Some(req) = gate.store.get_request(id).await.map_err(crate::gate::GateError::from)? else {
            return Ok(true);
        };
        let policy = gate.config.environment(&req.environment);
        let Some(channel) = policy.and_then(|p| p.slack_channel.clone()) else {
            return Ok(true);
        };
        let links = Links::of(&gate.config, &req, |record| gate.audit_link(record));
        let grants = match policy.and_then(|p| p.break_glass.as_ref()) {
            Some(_) => gate.grants_for_request(&req).await?,
            None => Vec::new(),
        };
        let rendered = message::render_with(&req, policy, &links, &grants, time::OffsetDateTime::now_utc());
        let mut h = DefaultHasher::new();
        rendered.text.hash(&mut h);
        rendered.blocks.to_string().hash(&mut h);
        let hash = h.finish();

        let slack = match req.slack.clone().or_else(|| m.posted.clone()) {
            Some(existing) => {
                if m.last != Some(hash) {
                    self.client
                        .update_message(&existing.channel, &existing.ts, &rendered.text, &rendered.blocks)
                        .await?;
                    m.last = Some(hash);
                }
                existing
            }
            None => {
                let posted = self
                    .client
                    .post_message(&channel, &rendered.text, &rendered.blocks)
                    .await?;
                m.last = Some(hash);
                let permalink = match self.client.permalink(&posted.channel, &posted.ts).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        warn!(request = %id, error = %e, "slack: no permalink for the message; recording it without");
                        None
                    }
                };
                let slack = SlackRef {
                    channel: posted.channel,
                    ts: posted.ts,
                    permalink,
                };
                m.posted = Some(slack.clone());
                info!(request = %id, channel = %slack.channel, ts = %slack.ts, "slack: message posted");
                slack
            }
        };
        let mut recorded = req.slack.as_ref() == Some(&slack);
        if !recorded {
            // Refused while the request is being decided (the decision's own
            // writes must not conflict); the change that closes it comes back.
            recorded = gate.set_slack_ref(id, slack).await?;
        }
        Ok(recorded && matches!(req.status, RequestStatus::Done | RequestStatus::Superseded))
    }
}

impl SlackNotifier {
    /// Posts the alert of a grant's step to its environment's alert
    /// channel; the ask's message (with its Confirm button) is recorded on
    /// the grant and updated as confirmations come and the grant expires.
    async fn alert(&self, gate: &Gate, grant_id: &str, step: GrantStep) -> Result<(), SyncError> {
        let grant = gate.grant(grant_id).await?;
        let Some(bg) = gate
            .config
            .environment(&grant.environment)
            .and_then(|p| p.break_glass.as_ref())
        else {
            return Ok(());
        };
        let Some(channel) = bg.alert_channel.clone() else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc();
        let page = super::alerts::grant_page(gate.config.server.public_url.as_str(), &grant.id);
        let rendered = super::alerts::alert(&grant, step, bg.via, &page, now);
        let posted = self
            .client
            .post_message(&channel, &rendered.text, &rendered.blocks)
            .await?;
        info!(grant = %grant.id, step = step.as_str(), channel = %posted.channel, "slack: break-glass alert posted");
        match (step, &grant.alert) {
            (GrantStep::Requested, _) => {
                let alert = SlackRef {
                    channel: posted.channel,
                    ts: posted.ts,
                    permalink: None,
                };
                gate.set_grant_alert(&grant.id, alert).await?;
            }
            (GrantStep::Confirmed | GrantStep::Expired, Some(ask)) => {
                // The ask's own message: its Confirm button goes once the
                // grant no longer waits.
                let ask_render = super::alerts::alert(&grant, GrantStep::Requested, bg.via, &page, now);
                self.client
                    .update_message(&ask.channel, &ask.ts, &ask_render.text, &ask_render.blocks)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Notifier for SlackNotifier {
    async fn grant_changed(&self, gate: Arc<Gate>, grant_id: String, step: GrantStep) {
        // One grant's alerts in order: the ask's message is recorded before
        // a confirmation updates it.
        let mirror = self.mirror(&format!("grant:{grant_id}"));
        let _m = mirror.lock().await;
        if let Err(e) = self.alert(&gate, &grant_id, step).await {
            warn!(grant = %grant_id, step = step.as_str(), error = %e, "slack: the break-glass alert could not be posted");
        }
    }

    async fn request_changed(&self, gate: Arc<Gate>, request_id: String) {
        let mirror = self.mirror(&request_id);
        let finished = {
            let mut m = mirror.lock().await;
            match self.sync(&gate, &request_id, &mut m).await {
                Ok(finished) => finished,
                Err(e) => {
                    warn!(request = %request_id, error = %e, "slack: the message could not be brought up to date; the decision is unaffected");
                    false
                }
            }
        };
        if finished {
            self.forget(&request_id, &mirror);
        }
    }
}
