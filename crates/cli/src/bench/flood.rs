//! Flood connections for `sluice bench --flood-connections N`: connections
//! that each open an `Ingest.Stream`, send `Open`, then the start of a
//! batch message as large as the engine reads beyond a stream's credit
//! (`server.uncovered_message_bytes`, at most `server.max_message_bytes`)
//! and data until HTTP/2 flow control stops them, and never read what the
//! engine sends. Each holds what one stream can make the engine hold
//! outside the buffer manager (its receive window and the decoder's partial
//! message, docs/architecture.md "Memory budget"). They never complete a
//! message, so they cost the buffer no record; they are raw `h2` streams
//! because a gRPC client only sends whole messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message;
use sluice_proto::v1::{Open, SourceMessage, source_message};
use tokio::task::JoinHandle;
use tonic::codegen::http;

/// Bytes sent per DATA frame.
const CHUNK: usize = 16 * 1024;

/// Open flood connections; dropping it closes them.
pub struct Flood {
    tasks: Vec<JoinHandle<()>>,
    sent: Arc<AtomicU64>,
}

impl Flood {
    /// Opens `n` flood connections to `addr`, each declaring a batch of
    /// `message_bytes` bytes (what the engine reads beyond credit) and
    /// sending all but its last byte, as fast as flow control lets it.
    pub async fn open(addr: SocketAddr, n: usize, message_bytes: u32) -> Result<Self, String> {
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(2 * n);
        for i in 0..n {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("flood: connecting to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (client, conn) = h2::client::handshake(tcp)
                .await
                .map_err(|e| format!("flood: HTTP/2 handshake: {e}"))?;
            tasks.push(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = flood_stream(client, addr, i, message_bytes, &sent).await {
                    tracing::debug!(error = %e, "flood stream ended");
                }
            }));
        }
        Ok(Self { tasks, sent })
    }

    /// Bytes the flood streams have sent so far (what the engine took in
    /// through flow control).
    pub fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A gRPC frame header: not compressed, `len` bytes.
fn frame_header(len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// The HTTP/2 request that opens an `Ingest.Stream` call at `addr`, for
/// clients that write the gRPC frames themselves (the flood, and tests that
/// send what no gRPC client sends).
pub fn ingest_stream_request(addr: SocketAddr) -> Result<http::Request<()>, http::Error> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/sluice.v1.Ingest/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
}

async fn flood_stream(
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    i: usize,
    message_bytes: u32,
    sent: &AtomicU64,
) -> Result<(), String> {
    let err = |e: h2::Error| e.to_string();
    let mut client = client.ready().await.map_err(err)?;
    let request = ingest_stream_request(addr).map_err(|e| e.to_string())?;
    // The response is never polled: what the engine sends stays unread.
    let (_response, mut stream) = client.send_request(request, false).map_err(err)?;
    let open = SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id: format!("flood-{i}"),
            ..Open::default()
        })),
    }
    .encode_to_vec();
    let mut first = frame_header(open.len() as u32).to_vec();
    first.extend_from_slice(&open);
    // The start of a message that never ends.
    first.extend_from_slice(&frame_header(message_bytes));
    let mut to_send = first.len() as u64 + u64::from(message_bytes.saturating_sub(1));
    let mut pending = Bytes::from(first);
    let zeros = Bytes::from(vec![0u8; CHUNK]);
    while to_send > 0 {
        if pending.is_empty() {
            pending = zeros.slice(..CHUNK.min(to_send as usize));
        }
        stream.reserve_capacity(pending.len());
        let Some(granted) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await else {
            return Ok(());
        };
        let n = granted.map_err(err)?.min(pending.len());
        if n == 0 {
            continue;
        }
        let chunk = pending.split_to(n);
        stream.send_data(chunk, false).map_err(err)?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        to_send -= n as u64;
    }
    // Hold the stream open, the message unfinished.
    std::future::pending::<()>().await;
    Ok(())
}
