//! The architecture invariants of docs/ARCHITECTURE.md, checked from `cargo metadata` and, for
//! the one rule that is about modules rather than crates, from the app's sources.
//!
//! Each crate has a role, and each role may depend on a few others. A violation names the edge.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::metadata::{Kind, Member, Workspace};
use crate::shell;

/// The kinds of adapter, each found by its name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdapterKind {
    /// `payments-store-*`: a `PaymentsRepository`.
    Store,
    /// `payments-source-*`: a `DeliverySource` (and, for a broker, its sink and publisher).
    Source,
    /// `payments-sink-*`: a `DeadLetterSink`.
    Sink,
}

impl AdapterKind {
    pub(crate) const ALL: [Self; 3] = [Self::Store, Self::Source, Self::Sink];

    /// The crate name prefix that marks this kind.
    pub(crate) const fn prefix(self) -> &'static str {
        match self {
            Self::Store => "payments-store-",
            Self::Source => "payments-source-",
            Self::Sink => "payments-sink-",
        }
    }

    /// The kind's name, as `cargo xtask new-adapter --kind` and the matrix say it.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Source => "source",
            Self::Sink => "sink",
        }
    }

    /// The kind of the adapter crate `name`, if it is one.
    pub(crate) fn of(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| name.starts_with(kind.prefix()))
    }
}

/// What a workspace crate is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Domain,
    Ports,
    /// The use case: the handler and the consumer engine.
    UseCase,
    /// The in-process broker and the checks of `simulate`.
    Simulator,
    Conformance,
    /// What tests and benchmarks share; no adapter, no use case.
    TestSupport,
    /// A store, a source or a sink.
    Adapter,
    /// What adapters share that is no port: TLS refusals, for those that speak TLS. Depends on
    /// no crate of the workspace.
    AdapterSupport,
    /// The composition root.
    App,
    Xtask,
}

impl Role {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "payments-domain" => Self::Domain,
            "payments-ports" => Self::Ports,
            "payments-consumer" => Self::UseCase,
            "payments-simulator" => Self::Simulator,
            "payments-conformance" => Self::Conformance,
            "payments-test-support" => Self::TestSupport,
            // The operations adapter: an Observer, HTTP endpoints.
            "payments-metrics" => Self::Adapter,
            "payments-tls" => Self::AdapterSupport,
            "payments-app" => Self::App,
            "xtask" => Self::Xtask,
            _ if AdapterKind::of(name).is_some() => Self::Adapter,
            _ => return None,
        })
    }

    /// Which workspace roles a crate of this role may depend on, by kind of dependency.
    fn may_depend_on(self, kind: Kind, target: Self) -> bool {
        use Role::{
            Adapter, AdapterSupport, App, Conformance, Domain, Ports, Simulator, TestSupport, UseCase, Xtask,
        };
        match (self, kind) {
            // The core knows nothing of the outside.
            (Domain | TestSupport | AdapterSupport | Xtask, _) => false,
            (Ports, _) => target == Domain,
            // The use case runs on the ports alone (the domain comes through them), and is tested
            // with their doubles.
            (UseCase, _) => target == Ports,
            (Conformance, _) => matches!(target, Domain | Ports | TestSupport),
            // Adapters implement the ports; their tests run the conformance suite.
            (Adapter, Kind::Dev) => matches!(target, Ports | Conformance | TestSupport),
            (Adapter, _) => matches!(target, Ports | AdapterSupport),
            // The simulator drives the use case; its own tests may use a real store.
            (Simulator, Kind::Dev) => matches!(target, Domain | Ports | UseCase | Adapter),
            (Simulator, _) => matches!(target, Domain | Ports | UseCase),
            // Only the app wires adapters in.
            (App, Kind::Dev) => !matches!(target, App | Xtask),
            (App, _) => matches!(target, Domain | Ports | UseCase | Simulator | Adapter | AdapterSupport),
        }
    }
}

/// Async runtimes the domain must not reach, even transitively.
const RUNTIMES: &[&str] = &["tokio", "async-std", "smol", "async-executor", "futures-executor", "actix-rt"];

/// The module of the app that may name adapters: the composition root's one place.
const WIRING: &str = "crates/payments-app/src/adapters";

/// Checks every invariant and reports all violations at once.
pub(crate) fn check(workspace: &Workspace) -> anyhow::Result<()> {
    let mut violations = Vec::new();
    for member in workspace.members.values() {
        let Some(role) = Role::of(&member.name) else {
            violations.push(format!(
                "{} has no architectural role: name it payments-store-*, payments-source-* or payments-sink-*, or give it a role in xtask/src/arch.rs",
                member.name
            ));
            continue;
        };
        check_edges(workspace, member, role, &mut violations);
        if role == Role::Domain {
            for package in workspace.runtime_closure(&member.name).filter(|p| RUNTIMES.contains(p)) {
                violations.push(format!(
                    "{} → {package}: the domain must not depend on an async runtime, even transitively",
                    member.name
                ));
            }
        }
    }
    let adapters: Vec<String> = workspace
        .members
        .keys()
        .filter(|name| AdapterKind::of(name).is_some())
        .map(|name| name.replace('-', "_"))
        .collect();
    violations.extend(wiring_outside_its_module(&shell::root(), &adapters)?);
    if violations.is_empty() {
        eprintln!("architecture invariants hold for {} crates", workspace.members.len());
        Ok(())
    } else {
        for violation in &violations {
            eprintln!("architecture violation: {violation}");
        }
        bail!("{} architecture violation(s); see docs/ARCHITECTURE.md", violations.len())
    }
}

