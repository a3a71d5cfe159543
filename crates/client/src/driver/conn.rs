//! One open stream: [`Conn`], its credits, signals and batches in flight,
//! and [`Driver::open`], which connects, sends `Open` and waits for `Opened`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{EngineMessage, Open, SourceMessage, engine_message, source_message};

/// The protocol version this client speaks (`Open.protocol_version`).
pub(crate) const PROTOCOL_VERSION: u32 = 2;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use super::inbound::DEFAULT_SLOW_DELAY;
use super::{ConnEnd, Driver, classify};
use crate::error::{ClientError, error_chain};
use crate::event::ClientEvent;
use crate::options::bearer;

/// The state of one open stream.
pub(super) struct Conn {
    /// `Opened.admitted_through_seq` of this stream.
    pub(super) opened_admitted: u64,
    pub(super) tx: Option<mpsc::Sender<SourceMessage>>,
    pub(super) inbound: Streaming<EngineMessage>,
    /// Next sequence number to send on this stream.
    pub(super) cursor: u64,
    pub(super) credit_records: u64,
    pub(super) credit_bytes: u64,
    pub(super) paused: bool,
    /// Under PAUSE, nothing is sent before this time.
    pub(super) paused_until: Option<Instant>,
    pub(super) slowed: bool,
    pub(super) slow_delay: Duration,
    /// Under SLOW_DOWN: the rate at which the engine completes this
    /// source's records (`Signal.target_records_per_second`), 0 when
    /// unknown; batches are spaced to stay below it.
    pub(super) slow_rate: f64,
    /// Nothing is sent before this time (reject backoff, slow-down pacing).
    pub(super) not_before: Option<Instant>,
    pub(super) in_backoff: bool,
    /// The largest byte credit held at once on this stream (a lower bound
    /// of the engine's byte window).
    pub(super) max_credit_bytes: u64,
    /// Batches sent on this stream that the engine may not have answered
    /// yet, oldest first, with the credit each was charged.
    pub(super) in_flight: VecDeque<SentBatch>,
    pub(super) max_batch: usize,
    pub(super) max_message_bytes: usize,
    /// When the client half-closed after everything was acked.
    pub(super) closing_since: Option<Instant>,
    /// The protocol version the engine serves on this stream
    /// (`Opened.protocol_version`; 1 for engines that predate it).
    pub(super) version: u32,
    /// The large-record rule's threshold (`Opened.large_record_bytes`), 0
    /// when the engine does not say (then half the largest byte credit held
    /// is used as a lower bound of half the window).
    pub(super) large_record_bytes: u64,
    /// Version 2: the id of the next batch.
    pub(super) next_batch_id: u64,
    /// Version 2: whether the last `Backlog` sent announced records.
    pub(super) backlog_announced: bool,
    /// Control messages (`Backlog`, `Release`) to send before the next batch.
    pub(super) outbox: VecDeque<SourceMessage>,
    /// The engine asked for records the client no longer holds (see
    /// [`Plan::Reopen`](super::send::Plan::Reopen)).
    pub(super) reopen: bool,
}

/// Why [`Driver::open`] failed, and whether another attempt may succeed.
pub(super) struct OpenError {
    pub(super) error: ClientError,
    /// A transport failure (refused, unreachable, timed out) or a status
    /// that `classify` retries (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, …); not
    /// a refusal, a protocol error or a TLS failure.
    pub(super) transient: bool,
}

impl OpenError {
    fn transient(error: ClientError) -> Self {
        Self {
            error,
            transient: true,
        }
    }

