//! sluice-engine: the server and pipeline runtime of the sluice ETL engine.
//!
//! - [`Engine`] / [`EngineBuilder`] / [`EngineHandle`] ([`server`]): the gRPC
//!   server (`Ingest`, `Admin`, health, reflection) over a buffer manager,
//!   flow control and a memory gate, with graceful shutdown.
//! - [`pipeline`]: stage workers; [`transform`]: per-record transforms;
//!   [`sink`]: sinks and dead-letter sinks; [`ack`]: ack progress per source;
//!   [`record`]: the engine's record type.
#![warn(missing_docs)]

pub use sluice_config as config;

pub mod logging;
pub mod observe;

// Server and pipeline runtime.
pub mod ack;
pub mod auth;
pub mod pipeline;
pub mod record;
pub mod server;
mod session;
pub mod sink;
pub mod tls;
pub mod transform;
mod wire;

pub use server::{
    DEFAULT_MAX_BATCH_RECORDS, Engine, EngineBuilder, EngineError, EngineHandle, ShutdownReport,
    run_until_signal,
};
