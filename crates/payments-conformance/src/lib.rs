//! The conformance suite that every [`PaymentsRepository`] adapter runs: cases named after the
//! sentences of the port's contract (and, for a store that keeps an outbox, of the
//! [`Outbox`](payments_ports::Outbox) contract), and a model-based case that runs random sequences.
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
mod outbox_cases;
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
    /// An outbox in a store a child process can open and be SIGKILLed in.
    KillableOutbox,
}

impl Capability {
    /// The flags of [`Capabilities`] this capability takes, by their field names: what an adapter
    /// must declare for the cases that need it to run.
    pub const fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Durable => &["durable"],
            Self::Shared => &["shared"],
            Self::Killable => &["durable", "killable"],
            Self::Outbox => &["outbox"],
            Self::DurableOutbox => &["durable", "outbox"],
            Self::SharedOutbox => &["shared", "outbox"],
            Self::KillableOutbox => &["durable", "killable", "outbox"],
        }
    }
}

impl Capabilities {
    /// Whether these capabilities include `capability`: every flag it takes is declared.
    pub fn has(self, capability: Capability) -> bool {
        self.lacking(capability).is_empty()
    }

    /// The flags `capability` takes that these capabilities do not declare, by their field names
    /// (see [`Capability::flags`]); empty when the adapter has it.
    pub fn lacking(self, capability: Capability) -> Vec<&'static str> {
        capability.flags().iter().copied().filter(|&flag| !self.declares(flag)).collect()
    }

    /// Whether the flag named `flag` is declared.
    fn declares(self, flag: &str) -> bool {
        match flag {
            "durable" => self.durable,
            "shared" => self.shared,
            "killable" => self.killable,
            "outbox" => self.outbox,
            _ => false,
        }
    }

    /// Why a case that needs `capability` is skipped for the `adapter` store with these
    /// capabilities, naming the flags it lacks; `None` when the case runs.
    pub(crate) fn skip_reason(self, capability: Capability, adapter: &str) -> Option<String> {
        let lacking = self.lacking(capability);
        if lacking.is_empty() {
            return None;
        }
        Some(if capability.flags().len() == 1 {
            format!("needs the `{capability}` capability, which the {adapter} store does not declare")
        } else {
            format!(
                "needs the `{capability}` capability, that is {} declared, and the {adapter} store does not \
                 declare {}",
                listed(capability.flags(), "and"),
                listed(&lacking, "or")
            )
        })
    }
}

/// `flags` in backquotes, as a list in words joined by `conjunction`: "`a`, `b` and `c`".
fn listed(flags: &[&str], conjunction: &str) -> String {
    let quoted: Vec<String> = flags.iter().map(|flag| format!("`{flag}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} {conjunction} {last}", rest.join(", ")),
        _ => quoted.concat(),
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
            Self::KillableOutbox => "killable outbox",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_names_the_capability_and_the_flags_the_adapter_does_not_declare() {
        let memory = Capabilities { outbox: true, ..Capabilities::default() };
        let skip = |capability| memory.skip_reason(capability, "memory");
        assert_eq!(skip(Capability::Outbox), None);
        assert_eq!(
            skip(Capability::Durable).as_deref(),
            Some("needs the `durable` capability, which the memory store does not declare")
        );
        assert_eq!(
            skip(Capability::DurableOutbox).as_deref(),
            Some(
                "needs the `durable outbox` capability, that is `durable` and `outbox` declared, and the memory \
                 store does not declare `durable`"
            )
        );
        assert_eq!(
            skip(Capability::KillableOutbox).as_deref(),
            Some(
                "needs the `killable outbox` capability, that is `durable`, `killable` and `outbox` declared, \
                 and the memory store does not declare `durable` or `killable`"
            )
        );
    }

    #[test]
    fn a_combined_capability_needs_every_flag_it_takes() {
        let file = Capabilities { durable: true, killable: true, ..Capabilities::default() };
        assert!(file.has(Capability::Killable));
        assert!(!file.has(Capability::DurableOutbox));
        assert!(!file.has(Capability::KillableOutbox));
        let file = Capabilities { outbox: true, ..file };
        assert!(file.has(Capability::DurableOutbox));
        assert!(file.has(Capability::KillableOutbox));
        assert!(!file.has(Capability::SharedOutbox));
    }
}
