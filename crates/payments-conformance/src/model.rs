//! The model-based case: random sequences of saves (new, duplicate, conflicting), concurrent
//! bursts, reopens and reads, run against the adapter and against a `BTreeMap`, answer by answer.
//!
//! The sequences come from proptest-state-machine, so that the transitions generated depend on
//! what the model holds (a duplicate repeats a recorded payment, a conflict changes one), and a
//! failure shrinks to a minimal sequence. Every sequence uses IDs of its own (`m<case>-<key>`),
//! so all of them can share one store: this is what makes a thousand of them affordable on a
//! database.
//!
//! `PAYMENTS_MODEL_CASES` sets how many sequences run (default 1,000).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::join_all;
use payments_ports::domain::{Currency, Payment, SaveOutcome, decide};
use payments_ports::{PaymentsRepository, RepositoryError, export_all};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use proptest_state_machine::ReferenceStateMachine;

use crate::Fixture;

/// Keys per sequence: few, so that sequences keep running into what they recorded before.
const KEYS: u8 = 8;
/// Versions of a payment: the same key with another version is a conflict.
const VERSIONS: u8 = 3;

/// One step of a sequence.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// Save version `version` of payment `key`.
    Save { key: u8, version: u8 },
    /// Save all of these at once, from concurrent tasks.
    Burst(Vec<(u8, u8)>),
    /// Close the store and open it again (durable adapters; a no-op for the others).
    Reopen,
    /// Check `get` of one key, and `count`.
    Read { key: u8 },
    /// Check the whole export of this sequence's payments.
    List,
}

/// The model: which version of which key is recorded.
pub(crate) struct Model;

type State = BTreeMap<u8, u8>;

impl ReferenceStateMachine for Model {
    type State = State;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<State> {
        Just(State::new()).boxed()
    }

    fn transitions(state: &State) -> BoxedStrategy<Step> {
        let any_save = (0..KEYS, 0..VERSIONS).prop_map(|(key, version)| Step::Save { key, version });
        let burst = proptest::collection::vec((0..KEYS, 0..VERSIONS), 1..12).prop_map(Step::Burst);
        let others = prop_oneof![
            4 => any_save,
            2 => burst,
            1 => Just(Step::Reopen),
            1 => (0..KEYS).prop_map(|key| Step::Read { key }),
            1 => Just(Step::List),
        ];
        if state.is_empty() {
            return others.boxed();
        }
        let recorded: Vec<(u8, u8)> = state.iter().map(|(k, v)| (*k, *v)).collect();
        let duplicate =
            proptest::sample::select(recorded.clone()).prop_map(|(key, version)| Step::Save { key, version });
        let conflict = (proptest::sample::select(recorded), 1..VERSIONS)
            .prop_map(|((key, version), shift)| Step::Save { key, version: (version + shift) % VERSIONS });
        prop_oneof![3 => duplicate, 2 => conflict, 5 => others].boxed()
    }

    fn preconditions(state: &State, step: &Step) -> bool {
        match step {
            // A burst must have one possible outcome: a key that is absent is saved in one version
            // only, or which of its versions wins would be up to the race.
            Step::Burst(saves) => {
                let mut first: BTreeMap<u8, u8> = BTreeMap::new();
                saves.iter().all(|(key, version)| {
                    state.contains_key(key) || *first.entry(*key).or_insert(*version) == *version
                })
            }
            _ => true,
        }
    }

    fn apply(mut state: State, step: &Step) -> State {
        match step {
            Step::Save { key, version } => {
                state.entry(*key).or_insert(*version);
            }
            Step::Burst(saves) => {
                for (key, version) in saves {
                    state.entry(*key).or_insert(*version);
                }
            }
            Step::Reopen | Step::Read { .. } | Step::List => {}
        }
        state
    }
}

/// Gives each sequence IDs of its own.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

