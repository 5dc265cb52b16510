//! The conformance suite that every [`PaymentsRepository`] adapter runs: cases named after the
//! sentences of the port's contract, and a model-based case that runs random sequences.
//!
//! An adapter plugs in with a [`Harness`] (how to make an empty store, open it, and clean up) and a
//! test file of a few lines:
//!
//! ```no_run
//! // crates/payments-store-memory/tests/conformance.rs, with `harness = false` in Cargo.toml
//! # struct MemoryHarness;
//! # #[async_trait::async_trait]
//! # impl payments_conformance::Harness for MemoryHarness {
//! #     type Env = ();
//! #     fn adapter(&self) -> &'static str { "memory" }
//! #     fn capabilities(&self) -> payments_conformance::Capabilities { Default::default() }
//! #     async fn setup(&self) -> Result<(), payments_conformance::BoxError> { Ok(()) }
//! #     async fn open(&self, _: &()) -> Result<std::sync::Arc<dyn payments_ports::PaymentsRepository>, payments_conformance::BoxError> { unimplemented!() }
//! # }
//! fn main() -> std::process::ExitCode {
//!     payments_conformance::main(MemoryHarness)
//! }
//! ```
//!
//! Each case becomes its own test, named `<adapter>::<case>`, so a failure reads as
//! "memory adapter broke a_conflict_never_overwrites_the_stored_payment". A case that needs a
//! capability the adapter does not declare ([`Capabilities`]) is reported as ignored, by name,
//! with the capability it needs: it never passes silently.

mod cases;
pub mod harnesses;
mod kill;
mod model;
mod runner;
pub mod source;
mod source_cases;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
pub use payments_ports::BoxError;
use payments_ports::PaymentsRepository;

pub use cases::{Case, all_cases};
pub use kill::child_if_asked;
pub use runner::{CaseOutcome, main, run_case, run_case_within};

/// What an adapter can do beyond the base contract. Cases that need a capability are skipped (by
/// name) for adapters without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Everything recorded survives dropping the store and opening it again on the same
    /// environment (a file, a database).
    pub durable: bool,
    /// Several store instances, each with its own connections or handles, can be open on one
    /// environment at the same time, and the contract holds across them.
    pub shared: bool,
    /// A child process can open the same environment (the harness implements
    /// [`Harness::locate`] and [`Harness::open_at`]), so the suite can SIGKILL one mid-save and
    /// check what it reported new. Meaningful with `durable`.
    pub killable: bool,
    /// The store keeps an outbox: [`PaymentsRepository::outbox`] hands out a relay's handle, and
    /// the `Outbox` contract holds (with `durable`, across reopening; with `shared`, across
    /// instances, each with its own relay).
    pub outbox: bool,
}

/// A capability a case may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// See [`Capabilities::durable`].
    Durable,
    /// See [`Capabilities::shared`].
    Shared,
    /// See [`Capabilities::killable`].
    Killable,
    /// See [`Capabilities::outbox`].
    Outbox,
    /// An outbox in a durable store.
    DurableOutbox,
    /// An outbox in a shared store: several relays at once.
    SharedOutbox,
}

impl Capabilities {
    /// Whether these capabilities include `capability`.
    pub const fn has(self, capability: Capability) -> bool {
        match capability {
            Capability::Durable => self.durable,
            Capability::Shared => self.shared,
            Capability::Killable => self.durable && self.killable,
            Capability::Outbox => self.outbox,
            Capability::DurableOutbox => self.outbox && self.durable,
            Capability::SharedOutbox => self.outbox && self.shared,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Durable => "durable",
            Self::Shared => "shared",
            Self::Killable => "killable",
            Self::Outbox => "outbox",
            Self::DurableOutbox => "durable outbox",
            Self::SharedOutbox => "shared outbox",
        })
    }
}

/// How the suite makes stores of one adapter. Every case gets a fresh environment from
/// [`setup`](Harness::setup) and removes it with [`teardown`](Harness::teardown), whatever the outcome.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Where one case's store lives: a temporary directory, a database schema, or nothing.
    type Env: Send + Sync + 'static;

    /// The adapter's short name in reports, such as `memory` or `file`.
    fn adapter(&self) -> &'static str;

    /// What the adapter can do beyond the base contract.
    fn capabilities(&self) -> Capabilities;

    /// Whether the adapter can run here at all, for example whether its server is reachable.
    /// `Err` says why not and how to enable it; its cases are then skipped, or failed under `CI=true`.
    async fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// Creates a new, empty environment.
    async fn setup(&self) -> Result<Self::Env, BoxError>;

    /// Opens a store on `env`. Called again after the previous store was dropped (durable cases),
    /// or while it is still open (shared cases).
    async fn open(&self, env: &Self::Env) -> Result<Arc<dyn PaymentsRepository>, BoxError>;

    /// Removes everything `setup` created. The default does nothing beyond dropping it.
    async fn teardown(&self, env: &Self::Env) -> Result<(), BoxError> {
        let _ = env;
        Ok(())
    }

    /// Where another process finds `env`: a path, a URL. Needed by the `killable` capability only.
    fn locate(&self, env: &Self::Env) -> Option<String> {
        let _ = env;
        None
    }

    /// Opens a store on the environment `locator` names, in the kill case's child process.
    async fn open_at(&self, locator: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Err(format!(
            "the {} harness cannot open a store at {locator}: it does not declare `killable`",
            self.adapter()
        )
        .into())
    }
}

type OpenFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>> + Send>>;

/// What a case works with: opens stores on the case's own environment.
pub struct Fixture {
    adapter: &'static str,
    capabilities: Capabilities,
    locator: Option<String>,
    open: Box<dyn Fn() -> OpenFuture + Send + Sync>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").field("adapter", &self.adapter).finish_non_exhaustive()
    }
}

impl Fixture {
    fn new<H: Harness>(harness: Arc<H>, env: Arc<H::Env>) -> Self {
        Self {
            adapter: harness.adapter(),
            capabilities: harness.capabilities(),
            locator: harness.locate(&env),
            open: Box::new(move || {
                let (harness, env) = (Arc::clone(&harness), Arc::clone(&env));
                Box::pin(async move { harness.open(&env).await })
            }),
        }
    }

    /// The adapter's short name.
    pub const fn adapter(&self) -> &'static str {
        self.adapter
    }

    /// Opens a store on this case's environment.
    ///
    /// # Panics
    ///
    /// When the adapter cannot open it: the case fails with the adapter's error.
    pub async fn open(&self) -> Arc<dyn PaymentsRepository> {
        match (self.open)().await {
            Ok(store) => store,
            Err(err) => panic!("{} adapter could not open a store: {err}", self.adapter),
        }
    }

    /// Where a child process finds this case's environment, for the killable case.
    pub fn locator(&self) -> Option<&str> {
        self.locator.as_deref()
    }

    /// Closes `store` and opens the environment again, as a restarted process would.
    ///
    /// # Panics
    ///
    /// When someone still holds `store` (it would not be closed), when closing fails, or when
    /// opening fails.
    pub async fn reopen(&self, store: Arc<dyn PaymentsRepository>) -> Arc<dyn PaymentsRepository> {
        assert!(self.capabilities.durable, "reopen is only meaningful for a durable adapter");
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the store to reopen is still shared, so it cannot be closed"
        );
        if let Err(err) = store.close().await {
            panic!("{} adapter could not close a store: {}", self.adapter, payments_ports::error_chain(&err));
        }
        drop(store);
        self.open().await
    }
}
