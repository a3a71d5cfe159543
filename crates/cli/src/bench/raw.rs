//! The raw-transport baseline: a bare `sluice.v1.Ingest` server.
//!
//! It speaks protocol version 2 like the engine: it answers `Open` with
//! unlimited credit, counts the records of each batch, answers it with its
//! `BatchOutcome` (all admitted) and acks it at once (`Ack.through_seq` = its
//! last sequence number, `delivered` = the records so far); `Backlog` and
//! `Release` are read and ignored. No buffer, no flow control, no sink:
//! what is left is tonic, h2, prost and the loopback socket, with the same
//! server settings as the engine (tonic's default windows, 16 MiB messages).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use sluice_proto::v1::engine_message::Body;
use sluice_proto::v1::ingest_server::{Ingest, IngestServer};
use sluice_proto::v1::source_message::Body as In;
use sluice_proto::v1::{Ack, BatchOutcome, Credit, EngineMessage, Opened, SourceMessage};

/// Same limit as the engine's default `server.max_message_bytes`.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A running raw server.
#[derive(Debug)]
pub struct RawServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    records: Arc<AtomicU64>,
}

impl RawServer {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let records = Arc::new(AtomicU64::new(0));
        let svc = IngestServer::new(RawIngest {
            records: records.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        let stop = CancellationToken::new();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("sluice bench: raw server: {e}");
            }
        });
        Ok(Self {
            addr,
            stop,
            task,
            records,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records received so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Stops the server (bounded wait).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

struct RawIngest {
    records: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Ingest for RawIngest {
    type StreamStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<EngineMessage, Status>> + Send + 'static>,
    >;

    async fn stream(
        &self,
        request: Request<Streaming<SourceMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(SourceMessage {
                body: Some(In::Open(_)),
            }) => {}
            _ => return Err(Status::invalid_argument("first message must be Open")),
        }
        let (tx, rx) = mpsc::channel::<Result<EngineMessage, Status>>(64);
        let opened = EngineMessage {
            body: Some(Body::Opened(Opened {
                admitted_through_seq: 0,
                acked_through_seq: 0,
                credit: Some(Credit {
                    records: u64::MAX / 4,
                    bytes: u64::MAX / 4,
                }),
                max_batch_records: u32::MAX,
                max_message_bytes: MAX_MESSAGE as u32,
                protocol_version: 2,
                window: Some(Credit {
                    records: u64::MAX / 4,
                    bytes: u64::MAX / 4,
                }),
                ..Opened::default()
            })),
        };
        let _ = tx.send(Ok(opened)).await;
        let total = self.records.clone();
        tokio::spawn(async move {
            let mut delivered = 0u64;
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                };
                if let Some(In::Batch(b)) = msg.body {
                    let n = b.records.len() as u64;
                    if n == 0 {
                        continue;
                    }
                    delivered += n;
                    total.fetch_add(n, Ordering::Relaxed);
                    let outcome = EngineMessage {
                        body: Some(Body::Outcome(BatchOutcome {
                            batch_id: b.batch_id,
                            first_seq: b.first_seq,
                            duplicates: 0,
                            admitted: n,
                            reject: None,
                            credit: None,
                        })),
                    };
                    if tx.send(Ok(outcome)).await.is_err() {
                        break;
                    }
                    let ack = EngineMessage {
                        body: Some(Body::Ack(Ack {
                            through_seq: b.first_seq + n - 1,
                            delivered,
                            dead_lettered: 0,
                            filtered: 0,
                            ..Ack::default()
                        })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