fn check_edges(workspace: &Workspace, member: &Member, role: Role, violations: &mut Vec<String>) {
    for (dependency, kind) in &member.dependencies {
        // A crate may dev-depend on itself to turn on a feature for its own tests.
        if !workspace.members.contains_key(dependency) || *dependency == member.name {
            continue;
        }
        let Some(target) = Role::of(dependency) else { continue };
        let adapters_apart = role == Role::Adapter && target == Role::Adapter;
        if !role.may_depend_on(*kind, target) || adapters_apart {
            violations.push(format!(
                "{} → {dependency} ({} dependency): a {role:?} crate must not depend on a {target:?} crate",
                member.name,
                kind.name()
            ));
        }
    }
}

/// The app's source files outside [`WIRING`] that name an adapter crate (`payments_store_file`,
/// ...): only the composition root's one module may.
fn wiring_outside_its_module(root: &Path, adapters: &[String]) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut pending = vec![root.join("crates/payments-app/src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            if relative.starts_with(WIRING) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {relative}"))?;
            for adapter in adapters.iter().filter(|adapter| text.contains(adapter.as_str())) {
                violations.push(format!(
                    "{relative} names {adapter}: only {WIRING}, the composition root's one module, may"
                ));
            }
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_say_what_the_architecture_says() {
        use Role::*;
        assert!(!Domain.may_depend_on(Kind::Normal, Ports), "the domain depends on nothing of ours");
        assert!(Ports.may_depend_on(Kind::Normal, Domain));
        assert!(!Ports.may_depend_on(Kind::Normal, Adapter));
        assert!(UseCase.may_depend_on(Kind::Normal, Ports));
        assert!(!UseCase.may_depend_on(Kind::Normal, Domain), "the ports alone");
        assert!(!Adapter.may_depend_on(Kind::Normal, TestSupport), "test support stays in tests");
        assert!(!UseCase.may_depend_on(Kind::Normal, Adapter), "the use case names no adapter");
        assert!(!UseCase.may_depend_on(Kind::Dev, Adapter), "not even in its tests");
        assert!(!Adapter.may_depend_on(Kind::Normal, App));
        assert!(!Adapter.may_depend_on(Kind::Normal, UseCase), "adapters know the ports only");
        assert!(Adapter.may_depend_on(Kind::Dev, Conformance));
        assert!(!Conformance.may_depend_on(Kind::Dev, Adapter), "the suite knows no adapter");
        assert!(App.may_depend_on(Kind::Normal, Adapter), "only the app wires adapters in");
        assert!(!Simulator.may_depend_on(Kind::Normal, Adapter), "the simulator is given its store");
        assert!(!Xtask.may_depend_on(Kind::Normal, Adapter));
        assert_eq!(Role::of("payments-store-redis"), Some(Adapter));
        assert_eq!(Role::of("payments-source-nats"), Some(Adapter));
        assert_eq!(Role::of("payments-sink-lines"), Some(Adapter));
        assert_eq!(Role::of("payments-metrics"), Some(Adapter));
        assert_eq!(Role::of("payments-tls"), Some(AdapterSupport));
        assert_eq!(Role::of("payments-utils"), None);
    }

    #[test]
    fn adapters_never_depend_on_each_other() {
        let member = Member {
            name: "payments-source-redis".into(),
            tests: vec![],
            benches: vec![],
            dependencies: vec![("payments-store-postgres".into(), Kind::Dev)],
        };
        let workspace = Workspace::from_members([
            member,
            Member {
                name: "payments-store-postgres".into(),
                tests: vec![],
                benches: vec![],
                dependencies: vec![],
            },
        ]);
        let mut violations = Vec::new();
        check_edges(&workspace, &workspace.members["payments-source-redis"], Role::Adapter, &mut violations);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("payments-source-redis → payments-store-postgres"), "{violations:?}");
    }

    #[test]
    fn only_the_wiring_module_names_adapters() {
        let root = std::env::temp_dir().join(format!("xtask-arch-{}", std::process::id()));
        let src = root.join("crates/payments-app/src");
        std::fs::create_dir_all(src.join("adapters")).expect("temp tree");
        std::fs::write(src.join("adapters.rs"), "use payments_store_file::X;").expect("write");
        std::fs::write(src.join("adapters/more.rs"), "use payments_store_file::Y;").expect("write");
        std::fs::write(src.join("main.rs"), "use payments_store_memory::Z;").expect("write");
        let found =
            wiring_outside_its_module(&root, &["payments_store_file".into(), "payments_store_memory".into()]);
        std::fs::remove_dir_all(&root).expect("clean up");
        let found = found.expect("scan");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("crates/payments-app/src/main.rs names payments_store_memory"),
            "{found:?}"
        );
    }
}
