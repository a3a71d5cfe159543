//! Raw-protocol helpers: the generated Ingest client without the Rust source
//! client, to send what a compliant source would not (or exactly what a test
//! needs), and to read the engine's answers one by one.

use std::time::Duration;

use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{
    Ack, Backlog, Batch, EngineMessage, Open, Opened, Record, Reject, Release, SourceMessage,
    engine_message, source_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A JSON payload `{"n": i, "pad": "..."}` of about `size` bytes.
pub fn payload(i: u64, size: usize) -> bytes::Bytes {
    let base = format!("{{\"n\":{i},\"pad\":\"\"}}");
    let pad = size.saturating_sub(base.len());
    bytes::Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(pad)))
}

/// A raw ingest stream (no Rust client): what a hostile source sends.
pub struct Raw {
    /// The source's side; `None` once half-closed.
    pub tx: Option<mpsc::Sender<SourceMessage>>,
    /// The engine's side.
    pub inbound: tonic::Streaming<EngineMessage>,
}

/// An `Open` for `source` on `pipeline` (empty: the default pipeline).
pub fn open_msg(source: &str, pipeline: &str) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id: source.into(),
            pipeline: pipeline.into(),
            ..Open::default()
        })),
    }
}

/// A batch of `n` records of about `size` bytes from `first_seq` (each
/// payload carries its sequence number; numbers past `u64::MAX` wrap, so a
/// test can build an overflowing batch).
pub fn batch_msg(first_seq: u64, n: u64, size: usize) -> SourceMessage {
    batch_of(
        first_seq,
        (0..n).map(|i| payload(first_seq.wrapping_add(i), size)),
    )
}

/// A batch from `first_seq` with one record per payload (no attributes).
pub fn batch_of(first_seq: u64, payloads: impl IntoIterator<Item = bytes::Bytes>) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Batch(Batch {
            first_seq,
            records: payloads
                .into_iter()
                .map(|payload| Record {
                    payload,
                    ..Record::default()
                })
                .collect(),
            ..Batch::default()
        })),
    }
}

/// A protocol-version-2 `Open` for `source` on the default pipeline,
/// announcing `backlog` records of `record_bytes` each and resuming at
/// `first_unacked_seq` (0: not said).
pub fn open_v2(
    source: &str,
    backlog: u64,
    record_bytes: u64,
    first_unacked_seq: u64,
) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id: source.into(),
            pipeline: String::new(),
            protocol_version: 2,
            backlog: Some(Backlog {
                records: backlog,
                bytes: backlog * record_bytes,
            }),
            first_unacked_seq,
        })),
    }
}

/// [`batch_msg`] with a version-2 `batch_id`.
pub fn batch_v2(batch_id: u64, first_seq: u64, n: u64, size: usize) -> SourceMessage {
    let mut m = batch_msg(first_seq, n, size);
    if let Some(source_message::Body::Batch(b)) = &mut m.body {
        b.batch_id = batch_id;
    }
    m
}

/// A version-2 `Backlog` of `records` records holding `bytes` bytes.
pub fn backlog_msg(records: u64, bytes: u64) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Backlog(Backlog { records, bytes })),
    }
}

/// A version-2 `Release` answering revoke `revoke_id`.
pub fn release_msg(revoke_id: u64, records: u64, bytes: u64) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Release(Release {
            revoke_id,
            records,
            bytes,
        })),
    }
}

/// Opens a raw stream whose first message is `first`; the engine's status if
/// it refuses the stream at once.
pub async fn raw_stream(addr: &str, first: SourceMessage) -> Result<Raw, tonic::Status> {
    raw_on(channel(addr).await, first, None).await
}

/// A plaintext channel to `addr` (`http://…`); panics if it cannot connect.
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(addr.to_owned())
        .expect("a valid address")
        .connect()
        .await
        .expect("connects")
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
    /// Sends `m` if the stream is not half-closed; a stream the engine has
    /// already ended is not an error here (see [`Raw::must_send`]).
    pub async fn send(&self, m: SourceMessage) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(m).await;
        }
    }
    /// Sends `m`; panics if the stream is half-closed or already ended.
    pub async fn must_send(&self, m: SourceMessage) {
        self.tx
            .as_ref()
            .expect("the stream is not half-closed")
            .send(m)
            .await
            .expect("the stream is open");
    }
    /// The next message from the engine; `None` when the stream ended OK.
    pub async fn next(&mut self) -> Result<Option<engine_message::Body>, tonic::Status> {
        Ok(self.inbound.message().await?.and_then(|m| m.body))
    }
    /// [`Raw::next`], panicking if nothing arrives within `wait`.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<engine_message::Body>, tonic::Status> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(r) => r,
            Err(_) => panic!("no message from the engine within {wait:?}"),
        }
    }
    /// Reads messages (each within `wait`) until an ack through `seq`;
    /// returns it and the rejects seen before it. Panics on an error status
    /// or if the stream ends first.
    pub async fn until_ack(&mut self, seq: u64, wait: Duration) -> (Ack, Vec<Reject>) {
        let mut rejects = Vec::new();
        loop {
            match self.next_within(wait).await.expect("no error status") {
                Some(engine_message::Body::Ack(a)) if a.through_seq >= seq => return (a, rejects),
                Some(engine_message::Body::Reject(r)) => rejects.push(r),
                Some(_) => {}
                None => panic!("stream ended before ack {seq}"),
            }
        }
    }
    /// The first message, which must be `Opened`.
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

/// Whether `ack` says `seq` is completed: at or below its frontier, or in
/// one of its completed ranges (selective acks).
pub fn covers(ack: &Ack, seq: u64) -> bool {
    seq <= ack.through_seq
        || ack
            .completed
            .iter()
            .any(|r| r.first <= seq && seq <= r.last)
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
