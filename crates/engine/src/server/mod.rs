//! The server: builds the engine (buffer, flow control, memory gate,
//! pipeline workers) and serves it over gRPC (`Ingest`, `Admin`,
//! grpc.health.v1, server reflection v1 and v1alpha).
//!
//! - [`builder`]: [`EngineBuilder`], the one way to start an engine;
//! - [`handle`]: the running [`EngineHandle`] and its graceful shutdown;
//! - `signal`: [`run_until_signal`], what `sluice serve` runs;
//! - `health`: the names grpc.health.v1 reports;
//! - `state`: what the services share; `admin`: the `Admin` service;
//!   `publish`: the metrics publishing task; [`tls`]: server TLS;
//!   `connections`: `server.max_connections`;
//! - [`EngineError`]: why an engine could not start.
//!
//! Start it with an [`EngineBuilder`] (which also injects a memory probe,
//! custom sinks or flow-control settings). Stop it with
//! [`EngineHandle::shutdown`]: health goes NOT_SERVING, flow control stops
//! granting and pauses every source (reason SHUTDOWN), sessions reject new
//! batches, the pipelines drain to the sinks for at most
//! `server.shutdown_timeout`, workers stop, each stream gets its last `Ack`
//! and ends with `UNAVAILABLE`, and the server stops (bounded waits).

mod admin;
pub mod builder;
mod connections;
mod error;
pub mod handle;
mod health;
mod publish;
mod signal;
mod state;
pub mod tls;

pub use builder::{DEFAULT_MAX_BATCH_RECORDS, EngineBuilder};
pub use error::EngineError;
pub use handle::{EngineHandle, ShutdownReport};
pub use signal::run_until_signal;
