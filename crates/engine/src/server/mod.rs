//! The server: builds the engine (buffer, flow control, memory gate,
//! pipeline workers) and serves it over gRPC (`Ingest`, `Admin`,
//! grpc.health.v1, server reflection v1 and v1alpha).
//!
//! - [`builder`]: [`EngineBuilder`], the one way to start an engine
//!   ([`Engine::start`] is its shorthand);
//! - [`handle`]: the running [`EngineHandle`], graceful shutdown,
//!   [`run_until_signal`];
//! - `state`: what the services share; `admin`: the `Admin` service;
//!   `publish`: the metrics publishing task; [`tls`]: server TLS;
//! - [`EngineError`]: why an engine could not start.
//!
//! Start it with [`Engine::start`] or, to inject a memory probe, custom
//! sinks or flow-control settings, with an [`EngineBuilder`]. Stop it with
//! [`EngineHandle::shutdown`]: health goes NOT_SERVING, flow control stops
//! granting and pauses every source (reason SHUTDOWN), sessions reject new
//! batches, the pipelines drain to the sinks for at most
//! `server.shutdown_timeout`, workers stop, each stream gets its last `Ack`
//! and ends with `UNAVAILABLE`, and the server stops (bounded waits).

use sluice_config::Settings;

mod admin;
pub mod builder;
mod error;
pub mod handle;
mod publish;
mod state;
pub mod tls;

pub use builder::{DEFAULT_MAX_BATCH_RECORDS, EngineBuilder};
pub use error::EngineError;
pub use handle::{EngineHandle, ShutdownReport, run_until_signal};

/// Entry point: [`Engine::start`] runs an engine from settings.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Starts an engine from `settings` (binding `server.listen`; use port 0
    /// in tests and read [`EngineHandle::local_addr`]).
    pub async fn start(settings: Settings) -> Result<EngineHandle, EngineError> {
        EngineBuilder::new(settings).start().await
    }

    /// A builder, to inject a memory probe, sinks or flow-control settings.
    pub fn builder(settings: Settings) -> EngineBuilder {
        EngineBuilder::new(settings)
    }
}
