//! A running engine: [`EngineHandle`] and its graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_buffer::{BackpressureController, MemoryMonitor};
use sluice_proto::v1;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::health::SERVICES;
use super::state::EngineState;
use crate::record::EngineRecord;
use crate::runtime::{AckHub, Buffer};

/// What [`EngineHandle::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every admitted record was completed within `shutdown_timeout`.
    pub drained: bool,
    /// Records still admitted and not completed when the engine stopped (to
    /// be resent by their sources, which never got an ack for them).
    pub undelivered: u64,
}

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    pub(crate) state: Arc<EngineState>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) health: tonic_health::server::HealthReporter,
    pub(crate) server: JoinHandle<Result<(), tonic::transport::Error>>,
    pub(crate) server_stop: CancellationToken,
    pub(crate) workers: Vec<JoinHandle<()>>,
    pub(crate) controller_task: JoinHandle<()>,
    pub(crate) monitor: MemoryMonitor,
}

impl EngineHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The buffer manager (for tests and embedding).
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.state.runtime.buffer
    }

    /// The flow-control controller.
    pub fn controller(&self) -> &Arc<BackpressureController<EngineRecord>> {
        &self.state.runtime.controller
    }

    /// Per-source ack progress.
    pub fn acks(&self) -> &Arc<AckHub> {
        &self.state.runtime.hub
    }

    /// The memory behind records' bytes: the message copies (and
    /// compacted copies) records in the engine still reference
    /// (`sluice_record_memory_bytes`).
    pub fn record_memory(&self) -> &Arc<crate::record_memory::RecordMemory> {
        &self.state.runtime.record_memory
    }

    /// What `Admin.Stats` would answer now.
    pub fn stats(&self) -> v1::StatsResponse {
        self.state.stats()
    }

    /// Whether the gRPC server task has ended (it should not before shutdown).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// Graceful shutdown (see the [module docs](self)); every wait is bounded
    /// by `server.shutdown_timeout` (plus a second for the last steps).
    pub async fn shutdown(mut self) -> Result<ShutdownReport, EngineError> {
        let timeout = self.state.settings.server.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(?timeout, "shutting down: draining");
        for name in SERVICES {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.state.ingest.draining.cancel();
        self.state.runtime.controller.shutdown();
        let buffer = self.state.runtime.buffer.clone();
        let drained = tokio::time::timeout_at(deadline, buffer.drain())
            .await
            .is_ok();
        // Stop the workers, and let them finish (and publish) what they hold.
        buffer.shutdown();
        let grace = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        for w in std::mem::take(&mut self.workers) {
            if tokio::time::timeout_at(grace, w).await.is_err() {
                tracing::warn!("a stage worker did not stop in time");
            }
        }
        let undelivered = buffer.in_engine();
        // Streams send their last Ack and end themselves.
        self.state.ingest.stop.cancel();
        self.server_stop.cancel();
        let server = &mut self.server;
        let result = match tokio::time::timeout_at(grace, &mut *server).await {
            Ok(Ok(r)) => r.map_err(EngineError::from),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "gRPC server task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("connections did not close in time; cutting them");
                server.abort();
                Ok(())
            }
        };
        self.controller_task.abort();
        self.monitor.shutdown();
        tracing::info!(drained, undelivered, "engine stopped");
        result.map(|()| ShutdownReport {
            drained,
            undelivered,
        })
    }
}
