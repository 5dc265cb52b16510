//! `cargo xtask new-adapter <backend> [--kind store|source]`: a new adapter crate in the right
//! place with the right name, whose conformance suite runs at once and fails every case, each
//! named after its sentence: the new author's to-do list.
//!
//! `cargo xtask test` checks exactly that, by scaffolding a store and a source into a copy of the
//! workspace and running `cargo xtask conformance` there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::arch::AdapterKind;
use crate::shell;

/// `cargo xtask new-adapter <backend> [--kind store|source]`.
pub(crate) fn run(rest: &[String]) -> anyhow::Result<()> {
    let usage = "usage: cargo xtask new-adapter <backend> [--kind store|source]";
    let (mut backend, mut kind) = (None, AdapterKind::Store);
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kind" => {
                kind = match args.next().map(String::as_str) {
                    Some("store") => AdapterKind::Store,
                    Some("source") => AdapterKind::Source,
                    other => bail!("--kind {}: expected store or source; {usage}", other.unwrap_or("")),
                }
            }
            name if backend.is_none() && !name.starts_with('-') => backend = Some(name.to_owned()),
            other => bail!("unexpected argument `{other}`; {usage}"),
        }
    }
    let Some(backend) = backend else { bail!("no backend named; {usage}") };
    let made = scaffold(&shell::root(), &backend, kind)?;
    print!("{}", made.message());
    Ok(())
}

/// What scaffolding made.
pub(crate) struct Scaffolded {
    backend: String,
    kind: AdapterKind,
    crate_name: String,
}

