//! Following the master that Redis Sentinel names, through the redis crate's
//! [`SentinelClient`]: one multiplexed connection to the master, found by
//! asking the sentinels (which the crate checks with `ROLE`), dropped when it
//! fails, and found again for the next command.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind, Value,
};

use super::TIMEOUT;
use super::sentinel_url::SentinelUrl;

/// After the sentinels named no reachable master, commands fail with that
/// answer for this long before the sentinels are asked again, so that the
/// commands of a busy service do not queue up behind one lookup each.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(250);

/// The master of one sentinel-watched group, followed across failovers.
pub(super) struct Follower {
    master: String,
    db: i64,
    config: AsyncConnectionConfig,
    /// Held while the sentinels are asked: one lookup at a time.
    lookup: tokio::sync::Mutex<Lookup>,
    current: Mutex<Option<Current>>,
}

struct Lookup {
    client: SentinelClient,
    /// Counts connections made, so that a failure drops only the connection
    /// it happened on.
    generation: u64,
    failed: Option<(Instant, RedisError)>,
}

#[derive(Clone)]
struct Current {
    generation: u64,
    conn: MultiplexedConnection,
}

impl Follower {
    /// Connects to nothing yet: the first command asks the sentinels.
    pub(super) fn new(url: &SentinelUrl) -> RedisResult<Follower> {
        let sentinels = url.sentinels.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder = SentinelClientBuilder::new(sentinels, &url.master, SentinelServerType::Master)?
            .set_client_to_redis_db(url.db);
        if let Some(user) = &url.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &url.password {
            builder = builder.set_client_to_redis_password(password);
        }
        Ok(Follower {
            master: url.master.clone(),
            db: url.db,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT)),
            lookup: tokio::sync::Mutex::new(Lookup {
                client: builder.build()?,
                generation: 0,
                failed: None,
            }),
            current: Mutex::new(None),
        })
    }

    pub(super) fn master(&self) -> &str {
        &self.master
    }

    pub(super) fn db(&self) -> i64 {
        self.db
    }

    fn cached(&self) -> Option<Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The connection to the master, asking the sentinels first if there is
    /// none. Fails within [`TIMEOUT`] when they name no reachable master.
    async fn connection(&self) -> RedisResult<Current> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut lookup = self.lookup.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some((at, e)) = &lookup.failed
            && at.elapsed() < ASK_AGAIN_AFTER
        {
            return Err(e.clone());
        }
        let config = &self.config;
        let client = &mut lookup.client;
        let found = tokio::time::timeout(TIMEOUT, async move {
            let master = client.async_get_client().await?;
            let address = master.get_connection_info().addr().to_string();
            let conn = master.get_multiplexed_async_connection_with_config(config).await?;
            Ok::<_, RedisError>((address, conn))
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        match found {
            Ok((address, conn)) => {
                lookup.generation += 1;
                lookup.failed = None;
                let current = Current {
                    generation: lookup.generation,
                    conn,
                };
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
                tracing::info!(master = %self.master, %address, "connected to the Redis master the sentinels name");
                Ok(current)
            }
            Err(e) => {
                lookup.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Drops the connection of `generation` after `why`, if it is still the
    /// current one: the next command asks the sentinels again.
    fn forget(&self, generation: u64, why: &dyn std::fmt::Display) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
            tracing::warn!(master = %self.master, error = %why, "the Redis master failed or stepped down; asking the sentinels again");
        }
    }

    pub(super) async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut current = self.connection().await?;
        let result = current.conn.req_packed_command(cmd).await;
        match &result {
            Err(e) if moves_on(e) => self.forget(current.generation, e),
            Ok(Value::ServerError(e)) if stepped_down(e.kind()) => self.forget(current.generation, &e.code()),
            _ => {}
        }
        result
    }

    pub(super) async fn pipeline(&self, pipe: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let mut current = self.connection().await?;
        let result = current.conn.req_packed_commands(pipe, offset, count).await;
        match &result {
            Err(e) if moves_on(e) => self.forget(current.generation, e),
            Ok(values) => {
                for v in values {
                    if let Value::ServerError(e) = v
                        && stepped_down(e.kind())
                    {
                        self.forget(current.generation, &e.code());
                    }
                }
            }
            _ => {}
        }
        result
    }
}

/// The connection is gone, hung, or no longer on a master.
fn moves_on(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::Server(kind) if stepped_down(Some(kind)))
}

/// A write refused because the server is a replica now (a failover demoted
/// it), or a replica that lost its master.
fn stepped_down(kind: Option<ServerErrorKind>) -> bool {
    matches!(kind, Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown))
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the sentinels named no reachable master within {} s", TIMEOUT.as_secs()),
    ))
}
