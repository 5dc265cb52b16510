//! `cargo xtask bench`: every scenario beside the raw limit it is measured against, in the same run.
//!
//! ```text
//! cargo bench -p payments-app --bench scenarios -- [--quick] [--json PATH] [--only PREFIX]
//! ```
//!
//! Each row is a scenario, its throughput and latency percentiles, and the raw baseline measured
//! just before it on the same machine: the ratio is what is compared with the target, because
//! absolute figures move with the machine and its neighbours.

// A benchmark harness reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod consume;
mod file;
mod measure;
mod memory;
mod postgres;

use std::process::ExitCode;

use measure::{Row, Scale};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut scale, mut json, mut only) = (Scale::Full, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => scale = Scale::Quick,
            "--json" => json = args.next(),
            "--only" => only = args.next(),
            // cargo bench passes --bench; libtest flags mean nothing here.
            _ => {}
        }
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let selected = |name: &str| only.as_deref().is_none_or(|prefix| name.starts_with(prefix));

    let mut rows: Vec<Row> = Vec::new();
    let mut run = |name: &str, scenario: &dyn Fn() -> Vec<Row>| {
        if selected(name) {
            eprintln!("running {name} ...");
            let produced = scenario();
            for row in &produced {
                eprintln!("  {}", row.line());
            }
            rows.extend(produced);
        }
    };
    run("memory", &|| memory::run(scale));
    run("file", &|| runtime.block_on(file::run(scale)));
    run("postgres", &|| runtime.block_on(postgres::run(scale)));
    run("consume", &|| consume::run(scale));

    println!("\n{}", Row::header());
    for row in &rows {
        println!("{}", row.line());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rows).expect("rows are plain numbers and strings");
        if let Err(err) = std::fs::write(&path, text + "\n") {
            eprintln!("cannot write {path}: {err}");
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {path}");
    }
    let missed: Vec<&str> =
        rows.iter().filter(|r| r.met == Some(false)).map(|r| r.scenario.as_str()).collect();
    if !missed.is_empty() {
        eprintln!("targets missed on this run: {}", missed.join(", "));
    }
    ExitCode::SUCCESS
}
