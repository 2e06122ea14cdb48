//! Slack: one living message per deployment request, and the buttons that
//! turn a verified human's click into a review.
//!
//! - [`client`]: the Slack Web API calls portcullis makes (`chat.postMessage`,
//!   `chat.update`, `chat.getPermalink`, `users.info`), with timeouts and
//!   `Retry-After` honoured.
//! - [`message`]: the Block Kit message for a request: a pure function of the
//!   request, its environment's policy and its links.
//! - [`notifier`]: the gate's [`crate::gate::Notifier`]: posts, then updates,
//!   the message of each request in the background, one request at a time.
//! - [`signature`]: Slack's v0 request signatures on interactivity payloads.
//! - [`interaction`]: a button click into a review: the Slack user's email
//!   through `users.info`, the environment's reviewer list, the aliases that
//!   let the engine refuse self-review.
//!
//! - [`break_glass`]: the "Break glass…" button, its modal, the Confirm
//!   and Review buttons of the alert channel, turned into grant steps.
//! - [`alerts`]: the alert channel's messages of each grant step, and the
//!   grant's line on a request's message.
//!
//! Slack being down or slow never blocks or changes a decision: every call
//! made for the message happens in the notifier's background task, and a
//! click only ever adds a review through [`crate::gate::Gate::add_review`].

pub mod alerts;
pub mod break_glass;
pub mod client;
pub mod interaction;
pub mod message;
pub mod notifier;
pub mod signature;

pub use client::{Posted, SlackClient, SlackError, SlackUser};
pub use notifier::SlackNotifier;

/// `action_id` of the Approve button; its `value` is the request id.
pub const ACTION_APPROVE: &str = "portcullis_approve";
/// `action_id` of the Reject button; its `value` is the request id.
pub const ACTION_REJECT: &str = "portcullis_reject";
/// `action_id` of the link button of SSO reviews (`reviews.via = "sso"`).
/// Slack still tells the app of the click; it is acknowledged and ignored.
pub const ACTION_SSO: &str = "portcullis_review_sso";
