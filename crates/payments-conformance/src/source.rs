//! The source suite: every [`DeliverySource`] runs it against its real broker, with cases named
//! after the sentences of the source contract (in `payments_ports`' `source` module).
//!
//! A source crate plugs in with a [`SourceHarness`] (make a fresh destination, publish raw bytes
//! to it, open a source on it under an identity, remove it) and a test file of a few lines:
//!
//! ```no_run
//! # struct RedisHarness;
//! # #[async_trait::async_trait]
//! # impl payments_conformance::source::SourceHarness for RedisHarness {
//! #     type Env = ();
//! #     fn adapter(&self) -> &'static str { "redis" }
//! #     fn capabilities(&self) -> payments_conformance::source::SourceCapabilities { Default::default() }
//! #     fn redelivery_timeout(&self) -> std::time::Duration { std::time::Duration::from_secs(1) }
//! #     async fn setup(&self) -> Result<(), payments_conformance::BoxError> { Ok(()) }
//! #     async fn publish(&self, _: &(), _: &[bytes::Bytes]) -> Result<(), payments_conformance::BoxError> { Ok(()) }
//! #     async fn open(&self, _: &(), _: &payments_conformance::source::Identity, _: usize) -> Result<Box<dyn payments_ports::DeliverySource>, payments_conformance::BoxError> { unimplemented!() }
//! # }
//! fn main() -> std::process::ExitCode {
//!     payments_conformance::source::main(RedisHarness)
//! }
//! ```
//!
//! What a source cannot do is declared in its [`SourceCapabilities`]; a case that needs a
//! capability the source lacks is reported as skipped with the capability named, never passed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use payments_ports::DeliverySource;

use crate::BoxError;
use crate::runner::{self, CaseOutcome, Entry, Lacking};

pub use crate::source_cases::{SourceCase, all_source_cases};

/// Who reads: a consumer group, and a consumer in it. Two sources with the same identity are the
/// same consumer, started again; two with the same group share its messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The consumer group (for a queue: ignored, the queue is the group).
    pub group: String,
    /// The consumer's name within the group.
    pub consumer: String,
}

/// What a source can do beyond delivering. Cases that need a capability are skipped (by name) for
/// sources without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCapabilities {
    /// Any byte survives, a newline included (a line-framed source cannot carry one).
    pub binary_safe: bool,
    /// A dropped receipt's message comes back while the source runs (sentence 4).
    pub redelivers_dropped: bool,
    /// The attempt number counts deliveries exactly (sentence 2).
    pub exact_attempts: bool,
    /// Consumer groups: sources in one group share its messages, groups are independent, and a
    /// source of the group takes over what a crashed one held (sentences 5, 8, 12).
    pub groups: bool,
    /// A source opened again under the same identity gets its own unacknowledged messages back
    /// (sentence 6).
    pub resumes: bool,
    /// The bound on deliveries in flight (sentence 9), if the source keeps one.
    pub in_flight_bound: Option<usize>,
    /// A delivery held silently is taken back after a timeout, and renewing its lease keeps it
    /// (sentences 10 and 13).
    pub leases: bool,
    /// The harness can kill the source's broker connections (sentence 11).
    pub kill_connections: bool,
}

/// A capability a source case may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCapability {
    /// See [`SourceCapabilities::binary_safe`].
    BinarySafe,
    /// See [`SourceCapabilities::redelivers_dropped`].
    RedeliversDropped,
    /// See [`SourceCapabilities::exact_attempts`].
    ExactAttempts,
    /// See [`SourceCapabilities::groups`].
    Groups,
    /// See [`SourceCapabilities::resumes`].
    Resumes,
    /// See [`SourceCapabilities::in_flight_bound`].
    InFlightBound,
    /// See [`SourceCapabilities::leases`].
    Leases,
    /// See [`SourceCapabilities::kill_connections`].
    KillConnections,
}

impl SourceCapabilities {
    /// Whether these capabilities include `capability`.
    pub const fn has(self, capability: SourceCapability) -> bool {
        match capability {
            SourceCapability::BinarySafe => self.binary_safe,
            SourceCapability::RedeliversDropped => self.redelivers_dropped,
            SourceCapability::ExactAttempts => self.exact_attempts,
            SourceCapability::Groups => self.groups,
            SourceCapability::Resumes => self.resumes,
            SourceCapability::InFlightBound => self.in_flight_bound.is_some(),
            SourceCapability::Leases => self.leases,
            SourceCapability::KillConnections => self.kill_connections,
        }
    }
}

