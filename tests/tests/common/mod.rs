//! Raw-protocol helpers and the connection-cutting proxy, shared by the
//! end-to-end, chaos, hostile-input and security tests (each test file is its
//! own crate and uses only part of them).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{
    Batch, EngineMessage, Open, Opened, Record, SourceMessage, engine_message, source_message,
};
use sluice_tests::payload;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// A TCP proxy in front of an engine whose connections can be cut (the
/// pattern of e2e.rs): every accepted connection is copied both ways to
/// `upstream` by its own task; `cut` aborts those tasks, which closes both
/// sockets.
pub struct Proxy {
    /// `http://` address of the proxy.
    pub addr: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c: &JoinHandle<()>| !c.is_finished());
                    conns.push(task);
                }
            })
        };
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let n = conns.iter().filter(|c| !c.is_finished()).count();
        for c in conns.drain(..) {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A raw ingest stream (no Rust client): what a hostile source sends.
pub struct Raw {
    pub tx: Option<mpsc::Sender<SourceMessage>>,
    pub inbound: tonic::Streaming<EngineMessage>,
}

pub fn open_msg(source: &str, pipeline: &str) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id: source.into(),
            pipeline: pipeline.into(),
        })),
    }
}

/// A batch of `n` records of about `size` bytes from `first_seq` (each
/// payload carries its sequence number; numbers past `u64::MAX` wrap, so a
/// test can build an overflowing batch).
pub fn batch_msg(first_seq: u64, n: u64, size: usize) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Batch(Batch {
            first_seq,
            records: (0..n)
                .map(|i| Record {
                    payload: payload(first_seq.wrapping_add(i), size),
                    ..Record::default()
                })
                .collect(),
        })),
    }
}

/// Opens a raw stream whose first message is `first`; the engine's status if
/// it refuses the stream at once.
pub async fn raw_stream(addr: &str, first: SourceMessage) -> Result<Raw, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())
        .expect("a valid address")
        .connect()
        .await
        .expect("connects");
    raw_on(channel, first, None).await
}

/// Opens a raw stream on `channel` whose first message is `first`, with an
/// optional bearer token.
pub async fn raw_on(
    channel: tonic::transport::Channel,
    first: SourceMessage,
    token: Option<&str>,
) -> Result<Raw, tonic::Status> {
    let mut client = IngestClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(first).await.expect("queued");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("a valid header"),
        );
    }
    let inbound = client.stream(request).await?.into_inner();
    Ok(Raw {
        tx: Some(tx),
        inbound,
    })
}

impl Raw {
    pub async fn send(&self, m: SourceMessage) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(m).await;
        }
    }
    pub async fn next(&mut self) -> Result<Option<engine_message::Body>, tonic::Status> {
        Ok(self.inbound.message().await?.and_then(|m| m.body))
    }
    pub async fn opened(&mut self) -> Result<Opened, tonic::Status> {
        match self.next().await? {
            Some(engine_message::Body::Opened(o)) => Ok(o),
            other => panic!("expected Opened, got {other:?}"),
        }
    }
    /// Half-closes the stream and reads it to its OK end; returns the
    /// highest `Ack.through_seq` seen. Panics on a reject or an error status.
    pub async fn finish(mut self) -> u64 {
        self.tx = None;
        let mut acked = 0;
        loop {
            match self.next().await {
                Ok(Some(engine_message::Body::Ack(a))) => acked = acked.max(a.through_seq),
                Ok(Some(engine_message::Body::Reject(r))) => panic!("unexpected reject {r:?}"),
                Ok(Some(_)) => {}
                Ok(None) => return acked,
                Err(st) => panic!("unexpected status {st:?}"),
            }
        }
    }
    /// The first message that is not a credit, signal or ack (or the end).
    pub async fn next_notable(&mut self) -> Result<Option<engine_message::Body>, tonic::Status> {
        loop {
            match self.next().await? {
                Some(
                    engine_message::Body::Credit(_)
                    | engine_message::Body::Signal(_)
                    | engine_message::Body::Ack(_),
                ) => continue,
                other => return Ok(other),
            }
        }
    }
}

/// The status that ends a stream: the refusal of its opening, or the status
/// it ends with after any messages. Panics if it ends OK instead.
pub async fn expect_status(result: Result<Raw, tonic::Status>) -> tonic::Status {
    match result {
        Err(status) => status,
        Ok(mut raw) => loop {
            match raw.next().await {
                Err(status) => return status,
                Ok(None) => panic!("stream ended OK; a status was expected"),
                Ok(Some(_)) => {}
            }
        },
    }
}
