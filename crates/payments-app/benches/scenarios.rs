//! `cargo xtask bench`: `payments-app consume` end to end: the release binary, a file of JSON lines, a durable store.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use payments_test_support::bench::{self, Latencies, Row, Scale, Target, rate, timed};

fn main() -> std::process::ExitCode {
    bench::main(&[("consume", &run)])
}

/// One million lines: 800,000 distinct payments, and 200,000 redeliveries of them spread through.
fn write_input(path: &Path, lines: usize) {
    let distinct = lines * 4 / 5;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("input file"));
    for i in 0..lines {
        // Every fifth line repeats a payment from earlier in the file.
        let id = if i % 5 == 4 { (i / 5 * 7919) % (i / 5 * 4 + 1) } else { i - i / 5 };
        debug_assert!(id < distinct);
        writeln!(
            out,
            r#"{{"payment_id": "pay-{id:09}", "amount": {}, "currency": "EUR"}}"#,
            100 + id % 100_000
        )
        .expect("write input");
    }
    out.flush().expect("flush input");
}

fn consume(dir: &Path, store: &str, input: &Path) -> (serde_json::Value, f64) {
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args(["consume", "--store", store, "--input", &input.display().to_string(), "--report", "json"])
            .current_dir(dir)
            .output()
            .expect("payments-app runs")
    });
    assert!(output.status.success(), "consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let deliveries = report["deliveries"].as_u64().unwrap_or(0) as usize;
    (report, rate(deliveries, elapsed))
}

fn run(scale: Scale) -> Vec<Row> {
    let lines = scale.pick(1_000_000, 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    write_input(&input, lines);
    let mut rows = Vec::new();
    for (name, store, target) in [
        ("consume.file", format!("file:{}", dir.path().join("consume.journal").display()), 100_000.0),
        ("consume.memory", "memory".to_owned(), 500_000.0),
    ] {
        let (report, per_sec) = consume(dir.path(), &store, &input);
        assert_eq!(report["applied"].as_u64(), Some((lines * 4 / 5) as u64), "{report}");
        rows.push(Row::new(
            name,
            per_sec,
            &mut Latencies::default(),
            "none (1,000,000 lines, 20% duplicates)",
            None,
            Target::OpsPerSec(target),
            format!(
                "{} applied, {} duplicates, wall clock incl. process start",
                report["applied"], report["duplicates"]
            ),
        ));
    }
    rows
}
