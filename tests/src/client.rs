//! Options of the Rust source client in the tests.

use std::time::Duration;

use sluice_client::{ClientOptions, ReconnectPolicy};

/// Client options that reconnect up to `max_attempts` times in a row,
/// waiting `initial_backoff` first and doubling up to `max_backoff`; the
/// rest are the defaults (tests change what else they need with
/// `ClientOptions { .., ..reconnecting(..) }`).
pub fn reconnecting(
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
) -> ClientOptions {
    ClientOptions {
        reconnect: ReconnectPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
        },
        ..ClientOptions::default()
    }
}
