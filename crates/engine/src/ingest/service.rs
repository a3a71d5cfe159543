//! [`IngestService`]: the `sluice.v1.Ingest` tonic service.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_proto::v1::{self, EngineMessage};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use super::context::IngestContext;
use super::gate::{GatedBody, StreamGate};
use super::{session, wire};

/// The `sluice.v1.Ingest` service.
///
/// Served by hand rather than through the generated `IngestServer` so that
/// requests are decoded by `wire::IngestCodec` straight
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
        let gate = request
            .extensions()
            .get::<Arc<StreamGate>>()
            .cloned()
            .ok_or_else(|| Status::internal("the stream has no message gate"))?;
        let rx = session::open(self.ctx.clone(), request.into_inner(), grant, gate).await?;
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
        // Every message is let in by the stream's gate before tonic buffers
        // it (ingest/gate.rs); the session and the decoder share the gate.
        let gate = Arc::new(StreamGate::new(service.ctx.message_pool.clone()));
        let mut req = req.map({
            let gate = gate.clone();
            move |body| GatedBody::new(body, gate)
        });
        req.extensions_mut().insert(gate.clone());
        Box::pin(async move {
            let max = service.ctx.server.max_message_bytes;
            let codec = wire::IngestCodec {
                max_records: service.ctx.max_batch_records as usize,
                memory: service.ctx.runtime.record_memory.clone(),
                gate: Some(gate),
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
