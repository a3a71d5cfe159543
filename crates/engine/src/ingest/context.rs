//! What the ingest sessions share: the runtime they feed, the server
//! settings that bound a stream, the engine's lifecycle tokens, the stream
//! registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::ServerSettings;
use tokio_util::sync::CancellationToken;

use super::gate::MessagePool;
use super::streams::StreamRegistry;
use crate::auth::Authenticator;
use crate::observe::WarnLimiter;
use crate::runtime::Runtime;

/// What the ingest sessions share: the runtime they feed, the server
/// settings that bound a stream, and the engine's lifecycle tokens.
#[derive(Debug)]
pub(crate) struct IngestContext {
    /// Buffer, flow control, acks and pipelines.
    pub(crate) runtime: Arc<Runtime>,
    /// `[server]`: message size, open timeout, unacked cap.
    pub(crate) server: ServerSettings,
    /// `Opened.max_batch_records`.
    pub(crate) max_batch_records: u32,
    /// `[server.auth]`, when tokens are configured.
    pub(crate) auth: Option<Authenticator>,
    /// Cancelled when shutdown starts: batches are rejected.
    pub(crate) draining: CancellationToken,
    /// Cancelled when streams must end (after draining).
    pub(crate) stop: CancellationToken,
    /// The open streams.
    pub(crate) streams: StreamRegistry,
    /// `server.uncovered_message_bytes`: room for messages beyond credit.
    pub(crate) message_pool: Arc<MessagePool>,
    /// Rate limit of the "records rejected" warning, per source.
    rejections: WarnLimiter,
}

impl IngestContext {
    /// A context over `runtime`; nothing is draining yet.
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        server: ServerSettings,
        max_batch_records: u32,
        auth: Option<Authenticator>,
        uncovered_message_bytes: usize,
    ) -> Self {
        let message_pool = Arc::new(MessagePool::new(
            uncovered_message_bytes,
            server.message_timeout,
            server.max_message_bytes,
        ));
        Self {
            message_pool,
            runtime,
            server,
            max_batch_records,
            auth,
            draining: CancellationToken::new(),
            stop: CancellationToken::new(),
            streams: StreamRegistry::default(),
            rejections: WarnLimiter::new(Duration::from_secs(5)),
        }
    }

    /// Logs a warning about rejected records of `source`, at most once per
    /// interval per source, with the number of rejections not logged since.
    pub(crate) fn rejected(&self, source: &str, count: u64, reason: &str, message: &str) {
        if let Some(suppressed) = self.rejections.check(source, Instant::now()) {
            tracing::warn!(
                source,
                count,
                reason,
                message,
                suppressed,
                "records rejected (further rejections of this source are summarised)"
            );
        }
    }
}
