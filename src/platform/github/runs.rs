//! Reading a workflow run: which attempt is running and who started it.
//!
//! A GitHub OIDC token's `actor` is the user who started the run's *first*
//! attempt; a re-run keeps it, whoever re-ran it. The Actions API tells the
//! current attempt (`run_attempt`) and the person who started it
//! (`triggering_actor`), so the gate checks that person, not the token's.

use reqwest::Method;
use serde_json::Value;

use super::{Auth, GithubClient, MAX_BODY, PLATFORM, check_name};
use crate::domain::RunAttempt;
use crate::platform::http::CallFailure;

impl GithubClient {
    /// `GET /repos/{owner}/{repo}/actions/runs/{run_id}` with the
    /// installation's token: the run's current attempt and who started it
    /// (`triggering_actor`, else `actor`).
    pub async fn run_attempt(
        &self,
        owner: &str,
        repo: &str,
        run_id: u64,
        installation_id: Option<u64>,
    ) -> Result<RunAttempt, CallFailure> {
        check_name(owner).and_then(|()| check_name(repo))?;
        let (installation, _) = self
            .installation(owner, repo, installation_id)
            .await
            .map_err(|f| f.in_step("installation lookup"))?;
        let token = self
            .installation_token(installation)
            .await
            .map_err(|f| f.in_step("installation token"))?;
        let url = self.endpoint(&["repos", owner, repo, "actions", "runs", &run_id.to_string()]);
        let answer = self
            .call(Method::GET, url, Auth::Token(&token), None, MAX_BODY)
            .await
            .map_err(|f| f.in_step("workflow run"))?;
        let status = answer.status.as_u16();
        let run: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| CallFailure::malformed(PLATFORM, status, "a workflow run that is not JSON"))?;
        let login = |key: &str| {
            run.get(key)
                .and_then(|u| u.get("login"))
                .and_then(Value::as_str)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
        };
        let number = run
            .get("run_attempt")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| CallFailure::malformed(PLATFORM, status, "a workflow run without `run_attempt`"))?;
        if run.get("id").and_then(Value::as_u64) != Some(run_id) {
            return Err(CallFailure::malformed(PLATFORM, status, "another workflow run"));
        }
        let actor = login("actor");
        let triggering_actor = login("triggering_actor").or_else(|| actor.clone());
        Ok(RunAttempt {
            number,
            actor,
            triggering_actor,
            read: true,
        })
    }
}