    fn permanent(error: ClientError) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

impl From<ClientError> for OpenError {
    /// Errors a retry may fix are `ClientError::Connect`; the rest are not.
    fn from(error: ClientError) -> Self {
        let transient = matches!(error, ClientError::Connect { .. });
        Self { error, transient }
    }
}

/// True when the chain of `e` holds an `InvalidData` I/O error: what the TLS
/// layer reports for a handshake that failed (an untrusted or invalid
/// certificate, TLS against a plaintext port). Trying again cannot fix it.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// A batch as sent (or a `Release`, which is charged like one until a
/// later outcome shows the engine read it), for [`Driver::sync_credit`].
pub(super) struct SentBatch {
    /// Version 2: the batch's id; 0 for a `Release`.
    pub(super) id: u64,
    /// Sequence numbers of the batch (0 and 0 for a `Release`).
    pub(super) first: u64,
    pub(super) last: u64,
    /// Credit charged for it.
    pub(super) records: u64,
    pub(super) bytes: u64,
}

impl Driver {
    /// Connects and opens a stream; returns it once `Opened` arrived.
    pub(super) async fn open(&mut self, attempt: u32) -> Result<Conn, OpenError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let timeout = self.opts.connect_timeout;
        let channel: Channel = tokio::time::timeout(timeout, self.endpoint.connect())
            .await
            .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
            .map_err(|e| {
                let error = connect_err(error_chain(&e));
                if is_tls_failure(&e) {
                    OpenError::permanent(error)
                } else {
                    OpenError::transient(error)
                }
            })?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(4);
        // Protocol version 2: the backlog comes with `Open` (so the first
        // floating credit comes with `Opened`), and where the resend starts,
        // so that an engine that completed nothing of it in flight (a
        // restarted one, or another replica) continues there without a gap.
        let backlog = self.backlog_from(self.front_seq());
        let open = SourceMessage {
            body: Some(source_message::Body::Open(Open {
                source_id: self.source_id.clone(),
                pipeline: self.pipeline.clone(),
                protocol_version: PROTOCOL_VERSION,
                backlog: Some(backlog),
                // Records below it are completed (acked, or covered by a
                // range): an engine that holds none of them starts there.
                first_unacked_seq: self.front_seq(),
            })),
        };
        tx.send(open)
            .await
            .map_err(|_| OpenError::permanent(ClientError::Closed))?;
        let opened = tokio::time::timeout(timeout, async {
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            if let Some(token) = &self.opts.token {
                request
                    .metadata_mut()
                    .insert("authorization", bearer(token)?);
            }
            let mut inbound = client
                .stream(request)
                .await
                .map_err(|s| status_error(&s, &connect_err))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(EngineMessage {
                    body: Some(engine_message::Body::Opened(o)),
                })) => Ok((inbound, o)),
                Ok(Some(other)) => Err(ClientError::Protocol(format!(
                    "first message from the engine is not Opened: {other:?}"
                ))),
                Ok(None) => Err(connect_err("stream ended before Opened".into())),
                Err(s) => Err(status_error(&s, &connect_err)),
            }
        })
        .await
        .map_err(|_| connect_err(format!("no Opened within {timeout:?}")))?;
        let (inbound, opened) = opened?;
        let credit = opened.credit.unwrap_or_default();
        info!(
            source_id = %self.source_id,
            attempt,
            admitted_through = opened.admitted_through_seq,
            acked_through = opened.acked_through_seq,
            credit_records = credit.records,
            credit_bytes = credit.bytes,
            "stream opened"
        );
        let max_batch = match opened.max_batch_records {
            0 => self.opts.max_batch_records,
            n => self.opts.max_batch_records.min(n as usize),
        };
        let max_message_bytes = match opened.max_message_bytes {
            0 => 4 * 1024 * 1024,
            n => n as usize,
        };
        self.absorb_ack(opened.acked_through_seq);
        let front = self.front_seq();
        if opened.admitted_through_seq >= self.next_assign && self.next_assign > front {
            warn!(
                source_id = %self.source_id,
                admitted_through = opened.admitted_through_seq,
                next_seq = self.next_assign,
                "engine admitted sequence numbers this client never sent"
            );
        }
        let cursor = (opened.admitted_through_seq + 1).clamp(front, self.next_assign);
        let admitted = opened.admitted_through_seq;
        let version = opened.protocol_version.max(1);
        let large_record_bytes = opened.large_record_bytes;
        self.emit(ClientEvent::Connected { attempt, opened });
        Ok(Conn {
            opened_admitted: admitted,
            tx: Some(tx),
            inbound,
            cursor,
            credit_records: credit.records,
            credit_bytes: credit.bytes,
            max_credit_bytes: credit.bytes,
            in_flight: VecDeque::new(),
            paused: false,
            paused_until: None,
            slowed: false,
            slow_delay: DEFAULT_SLOW_DELAY,
            slow_rate: 0.0,
            not_before: None,
            in_backoff: false,
            max_batch,
            max_message_bytes,
            closing_since: None,
            version,
            large_record_bytes,
            next_batch_id: 1,
            backlog_announced: version >= 2 && !self.pending.is_empty(),
            outbox: VecDeque::new(),
            reopen: false,
        })
    }
}

/// The error for a status that ended an attempt to open a stream:
/// `connect_err` for what a reconnect may fix.
fn status_error(status: &Status, connect_err: &impl Fn(String) -> ClientError) -> ClientError {
    match classify(status) {
        ConnEnd::Fatal(e) => e,
        ConnEnd::Retry(reason) => connect_err(reason),
        ConnEnd::Done => connect_err(status.message().to_owned()),
    }
}
