//! What every command of the `sluice` binary needs before it runs: an async
//! runtime and, for the client-side commands, quiet logging.

use std::process::ExitCode;

/// A multi-thread runtime for `command`, or the exit code `failure` after a
/// message naming the command when the runtime cannot be started.
pub(crate) fn runtime(
    command: &str,
    failure: ExitCode,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{command}: cannot start the async runtime: {e}");
            failure
        })
}

/// Logging for the client-side commands (`send`, `demo`): the engine's
/// set-up ([`sluice_engine::logging::init`]: `RUST_LOG`, `--log-format`) with
/// warnings and errors by default, on stderr; a no-op if a subscriber is
/// already installed.
pub(crate) fn init_tracing() {
    sluice_engine::logging::init(&sluice_config::LogSettings {
        filter: "warn".to_owned(),
        ..Default::default()
    });
}
