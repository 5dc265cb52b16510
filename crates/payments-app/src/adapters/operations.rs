//! `--metrics-addr`: the metrics adapter wired around a run. Off, it is nothing at all: no
//! observer (so no clock read around a save), no endpoint, so that a run without metrics pays
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use payments_metrics::{Destination, Endpoints, Metrics};
use payments_ports::{BacklogProbe, BoxError, Observer, PaymentsRepository, RelayObserver};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{InputSpec, OpenError, StoreSpec};

/// How often the store is pinged and the broker asked for its backlog.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The operations side of one `consume` run.
#[derive(Debug)]
pub struct Operations(Option<Active>);

#[derive(Debug)]
struct Active {
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    watch: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Operations {
    /// Serves the endpoints on `address` (`HOST:PORT`; port 0 picks a free one), for a consumer
    /// of `input` into `store`; `None`: no metrics.
    ///
    /// # Errors
    ///
    /// When the address cannot be listened on.
    pub async fn start(
        address: Option<&str>,
        input: &InputSpec,
        store: &StoreSpec,
        relaying: bool,
    ) -> Result<Self, OpenError> {
        let metrics = Metrics::new(input.destination(), store.entry().name);
        Self::serve(address, if relaying { metrics.with_relay() } else { metrics }).await
    }

    /// Serves the endpoints on `address` for a relay alone (`payments-app relay`) of `store`.
    ///
    /// # Errors
    ///
    /// When the address cannot be listened on.
    pub async fn start_relay(address: Option<&str>, store: &StoreSpec) -> Result<Self, OpenError> {
        Self::serve(address, Metrics::relay_only(store.entry().name)).await
    }

    async fn serve(address: Option<&str>, metrics: Metrics) -> Result<Self, OpenError> {
        let Some(address) = address else { return Ok(Self(None)) };
        let failed = |source: BoxError| OpenError::Metrics { address: address.to_owned(), source };
        let listener = TcpListener::bind(address).await.map_err(|err| failed(err.into()))?;
        let metrics = Arc::new(metrics);
        let stop = CancellationToken::new();
        let endpoints = Endpoints::serve(listener, Arc::clone(&metrics), stop.clone())
            .map_err(|err| failed(err.into()))?;
        Ok(Self(Some(Active { metrics, endpoints, watch: None, stop })))
    }

    /// Where the endpoints listen, when they do.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.0.as_ref().map(|active| active.endpoints.address())
    }

    /// What the consumer reports to, when metrics are on: every delivery, and the time of every
    /// save.
    pub fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.0.as_ref().map(|active| Arc::clone(&active.metrics) as Arc<dyn Observer>)
    }

    /// What an outbox relay reports to, when metrics are on.
    pub fn relay_observer(&self) -> Option<Arc<dyn RelayObserver>> {
        self.0.as_ref().map(|active| Arc::clone(&active.metrics) as Arc<dyn RelayObserver>)
    }

    /// Start-up is done: the store and the source are open. Readiness may pass from now on, and
    /// the store and the broker are watched.
    pub fn started(&mut self, store: Arc<dyn PaymentsRepository>, probe: Option<Arc<dyn BacklogProbe>>) {
        let Some(active) = &mut self.0 else { return };
        active.metrics.set_source_up(true);
        active.metrics.health().mark_started();
        active.watch = Some(payments_metrics::watch(
            Arc::clone(&active.metrics),
            store,
            probe,
            WATCH_EVERY,
            active.stop.clone(),
        ));
    }

    /// Shutdown began: readiness fails from now on.
    pub fn stopping(&self) {
        if let Some(active) = &self.0 {
            active.metrics.health().mark_stopping();
        }
    }

    /// Readiness fails as soon as `shutdown` is asked for, while the consumer still drains.
    pub fn stop_being_ready_on(&self, shutdown: &CancellationToken) {
        let Some(active) = &self.0 else { return };
        let (metrics, shutdown, stop) = (Arc::clone(&active.metrics), shutdown.clone(), active.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => metrics.health().mark_stopping(),
                () = stop.cancelled() => {}
            }
        });
    }

    /// Stops watching and serving.
    pub async fn stop(self) {
        let Some(active) = self.0 else { return };
        active.metrics.health().mark_stopping();
        active.stop.cancel();
        if let Some(watch) = active.watch {
            let _ = watch.await;
        }
        active.endpoints.stopped().await;
    }
}

impl InputSpec {
    /// The messaging labels of this input: which system, which destination, which group.
    fn destination(&self) -> Destination {
        match self {
            Self::Lines(path) => Destination {
                system: "file".into(),
                name: if path == "-" { "stdin".into() } else { path.clone() },
                group: None,
            },
            Self::Redis(config) => Destination {
                system: "redis".into(),
                name: config.stream().to_owned(),
                group: Some(config.group().to_owned()),
            },
            Self::Nats(config) => Destination {
                system: "nats".into(),
                name: config.subject().to_owned(),
                group: Some(config.consumer().to_owned()),
            },
            // In RabbitMQ the queue is the group: no label of its own.
            Self::Rabbit(config) => {
                Destination { system: "rabbitmq".into(), name: config.queue().to_owned(), group: None }
            }
        }
    }
}
