//! External programs a test needs (servers, tools): found on `PATH`, or
//! skipped loudly, or a failure in CI.

use std::path::PathBuf;

/// The environment variable that turns a missing external program (a
/// server or tool a test needs: PostgreSQL, nats-server, nginx, promtool)
/// into a failure instead of a skip. `.ci/run` sets it, so CI never skips.
pub const REQUIRE_EXTERNAL: &str = "SLUICE_REQUIRE_EXTERNAL";

/// The path of the external program `name` (searched on `PATH`), or `None`
/// after a loud `SKIPPED` line when it is missing, so the README's test
/// command passes on a fresh machine. Panics instead when
/// [`REQUIRE_EXTERNAL`] is set.
pub fn external_program(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(test, &format!("`{name}`"));
    }
    found
}

/// Reports that `what` (a program, a server) that `test` needs is not
/// installed: a loud `SKIPPED` line, or a panic when [`REQUIRE_EXTERNAL`]
/// is set.
pub fn missing(test: &str, what: &str) {
    assert!(
        std::env::var_os(REQUIRE_EXTERNAL).is_none(),
        "{test}: {what} is not installed and {REQUIRE_EXTERNAL} is set"
    );
    eprintln!("SKIPPED {test}: {what} is not installed (set {REQUIRE_EXTERNAL}=1 to fail instead)");
}
