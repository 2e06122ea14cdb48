//! Opening a Redis connection, the one way the state store and the audit
//! chain do it: a [`ConnectionManager`] that connects lazily (the service
//! starts while Redis is down) and reconnects, with a 2 s connection and
//! response timeout, 2 retries and at most 500 ms between them, so an
//! unreachable Redis turns into an error quickly instead of a hung call.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why a connection could not be set up. The text never holds the URL (its
/// password): the client's errors do not echo it, and an invalid URL is
/// named by its kind only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("invalid redis URL ({0:?})")]
    InvalidUrl(redis::ErrorKind),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
}

/// A lazily connecting, reconnecting connection to `url`.
pub(crate) fn connect(url: &str) -> Result<ConnectionManager, ConnectError> {
    let client = redis::Client::open(url).map_err(|e| ConnectError::InvalidUrl(e.kind()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(ConnectError::Redis)
}
