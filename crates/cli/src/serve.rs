//! `sluice serve` and `sluice config`: run the engine from its layered
//! settings, or print them.

use std::path::Path;
use std::process::ExitCode;

use sluice_config::Settings;

/// `sluice serve`: loads the settings (defaults < `path` < environment),
/// sets up logging per `[log]`, runs the engine until SIGINT/SIGTERM and
/// shuts it down gracefully. Exit code 0 on a clean stop, 1 when the engine
/// failed, 2 when the settings are wrong.
pub fn serve(path: Option<&Path>) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    sluice_engine::logging::init(&settings.log);
    let runtime = match crate::runtime::runtime("sluice", ExitCode::FAILURE) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(sluice_engine::run_until_signal(settings)) {
        Ok(report) => {
            if !report.drained {
                tracing::warn!(
                    undelivered = report.undelivered,
                    "stopped before every record was delivered; sources resend what was not acked"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "engine failed");
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice config`: prints the effective configuration (defaults < `path` <
/// environment) as TOML, with the secrets written in it replaced by
/// `<redacted>`. Exit code 2 when the settings are wrong.
pub fn print_config(path: Option<&Path>) -> ExitCode {
    match Settings::load(path).and_then(|s| s.to_toml_string_redacted()) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(2)
        }
    }
}