impl fmt::Display for SourceCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BinarySafe => "binary safe",
            Self::RedeliversDropped => "redelivers dropped receipts",
            Self::ExactAttempts => "exact attempt count",
            Self::Groups => "consumer groups",
            Self::Resumes => "same-identity resume",
            Self::InFlightBound => "in-flight bound",
            Self::Leases => "leases",
            Self::KillConnections => "kill connections",
        })
    }
}

/// How the suite makes sources of one adapter. Every case gets a fresh destination from
/// [`setup`](Self::setup) and removes it with [`teardown`](Self::teardown), whatever the outcome.
#[async_trait]
pub trait SourceHarness: Send + Sync + 'static {
    /// One case's destination: a stream, a subject, a queue, a file.
    type Env: Send + Sync + 'static;

    /// The adapter's short name in reports, such as `redis` or `lines`.
    fn adapter(&self) -> &'static str;

    /// What the source can do beyond delivering.
    fn capabilities(&self) -> SourceCapabilities;

    /// How long a dropped receipt's message, or a crashed source's, may take to come back: the
    /// claim timeout or ack wait the sources are opened with, plus how often they look. Cases wait
    /// up to three times this before they call a message lost, and watch twice this before they
    /// say nothing more came.
    fn redelivery_timeout(&self) -> Duration;

    /// Whether the source can run here at all, for example whether its broker is reachable. `Err`
    /// says why not and how to enable it; its cases are then skipped, or failed under `CI=true`.
    async fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// Creates a new, empty destination.
    async fn setup(&self) -> Result<Self::Env, BoxError>;

    /// Publishes `messages` to the destination, in order, each as one message of exactly these
    /// bytes, and returns once the broker has them.
    async fn publish(&self, env: &Self::Env, messages: &[Bytes]) -> Result<(), BoxError>;

    /// Opens a source on the destination under `identity`, delivering messages of up to
    /// `max_message_bytes` whole.
    async fn open(
        &self,
        env: &Self::Env,
        identity: &Identity,
        max_message_bytes: usize,
    ) -> Result<Box<dyn DeliverySource>, BoxError>;

    /// Kills every broker connection of the sources open on `env`, as a network fault or an
    /// administrator would. Needed by the `kill connections` capability only.
    async fn kill_connections(&self, env: &Self::Env) -> Result<(), BoxError> {
        let _ = env;
        Err(format!("the {} harness cannot kill connections", self.adapter()).into())
    }

    /// Removes everything `setup` created. The default does nothing beyond dropping it.
    async fn teardown(&self, env: &Self::Env) -> Result<(), BoxError> {
        let _ = env;
        Ok(())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Publish = Box<dyn Fn(Vec<Bytes>) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;
type Open =
    Box<dyn Fn(Identity, usize) -> BoxFuture<Result<Box<dyn DeliverySource>, BoxError>> + Send + Sync>;
type Kill = Box<dyn Fn() -> BoxFuture<Result<(), BoxError>> + Send + Sync>;

/// What a source case works with: publishes to, and opens sources on, the case's own destination.
pub struct SourceFixture {
    adapter: &'static str,
    capabilities: SourceCapabilities,
    redelivery_timeout: Duration,
    publish: Publish,
    open: Open,
    kill: Kill,
}

impl fmt::Debug for SourceFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFixture").field("adapter", &self.adapter).finish_non_exhaustive()
    }
}

/// The size limit sources are opened with unless a case says otherwise: above the largest message
/// the cases publish (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 2 << 20;

impl SourceFixture {
    fn new<H: SourceHarness>(harness: Arc<H>, env: Arc<H::Env>) -> Self {
        let (h1, e1) = (Arc::clone(&harness), Arc::clone(&env));
        let (h2, e2) = (Arc::clone(&harness), Arc::clone(&env));
        let (h3, e3) = (Arc::clone(&harness), env);
        Self {
            adapter: harness.adapter(),
            capabilities: harness.capabilities(),
            redelivery_timeout: harness.redelivery_timeout(),
            publish: Box::new(move |messages| {
                let (harness, env) = (Arc::clone(&h1), Arc::clone(&e1));
                Box::pin(async move { harness.publish(&env, &messages).await })
            }),
            open: Box::new(move |identity, max| {
                let (harness, env) = (Arc::clone(&h2), Arc::clone(&e2));
                Box::pin(async move { harness.open(&env, &identity, max).await })
            }),
            kill: Box::new(move || {
                let (harness, env) = (Arc::clone(&h3), Arc::clone(&e3));
                Box::pin(async move { harness.kill_connections(&env).await })
            }),
        }
    }

