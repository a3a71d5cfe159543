//! Idle streams for `sluice bench --idle-streams N`: streams that open and
//! never send (protocol version 1, `Open` only), held for the whole run, to
//! measure what they cost the busy sources (flow control should give them
//! no more than their guaranteed share).

use std::net::SocketAddr;

use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{EngineMessage, Open, SourceMessage, source_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Streams per connection: below HTTP/2's usual limit on concurrent
/// streams (hyper's default is 200).
const STREAMS_PER_CONNECTION: usize = 100;

/// Open idle streams; dropping it closes them.
pub struct IdleStreams {
    /// The source sides (kept open) and the engine sides (kept unread).
    _held: Vec<(mpsc::Sender<SourceMessage>, tonic::Streaming<EngineMessage>)>,
}

impl IdleStreams {
    /// Opens `n` idle streams to `addr` (source ids `idle-0` …), each
    /// waiting for its `Opened`.
    pub async fn open(addr: SocketAddr, n: usize) -> Result<Self, String> {
        let mut held = Vec::with_capacity(n);
        let mut channel = None;
        for i in 0..n {
            if i % STREAMS_PER_CONNECTION == 0 {
                channel = Some(
                    tonic::transport::Channel::from_shared(format!("http://{addr}"))
                        .map_err(|e| format!("idle streams: {e}"))?
                        .connect()
                        .await
                        .map_err(|e| format!("idle streams: connecting to {addr}: {e}"))?,
                );
            }
            let Some(ch) = channel.clone() else {
                return Err("idle streams: no channel".into());
            };
            let (tx, rx) = mpsc::channel(1);
            let open = SourceMessage {
                body: Some(source_message::Body::Open(Open {
                    source_id: format!("idle-{i}"),
                    ..Open::default()
                })),
            };
            tx.send(open)
                .await
                .map_err(|_| "idle streams: request stream closed".to_owned())?;
            let mut inbound = IngestClient::new(ch)
                .stream(ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("idle stream {i}: {}", s.message()))?
                .into_inner();
            inbound
                .message()
                .await
                .map_err(|s| format!("idle stream {i}: {}", s.message()))?;
            held.push((tx, inbound));
        }
        Ok(Self { _held: held })
    }
}
