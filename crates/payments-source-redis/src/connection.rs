//! The writers' connection (dead letters, publishing): redis's `ConnectionManager`, which makes a
//! new connection in the background after one breaks. The command that met the broken one fails
//! (the caller retries it); the next one goes out on the new connection.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisStreamConfig;

/// Why a writer could not be made: TLS not built in, or the server not reached.
pub(crate) enum OpenError {
    /// The URL needs something this build lacks, or the client refuses it.
    Config(String, Option<redis::RedisError>),
    /// The server could not be reached.
    Redis(redis::RedisError),
}

pub(crate) async fn open(config: &RedisStreamConfig) -> Result<ConnectionManager, OpenError> {
    if config.endpoint.is_tls() && !cfg!(feature = "tls") {
        return Err(OpenError::Config(
            format!("{} needs TLS: build payments-source-redis with its `tls` feature", config.endpoint),
            None,
        ));
    }
    let client = config
        .endpoint
        .client()
        .map_err(|err| OpenError::Config(format!("invalid Redis URL {}", config.endpoint), Some(err)))?;
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    client.get_connection_manager_with_config(settings).await.map_err(OpenError::Redis)
}
