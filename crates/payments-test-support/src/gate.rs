//! Tests that need something outside the process (a database, a broker): run them, skip them by
//! name, or fail them under `CI=true`.

// The SKIPPED lines are for the person reading the test output.
#![allow(clippy::print_stderr)]

use libtest_mimic::{Failed, Trial};

/// Whether this run is under continuous integration, where a test that cannot run is a failure,
/// not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// What a test that needs a server does here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The server answers: run.
    Run,
    /// It does not, outside CI: report the test as skipped, by name, with this reason.
    Skip(String),
    /// It does not, under `CI=true`: fail with this reason.
    Fail(String),
}

impl Gate {
    /// The gate for a server that answered (`Ok`), or did not, for the reason given.
    pub fn new(availability: Result<(), String>) -> Self {
        match availability {
            Ok(()) => Self::Run,
            Err(reason) if under_ci() => Self::Fail(format!("{reason}; CI=true forbids skipping")),
            Err(reason) => Self::Skip(reason),
        }
    }
}

/// A test: `Ok`, or why it failed.
pub type Test = fn() -> Result<(), Failed>;

/// Named tests, each named after its function (the path as written, `module::function`), so that
/// a failure can be found with grep: `tests![recovery::every_cut_is_recovered, lock::second_process]`.
#[macro_export]
macro_rules! tests {
    ($($test:path),* $(,)?) => {
        vec![$((stringify!($test).replace(' ', ""), $test as $crate::Test)),*]
    };
}

/// The tests as libtest trials behind `gate`: run when it says so; otherwise ignored with a loud
/// `SKIPPED <prefix>::<name>: <reason>` line each, or, under `CI=true`, failed with the reason.
pub fn trials(prefix: &str, gate: &Gate, tests: Vec<(String, Test)>) -> Vec<Trial> {
    tests
        .into_iter()
        .map(|(name, test)| match gate {
            Gate::Run => Trial::test(name, test),
            Gate::Skip(reason) => {
                eprintln!("SKIPPED {prefix}::{name}: {reason}");
                Trial::test(name, test).with_kind("unavailable").with_ignored_flag(true)
            }
            Gate::Fail(reason) => {
                let reason = reason.clone();
                Trial::test(name, move || Err(reason.into()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes() -> Result<(), Failed> {
        Ok(())
    }

    mod inner {
        pub(super) fn fails() -> Result<(), libtest_mimic::Failed> {
            Err("it failed".into())
        }
    }

    #[test]
    fn trials_are_named_after_their_functions() {
        let named = tests![passes, inner::fails];
        let names: Vec<&str> = named.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["passes", "inner::fails"]);
        assert!((named[0].1)().is_ok());
        assert!((named[1].1)().is_err());
    }

    #[test]
    fn an_unavailable_server_skips_or_fails_every_test() {
        let run = |trials| {
            let args = libtest_mimic::Arguments { quiet: true, test_threads: Some(1), ..Default::default() };
            libtest_mimic::run(&args, trials)
        };
        let skipped = run(trials("p", &Gate::Skip("no server".into()), tests![passes]));
        assert_eq!((skipped.num_ignored, skipped.num_failed), (1, 0), "skipped outside CI");
        let failed = run(trials("p", &Gate::Fail("no server".into()), tests![passes]));
        assert_eq!((failed.num_ignored, failed.num_failed), (0, 1), "failed, not ignored, under CI");
        let ran = run(trials("p", &Gate::Run, tests![passes, inner::fails]));
        assert_eq!((ran.num_passed, ran.num_failed), (1, 1));
    }
}