impl Scaffolded {
    /// What to do next, with the one place in the app to wire it.
    fn message(&self) -> String {
        let Self { backend, kind, crate_name } = self;
        let snake = crate_name.replace('-', "_");
        let ty = type_name(backend);
        let wiring = match kind {
            AdapterKind::Store => format!(
                "  then wire it into the app with one entry in STORES, crates/payments-app/src/adapters/stores.rs:

    StoreEntry {{
        name: \"{backend}\",
        prefixes: &[\"{backend}:\"],
        form: \"{backend}:<location>\",
        what: \"what it is, in a few words\",
        open: |spec| {{
            Box::pin(async move {{
                let store = {snake}::{ty}PaymentsRepository::open(spec.trim_start_matches(\"{backend}:\")).await?;
                Ok(Arc::new(store) as Arc<dyn PaymentsRepository>)
            }})
        }},
        dead_letters: |_| DeadLetterSpec::File(PathBuf::from(\"data/dead-letters.jsonl\")),
        in_process: false,
        shared: false,
        test_env: TestEnv::TempDir(\"{backend}:{{dir}}/payments\"),
    }},

  and --store parses it, its help names it, and the crash torture and the benchmarks take it in.
"
            ),
            _ => format!(
                "  then wire it into the app: a variant of InputSpec in crates/payments-app/src/adapters/mod.rs that
  parses its URL and opens {snake}::{ty}Source.
"
            ),
        };
        format!(
            "created crates/{crate_name}: Cargo.toml, src/lib.rs (stubs that fail with `not implemented`),
tests/conformance.rs (the harness to fill in) and README.md; added it to the workspace's dependencies
and to payments-app's.

next:
  cargo xtask conformance --adapter {backend}
      runs the suite: every case fails, each named after the sentence of the contract it checks;
      that is the to-do list. Read docs/adding-an-adapter.md.
{wiring}"
        )
    }
}

/// `sqlite` → `Sqlite`, `my-sql` → `MySql`.
fn type_name(backend: &str) -> String {
    backend
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Creates the crate under `root` and adds it to the workspace's and the app's dependencies.
pub(crate) fn scaffold(root: &Path, backend: &str, kind: AdapterKind) -> anyhow::Result<Scaffolded> {
    let valid = backend.starts_with(|c: char| c.is_ascii_lowercase())
        && backend.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !backend.ends_with('-');
    if !valid {
        bail!("backend name {backend:?}: use lowercase letters, digits and hyphens, starting with a letter");
    }
    if kind == AdapterKind::Sink {
        bail!("there is no scaffold for sinks yet: copy crates/payments-sink-lines");
    }
    let crate_name = format!("{}{backend}", kind.prefix());
    let dir = root.join("crates").join(&crate_name);
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let ty = type_name(backend);
    let snake = crate_name.replace('-', "_");
    let files: Vec<(&str, String)> = match kind {
        AdapterKind::Store => vec![
            ("Cargo.toml", store_manifest(&crate_name, &ty)),
            ("src/lib.rs", store_lib(&ty)),
            ("tests/conformance.rs", store_plug_in(backend, &snake, &ty)),
            ("README.md", readme(&crate_name, backend, "store")),
        ],
        _ => vec![
            ("Cargo.toml", source_manifest(&crate_name, &ty)),
            ("src/lib.rs", source_lib(&ty)),
            ("tests/conformance.rs", source_plug_in(backend, &snake, &ty)),
            ("README.md", readme(&crate_name, backend, "source")),
        ],
    };
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    add_line_after_last(
        &root.join("Cargo.toml"),
        "payments-",
        &format!("{crate_name} = {{ path = \"crates/{crate_name}\" }}"),
    )?;
    add_line_after_last(
        &root.join("crates/payments-app/Cargo.toml"),
        "payments-",
        &format!("{crate_name}.workspace = true"),
    )?;
    Ok(Scaffolded { backend: backend.to_owned(), kind, crate_name })
}

/// Inserts `line` after the last line of `manifest`'s first block of lines starting with `prefix`.
fn add_line_after_last(manifest: &Path, prefix: &str, line: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.iter().position(|l| l.starts_with(prefix)) else {
        bail!("{} has no line starting with {prefix}", manifest.display());
    };
    let end = lines[first..].iter().position(|l| !l.starts_with(prefix)).map_or(lines.len(), |n| first + n);
    lines.insert(end, line);
    std::fs::write(manifest, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", manifest.display()))
}

const PACKAGE: &str = "version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
repository.workspace = true
publish.workspace = true";

fn store_manifest(crate_name: &str, ty: &str) -> String {
    format!(
        "[package]
name = \"{crate_name}\"
description = \"PaymentsRepository on {ty}.\"
{PACKAGE}

[dependencies]
async-trait.workspace = true
payments-ports.workspace = true
# Your backend's client: add it to [workspace.dependencies] in the root Cargo.toml, then here.

[dev-dependencies]
payments-conformance.workspace = true
tokio.workspace = true

[[test]]
name = \"conformance\"
harness = false

[lints]
workspace = true
"
    )
}

fn store_lib(ty: &str) -> String {
    format!(
        "//! A [`PaymentsRepository`] on {ty}.
//!
//! Say here what it is for, and how it keeps each sentence of the contract (on the trait, in
//! crates/payments-ports/src/repository.rs): one atomic \"record unless present\", decided with the
//! domain's `decide`; answers only once durable; `Unavailable` for outages, `Failed` for the rest.

use async_trait::async_trait;
use payments_ports::domain::{{Payment, PaymentId, SaveOutcome}};
use payments_ports::{{Outbox, PaymentsRepository, RepositoryError}};

/// Payments in {ty}.
#[derive(Debug)]
pub struct {ty}PaymentsRepository {{}}

impl {ty}PaymentsRepository {{
    /// Opens the store at `location` (a path, a URL: yours to define).
    ///
    /// # Errors
    ///
    /// When it cannot be opened.
    pub async fn open(location: &str) -> Result<Self, RepositoryError> {{
        let _ = location;
        Ok(Self {{}})
    }}
}}

/// What every method answers until it is written: the conformance suite lists them all.
fn not_implemented(method: &str) -> RepositoryError {{
    RepositoryError::failed(format!(\"not implemented: {{method}}\"))
}}

#[async_trait]
impl PaymentsRepository for {ty}PaymentsRepository {{
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {{
        let _ = payment;
        Err(not_implemented(\"save\"))
    }}

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {{
        let _ = id;
        Err(not_implemented(\"get\"))
    }}

    async fn count(&self) -> Result<u64, RepositoryError> {{
        Err(not_implemented(\"count\"))
    }}

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {{
        let _ = (after, limit);
        Err(not_implemented(\"list\"))
    }}

    /// The outbox (crates/payments-ports/src/outbox.rs): its events recorded by `save` in the same
    /// atomic step as their payments. Remove this method, and `outbox: true` from the plug-in, if
    /// the store keeps none: its outbox cases are then skipped by name.
    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {{
        Err(not_implemented(\"outbox\"))
    }}
}}
"
    )
}

fn store_plug_in(backend: &str, snake: &str, ty: &str) -> String {
    format!(
        "//! The {backend} store against the conformance suite: `cargo xtask conformance --adapter {backend}`.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::Capabilities;
use payments_conformance::harnesses::InTempDir;
use payments_ports::PaymentsRepository;
use {snake}::{ty}PaymentsRepository;

fn main() -> ExitCode {{
    // What the store can do: a case for a capability it does not declare is reported as skipped,
    // by name. A store on a server uses payments_conformance::harnesses::OnServer instead.
    let capabilities = Capabilities {{ durable: true, shared: true, killable: true, outbox: true }};
    payments_conformance::main(InTempDir::new(\"{backend}\", capabilities, |dir| async move {{
        let store = {ty}PaymentsRepository::open(&dir.join(\"payments\").display().to_string()).await?;
        Ok(Arc::new(store) as Arc<dyn PaymentsRepository>)
    }}))
}}
"
    )
}

fn source_manifest(crate_name: &str, ty: &str) -> String {
    format!(
        "[package]
name = \"{crate_name}\"
description = \"DeliverySource on {ty}.\"
{PACKAGE}

[dependencies]
async-trait.workspace = true
payments-ports.workspace = true
# Your broker's client: add it to [workspace.dependencies] in the root Cargo.toml, then here.

[dev-dependencies]
bytes.workspace = true
payments-conformance.workspace = true
tokio.workspace = true

[[test]]
name = \"conformance\"
harness = false

[lints]
workspace = true
"
    )
}

fn source_lib(ty: &str) -> String {
    format!(
        "//! A [`DeliverySource`] on {ty}.
//!
//! Say here what it is for, and how it keeps each sentence of the source contract (in
//! crates/payments-ports/src/source.rs): every message delivered, its bytes unchanged; a dropped
//! receipt delivered again; nothing lost to a crash or a lost connection.

use async_trait::async_trait;
use payments_ports::{{Delivery, DeliverySource, SourceError}};

/// Deliveries from {ty}.
#[derive(Debug)]
pub struct {ty}Source {{}}

impl {ty}Source {{
    /// Connects to the destination at `location` (a URL: yours to define).
    ///
    /// # Errors
    ///
    /// When it cannot connect.
    pub async fn connect(location: &str) -> Result<Self, SourceError> {{
        let _ = location;
        Ok(Self {{}})
    }}
}}

#[async_trait]
impl DeliverySource for {ty}Source {{
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {{
        Err(SourceError::failed(\"not implemented: next\"))
    }}
}}
"
    )
}

fn source_plug_in(backend: &str, snake: &str, ty: &str) -> String {
    format!(
        "//! The {backend} source against the source suite: `cargo xtask conformance --adapter {backend}`.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::source::{{Identity, SourceCapabilities, SourceHarness}};
use payments_ports::DeliverySource;
use {snake}::{ty}Source;

struct {ty}Harness;

#[async_trait::async_trait]
impl SourceHarness for {ty}Harness {{
    /// A fresh destination per case (a stream, a queue), removed in `teardown`.
    type Env = ();

    fn adapter(&self) -> &'static str {{
        \"{backend}\"
    }}

    /// What the source can do: a case for a capability it does not declare is reported as
    /// skipped, by name.
    fn capabilities(&self) -> SourceCapabilities {{
        SourceCapabilities {{
            binary_safe: true,
            redelivers_dropped: true,
            exact_attempts: true,
            groups: true,
            resumes: true,
            in_flight_bound: Some(8),
            leases: true,
            kill_connections: true,
        }}
    }}

    fn redelivery_timeout(&self) -> Duration {{
        Duration::from_secs(1)
    }}

    async fn kill_connections(&self, _: &()) -> Result<(), BoxError> {{
        Err(\"not implemented: kill_connections\".into())
    }}

    async fn setup(&self) -> Result<(), BoxError> {{
        Ok(())
    }}

    async fn publish(&self, _: &(), messages: &[Bytes]) -> Result<(), BoxError> {{
        let _ = messages;
        Err(\"not implemented: publish\".into())
    }}

    async fn open(&self, _: &(), identity: &Identity, _: usize) -> Result<Box<dyn DeliverySource>, BoxError> {{
        Ok(Box::new({ty}Source::connect(&identity.group).await?))
    }}
}}

fn main() -> ExitCode {{
    payments_conformance::source::main({ty}Harness)
}}
"
    )
}

fn readme(crate_name: &str, backend: &str, kind: &str) -> String {
    format!(
        "# {crate_name}

A {kind} adapter for {backend}, scaffolded by `cargo xtask new-adapter`.

- `cargo xtask conformance --adapter {backend}` runs the {kind} suite against it; every case is
  named after the sentence of the contract it checks.
- docs/adding-an-adapter.md says what each step takes, and what the suite cannot see for you.
"
    )
}

/// The check `cargo xtask test` runs: scaffolds a store and a source into a copy of the workspace,
/// then runs `cargo xtask conformance` on each there; every case must be listed as failed.
pub(crate) fn check() -> anyhow::Result<()> {
    let root = shell::root();
    let copy = tempfile_dir(&root)?;
    let result = check_in(&root, &copy);
    let _ = std::fs::remove_dir_all(&copy);
    result
}

fn tempfile_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target").join("xtask").join(format!("scaffold-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn check_in(root: &Path, copy: &Path) -> anyhow::Result<()> {
    // The files a commit of the working tree would hold: tracked, and new but not ignored.
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output()
        .context("cannot run git")?;
    if !listed.status.success() {
        bail!("git ls-files failed: {}", String::from_utf8_lossy(&listed.stderr));
    }
    for path in listed.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let path = Path::new(std::str::from_utf8(path)?);
        if !root.join(path).is_file() {
            continue; // deleted in the working tree
        }
        let target = copy.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(root.join(path), &target).with_context(|| format!("cannot copy {}", path.display()))?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    for (backend, kind) in [("scaffolded", AdapterKind::Store), ("scaffolded", AdapterKind::Source)] {
        scaffold(copy, backend, kind)?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["run", "--quiet", "--package", "xtask", "--", "conformance", "--adapter"])
            .arg(format!("{}{backend}", kind.prefix()))
            .current_dir(copy)
            // The builds of the copy's own crates go beside the workspace's, sharing what they can.
            .env("CARGO_TARGET_DIR", target_dir.join("scaffold"))
            .output()
            .context("cannot run cargo xtask conformance in the copy")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(&format!("FAILED  {} {backend}::", kind.name())))
            .collect();
        let not_implemented = failed.iter().filter(|l| l.contains("not implemented")).count();
        let expected = cases(&stderr, kind)?;
        if output.status.success() || failed.len() != expected || not_implemented != expected {
            bail!(
                "a scaffolded {} must build and fail every one of its {expected} cases with `not implemented`; \
                 {} failed, {not_implemented} of them so (status {}):\n{stderr}",
                kind.name(),
                failed.len(),
                output.status
            );
        }
        eprintln!("a scaffolded {} builds, and fails all {expected} of its cases, each by name", kind.name());
    }
    Ok(())
}

/// How many cases the matrix line of the scaffolded crate counts.
fn cases(stderr: &str, kind: AdapterKind) -> anyhow::Result<usize> {
    let row = stderr
        .lines()
        .find(|l| l.starts_with(kind.name()) && l.split_whitespace().nth(1) == Some("scaffolded"))
        .with_context(|| format!("no matrix row for the scaffolded {}:\n{stderr}", kind.name()))?;
    let numbers: Vec<usize> = row.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match numbers.as_slice() {
        [passed, failed, skipped, ..] if *passed == 0 && *skipped == 0 => Ok(*failed),
        _ => bail!(
            "the scaffolded {}'s row must show every case failed, none passed or skipped: {row}",
            kind.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(type_name("sqlite"), "Sqlite");
        assert_eq!(type_name("my-sql"), "MySql");
    }

    #[test]
    fn a_scaffold_refuses_a_bad_name_and_an_existing_crate() {
        let root = std::env::temp_dir().join(format!("xtask-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(root.join("crates/payments-store-taken")).expect("temp tree");
        let bad = scaffold(&root, "Bad_Name", AdapterKind::Store).err().map(|e| e.to_string());
        let taken = scaffold(&root, "taken", AdapterKind::Store).err().map(|e| e.to_string());
        std::fs::remove_dir_all(&root).expect("clean up");
        assert!(bad.is_some_and(|e| e.contains("use lowercase letters")));
        assert!(taken.is_some_and(|e| e.contains("exists already")));
    }

    #[test]
    fn a_dependency_line_goes_after_its_kind() {
        let path = std::env::temp_dir().join(format!("xtask-manifest-{}.toml", std::process::id()));
        std::fs::write(&path, "[deps]\na = 1\npayments-a = 1\npayments-b = 1\nz = 1\n").expect("write");
        add_line_after_last(&path, "payments-", "payments-c = 1").expect("add");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_file(&path).expect("clean up");
        assert_eq!(text, "[deps]\na = 1\npayments-a = 1\npayments-b = 1\npayments-c = 1\nz = 1\n");
    }
}
