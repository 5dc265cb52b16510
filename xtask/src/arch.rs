//! The architecture invariants of docs/ARCHITECTURE.md, checked from `cargo metadata`.
//!
//! Each crate has a role, and each role may depend on a few others. A violation names the edge.

use anyhow::bail;

use crate::metadata::{Kind, Member, Workspace};

/// What a workspace crate is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Domain,
    Ports,
    Conformance,
    /// A driven adapter (`payments-adapter-*`) or a driving one (`payments-source-*`).
    Adapter,
    App,
    Xtask,
}

impl Role {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "payments-domain" => Self::Domain,
            "payments-ports" => Self::Ports,
            "payments-conformance" => Self::Conformance,
            "payments-app" => Self::App,
            "xtask" => Self::Xtask,
            _ if name.starts_with("payments-adapter-") || name.starts_with("payments-source-") => {
                Self::Adapter
            }
            _ => return None,
        })
    }

    /// Which workspace roles a crate of this role may depend on, by kind of dependency.
    fn may_depend_on(self, kind: Kind, target: Self) -> bool {
        use Role::{Adapter, App, Conformance, Domain, Ports, Xtask};
        match (self, kind) {
            // The core knows nothing of the outside.
            (Domain, _) => false,
            (Ports, _) => target == Domain,
            (Conformance, _) => matches!(target, Domain | Ports),
            // Adapters implement the ports; their tests run the conformance suite.
            (Adapter, Kind::Dev) => matches!(target, Domain | Ports | Conformance),
            (Adapter, _) => matches!(target, Domain | Ports),
            // Only the app wires adapters in.
            (App, Kind::Dev) => !matches!(target, App | Xtask),
            (App, _) => matches!(target, Domain | Ports | Adapter),
            (Xtask, _) => false,
        }
    }
}

/// Async runtimes the domain must not reach, even transitively.
const RUNTIMES: &[&str] = &["tokio", "async-std", "smol", "async-executor", "futures-executor", "actix-rt"];

/// Checks every invariant and reports all violations at once.
pub(crate) fn check(workspace: &Workspace) -> anyhow::Result<()> {
    let mut violations = Vec::new();
    for member in workspace.members.values() {
        let Some(role) = Role::of(&member.name) else {
            violations.push(format!(
                "{} has no architectural role: name it payments-adapter-* or payments-source-*, or give it a role in xtask/src/arch.rs",
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
        if !role.may_depend_on(*kind, target) {
            violations.push(format!(
                "{} → {dependency} ({} dependency): a {role:?} crate must not depend on a {target:?} crate",
                member.name,
                kind.name()
            ));
        }
    }
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
        assert!(!Adapter.may_depend_on(Kind::Normal, Adapter), "adapters never depend on each other");
        assert!(!Adapter.may_depend_on(Kind::Dev, Adapter), "not even in tests");
        assert!(!Adapter.may_depend_on(Kind::Normal, App));
        assert!(Adapter.may_depend_on(Kind::Dev, Conformance));
        assert!(!Conformance.may_depend_on(Kind::Dev, Adapter), "the suite knows no adapter");
        assert!(App.may_depend_on(Kind::Normal, Adapter), "only the app wires adapters in");
        assert!(!Xtask.may_depend_on(Kind::Normal, Adapter));
        assert_eq!(Role::of("payments-adapter-redis"), Some(Adapter));
        assert_eq!(Role::of("payments-source-nats"), Some(Adapter));
        assert_eq!(Role::of("payments-utils"), None);
    }
}