fn payment(sequence: usize, key: u8, version: u8) -> Payment {
    let currency = ["EUR", "USD", "JPY"][usize::from(version % 3)];
    Payment::new(
        payments_ports::domain::PaymentId::new(&format!("m{sequence:06}-{key}")).expect("valid ID"),
        payments_ports::domain::Amount::new(100 + u64::from(version)).expect("valid amount"),
        Currency::new(currency).expect("valid currency"),
    )
}

/// What saving `incoming` must answer when the model holds `state`.
fn expected(state: &State, sequence: usize, key: u8, version: u8) -> SaveOutcome {
    let stored = state.get(&key).map(|v| payment(sequence, key, *v));
    decide(stored.as_ref(), &payment(sequence, key, version))
}

fn fail(text: String) -> TestCaseError {
    TestCaseError::fail(text)
}

fn store_error(what: &str, err: &RepositoryError) -> TestCaseError {
    fail(format!("{what} failed: {err}"))
}

/// Runs one sequence against the store in `slot`, which it may reopen.
async fn run_sequence(
    fixture: &Fixture,
    slot: &Mutex<Option<Arc<dyn PaymentsRepository>>>,
    steps: Vec<Step>,
    seen: Option<Arc<AtomicUsize>>,
) -> Result<(), TestCaseError> {
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut store = slot.lock().unwrap_or_else(PoisonError::into_inner).take().expect("a store");
    let result = apply_steps(fixture, &mut store, sequence, steps, seen).await;
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(store);
    result
}

