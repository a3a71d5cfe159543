//! Running one test alone in a process of its own.
//!
//! All end-to-end tests share one test binary, so they share its process.
//! A test that needs process-global state to itself (the Prometheus recorder
//! that every engine of the process feeds) runs its body in a child process
//! of the test binary that runs only that test.

use std::process::Command;

/// Environment variable that marks the child process.
const CHILD: &str = "SLUICE_TESTS_OWN_PROCESS";

/// Call first in the test `test` (its path in the test binary, e.g.
/// `observe::metrics_after_records`): in the child process it returns `true`
/// and the test runs its body; otherwise it runs the test binary again with
/// only that test, waits for it, panics (with its output) unless it passed,
/// and returns `false` (the body already ran in the child).
pub fn in_own_process(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}
