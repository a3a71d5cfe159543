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

/// Logging for the client-side commands (`send`, `demo`): warnings and
/// errors on stderr, `SLUICE_LOG` to change the filter; never fails if a
/// subscriber is already installed.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
