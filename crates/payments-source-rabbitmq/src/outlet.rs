//! What the dead-letter sink and the publisher share: a connection with a channel in confirm
//! mode, made again after it breaks, and publishing that counts only what RabbitMQ confirmed.
//!
//! A message is published `mandatory` and persistent, and counts as stored only when RabbitMQ
//! confirms it with a plain `basic.ack` (`Confirmation::Ack(None)`). Without `mandatory`, a
//! message no queue takes is confirmed all the same and silently dropped; with it, it is
//! returned (`Ack(Some(returned))`, `NO_ROUTE`), which is an error here. A `basic.nack` (the
//! broker could not store it) is an error too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;

use crate::config::RabbitTargetConfig;
use crate::connection::{self, Declared, bounded};
use crate::errors;

/// Why a publication did not count.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutletError {
    /// The broker or the network failed: publishing again may work.
    #[error("RabbitMQ did not take it")]
    Transient(#[source] lapin::Error),
    /// Publishing cannot work as configured (refused credentials, a missing exchange).
    #[error("RabbitMQ refused it")]
    Permanent(#[source] lapin::Error),
    /// TLS refused the server (its certificate, or a handshake answered in plain text).
    #[error("cannot connect over TLS")]
    TlsRefused(#[source] errors::TlsRefused),
    /// No queue took the message: it was returned (`NO_ROUTE`), not stored.
    #[error("no queue is bound to take it: RabbitMQ returned it ({code} {text})")]
    Unroutable {
        /// The reply code, 312.
        code: u16,
        /// The broker's words.
        text: String,
    },
    /// The broker said it could not store the message (`basic.nack`).
    #[error("RabbitMQ refused to store it (basic.nack)")]
    Nacked,
    /// The confirmation did not come in time.
    #[error("RabbitMQ did not confirm it within {0:?}")]
    TimedOut(std::time::Duration),
}

impl OutletError {
    /// Whether publishing again later may work.
    pub(crate) const fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Nacked | Self::TimedOut(_))
    }

    fn from_lapin(err: lapin::Error) -> Self {
        match errors::TlsRefused::new(err) {
            Ok(refused) => Self::TlsRefused(refused),
            Err(err) if errors::is_transient(&err) => Self::Transient(err),
            Err(err) => Self::Permanent(err),
        }
    }
}

/// The connection and its confirming channel, with a number that tells a link from the one it
/// replaced.
struct Link {
    generation: u64,
    channel: Channel,
    connection: Connection,
}

/// A publishing connection to one target.
pub(crate) struct Outlet {
    config: RabbitTargetConfig,
    link: Mutex<Option<Link>>,
    generations: AtomicU64,
}

impl Outlet {
    /// Connects, and declares what the URL names (so that a wrong exchange or refused
    /// credentials show at once, not with the first message).
    pub(crate) async fn open(config: RabbitTargetConfig) -> Result<Self, OutletError> {
        let outlet = Self { config, link: Mutex::new(None), generations: AtomicU64::new(0) };
        outlet.channel().await?;
        Ok(outlet)
    }

    pub(crate) fn config(&self) -> &RabbitTargetConfig {
        &self.config
    }

    /// The confirming channel, and its link's generation; a new connection if there is none.
    async fn channel(&self) -> Result<(u64, Channel), OutletError> {
        let mut link = self.link.lock().await;
        if let Some(link) = link.as_ref()
            && link.channel.status().connected()
        {
            return Ok((link.generation, link.channel.clone()));
        }
        *link = None;
        let made = self.open_link().await.map_err(OutletError::from_lapin)?;
        let answer = (made.generation, made.channel.clone());
        *link = Some(made);
        Ok(answer)
    }

    async fn open_link(&self) -> lapin::Result<Link> {
        let config = &self.config;
        let connection = connection::connect(&config.endpoint, &config.connection_name()).await?;
        if let Some(queue) = &config.queue
            && connection::declare_queue(&connection, queue).await? == Declared::Existing
        {
            tracing::debug!(queue, "publishing to a queue declared elsewhere");
        }
        if let Some(exchange) = &config.exchange {
            connection::check_exchange(&connection, exchange, config.queue.as_deref(), config.routing_key())
                .await?;
        }
        let channel = bounded(config.timeout, "open a channel", connection.create_channel()).await?;
        bounded(config.timeout, "select confirms", channel.confirm_select(ConfirmSelectOptions::default()))
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        Ok(Link { generation, channel, connection })
    }

    /// Forgets the link of `generation` after it failed, unless it was replaced meanwhile: the
    /// next publication connects again.
    async fn forget(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|link| link.generation == generation) {
            *link = None;
        }
    }

    /// Publishes each body with its properties, made persistent, in order, and returns once
    /// RabbitMQ has confirmed every one.
    pub(crate) async fn publish(&self, messages: Vec<(&[u8], BasicProperties)>) -> Result<(), OutletError> {
        let (generation, channel) = self.channel().await?;
        let result = self.publish_on(&channel, messages).await;
        if let Err(err) = &result
            && matches!(err, OutletError::Transient(_) | OutletError::TimedOut(_))
        {
            self.forget(generation).await;
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        messages: Vec<(&[u8], BasicProperties)>,
    ) -> Result<(), OutletError> {
        let deadline = Instant::now() + self.config.timeout;
        let exchange = self.config.publish_exchange();
        let routing_key = self.config.routing_key();
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let mut confirms = Vec::with_capacity(messages.len());
        for (body, properties) in messages {
            let published = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties.with_delivery_mode(2),
                )
                .await
                .map_err(OutletError::from_lapin)?;
            confirms.push(published);
        }
        // Every confirmation is waited for, even after a failure, so that none is left behind.
        let mut first_error = None;
        for confirm in confirms {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = match tokio::time::timeout(left, confirm).await {
                Err(_) => Err(OutletError::TimedOut(self.config.timeout)),
                Ok(Err(err)) => Err(OutletError::from_lapin(err)),
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(OutletError::Unroutable {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                }),
                Ok(Ok(Confirmation::Nack(_))) => Err(OutletError::Nacked),
                // `confirm_select` was sent when the channel was made.
                Ok(Ok(Confirmation::NotRequested)) => Err(OutletError::Nacked),
            };
            if let Err(err) = outcome {
                let timed_out = matches!(err, OutletError::TimedOut(_));
                first_error.get_or_insert(err);
                if timed_out {
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes the channel and the connection.
    pub(crate) async fn close(&self) -> Result<(), OutletError> {
        let Some(Link { channel, connection, .. }) = self.link.lock().await.take() else { return Ok(()) };
        let closed =
            bounded(self.config.timeout, "close the channel", channel.close(200, "closing".into())).await;
        let _ = bounded(self.config.timeout, "close the connection", connection.close(200, "closing".into()))
            .await;
        closed.map_err(OutletError::from_lapin)
    }
}
