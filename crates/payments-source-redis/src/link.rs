//! One named connection that is made again after it breaks.
//!
//! redis's `MultiplexedConnection` never reconnects, and its `ConnectionManager` cannot name its
//! new connections (`CLIENT SETNAME`), which is how an operator (or a test) finds the source's
//! connections in `CLIENT LIST`. A link connects when first used, names the connection, and
//! forgets it when the caller says it broke ([`Link::reset`]): the next use connects again.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Link {
    client: redis::Client,
    name: String,
    response_timeout: Option<Duration>,
    connection: Option<MultiplexedConnection>,
}

impl Link {
    /// A link to `client`'s server whose connections are named `name` and wait at most
    /// `response_timeout` for a reply (`None`: as long as it takes).
    pub(crate) fn new(client: redis::Client, name: String, response_timeout: Option<Duration>) -> Self {
        Self { client, name, response_timeout, connection: None }
    }

    /// The connection, made and named first if there is none. A clone: commands on it are
    /// pipelined on the same socket.
    pub(crate) async fn get(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(self.response_timeout);
        let mut connection = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("CLIENT").arg("SETNAME").arg(&self.name).exec_async(&mut connection).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection: the next [`get`](Self::get) makes a new one. The old socket closes
    /// once the last clone is dropped, even with a blocked read on it (redis aborts its driver).
    pub(crate) fn reset(&mut self) {
        self.connection = None;
    }
}
