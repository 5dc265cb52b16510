//! How much waits for the source's group, as Redis counts it: `XINFO GROUPS`' `lag` (entries not
//! delivered to the group yet; Redis 7 and later) and `pending` (delivered, not acknowledged).

use async_trait::async_trait;
use payments_ports::{Backlog, BacklogProbe, SourceError};
use redis::streams::StreamInfoGroupsReply;
use tokio::sync::Mutex;

use crate::config::RedisSourceConfig;
use crate::link::Link;
use crate::source::source_error;

/// Asks on a connection of its own, so that it never waits behind the source's blocking reads.
pub(crate) struct RedisBacklog {
    config: RedisSourceConfig,
    link: Mutex<Link>,
}

impl RedisBacklog {
    pub(crate) fn new(config: RedisSourceConfig, link: Link) -> Self {
        Self { config, link: Mutex::new(link) }
    }
}

#[async_trait]
impl BacklogProbe for RedisBacklog {
    async fn backlog(&self) -> Result<Backlog, SourceError> {
        let mut link = self.link.lock().await;
        let mut connection = link.get().await.map_err(|err| source_error(&self.config, "connect", err))?;
        let reply: Result<StreamInfoGroupsReply, _> =
            redis::cmd("XINFO").arg("GROUPS").arg(self.config.stream()).query_async(&mut connection).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                link.reset();
                return Err(source_error(&self.config, "ask for the group's backlog", err));
            }
        };
        let group =
            reply.groups.into_iter().find(|group| group.name == self.config.group()).ok_or_else(|| {
                SourceError::failed(format!("the group is missing from XINFO GROUPS on {}", self.config))
            })?;
        Ok(Backlog { waiting: group.lag.map(|lag| lag as u64), unacknowledged: Some(group.pending as u64) })
    }
}
