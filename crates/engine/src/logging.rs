//! Logging through `tracing`: human-readable lines by default, one JSON
//! object per line with `log.format = "json"` or the global CLI option
//! `--log-format json` (which wins over the settings), and `RUST_LOG` (when
//! set and valid) over `log.filter`.
//!
//! Every source session runs in a `source` span (`source`, `pipeline`) and
//! every stage worker in a `stage` span (`pipeline`, `stage`), so each line
//! says which source or stage it is about; in JSON the spans are fields.

use std::sync::OnceLock;

use sluice_config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

static FORMAT_OVERRIDE: OnceLock<LogFormat> = OnceLock::new();

/// Sets the log format for the whole process, over `log.format` (what the
/// CLI's `--log-format` does). The first call wins.
pub fn set_format_override(format: LogFormat) {
    let _ = FORMAT_OVERRIDE.set(format);
}

/// The format [`init`] uses for `log`: the override if one was set, else `log.format`.
pub fn effective_format(log: &LogSettings) -> LogFormat {
    FORMAT_OVERRIDE.get().copied().unwrap_or(log.format)
}

/// The filter [`init`] uses: `RUST_LOG` when set and valid, else
/// `log.filter`, else `info`.
pub fn filter(log: &LogSettings) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            if let Ok(f) = EnvFilter::try_new(&v) {
                return f;
            }
            eprintln!("sluice: ignoring invalid RUST_LOG {v:?}");
        }
        _ => {}
    }
    EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs a `tracing` subscriber writing to standard error (no-op if one is
/// installed already).
pub fn init(log: &LogSettings) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(log))
        .with_writer(std::io::stderr);
    let _ = match effective_format(log) {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_format_applies_without_an_override() {
        let log = LogSettings {
            format: LogFormat::Json,
            ..LogSettings::default()
        };
        assert_eq!(effective_format(&log), LogFormat::Json);
        assert_eq!(effective_format(&LogSettings::default()), LogFormat::Text);
    }
}
