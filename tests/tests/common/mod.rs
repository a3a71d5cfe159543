//! Helpers shared by the chaos and hostile-input tests (each test file is its
//! own crate and uses only part of them).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{EngineMessage, Open, SourceMessage, engine_message, source_message};
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

/// Opens a raw stream whose first message is `first`; the engine's status if
/// it refuses the stream at once.
pub async fn raw_stream(addr: &str, first: SourceMessage) -> Result<Raw, tonic::Status> {
    let mut client = IngestClient::connect(addr.to_owned())
        .await
        .expect("connects")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(first).await.expect("queued");
    let inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
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
}
