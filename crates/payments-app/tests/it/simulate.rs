//! `simulate` end to end: several seeds, on the default (file) store and on the memory store.

use crate::support::{app, report, root, run};

#[test]
fn several_seeds_find_no_anomaly_with_faults_that_fired() {
    for (seed, store) in [("1", None), ("2", None), ("3", Some("memory"))] {
        let mut args = vec!["simulate", "--payments", "3000", "--seed", seed, "--report", "json"];
        if let Some(store) = store {
            args.extend(["--store", store]);
        }
        let output = run(app(&root(), &args));
        let counts = report(&output);
        for anomaly in ["lost", "duplicated_effects", "unexpected", "missing_dead_letters"] {
            assert_eq!(counts[anomaly], 0, "seed {seed}: {anomaly} in {counts}");
        }
        for fault in ["crashes", "restarts", "redeliveries", "concurrent_duplicates", "conflicts", "invalid"]
        {
            assert!(counts[fault].as_u64().is_some_and(|n| n > 0), "seed {seed}: no {fault} fired: {counts}");
        }
        assert_eq!(counts["applied"], 3000, "seed {seed}: {counts}");
    }
}

#[test]
fn a_run_whose_faults_never_fire_proved_nothing_and_fails() {
    let output = run(app(&root(), &["simulate", "--payments", "3", "--crash-rate", "0.001", "--seed", "5"]));
    assert!(!output.status.success(), "three payments cannot show a 0.1% crash rate at work");
    assert!(String::from_utf8_lossy(&output.stderr).contains("proved nothing"));
}
