//! Ingest: the `sluice.v1.Ingest` service and everything between a source's
//! stream and the buffer.
//!
//! - [`IngestService`] (this file): the tonic service, served by hand so that
//!   requests are decoded by [`wire`] straight into buffer records;
//! - [`session`]: one stream's state machine (Open, batches, credits,
//!   signals, acks, takeover, shutdown);
//! - [`admission`]: the only place the admission and credit policy is
//!   written (what a batch's credit covers, when credit may be granted);
//! - [`streams`]: the registry of open streams, one per source;
//! - [`convert`]: the buffer's types in their proto form.
//!
//! Ingest sits on the [`runtime`](crate::runtime) (buffer, flow control,
//! acks, pipelines) and knows nothing of the server that serves it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use sluice_config::ServerSettings;
use sluice_proto::v1::{self, EngineMessage};
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Authenticator;
use crate::observe::WarnLimiter;
use crate::runtime::Runtime;

mod admission;
mod convert;
mod session;
mod streams;
pub(crate) mod wire;

pub use session::MAX_NAME_BYTES;
pub(crate) use streams::{Connection, StreamRegistry};

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
    ) -> Self {
        Self {
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

/// The `sluice.v1.Ingest` service.
///
/// Served by hand rather than through the generated `IngestServer` so that
/// requests are decoded by [`IngestCodec`](wire::IngestCodec) straight
/// into records the buffer admits in place (see `ingest/wire.rs`); the route, the
/// message size limits and the behaviour are the generated server's.
#[derive(Debug, Clone)]
pub struct IngestService {
    ctx: Arc<IngestContext>,
}

/// The response stream of an `Ingest.Stream` call.
type EngineStream = Pin<Box<dyn Stream<Item = Result<EngineMessage, Status>> + Send + 'static>>;

impl IngestService {
    /// The service over `ctx`.
    pub(crate) fn new(ctx: Arc<IngestContext>) -> Self {
        Self { ctx }
    }

    async fn stream(
        &self,
        request: Request<Streaming<wire::Inbound>>,
    ) -> Result<Response<EngineStream>, Status> {
        let grant = crate::auth::check(self.ctx.auth.as_ref(), request.metadata())?;
        let rx = session::open(self.ctx.clone(), request.into_inner(), grant).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl tonic::server::NamedService for IngestService {
    const NAME: &'static str = v1::ingest_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for IngestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.clone();
        if req.uri().path() != "/sluice.v1.Ingest/Stream" {
            let path = req.uri().path().to_owned();
            return Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("no method {path} in sluice.v1.Ingest"))
                        .into_http(),
                )
            });
        }
        Box::pin(async move {
            let max = service.ctx.server.max_message_bytes;
            let codec = wire::IngestCodec {
                max_records: service.ctx.max_batch_records as usize,
            };
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.streaming(StreamCall(service), req).await)
        })
    }
}

/// One `Ingest.Stream` call, as tonic's server machinery calls it.
struct StreamCall(IngestService);

impl tonic::server::StreamingService<wire::Inbound> for StreamCall {
    type Response = EngineMessage;
    type ResponseStream = EngineStream;
    type Future = BoxFuture<Response<EngineStream>, Status>;

    fn call(&mut self, request: Request<Streaming<wire::Inbound>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream(request).await })
    }
}
