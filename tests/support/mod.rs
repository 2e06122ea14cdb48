//! Shared test support: the real parts the integration tests run (an OpenID
//! Provider, GitHub API mocks, Redis servers, moto as S3, the application in
//! process or as the binary, and the capture of its logs).
//! Each test binary includes this with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod app;
pub mod browser;
pub mod bundle;
pub mod github_mock;
pub mod gitlab_mock;
pub mod logs;
pub mod moto;
pub mod oidc;
pub mod openapi;
pub mod prism;
pub mod redis;
pub mod slack_mock;
pub mod slack_views;
pub mod switch;
