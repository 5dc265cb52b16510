//! A progress line on stderr when it is a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use payments_consumer::Summary;

/// The spinner, if stderr is a terminal.
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner if `wanted` and stderr is a terminal (not while logging JSON, say).
    pub(crate) fn new(wanted: bool) -> Self {
        if !wanted || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(Some(bar))
    }

    /// Shows the counts of a consumer run.
    pub(crate) fn update(&self, summary: &Summary) {
        if let Some(bar) = &self.0 {
            // Redrawing is rate-limited by indicatif; formatting the message is not, so skip most.
            if summary.deliveries.is_multiple_of(1024) {
                bar.set_message(summary.to_string());
            }
        }
    }

    /// Shows how many deliveries a simulation has settled.
    pub(crate) fn settled(&self, settled: u64) {
        if let Some(bar) = &self.0
            && settled.is_multiple_of(1024)
        {
            bar.set_message(format!("{settled} deliveries settled"));
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
