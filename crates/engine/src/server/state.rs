//! What the server's services and tasks share.

use std::sync::Arc;
use std::time::Instant;

use sluice_config::Settings;

use crate::ingest::IngestContext;
use crate::runtime::Runtime;

/// State shared by the `Admin` service, the publishing task and the handle.
/// The ingest sessions see only their [`IngestContext`].
#[derive(Debug)]
pub(crate) struct EngineState {
    /// The effective settings.
    pub(crate) settings: Settings,
    /// Buffer, flow control, acks, pipelines, stage clocks.
    pub(crate) runtime: Arc<Runtime>,
    /// The ingest side: streams, lifecycle tokens.
    pub(crate) ingest: Arc<IngestContext>,
    /// When the engine started (`Admin.Stats` uptime).
    pub(crate) started: Instant,
}
