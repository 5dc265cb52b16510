//! The workspace as `cargo metadata` describes it: its crates and their dependency edges.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::arch::AdapterKind;
use crate::shell;

/// The kind of a dependency edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Dev => "dev",
            Self::Build => "build",
        }
    }
}

/// A workspace member.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) name: String,
    /// Names of its test targets.
    pub(crate) tests: Vec<String>,
    /// Names of its benchmark targets.
    pub(crate) benches: Vec<String>,
    /// Its declared dependencies: (name, kind).
    pub(crate) dependencies: Vec<(String, Kind)>,
}

/// The workspace: its members, and every package each member needs at run time (normal
/// dependencies, transitively).
#[derive(Debug)]
pub(crate) struct Workspace {
    pub(crate) members: BTreeMap<String, Member>,
    runtime_closure: BTreeMap<String, BTreeSet<String>>,
}

impl Workspace {
    /// Reads `cargo metadata` for the workspace.
    pub(crate) fn load() -> anyhow::Result<Self> {
        let output = shell::cargo(&["metadata", "--format-version", "1"])
            .output()
            .context("cannot run cargo metadata")?;
        if !output.status.success() {
            bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Self::parse(&output.stdout)
    }

    fn parse(json: &[u8]) -> anyhow::Result<Self> {
        let metadata: Value =
            serde_json::from_slice(json).context("cargo metadata printed something other than JSON")?;
        let member_ids: BTreeSet<&str> = metadata["workspace_members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let packages = metadata["packages"].as_array().context("cargo metadata has no packages")?;
        let name_of: BTreeMap<&str, &str> =
            packages.iter().filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?))).collect();

        let mut members = BTreeMap::new();
        for package in packages.iter().filter(|p| p["id"].as_str().is_some_and(|id| member_ids.contains(id)))
        {
            let name = package["name"].as_str().context("a package without a name")?.to_owned();
            let targets = |kind: &str| -> Vec<String> {
                package["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == kind)))
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            };
            let (tests, benches) = (targets("test"), targets("bench"));
            let dependencies = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let kind = match d["kind"].as_str() {
                        None => Kind::Normal,
                        Some("dev") => Kind::Dev,
                        Some("build") => Kind::Build,
                        Some(_) => return None,
                    };
                    Some((d["name"].as_str()?.to_owned(), kind))
                })
                .collect();
            members.insert(name.clone(), Member { name, tests, benches, dependencies });
        }

        // The resolved graph: for each member, every package reachable through normal edges.
        let nodes = metadata["resolve"]["nodes"].as_array().context("cargo metadata has no resolve graph")?;
        let mut normal_edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for node in nodes {
            let Some(id) = node["id"].as_str() else { continue };
            let deps =
                node["deps"].as_array().into_iter().flatten().filter(|dep| {
                    dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null())
                });
            normal_edges.insert(id, deps.filter_map(|dep| dep["pkg"].as_str()).collect());
        }
        let mut runtime_closure = BTreeMap::new();
        for id in &member_ids {
            let mut seen = BTreeSet::new();
            let mut stack = vec![*id];
            while let Some(current) = stack.pop() {
                for next in normal_edges.get(current).into_iter().flatten() {
                    if seen.insert(*next) {
                        stack.push(next);
                    }
                }
            }
            let names = seen.iter().filter_map(|id| name_of.get(id).map(|n| (*n).to_owned())).collect();
            runtime_closure.insert(name_of.get(id).copied().unwrap_or(id).to_owned(), names);
        }
        Ok(Self { members, runtime_closure })
    }

    /// Every package `member` needs at run time, transitively.
    pub(crate) fn runtime_closure(&self, member: &str) -> impl Iterator<Item = &str> {
        self.runtime_closure.get(member).into_iter().flatten().map(String::as_str)
    }

    /// The adapter crates of one kind (`payments-store-*`, ...), found without a hand-kept list.
    pub(crate) fn adapters(&self, kind: AdapterKind) -> impl Iterator<Item = &Member> {
        self.members.values().filter(move |m| AdapterKind::of(&m.name) == Some(kind))
    }

    /// A workspace of these members only, for tests.
    #[cfg(test)]
    pub(crate) fn from_members(members: impl IntoIterator<Item = Member>) -> Self {
        Self {
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
            runtime_closure: BTreeMap::new(),
        }
    }
}
