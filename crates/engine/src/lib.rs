//! sluice-engine: the sluice ETL engine as a library.
//!
//! Start one with [`EngineBuilder`], stop it with
//! [`EngineHandle::shutdown`]. The modules are the layers of
//! `docs/architecture.md`, each depending only on the ones below it:
//!
//! - [`server`]: builds and serves the engine (builder, handle, `Admin`,
//!   health, reflection, TLS, the metrics publishing task);
//! - [`ingest`]: the `Ingest` service, a stream's session state machine, its
//!   decoder, and the one admission and credit policy;
//! - [`runtime`]: the stage workers, ack progress and stage timing;
//! - [`sink`] (the [`Sink`](sink::Sink) trait and one file per sink) and
//!   [`transform`]: what the stages do;
//! - [`record`] (the engine's record type), [`record_memory`] (the memory
//!   behind records' bytes, compaction), [`auth`] (bearer tokens),
//!   [`observe`] (metric names, the Prometheus exporter), [`logging`].
//!
//! The `sluice` command (package `sluice`, `crates/cli`) is a thin front end
//! over this crate; the Rust source client is `sluice-client`.
#![warn(missing_docs)]

pub use sluice_config as config;

pub mod auth;
pub mod ingest;
pub mod logging;
pub mod observe;
pub mod record;
pub mod record_memory;
pub mod runtime;
pub mod server;
pub mod sink;
pub mod transform;

#[cfg(test)]
mod layers;

pub use server::{
    DEFAULT_MAX_BATCH_RECORDS, EngineBuilder, EngineError, EngineHandle, ShutdownReport,
    run_until_signal,
};
