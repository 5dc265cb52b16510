//! Docs that quote code must quote it as it is.

use anyhow::{Context as _, bail};

use crate::shell;

/// Files that a doc quotes whole, in a fenced block: (doc, quoted file).
const QUOTED: &[(&str, &str)] =
    &[("docs/adding-an-adapter.md", "crates/payments-adapter-memory/tests/conformance.rs")];

/// Fails when a doc's quote of a file differs from the file.
pub(crate) fn check() -> anyhow::Result<()> {
    for (doc, quoted) in QUOTED {
        let root = shell::root();
        let text = std::fs::read_to_string(root.join(doc)).with_context(|| format!("cannot read {doc}"))?;
        let code =
            std::fs::read_to_string(root.join(quoted)).with_context(|| format!("cannot read {quoted}"))?;
        if !text.contains(&format!("```rust\n{code}```")) {
            bail!("{doc} no longer quotes {quoted} as it is: copy the file into its ```rust block");
        }
    }
    eprintln!("docs quote {} file(s) as they are", QUOTED.len());
    Ok(())
}