    /// The adapter's short name.
    pub const fn adapter(&self) -> &'static str {
        self.adapter
    }

    /// What the source declared.
    pub const fn capabilities(&self) -> SourceCapabilities {
        self.capabilities
    }

    /// How long a dropped or crashed delivery may take to come back.
    pub const fn redelivery_timeout(&self) -> Duration {
        self.redelivery_timeout
    }

    /// Publishes `messages`.
    ///
    /// # Panics
    ///
    /// When the harness cannot: the case fails with its error.
    pub async fn publish(&self, messages: Vec<Bytes>) {
        if let Err(err) = (self.publish)(messages).await {
            panic!("{} harness could not publish: {err}", self.adapter);
        }
    }

    /// Opens a source as `consumer` in `group`, with the default size limit.
    ///
    /// # Panics
    ///
    /// When the adapter cannot open it: the case fails with its error.
    pub async fn open(&self, group: &str, consumer: &str) -> Box<dyn DeliverySource> {
        self.open_limited(group, consumer, DEFAULT_MAX_MESSAGE_BYTES).await
    }

    /// Opens a source as `consumer` in `group`, delivering messages of up to `max_message_bytes`.
    ///
    /// # Panics
    ///
    /// When the adapter cannot open it: the case fails with its error.
    pub async fn open_limited(
        &self,
        group: &str,
        consumer: &str,
        max_message_bytes: usize,
    ) -> Box<dyn DeliverySource> {
        let identity = Identity { group: group.to_owned(), consumer: consumer.to_owned() };
        match (self.open)(identity, max_message_bytes).await {
            Ok(source) => source,
            Err(err) => panic!("{} source could not be opened as {group}/{consumer}: {err}", self.adapter),
        }
    }

    /// Kills the sources' broker connections.
    ///
    /// # Panics
    ///
    /// When the harness cannot.
    pub async fn kill_connections(&self) {
        if let Err(err) = (self.kill)().await {
            panic!("{} harness could not kill the connections: {err}", self.adapter);
        }
    }
}

/// Runs `case` against a fresh destination of `harness` and removes it afterwards.
///
/// Must be called inside a multi-threaded tokio runtime: cases spawn tasks.
pub async fn run_source_case<H: SourceHarness>(harness: Arc<H>, case: &SourceCase) -> CaseOutcome {
    let adapter = harness.adapter();
    if let Some(capability) = case.needs.iter().find(|&&c| !harness.capabilities().has(c)) {
        return CaseOutcome::Skipped(format!(
            "the {adapter} source does not declare the `{capability}` capability"
        ));
    }
    let env = match harness.setup().await {
        Ok(env) => Arc::new(env),
        Err(err) => {
            return CaseOutcome::Failed(format!("{adapter} source: setting up a destination failed: {err}"));
        }
    };
    let fixture = SourceFixture::new(Arc::clone(&harness), Arc::clone(&env));
    let run = case.run;
    let outcome = runner::isolated(adapter, case.name, async move { run(&fixture).await }).await;
    runner::after_teardown(adapter, case.name, outcome, harness.teardown(&env).await)
}

/// The entry point of a source's conformance test binary (`harness = false`): every source case as
/// a named test, `<adapter>::<case>`, with libtest's command line. See [`crate::main`] for how
/// missing capabilities, an unreachable broker and `CI=true` are reported.
pub fn main<H: SourceHarness>(harness: H) -> ExitCode {
    let harness = Arc::new(harness);
    let adapter = harness.adapter();
    let availability = runner::runtime().block_on(harness.available());
    let entries = all_source_cases()
        .into_iter()
        .map(|case| {
            let lacking = case.needs.iter().find(|&&c| !harness.capabilities().has(c)).map(|c| Lacking {
                capability: c.to_string(),
                reason: format!("needs the `{c}` capability, which the {adapter} source does not declare"),
            });
            let harness = Arc::clone(&harness);
            Entry {
                name: case.name,
                lacking,
                run: Box::new(move || runner::runtime().block_on(run_source_case(harness, &case))),
            }
        })
        .collect();
    runner::run_entries("source", adapter, availability, entries)
}
