//! Why an engine could not start (or stop cleanly).

use std::net::SocketAddr;

use sluice_buffer::{BuildError, ControllerError, MemoryError};
use sluice_config::ValidationErrors;

use crate::sink::SinkError;

/// Why the engine could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The settings are invalid.
    #[error("invalid settings: {0}")]
    Config(#[from] ValidationErrors),
    /// The buffer could not be built from the settings.
    #[error("buffer: {0}")]
    Buffer(#[from] BuildError),
    /// The memory monitor could not start.
    #[error("memory monitor: {0}")]
    Memory(#[from] MemoryError),
    /// Flow control could not start.
    #[error("flow control: {0}")]
    Controller(#[from] ControllerError),
    /// A sink could not be opened.
    #[error("pipeline {pipeline:?}: {source}")]
    Sink {
        /// The pipeline.
        pipeline: String,
        /// The error.
        source: SinkError,
    },
    /// A custom sink names a pipeline that is not configured.
    #[error("a custom sink is given for pipeline {0:?}, which is not configured")]
    UnknownPipeline(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Server reflection could not be built from the descriptor set.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The Prometheus exporter could not be installed.
    #[error(transparent)]
    Metrics(#[from] crate::observe::MetricsError),
    /// A `[server.tls]` file could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    TlsFile {
        /// The configuration key that names the file (`server.tls.cert`).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