/// Applies `steps` to `store` (reopening it in place) and to the model, comparing every answer.
async fn apply_steps(
    fixture: &Fixture,
    store: &mut Arc<dyn PaymentsRepository>,
    sequence: usize,
    steps: Vec<Step>,
    seen: Option<Arc<AtomicUsize>>,
) -> Result<(), TestCaseError> {
    {
        let base = store.count().await.map_err(|e| store_error("count", &e))?;
        let mut state = State::new();
        for step in steps {
            if let Some(seen) = &seen {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            match &step {
                Step::Save { key, version } => {
                    let want = expected(&state, sequence, *key, *version);
                    let got = store
                        .save(&payment(sequence, *key, *version))
                        .await
                        .map_err(|e| store_error("save", &e))?;
                    if got != want {
                        return Err(fail(format!(
                            "{step:?}: the store answered {got:?}, the model {want:?}"
                        )));
                    }
                }
                Step::Burst(saves) => burst(store, &state, sequence, saves).await?,
                Step::Reopen => {
                    if fixture.capabilities.durable {
                        // The placeholder is never used: it is replaced as soon as the store reopens.
                        let open = std::mem::replace(store, Arc::new(Closed));
                        *store = fixture.reopen(open).await;
                    }
                }
                Step::Read { key } => {
                    let got = store
                        .get(&payment(sequence, *key, 0).id)
                        .await
                        .map_err(|e| store_error("get", &e))?;
                    let want = state.get(key).map(|v| payment(sequence, *key, *v));
                    if got != want {
                        return Err(fail(format!(
                            "get of key {key}: the store has {got:?}, the model {want:?}"
                        )));
                    }
                    let count = store.count().await.map_err(|e| store_error("count", &e))?;
                    if count != base + state.len() as u64 {
                        return Err(fail(format!(
                            "count is {count}, the model says {}",
                            base + state.len() as u64
                        )));
                    }
                }
                Step::List => {
                    let prefix = format!("m{sequence:06}-");
                    let mut listed = Vec::new();
                    export_all(store.as_ref(), 97, |p| {
                        if p.id.as_str().starts_with(&prefix) {
                            listed.push(p);
                        }
                        Ok::<_, RepositoryError>(())
                    })
                    .await
                    .map_err(|e| store_error("list", &e))?;
                    let mut want: Vec<Payment> =
                        state.iter().map(|(k, v)| payment(sequence, *k, *v)).collect();
                    want.sort_by_key(|p| p.id);
                    if listed != want {
                        return Err(fail(format!("the export holds {listed:?}, the model {want:?}")));
                    }
                }
            }
            state = Model::apply(state, &step);
        }
        Ok(())
    }
}

/// Stands in for a store while it is being reopened; answers every call with an error.
struct Closed;

#[async_trait::async_trait]
impl PaymentsRepository for Closed {
    async fn save(&self, _: &Payment) -> Result<SaveOutcome, RepositoryError> {
        Err(RepositoryError::failed("the store is being reopened"))
    }

    async fn get(&self, _: &payments_ports::domain::PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Err(RepositoryError::failed("the store is being reopened"))
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Err(RepositoryError::failed("the store is being reopened"))
    }

    async fn list(
        &self,
        _: Option<payments_ports::domain::PaymentId>,
        _: usize,
    ) -> Result<Vec<Payment>, RepositoryError> {
        Err(RepositoryError::failed("the store is being reopened"))
    }
}

/// Saves a burst from concurrent tasks: each recorded key answers as the model says; each absent
/// key is new exactly once, and a duplicate for its other saves.
async fn burst(
    store: &Arc<dyn PaymentsRepository>,
    state: &State,
    sequence: usize,
    saves: &[(u8, u8)],
) -> Result<(), TestCaseError> {
    let tasks = saves.iter().map(|&(key, version)| {
        let store = Arc::clone(store);
        tokio::spawn(async move { (key, version, store.save(&payment(sequence, key, version)).await) })
    });
    let mut new_keys = HashSet::new();
    for joined in join_all(tasks).await {
        let (key, version, outcome) = joined.map_err(|err| fail(format!("a burst task failed: {err}")))?;
        let outcome = outcome.map_err(|e| store_error("save in a burst", &e))?;
        if state.contains_key(&key) {
            let want = expected(state, sequence, key, version);
            if outcome != want {
                return Err(fail(format!(
                    "burst save of ({key}, {version}): {outcome:?}, the model {want:?}"
                )));
            }
        } else if outcome.is_new() {
            if !new_keys.insert(key) {
                return Err(fail(format!("burst: key {key} was reported new twice")));
            }
        } else if outcome != SaveOutcome::Duplicate {
            return Err(fail(format!(
                "burst save of absent key {key}: {outcome:?}, expected new once, then duplicates"
            )));
        }
    }
    let absent: HashSet<u8> = saves.iter().map(|(k, _)| *k).filter(|k| !state.contains_key(k)).collect();
    if new_keys != absent {
        return Err(fail(format!("burst: keys {absent:?} were absent, but {new_keys:?} were reported new")));
    }
    Ok(())
}

/// How many sequences to run: 1,000, or `PAYMENTS_MODEL_CASES`. A count that would make the case
/// pass without testing anything (zero, or not a number) is refused.
fn cases() -> u32 {
    match std::env::var("PAYMENTS_MODEL_CASES") {
        Err(_) => 1000,
        Ok(text) => match text.parse() {
            Ok(0) | Err(_) => panic!("PAYMENTS_MODEL_CASES={text:?}: give a number of sequences above zero"),
            Ok(cases) => cases,
        },
    }
}

pub(crate) async fn random_operation_sequences_match_a_btreemap_model(f: &Fixture) {
    let slot: Mutex<Option<Arc<dyn PaymentsRepository>>> = Mutex::new(Some(f.open().await));
    let handle = tokio::runtime::Handle::current();
    let strategy = Model::sequential_strategy(1..24);
    let mut runner =
        TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    // proptest drives synchronously; each sequence runs on the case's runtime meanwhile.
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&strategy, |(_, steps, seen)| handle.block_on(run_sequence(f, &slot, steps, seen)))
    });
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(reason, (_, steps, _))) => {
            panic!("a random sequence broke the contract: {reason}\nminimal sequence: {steps:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("the model-based run aborted: {reason}"),
    }
}
