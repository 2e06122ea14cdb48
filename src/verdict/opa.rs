//! Verdict mode `"opa"`: the same evaluation, asked of an OPA server's Data API.

use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use super::query::RulePath;
use super::{Evaluation, OpaFailure, PolicyError};

/// How long one Data API request may take, connection included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest Data API answer read; a verdict is a boolean and a few reasons.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A client of an OPA server's Data API (`POST {opa_url}/v1/data/<path>`).
///
/// The server's own clock drives `time.now_ns()` there (the Data API has no
/// way to fix it); the decision's clock reaches the policy as
/// `input.context.now_ns`.
#[derive(Debug, Clone)]
pub struct OpaClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl OpaClient {
    /// A client over `http`, with a 5 s limit per request.
    pub fn new(http: reqwest::Client) -> Self {
        OpaClient {
            http,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-request limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Evaluates `query` (a rule path such as `data.deploy.hipaa.allow`) at
    /// `opa_url` with `{"input": input}`, and its sibling `deny` (or, when
    /// undefined, `reasons`) document, with the same meaning as
    /// [`super::PolicyEngine::evaluate`].
    ///
    /// Any answer but a 200 with a Data API body is a [`PolicyError::Opa`]
    /// naming only what went wrong (timeout, unreachable, the status), never
    /// the server's text, and never an allow.
    pub async fn evaluate(&self, opa_url: &Url, query: &str, input: &Value) -> Result<Evaluation, PolicyError> {
        let path = RulePath::parse(query)?;
        let body =
            serde_json::to_vec(&json!({ "input": input })).map_err(|_| PolicyError::Opa(OpaFailure::Malformed))?;
        let deny_path = path.sibling("deny");
        let (allow, deny) = tokio::join!(
            self.document(opa_url, &path, &body),
            self.document(opa_url, &deny_path, &body)
        );
        let allow = allow?;
        let listed = match deny? {
            Some(value) => Some(value),
            None => self.document(opa_url, &path.sibling("reasons"), &body).await?,
        };
        Ok(Evaluation::from_results(&path, allow.as_ref(), listed.as_ref()))
    }

    /// One Data API request; `None` when the document is undefined (OPA
    /// answers `{}` without `result`).
    async fn document(&self, base: &Url, path: &RulePath, body: &[u8]) -> Result<Option<Value>, PolicyError> {
        let url = data_url(base, path)?;
        let mut response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(PolicyError::Opa(OpaFailure::Status(status.as_u16())));
        }
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(PolicyError::Opa(OpaFailure::TooLarge(MAX_RESPONSE_BYTES)));
            }
            bytes.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(mut map)) => Ok(map.remove("result")),
            _ => Err(PolicyError::Opa(OpaFailure::Malformed)),
        }
    }

    fn transport(&self, error: &reqwest::Error) -> PolicyError {
        if error.is_timeout() {
            PolicyError::Opa(OpaFailure::Timeout(self.timeout))
        } else {
            PolicyError::Opa(OpaFailure::Unreachable)
        }
    }
}

/// `{base}/v1/data/<components>`, keeping any path prefix of `base`.
fn data_url(base: &Url, path: &RulePath) -> Result<Url, PolicyError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| PolicyError::Opa(OpaFailure::BadUrl))?;
        segments.pop_if_empty().push("v1").push("data");
        for component in path.components() {
            segments.push(component);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_url_appends_the_rule_path_to_any_prefix() {
        let path = RulePath::parse("data.deploy.hipaa.allow").unwrap();
        for (base, expected) in [
            (
                "http://127.0.0.1:8181",
                "http://127.0.0.1:8181/v1/data/deploy/hipaa/allow",
            ),
            (
                "http://127.0.0.1:8181/",
                "http://127.0.0.1:8181/v1/data/deploy/hipaa/allow",
            ),
            (
                "https://opa.example.com/opa/?x=1",
                "https://opa.example.com/opa/v1/data/deploy/hipaa/allow",
            ),
        ] {
            let url = data_url(&Url::parse(base).unwrap(), &path).unwrap();
            assert_eq!(url.as_str(), expected, "{base}");
        }
    }
}
