//! Opening a Redis connection, the one way the state store and the audit
//! chain do it.
//!
//! - `redis://`, `rediss://`, `unix://`: a [`ConnectionManager`] that
//!   connects lazily (the service starts while Redis is down) and
//!   reconnects, with a 2 s connection and response timeout, 2 retries and
//!   at most 500 ms between them, so an unreachable Redis turns into an
//!   error quickly instead of a hung call.
//! - `redis+sentinel://[user:pass@]host1:port1,host2:port2/MASTER_NAME[/DB]`:
//!   the master the sentinels name (a sentinel's port defaults to 26379),
//!   through the redis crate's sentinel client, which checks with `ROLE`
//!   that the server it names is a master. Lazy too: the first command asks
//!   the sentinels. A dropped connection, a timeout, or a write refused as
//!   `READONLY` (a master demoted by a failover) drops the connection, and
//!   the next command asks the sentinels again; so after a failover, new
//!   commands go to the promoted replica without a restart. While the
//!   sentinels name no reachable master, commands fail within 2 s (and
//!   at once for 250 ms after a failed lookup). The user and password are
//!   the Redis servers'; the sentinels are asked without credentials.
//!
//! Either way the result is a [`RedisConn`]. Errors never hold the URL or its
//! password: the client's errors do not echo it, and a URL that does not
//! parse is named by what is wrong with it.
//!
//! # Acknowledgement by replicas
//! [`eval_and_wait`] sends a script and `WAIT n` in one pipeline: on one
//! connection, so the `WAIT` covers the script's write (Redis counts a
//! client's last write) and, the replication stream being one sequence,
//! every write the master took before it, from any connection.

mod sentinel;
mod sentinel_url;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

pub(crate) use sentinel_url::UrlError;
use sentinel_url::{SentinelUrl, is_sentinel};

/// Connection and response timeout of every connection.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long one `WAIT` waits for replicas: under [`TIMEOUT`], so that too
/// few acknowledgements are an answer, not a timeout.
pub(crate) const REPLICA_WAIT: Duration = Duration::from_millis(1000);

/// Why a connection could not be set up. The text never holds the URL (its
/// password): the client's errors do not echo it, and an invalid URL is
/// named by its kind only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("invalid redis URL ({0:?})")]
    InvalidUrl(redis::ErrorKind),
    #[error("invalid redis URL: {0}")]
    Url(#[from] UrlError),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
}

/// A connection to the Redis master, direct or found through sentinels;
/// clones share it. Use it as any async redis connection
/// (`query_async(&mut conn)`).
#[derive(Clone)]
pub struct RedisConn(Kind);

#[derive(Clone)]
enum Kind {
    Direct(ConnectionManager),
    Sentinel(Arc<sentinel::Follower>),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Direct(_) => f.write_str("RedisConn(direct)"),
            Kind::Sentinel(s) => write!(f, "RedisConn(sentinel master {:?})", s.master()),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Direct(c) => c.req_packed_command(cmd),
            Kind::Sentinel(s) => Box::pin(s.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Direct(c) => c.req_packed_commands(cmd, offset, count),
            Kind::Sentinel(s) => Box::pin(s.pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Direct(c) => c.get_db(),
            Kind::Sentinel(s) => s.db(),
        }
    }
}

/// A lazily connecting, reconnecting connection to `url` (see the module
/// documentation for the schemes).
pub(crate) fn connect(url: &str) -> Result<RedisConn, ConnectError> {
    if is_sentinel(url) {
        let parsed = SentinelUrl::parse(url)?;
        let follower = sentinel::Follower::new(&parsed).map_err(|e| ConnectError::InvalidUrl(e.kind()))?;
        return Ok(RedisConn(Kind::Sentinel(Arc::new(follower))));
    }
    let client = redis::Client::open(url).map_err(|e| ConnectError::InvalidUrl(e.kind()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(ConnectError::Redis)?;
    Ok(RedisConn(Kind::Direct(manager)))
}

/// Checks a `[state] url` for the configuration: a known scheme, and a
/// `redis+sentinel://` URL that parses.
pub(crate) fn check_url(url: &str) -> Result<(), UrlError> {
    if is_sentinel(url) {
        return SentinelUrl::parse(url).map(|_| ());
    }
    let known = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| url.starts_with(p));
    if known { Ok(()) } else { Err(UrlError::Scheme) }
}

/// The URL carries a password (so the configuration must not hold it inline).
pub(crate) fn url_has_password(url: &str) -> bool {
    if is_sentinel(url) {
        return sentinel_url::has_password(url);
    }
    url::Url::parse(url).is_ok_and(|p| p.password().is_some())
}

/// Sends `eval` (a script call) and `WAIT min_replicas` in one pipeline.
/// Returns the script's answer and how many replicas acknowledged the
/// script's write (and every write before it) within [`REPLICA_WAIT`].
/// A script that writes nothing leaves nothing for `WAIT` to count: it must
/// write (even a value over itself) for its answer to be covered.
pub(crate) async fn eval_and_wait(conn: &mut RedisConn, eval: Cmd, min_replicas: u32) -> RedisResult<(Value, u32)> {
    let mut pipe = redis::pipe();
    pipe.add_command(eval)
        .cmd("WAIT")
        .arg(min_replicas)
        .arg(REPLICA_WAIT.as_millis() as u64);
    pipe.query_async(conn).await
}

#[cfg(test)]
mod tests;
