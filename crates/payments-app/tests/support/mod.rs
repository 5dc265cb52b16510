//! Running the binary and reading what it prints: shared by every test binary of the app
//! (`tests/it`, `tests/crash.rs`, `tests/postgres.rs`), each of which uses part of it.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root, where `examples/` lives.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `payments-app` command run from `dir`, where its default store goes, reading nothing from
/// stdin unless told otherwise.
pub(crate) fn app(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_payments-app"));
    command.args(args).current_dir(dir).stdin(Stdio::null());
    command
}

/// The example input's absolute path.
pub(crate) fn example() -> String {
    root().join("examples/payments.jsonl").display().to_string()
}

/// Runs `command` with `stdin` as its input and waits for it.
pub(crate) fn run_with_stdin(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("payments-app starts");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("payments-app reads its input");
    drop(input);
    child.wait_with_output().expect("payments-app finishes")
}

/// Runs `command` to the end.
pub(crate) fn run(mut command: Command) -> Output {
    command.output().expect("payments-app runs")
}

/// The JSON report a `--report json` run printed on stdout.
pub(crate) fn report(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "payments-app failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("stdout is not one JSON report ({err}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// What the process printed on stderr.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `consume` run started with `--metrics-addr 127.0.0.1:0` and stdin piped: the test feeds it
/// lines, reads its endpoints while it runs, then closes its input and collects the end.
pub(crate) struct Serving {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Where its endpoints listen.
    pub(crate) address: std::net::SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How long a run may take to say where its endpoints listen.
const SERVING_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

impl Serving {
    /// Starts `command` (a `consume` with `--metrics-addr 127.0.0.1:0`) and waits until it says
    /// where its endpoints listen.
    pub(crate) fn start(mut command: Command) -> Self {
        use std::io::BufRead as _;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("payments-app starts");
        let stdin = child.stdin.take();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (found, address) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let kept = std::sync::Arc::clone(&stderr);
        // Read to the end, so that the process never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.split("on http://").nth(1) {
                    let at = at.trim_end_matches(|c: char| c == '"' || c == '}' || c.is_whitespace());
                    if let Ok(address) = at.split(['"', ',']).next().unwrap_or(at).parse() {
                        let _ = found.send(address);
                    }
                }
                let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let address = address.recv_timeout(SERVING_WITHIN).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "payments-app never said where it serves metrics: {}",
                stderr.lock().map(|s| s.clone()).unwrap_or_default()
            )
        });
        Self { child, stdin, address, stderr, reader: Some(reader) }
    }

    /// Feeds it `lines`.
    pub(crate) fn feed(&mut self, lines: &[String]) {
        let stdin = self.stdin.as_mut().expect("the input is still open");
        for line in lines {
            writeln!(stdin, "{line}").expect("payments-app reads its input");
        }
        stdin.flush().expect("payments-app reads its input");
    }

    /// GETs `path` from its endpoints.
    pub(crate) fn get(&self, path: &str) -> payments_test_support::scrape::Response {
        payments_test_support::scrape::get(self.address, path, None)
            .unwrap_or_else(|err| panic!("GET {path}: {err}; stderr so far: {}", self.stderr_so_far()))
    }

    /// Polls `path` until it answers `status`; fails after `within`, showing the last answer.
    pub(crate) fn wait_for_status(
        &self,
        path: &str,
        status: u16,
        within: std::time::Duration,
    ) -> payments_test_support::scrape::Response {
        let deadline = std::time::Instant::now() + within;
        loop {
            let response = self.get(path);
            if response.status == status {
                return response;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never answered {status} within {within:?}; last: {} {}\nstderr: {}",
                response.status,
                response.body,
                self.stderr_so_far()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Its metrics now.
    pub(crate) fn scrape(&self) -> payments_test_support::scrape::Samples {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        payments_test_support::scrape::Samples::parse(&response.body).expect("the Prometheus text format")
    }

    /// Polls `condition` on its metrics until it holds; fails after `within`, showing the last scrape.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        within: std::time::Duration,
        condition: impl Fn(&payments_test_support::scrape::Samples) -> bool,
    ) -> payments_test_support::scrape::Samples {
        let deadline = std::time::Instant::now() + within;
        loop {
            let samples = self.scrape();
            if condition(&samples) {
                return samples;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never within {within:?}: {what}\nlast scrape: {samples:?}\nstderr: {}",
                self.stderr_so_far()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// What it printed on stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Closes its input and waits for it to end: its exit status, stdout and stderr.
    pub(crate) fn finish(mut self) -> Output {
        drop(self.stdin.take());
        let mut stdout = Vec::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            std::io::Read::read_to_end(&mut pipe, &mut stdout).expect("payments-app's stdout");
        }
        let status = self.child.wait().expect("payments-app ends");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Output { status, stdout, stderr: self.stderr_so_far().into_bytes() }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
