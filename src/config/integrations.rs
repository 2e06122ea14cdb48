//! Validation of the integrations' tables: `[github]`, `[gitlab]`,
//! `[slack]`, `[sso]` and `[[issuers]]`.

use std::time::Duration;

use url::Url;

use super::raw;
use super::types::*;
use super::validate::Validator;
use crate::domain::Platform;

/// A GitHub App's installation may make 5 000 API calls an hour at least:
/// 60 status reports a minute take at most 3 600 of them, and only while that
/// many deployments wait at once.
pub const DEFAULT_STATUS_REPORTS_PER_MINUTE: u32 = 60;
/// GitHub Enterprise Cloud's installations get 15 000 calls an hour.
const MAX_STATUS_REPORTS_PER_MINUTE: u32 = 250;

impl Validator<'_> {
    pub(super) fn github(&mut self, raw: raw::RawGithub, dry_run: bool) -> GithubConfig {
        let private_key = raw
            .private_key
            .as_ref()
            .and_then(|s| self.secret("github.private_key", s));
        if !dry_run {
            if raw.app_id.is_none() {
                self.err("github.app_id", "is required unless server.dry_run = true");
            }
            if raw.private_key.is_none() {
                self.err("github.private_key", "is required unless server.dry_run = true");
            }
        }
        if let Some(key) = private_key.as_ref().filter(|_| !self.skip_secrets)
            && jsonwebtoken::EncodingKey::from_rsa_pem(key.expose().as_bytes()).is_err()
        {
            self.err("github.private_key", "is not an RSA private key in PEM form");
        }
        let mut webhook_secrets = Vec::new();
        for (i, s) in raw.webhook_secrets.iter().enumerate() {
            if let Some(s) = self.secret(&format!("github.webhook_secrets[{i}]"), s) {
                webhook_secrets.push(s);
            }
        }
        if raw.webhook_secrets.is_empty() {
            self.err("github.webhook_secrets", "at least one webhook secret is required");
        }
        let api_url = self
            .url(
                "github.api_url",
                raw.api_url.as_deref().unwrap_or("https://api.github.com"),
            )
            .unwrap_or_else(|| Url::parse("https://api.github.com").expect("static URL"));
        let redeliver = match raw.redeliver {
            None => RedeliverConfig {
                enabled: false,
                interval: Duration::from_secs(300),
                lookback: Duration::from_secs(3600),
                max_per_run: 50,
            },
            Some(r) => RedeliverConfig {
                enabled: r.enabled.unwrap_or(true),
                interval: self.duration(
                    "github.redeliver.interval",
                    r.interval.as_deref(),
                    Duration::from_secs(300),
                ),
                lookback: self.duration(
                    "github.redeliver.lookback",
                    r.lookback.as_deref(),
                    Duration::from_secs(3600),
                ),
                max_per_run: r.max_per_run.unwrap_or(50),
            },
        };
        GithubConfig {
            app_id: raw.app_id,
            private_key,
            webhook_secrets,
            api_url,
            request_timeout: self.duration(
                "github.request_timeout",
                raw.request_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            redeliver,
            issuer: raw.issuer.unwrap_or_default(),
            status_reports_per_minute: match raw.status_reports_per_minute {
                None => DEFAULT_STATUS_REPORTS_PER_MINUTE,
                Some(n) if n > MAX_STATUS_REPORTS_PER_MINUTE => {
                    self.err(
                        "github.status_reports_per_minute",
                        format!("must be at most {MAX_STATUS_REPORTS_PER_MINUTE}"),
                    );
                    DEFAULT_STATUS_REPORTS_PER_MINUTE
                }
                Some(n) => n,
            },
        }
    }

    pub(super) fn gitlab(&mut self, raw: raw::RawGitlab, dry_run: bool) -> GitlabConfig {
        let url = match raw.url.as_deref() {
            Some(u) => self.url("gitlab.url", u),
            None => {
                self.err("gitlab.url", "is required");
                None
            }
        }
        .unwrap_or_else(|| Url::parse("https://gitlab.invalid").expect("static URL"));
        let token = raw.token.as_ref().and_then(|s| self.secret("gitlab.token", s));
        if raw.token.is_none() && !dry_run {
            self.err("gitlab.token", "is required unless server.dry_run = true");
        }
        let webhook_token = raw
            .webhook_token
            .as_ref()
            .and_then(|s| self.secret("gitlab.webhook_token", s));
        let signing_token = raw
            .signing_token
            .as_ref()
            .and_then(|s| self.secret("gitlab.signing_token", s));
        if raw.webhook_token.is_none() && raw.signing_token.is_none() {
            self.err(
                "gitlab.webhook_token",
                "one of webhook_token or signing_token is required",
            );
        }
        if let Some(s) = signing_token.as_ref().filter(|_| !self.skip_secrets)
            && crate::crypto::standard_webhooks_key(s.expose()).is_none()
        {
            self.err("gitlab.signing_token", "must be `whsec_` followed by base64");
        }
        let mut poll = Vec::new();
        for (i, p) in raw.poll.into_iter().enumerate() {
            let key = format!("gitlab.poll[{i}]");
            match p.project {
                Some(project) if !project.is_empty() => poll.push(GitlabPoll {
                    project,
                    interval: self.duration(
                        &format!("{key}.interval"),
                        p.interval.as_deref(),
                        Duration::from_secs(30),
                    ),
                }),
                _ => self.err(format!("{key}.project"), "is required"),
            }
        }
        GitlabConfig {
            issuer: raw.issuer.unwrap_or_default(),
            url,
            token,
            webhook_token,
            signing_token,
            represented_as: raw.represented_as,
            play_after_approval: raw.play_after_approval.unwrap_or(false),
            signature_tolerance: self.duration(
                "gitlab.signature_tolerance",
                raw.signature_tolerance.as_deref(),
                Duration::from_secs(300),
            ),
            request_timeout: self.duration(
                "gitlab.request_timeout",
                raw.request_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            poll,
        }
    }

    pub(super) fn slack(&mut self, raw: raw::RawSlack) -> Option<SlackConfig> {
        let bot_token = match &raw.bot_token {
            Some(s) => self.secret("slack.bot_token", s),
            None => {
                self.err("slack.bot_token", "is required");
                None
            }
        };
        let signing_secret = match &raw.signing_secret {
            Some(s) => self.secret("slack.signing_secret", s),
            None => {
                self.err("slack.signing_secret", "is required");
                None
            }
        };
        let api_url = self.url(
            "slack.api_url",
            raw.api_url.as_deref().unwrap_or("https://slack.com/api"),
        );
        Some(SlackConfig {
            bot_token: bot_token?,
            signing_secret: signing_secret?,
            api_url: api_url?,
            team_id: raw.team_id.filter(|t| !t.trim().is_empty()),
        })
    }

    pub(super) fn sso(&mut self, raw: raw::RawSso) -> Option<SsoConfig> {
        let issuer = match raw.issuer.as_deref() {
            Some(i) => self.url("sso.issuer", i),
            None => {
                self.err("sso.issuer", "is required");
                None
            }
        };
        let client_id = raw.client_id.filter(|c| !c.is_empty());
        if client_id.is_none() {
            self.err("sso.client_id", "is required");
        }
        let client_secret = raw
            .client_secret
            .as_ref()
            .and_then(|s| self.secret("sso.client_secret", s));
        Some(SsoConfig {
            issuer: issuer?,
            client_id: client_id?,
            client_secret,
            groups_claim: raw.groups_claim.unwrap_or_else(|| "groups".into()),
            trust_unverified_email: raw.trust_unverified_email.unwrap_or(false),
        })
    }

    /// The issuer whose tokens attest a platform instance's runs: the one
    /// `[{section}] issuer` names (it must be of that kind), else the only
    /// issuer of that kind. With several, the configuration must name one:
    /// two instances of one kind (github.com and a GitHub Enterprise Server)
    /// must never attest each other's runs.
    pub(super) fn bind_issuer(
        &mut self,
        section: &str,
        named: &str,
        kind: Platform,
        issuers: &[IssuerConfig],
    ) -> String {
        let key = format!("{section}.issuer");
        let of_kind: Vec<&IssuerConfig> = issuers.iter().filter(|i| i.kind == kind).collect();
        if !named.is_empty() {
            match issuers.iter().find(|i| i.name == named) {
                Some(i) if i.kind == kind => {}
                Some(_) => self.err(key, format!("`{named}` is not an issuer of kind {kind}")),
                None => self.err(key, format!("`{named}` names no [[issuers]] entry")),
            }
            return named.to_string();
        }
        match of_kind.as_slice() {
            [one] => one.name.clone(),
            [] => String::new(),
            several => {
                self.err(
                    key,
                    format!(
                        "{} issuers of kind {kind} are configured ({}); name the one whose tokens attest this instance's runs",
                        several.len(),
                        several.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
                String::new()
            }
        }
    }

    pub(super) fn issuers(&mut self, raw: Vec<raw::RawIssuer>) -> Vec<IssuerConfig> {
        let mut out: Vec<IssuerConfig> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("issuers[{i}]");
            let name = r.name.unwrap_or_else(|| format!("issuer-{i}"));
            let kind = match r.kind.as_deref() {
                Some("github") => Some(Platform::Github),
                Some("gitlab") => Some(Platform::Gitlab),
                Some(other) => {
                    self.err(
                        format!("{key}.kind"),
                        format!("`{other}` is not one of \"github\", \"gitlab\""),
                    );
                    None
                }
                None => {
                    self.err(format!("{key}.kind"), "is required (\"github\" or \"gitlab\")");
                    None
                }
            };
            let issuer = match r.issuer.as_deref() {
                Some(u) => self
                    .url(&format!("{key}.issuer"), u)
                    .map(|_| u.trim_end_matches('/').to_string()),
                None => {
                    self.err(format!("{key}.issuer"), "is required");
                    None
                }
            };
            let audience = r.audience.filter(|a| !a.is_empty());
            if audience.is_none() {
                self.err(
                    format!("{key}.audience"),
                    "is required: tokens must be minted for portcullis",
                );
            }
            let jwks_url = r
                .jwks_url
                .as_deref()
                .and_then(|u| self.url(&format!("{key}.jwks_url"), u));
            if let (Some(kind), Some(issuer), Some(audience)) = (kind, issuer, audience) {
                if out.iter().any(|o| o.issuer == issuer) {
                    self.err(format!("{key}.issuer"), format!("`{issuer}` is listed twice"));
                }
                out.push(IssuerConfig {
                    name,
                    kind,
                    issuer,
                    audience,
                    jwks_url,
                });
            }
        }
        out
    }
}
