//! A Rust source client that obeys the sluice flow-control contract.
//!
//! [`SourceClient`] opens one `Ingest.Stream` for one source id and pushes
//! records through it:
//!
//! - **Credits.** It sends only what its record and byte credits allow (a
//!   record's size is [`record_size`]), so a well-behaved engine never rejects
//!   it for overload.
//! - **Signals.** `PAUSE` stops all sending until `RESUME`, a new `Credit`, or
//!   the signal's `retry_after_ms` (250 ms when none is given) has passed; after
//!   that the client sends again, but only within the credits it already holds
//!   (they are reserved capacity, and the contract says records sent within
//!   them are still admitted). Without that, a source whose own reserved but
//!   unused credits keep a level full would wait for a `RESUME` that never
//!   comes while a flooding source holds the rest.
//!   `SLOW_DOWN` shrinks batches to a quarter and waits the signal's
//!   `retry_after_ms` (20 ms when none is given) between batches until `RESUME`.
//! - **Rejects.** Rejected records stay held and are resent, from the engine's
//!   `admitted_through_seq + 1`, after the reject's `retry_after_ms`. A record
//!   rejected as `RECORD_TOO_LARGE` can never be admitted: it is taken out of
//!   the stream, handed back in [`ClientEvent::RecordTooLarge`], and the records
//!   after it are renumbered (the contract allows it: none of them was admitted).
//! - **Acks.** Every record is held, in sequence order, until an `Ack` covers
//!   it. [`SourceClient::send`] waits while [`ClientOptions::max_unacked`]
//!   records are held, which is the client's own backpressure.
//! - **Reconnects.** When the stream ends before everything is acked (engine
//!   shutdown, network failure), the client reconnects with exponential backoff
//!   (at most [`ReconnectPolicy::max_attempts`] attempts in a row without
//!   progress) and resends everything after the engine's
//!   `Opened.admitted_through_seq`.
//!
//! - **Finishing.** [`SourceClient::finish`] half-closes the stream only once
//!   every record is acked (a reject can still arrive for a record that was
//!   sent, and a half-closed stream could not resend it), then waits for the
//!   engine to end the stream.
//!
//! Sequence numbers are assigned by the client, contiguous from
//! [`ClientOptions::first_seq`] (by default right after what the engine
//! already admitted from this source id: 1 for a new source).
//!
//! Accounting of rejected records: the engine does not charge credits for
//! records it did not admit, and its count of the stream's credit is the
//! authoritative one. Every `Reject` carries that count (`Reject.credit`,
//! right after the rejected batch); the client sets its own credit to it,
//! minus what it spent on batches sent after the rejected one (still on their
//! way, each gets its own outcome). So a `REJECT_REASON_NO_CREDIT` (the client
//! sent more than the engine counts it as holding) also repairs the client's
//! count instead of leaving the two to drift apart. (With an engine that sends
//! no `Reject.credit`, the client gives itself back the credit of the rejected
//! records.)
//!
//! A record larger than half the engine's byte window may never be covered by
//! byte credit (refills come once half a window is used); the client sends
//! such a record alone, on one record credit, and the engine admits it so (see
//! `Credit` in `ingest.proto`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_client::ClientError> {
//! use sluice_client::{ClientOptions, SourceClient};
//! let (client, _events) =
//!     SourceClient::connect("http://127.0.0.1:50051", "orders-1", "", ClientOptions::default())
//!         .await?;
//! client.send_payload(br#"{"id":1}"#.to_vec()).await?;
//! let summary = client.finish().await;
//! assert!(summary.is_complete());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod tls;

/// The record size rule of the contract (what a record counts against
/// byte credits), from `sluice-proto`.
pub use sluice_proto::record_size;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{
    Ack, Batch, Credit, EngineMessage, Open, Opened, Record, Reject, RejectReason, Signal,
    SignalKind, SourceMessage, engine_message, source_message,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tracing::{debug, info, warn};

/// Pause between batches under `SLOW_DOWN` when the signal suggests none.
const DEFAULT_SLOW_DELAY: Duration = Duration::from_millis(20);
/// Under `PAUSE`, time before sending resumes within the credits already held,
/// when the signal suggests none.
const DEFAULT_PAUSE_DELAY: Duration = Duration::from_millis(250);
/// Wait before resending after a reject that suggests none.
const DEFAULT_REJECT_DELAY: Duration = Duration::from_millis(50);
/// Bytes of framing counted per record when a batch's encoded size is estimated.
const RECORD_FRAMING_BYTES: usize = 16;

/// How the client reconnects after its stream ends early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Reconnect attempts in a row (without an ack in between) before the
    /// client gives up. Default 10; 0 never reconnects.
    pub max_attempts: u32,
    /// Wait before the first reconnect; doubled after every failed attempt.
    /// Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default 5 s.
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before reconnect attempt number `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// Options of a [`SourceClient`].
#[derive(Clone, PartialEq)]
pub struct ClientOptions {
    /// Most records held by the client (queued, sent and not acked yet);
    /// [`SourceClient::send`] waits while this many are held. Default 10 000.
    pub max_unacked: usize,
    /// Most records per batch; the engine's `Opened.max_batch_records` caps it
    /// further. Default 500.
    pub max_batch_records: usize,
    /// How long a partial batch waits for more records before it is sent.
    /// Default 5 ms.
    pub linger: Duration,
    /// Sequence number of the first record sent by this client. `None` (the
    /// default) continues after the engine's `Opened.admitted_through_seq`, so
    /// a new source starts at 1 and a source that runs again against the same
    /// engine process is not mistaken for a resend. An explicit number at or
    /// below the engine's admitted sequence makes the engine skip those records
    /// (it acks them without delivering them again).
    pub first_seq: Option<u64>,
    /// Reconnects after the stream ends early.
    pub reconnect: ReconnectPolicy,
    /// Time allowed to connect and get `Opened`. Default 10 s.
    pub connect_timeout: Duration,
    /// After everything is acked and the client half-closed, how long it
    /// waits for the engine to end the stream. Default 5 s.
    pub close_timeout: Duration,
    /// Bearer token sent as `authorization: Bearer <token>` metadata, for an
    /// engine with `[server.auth]` tokens. Default none.
    pub token: Option<String>,
    /// PEM CA certificate(s) trusted for an `https://` engine address (TLS).
    /// Default none (plaintext `http://`).
    pub ca_pem: Option<Vec<u8>>,
    /// The client's own certificate and key, for an engine that requires
    /// client certificates (`[server.tls] client_ca`, mutual TLS). Default
    /// none. See [`with_identity`](Self::with_identity).
    pub identity: Option<crate::tls::ClientIdentity>,
}

impl ClientOptions {
    /// These options presenting the client certificate chain `cert_pem` and
    /// private key `key_pem` (PEM) to the engine (mutual TLS).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(crate::tls::ClientIdentity::from_pem(cert_pem, key_pem));
        self
    }
}

impl std::fmt::Debug for ClientOptions {
    /// Like a derived `Debug`, but never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("max_unacked", &self.max_unacked)
            .field("max_batch_records", &self.max_batch_records)
            .field("linger", &self.linger)
            .field("first_seq", &self.first_seq)
            .field("reconnect", &self.reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("identity", &self.identity)
            .finish()
    }
}

/// The `authorization` metadata value for `token`.
fn bearer(token: &str) -> Result<tonic::metadata::AsciiMetadataValue, ClientError> {
    format!("Bearer {token}").parse().map_err(|_| {
        ClientError::InvalidOptions("token must be printable ASCII without spaces".into())
    })
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_unacked: 10_000,
            max_batch_records: 500,
            linger: Duration::from_millis(5),
            first_seq: None,
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            token: None,
            ca_pem: None,
            identity: None,
        }
    }
}

/// What went wrong with a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid gRPC endpoint URI.
    #[error("invalid engine address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The options cannot work (for example `max_unacked` 0).
    #[error("invalid client options: {0}")]
    InvalidOptions(String),
    /// Connecting to the engine or opening the stream failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The engine address.
        addr: String,
        /// The transport error or status.
        reason: String,
    },
    /// The engine refused the stream or ended it with a status that
    /// reconnecting cannot fix (a protocol error, an unknown pipeline, or
    /// another stream taking over the source id).
    #[error("engine refused the stream: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// The engine broke the protocol (for example its first message was not
    /// `Opened`).
    #[error("engine protocol error: {0}")]
    Protocol(String),
    /// The stream kept ending and the reconnect attempts are used up.
    #[error("gave up after {attempts} reconnect attempts; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last: String,
    },
    /// A record is larger than the engine's message size limit and can never
    /// be sent.
    #[error("record of {size} bytes cannot fit in a message of at most {limit} bytes")]
    RecordTooLarge {
        /// Encoded size of the record.
        size: usize,
        /// The engine's `max_message_bytes`.
        limit: usize,
    },
    /// The client was finished or its background task ended.
    #[error("client is closed")]
    Closed,
}

/// The client's flow-control state, as shown in [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientState {
    /// Connecting (the first time).
    #[default]
    Connecting,
    /// Stream open, no signal in force.
    Open,
    /// Told to slow down.
    Slowed,
    /// Told to pause.
    Paused,
    /// Waiting to resend after a reject.
    Backoff,
    /// The stream ended early; waiting to reconnect.
    Reconnecting,
    /// Input finished; waiting for the last acks.
    Finishing,
    /// Everything done (the stream ended).
    Done,
    /// Stopped by an error.
    Failed,
}

impl std::fmt::Display for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connecting => "connecting",
            Self::Open => "open",
            Self::Slowed => "slowed",
            Self::Paused => "paused",
            Self::Backoff => "backoff",
            Self::Reconnecting => "reconnecting",
            Self::Finishing => "finishing",
            Self::Done => "done",
            Self::Failed => "failed",
        })
    }
}

/// A snapshot of a client's progress, published on a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Flow-control state.
    pub state: ClientState,
    /// Records handed to [`SourceClient::send`].
    pub submitted: u64,
    /// Distinct records sent at least once.
    pub sent: u64,
    /// Records sent again (after a reject or a reconnect).
    pub resent: u64,
    /// Highest sequence number acked by the engine.
    pub acked_through: u64,
    /// Records acked (and forgotten by the client).
    pub acked: u64,
    /// Records held: sent or queued, not acked yet.
    pub unacked: u64,
    /// Records committed by the sink (from the last `Ack`; per engine process).
    pub delivered: u64,
    /// Records written to dead letters (from the last `Ack`).
    pub dead_lettered: u64,
    /// Records filtered out by a transform (from the last `Ack`).
    pub filtered: u64,
    /// Records named in `Reject`s (a record rejected twice counts twice).
    pub rejected: u64,
    /// Records taken out of the stream because the engine can never admit them.
    pub too_large: u64,
    /// `SLOW_DOWN` signals received.
    pub slow_downs: u64,
    /// `PAUSE` signals received.
    pub pauses: u64,
    /// `RESUME` signals received.
    pub resumes: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Record credits available now.
    pub credit_records: u64,
    /// Byte credits available now.
    pub credit_bytes: u64,
    /// The last signal received.
    pub last_signal: Option<Signal>,
}

/// Something that happened on the stream, for UIs and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The stream is open (`attempt` 0 is the first connection).
    Connected {
        /// Reconnect attempt that succeeded; 0 for the first connection.
        attempt: u32,
        /// The engine's answer to `Open`.
        opened: Opened,
    },
    /// More credit.
    Credit(Credit),
    /// A flow-control signal.
    Signal(Signal),
    /// Records completed.
    Ack(Ack),
    /// Records not admitted (they are resent).
    Reject(Reject),
    /// A record the engine can never admit; it is no longer in the stream and
    /// the caller should keep it itself. The records after it were renumbered.
    RecordTooLarge {
        /// The sequence number it had.
        seq: u64,
        /// The record.
        record: Record,
    },
    /// The stream ended before everything was acked.
    Disconnected {
        /// Why.
        error: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

/// Receiver of a client's [`ClientEvent`]s. Read it or drop it: it is
/// unbounded.
pub type ClientEvents = mpsc::UnboundedReceiver<ClientEvent>;

/// The outcome of a client, returned by [`SourceClient::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Records handed to the client.
    pub submitted: u64,
    /// Distinct records sent at least once.
    pub sent: u64,
    /// Records sent again.
    pub resent: u64,
    /// Records acked.
    pub acked: u64,
    /// Records committed by the sink (per engine process, from the last `Ack`).
    pub delivered: u64,
    /// Records written to dead letters (from the last `Ack`).
    pub dead_lettered: u64,
    /// Records filtered out by a transform (from the last `Ack`).
    pub filtered: u64,
    /// Records named in rejects.
    pub rejected: u64,
    /// Records taken out as never admissible.
    pub too_large: u64,
    /// Records not acked when the client stopped.
    pub unacked: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Signals received, by kind.
    pub slow_downs: u64,
    /// `PAUSE` signals received.
    pub pauses: u64,
    /// `RESUME` signals received.
    pub resumes: u64,
    /// Time from connect to the end.
    pub elapsed: Duration,
    /// The error that stopped the client early, if any.
    pub error: Option<ClientError>,
}

impl Summary {
    /// The summary of a client whose progress is `p`.
    fn of(p: &Progress, unacked: u64, elapsed: Duration, error: Option<ClientError>) -> Self {
        Self {
            submitted: p.submitted,
            sent: p.sent,
            resent: p.resent,
            acked: p.acked,
            delivered: p.delivered,
            dead_lettered: p.dead_lettered,
            filtered: p.filtered,
            rejected: p.rejected,
            too_large: p.too_large,
            unacked,
            reconnects: p.reconnects,
            slow_downs: p.slow_downs,
            pauses: p.pauses,
            resumes: p.resumes,
            elapsed,
            error,
        }
    }

    /// True when every record handed to the client was acked and no error
    /// stopped it.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.unacked == 0 && self.too_large == 0
    }
}

/// A source pushing records to a sluice engine over one `Ingest.Stream`.
///
/// Create it with [`connect`](Self::connect), push with
/// [`send`](Self::send), end with [`finish`](Self::finish). Dropping it without
/// `finish` stops its background task at once (unacked records are lost to
/// this process).
#[derive(Debug)]
pub struct SourceClient {
    input: Option<mpsc::UnboundedSender<Record>>,
    permits: Arc<Semaphore>,
    progress: watch::Receiver<Progress>,
    failure: Arc<Mutex<Option<ClientError>>>,
    driver: Option<JoinHandle<Summary>>,
    started: Instant,
}

impl SourceClient {
    /// Connects to the engine at `addr` (for example `http://127.0.0.1:50051`),
    /// opens the stream for `source_id` on `pipeline` (empty: the default
    /// pipeline) and waits for `Opened`.
    ///
    /// Returns the client and its event receiver. The first connection is not
    /// retried: an engine that is down or refuses the source is an error here.
    pub async fn connect(
        addr: &str,
        source_id: &str,
        pipeline: &str,
        options: ClientOptions,
    ) -> Result<(Self, ClientEvents), ClientError> {
        if options.max_unacked == 0 || options.max_batch_records == 0 {
            return Err(ClientError::InvalidOptions(
                "max_unacked and max_batch_records must be at least 1".into(),
            ));
        }
        if options.first_seq == Some(0) {
            return Err(ClientError::InvalidOptions(
                "first_seq must be at least 1".into(),
            ));
        }
        if source_id.is_empty() {
            return Err(ClientError::InvalidOptions(
                "source_id must not be empty".into(),
            ));
        }
        if let Some(token) = &options.token {
            bearer(token)?;
        }
        let mut endpoint =
            Endpoint::from_shared(addr.to_owned()).map_err(|e| ClientError::InvalidAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        if options.ca_pem.is_some() || options.identity.is_some() {
            let tls = crate::tls::client_tls(options.ca_pem.as_deref(), options.identity.as_ref());
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::InvalidAddress {
                    addr: addr.to_owned(),
                    reason: error_chain(&e),
                })?;
        }
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let permits = Arc::new(Semaphore::new(options.max_unacked));
        let failure = Arc::new(Mutex::new(None));
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let mut driver = Driver {
            addr: addr.to_owned(),
            endpoint,
            source_id: source_id.to_owned(),
            pipeline: pipeline.to_owned(),
            next_assign: options.first_seq.unwrap_or(1),
            opts: options,
            input: input_rx,
            input_closed: false,
            pending: VecDeque::new(),
            acked_through: 0,
            highest_sent: 0,
            permits: permits.clone(),
            progress: progress_tx,
            events: events_tx,
            failure: failure.clone(),
            p: Progress::default(),
            started,
        };
        driver.acked_through = driver.next_assign - 1;
        driver.highest_sent = driver.next_assign - 1;
        let mut conn = driver.open(0).await?;
        if driver.opts.first_seq.is_none() {
            driver.next_assign = conn.opened_admitted + 1;
            driver.acked_through = driver.next_assign - 1;
            driver.highest_sent = driver.next_assign - 1;
            conn.cursor = driver.next_assign;
        } else if conn.opened_admitted >= driver.next_assign {
            warn!(
                source_id,
                first_seq = driver.next_assign,
                admitted_through = conn.opened_admitted,
                "records up to the engine's admitted sequence number will be skipped by the engine"
            );
        }
        let handle = tokio::spawn(driver.run(conn));
        Ok((
            Self {
                input: Some(input_tx),
                permits,
                progress: progress_rx,
                failure,
                driver: Some(handle),
                started,
            },
            events_rx,
        ))
    }

    /// Queues one record. Waits while [`ClientOptions::max_unacked`] records
    /// are held (sent or queued and not acked). Fails only when the client
    /// stopped (an error, or [`finish`](Self::finish)).
    pub async fn send(&self, record: Record) -> Result<(), ClientError> {
        let Ok(permit) = self.permits.acquire().await else {
            return Err(self.stopped_error());
        };
        let Some(input) = &self.input else {
            return Err(ClientError::Closed);
        };
        if input.send(record).is_err() {
            return Err(self.stopped_error());
        }
        permit.forget();
        Ok(())
    }

    /// Queues one record with this payload (no key, no attributes).
    pub async fn send_payload(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send(Record {
            payload: payload.into(),
            ..Record::default()
        })
        .await
    }

    /// A receiver of the client's [`Progress`], updated as it changes.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The current [`Progress`].
    pub fn snapshot(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Ends the input: sends what is queued, waits until everything is acked
    /// (reconnecting and resending as needed), half-closes the stream and waits
    /// for the engine to end it (at most [`ClientOptions::close_timeout`]), or
    /// until the client gives up. Wrap it in a timeout to bound the wait.
    pub async fn finish(mut self) -> Summary {
        self.input.take();
        let Some(handle) = self.driver.take() else {
            return self.failed_summary(ClientError::Closed);
        };
        match handle.await {
            Ok(summary) => summary,
            Err(e) => {
                self.failed_summary(ClientError::Protocol(format!("client task failed: {e}")))
            }
        }
    }

    fn stopped_error(&self) -> ClientError {
        self.failure
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or(ClientError::Closed)
    }

    fn failed_summary(&self, error: ClientError) -> Summary {
        let p = self.snapshot();
        let unacked = p.submitted.saturating_sub(p.acked + p.too_large);
        Summary::of(&p, unacked, self.started.elapsed(), Some(error))
    }
}

impl Drop for SourceClient {
    fn drop(&mut self) {
        if let Some(handle) = self.driver.take() {
            handle.abort();
        }
    }
}

/// A record held until acked.
struct Held {
    seq: u64,
    record: Record,
    size: u64,
    encoded: usize,
    arrived: Instant,
}

/// The state of one open stream.
struct Conn {
    /// `Opened.admitted_through_seq` of this stream.
    opened_admitted: u64,
    tx: Option<mpsc::Sender<SourceMessage>>,
    inbound: Streaming<EngineMessage>,
    /// Next sequence number to send on this stream.
    cursor: u64,
    credit_records: u64,
    credit_bytes: u64,
    paused: bool,
    /// Under PAUSE, nothing is sent before this time.
    paused_until: Option<Instant>,
    slowed: bool,
    slow_delay: Duration,
    /// Nothing is sent before this time (reject backoff, slow-down pacing).
    not_before: Option<Instant>,
    in_backoff: bool,
    /// The largest byte credit held at once on this stream (a lower bound
    /// of the engine's byte window).
    max_credit_bytes: u64,
    /// Batches sent on this stream that the engine may not have answered
    /// yet, oldest first, with the credit each was charged.
    in_flight: VecDeque<SentBatch>,
    max_batch: usize,
    max_message_bytes: usize,
    /// When the client half-closed after everything was acked.
    closing_since: Option<Instant>,
}

/// A batch as sent, for [`Driver::sync_credit`].
struct SentBatch {
    first: u64,
    last: u64,
    /// Credit charged for it.
    records: u64,
    bytes: u64,
}

/// How a stream ended.
enum End {
    /// Everything acked and the stream is over.
    Done,
    /// Ended early; reconnect.
    Retry(String),
    /// Cannot go on.
    Fatal(ClientError),
}

/// The background task of a client: owns the held records and the stream.
struct Driver {
    addr: String,
    endpoint: Endpoint,
    source_id: String,
    pipeline: String,
    opts: ClientOptions,
    input: mpsc::UnboundedReceiver<Record>,
    input_closed: bool,
    pending: VecDeque<Held>,
    next_assign: u64,
    acked_through: u64,
    highest_sent: u64,
    permits: Arc<Semaphore>,
    progress: watch::Sender<Progress>,
    events: mpsc::UnboundedSender<ClientEvent>,
    failure: Arc<Mutex<Option<ClientError>>>,
    p: Progress,
    started: Instant,
}

fn classify(status: &Status) -> End {
    match status.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal => End::Retry(format!("{:?}: {}", status.code(), status.message())),
        code => End::Fatal(ClientError::Refused {
            code,
            message: status.message().to_owned(),
        }),
    }
}

impl Driver {
    fn emit(&self, event: ClientEvent) {
        // A dropped receiver only means nobody watches.
        let _ = self.events.send(event);
    }

    fn publish(&mut self, conn: Option<&Conn>) {
        self.p.unacked = self.pending.len() as u64;
        self.p.acked_through = self.acked_through;
        if let Some(c) = conn {
            self.p.credit_records = c.credit_records;
            self.p.credit_bytes = c.credit_bytes;
            if !matches!(self.p.state, ClientState::Done | ClientState::Failed) {
                self.p.state = if c.closing_since.is_some()
                    || (self.input_closed && c.cursor >= self.next_assign)
                {
                    ClientState::Finishing
                } else if c.paused {
                    ClientState::Paused
                } else if c.in_backoff {
                    ClientState::Backoff
                } else if c.slowed {
                    ClientState::Slowed
                } else {
                    ClientState::Open
                };
            }
        }
        let snapshot = self.p.clone();
        self.progress.send_replace(snapshot);
    }

    /// Connects and opens a stream; returns it once `Opened` arrived.
    async fn open(&mut self, attempt: u32) -> Result<Conn, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let timeout = self.opts.connect_timeout;
        let channel: Channel = tokio::time::timeout(timeout, self.endpoint.connect())
            .await
            .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
            .map_err(|e| connect_err(error_chain(&e)))?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(4);
        let open = SourceMessage {
            body: Some(source_message::Body::Open(Open {
                source_id: self.source_id.clone(),
                pipeline: self.pipeline.clone(),
            })),
        };
        tx.send(open).await.map_err(|_| ClientError::Closed)?;
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
        let front = self.pending.front().map_or(self.next_assign, |h| h.seq);
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
            not_before: None,
            in_backoff: false,
            max_batch,
            max_message_bytes,
            closing_since: None,
        })
    }

    /// Runs the client to its end and returns its summary.
    async fn run(mut self, first: Conn) -> Summary {
        let mut conn = first;
        let mut attempts = 0u32;
        let error = loop {
            self.publish(Some(&conn));
            let acked_before = self.acked_through;
            let end = self.serve(&mut conn).await;
            if self.acked_through > acked_before {
                attempts = 0;
            }
            let reason = match end {
                End::Done => break None,
                End::Fatal(e) => break Some(e),
                End::Retry(reason) => reason,
            };
            // Reconnect loop.
            let mut last = reason;
            conn = loop {
                attempts += 1;
                if attempts > self.opts.reconnect.max_attempts {
                    let error = ClientError::GaveUp {
                        attempts: attempts - 1,
                        last,
                    };
                    return self.end(Some(error));
                }
                let wait = self.opts.reconnect.backoff(attempts);
                warn!(source_id = %self.source_id, error = %last, retry_in = ?wait, attempt = attempts, "stream ended early; reconnecting");
                self.emit(ClientEvent::Disconnected {
                    error: last.clone(),
                    retry_in: wait,
                });
                self.p.state = ClientState::Reconnecting;
                self.publish(None);
                tokio::time::sleep(wait).await;
                match self.open(attempts).await {
                    Ok(c) => {
                        self.p.reconnects += 1;
                        break c;
                    }
                    Err(e @ (ClientError::Refused { .. } | ClientError::Protocol(_))) => {
                        return self.end(Some(e));
                    }
                    Err(e) => last = e.to_string(),
                }
            };
        };
        self.end(error)
    }
}

/// What the sender can do next.
enum Plan {
    /// Send the next `n` records now.
    Send(usize),
    /// Nothing can be sent before this time.
    WaitUntil(Instant),
    /// Nothing to send until something arrives (records, credit, a signal).
    Idle,
    /// The next record can never be sent.
    Fatal(ClientError),
}

fn status_error(status: &Status, connect_err: &impl Fn(String) -> ClientError) -> ClientError {
    match classify(status) {
        End::Fatal(e) => e,
        End::Retry(reason) => connect_err(reason),
        End::Done => connect_err(status.message().to_owned()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn reserve(
    tx: Option<mpsc::Sender<SourceMessage>>,
) -> Option<mpsc::OwnedPermit<SourceMessage>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn push(&mut self, record: Record) {
        let size = record_size(&record);
        let encoded = prost_len(&record) + RECORD_FRAMING_BYTES;
        self.pending.push_back(Held {
            seq: self.next_assign,
            record,
            size,
            encoded,
            arrived: Instant::now(),
        });
        self.next_assign += 1;
        self.p.submitted += 1;
    }

    fn absorb_input(&mut self) {
        while !self.input_closed {
            match self.input.try_recv() {
                Ok(record) => self.push(record),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.input_closed = true,
            }
        }
    }

    /// Forgets every held record up to `through`.
    fn absorb_ack(&mut self, through: u64) {
        if through <= self.acked_through {
            return;
        }
        let mut n = 0usize;
        while self.pending.front().is_some_and(|h| h.seq <= through) {
            self.pending.pop_front();
            n += 1;
        }
        self.permits.add_permits(n);
        self.p.acked += n as u64;
        self.acked_through = through.min(self.next_assign - 1).max(self.acked_through);
    }

    fn front_seq(&self) -> u64 {
        self.pending.front().map_or(self.next_assign, |h| h.seq)
    }

    fn plan(&self, conn: &mut Conn, now: Instant) -> Plan {
        if conn.tx.is_none() {
            return Plan::Idle;
        }
        if let Some(t) = conn.paused_until.filter(|&t| conn.paused && now < t) {
            return Plan::WaitUntil(t);
        }
        let front = self.front_seq();
        conn.cursor = conn.cursor.max(front);
        let idx = (conn.cursor - front) as usize;
        if idx >= self.pending.len() {
            return Plan::Idle;
        }
        if let Some(t) = conn.not_before {
            if now < t {
                return Plan::WaitUntil(t);
            }
            conn.not_before = None;
            conn.in_backoff = false;
        }
        let target = if conn.slowed {
            (conn.max_batch / 4).max(1)
        } else {
            conn.max_batch
        };
        let unsent = self.pending.len() - idx;
        if unsent < target && !self.input_closed {
            let due = self.pending[idx].arrived + self.opts.linger;
            if now < due {
                return Plan::WaitUntil(due);
            }
        }
        let budget = (conn.max_message_bytes / 10 * 9).saturating_sub(64);
        let (mut n, mut bytes, mut enc) = (0usize, 0u64, 0usize);
        for h in self.pending.range(idx..).take(target) {
            if enc + h.encoded > budget {
                if n == 0 {
                    return Plan::Fatal(ClientError::RecordTooLarge {
                        size: h.encoded,
                        limit: conn.max_message_bytes,
                    });
                }
                break;
            }
            if n as u64 >= conn.credit_records || bytes + h.size > conn.credit_bytes {
                // A record larger than half the byte window may never be
                // covered by byte credit (refills come at half a window):
                // the engine admits it alone on one record credit. The
                // largest byte credit held is a lower bound of the window.
                if n == 0
                    && conn.credit_records > 0
                    && h.size > conn.credit_bytes
                    && h.size > conn.max_credit_bytes / 2
                {
                    n = 1;
                }
                break;
            }
            n += 1;
            bytes += h.size;
            enc += h.encoded;
        }
        if n == 0 { Plan::Idle } else { Plan::Send(n) }
    }

    fn build(&mut self, conn: &mut Conn, n: usize) -> SourceMessage {
        let idx = (conn.cursor - self.front_seq()) as usize;
        let mut records = Vec::with_capacity(n);
        let before = (conn.credit_records, conn.credit_bytes);
        for h in self.pending.range(idx..idx + n) {
            conn.credit_records = conn.credit_records.saturating_sub(1);
            conn.credit_bytes = conn.credit_bytes.saturating_sub(h.size);
            records.push(h.record.clone());
        }
        let first_seq = conn.cursor;
        let last = first_seq + n as u64 - 1;
        conn.in_flight.push_back(SentBatch {
            first: first_seq,
            last,
            records: before.0 - conn.credit_records,
            bytes: before.1 - conn.credit_bytes,
        });
        let fresh = last.saturating_sub(self.highest_sent.max(first_seq - 1));
        self.p.sent += fresh;
        self.p.resent += n as u64 - fresh;
        self.highest_sent = self.highest_sent.max(last);
        conn.cursor = last + 1;
        if conn.slowed {
            conn.not_before = Some(Instant::now() + conn.slow_delay);
        }
        debug!(source_id = %self.source_id, first_seq, n, "batch sent");
        SourceMessage {
            body: Some(source_message::Body::Batch(Batch { first_seq, records })),
        }
    }

    /// Serves one open stream until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> End {
        loop {
            self.absorb_input();
            let now = Instant::now();
            if self.input_closed && self.pending.is_empty() && conn.closing_since.is_none() {
                conn.tx = None;
                conn.closing_since = Some(now);
                debug!(source_id = %self.source_id, "everything acked; half-closed");
            }
            let plan = self.plan(conn, now);
            self.publish(Some(conn));
            let mut wake = conn.closing_since.map(|t| t + self.opts.close_timeout);
            let mut send = None;
            match plan {
                Plan::Send(n) => send = Some(n),
                Plan::WaitUntil(t) => wake = Some(wake.map_or(t, |w| w.min(t))),
                Plan::Idle => {}
                Plan::Fatal(e) => return End::Fatal(e),
            }
            let tx = if send.is_some() {
                conn.tx.clone()
            } else {
                None
            };
            tokio::select! {
                msg = conn.inbound.message() => match msg {
                    Ok(Some(m)) => self.handle(conn, m),
                    Ok(None) if self.input_closed && self.pending.is_empty() => return End::Done,
                    Ok(None) => return End::Retry("engine ended the stream".into()),
                    Err(_) if self.input_closed && self.pending.is_empty() => return End::Done,
                    Err(status) => return classify(&status),
                },
                permit = reserve(tx), if send.is_some() => match (permit, send) {
                    (Some(permit), Some(n)) => {
                        let msg = self.build(conn, n);
                        permit.send(msg);
                    }
                    _ => return End::Retry("request stream closed".into()),
                },
                record = self.input.recv(), if !self.input_closed => match record {
                    Some(r) => self.push(r),
                    None => self.input_closed = true,
                },
                () = sleep_until(wake), if wake.is_some() => {
                    if conn.closing_since.is_some_and(|t| t.elapsed() >= self.opts.close_timeout) {
                        debug!(source_id = %self.source_id, "engine did not end the stream in time; closing");
                        return End::Done;
                    }
                }
            }
        }
    }

    fn handle(&mut self, conn: &mut Conn, msg: EngineMessage) {
        let Some(body) = msg.body else {
            warn!(source_id = %self.source_id, "empty message from the engine ignored");
            return;
        };
        match body {
            engine_message::Body::Opened(_) => {
                warn!(source_id = %self.source_id, "second Opened from the engine ignored");
            }
            engine_message::Body::Credit(c) => {
                conn.credit_records = conn.credit_records.saturating_add(c.records);
                conn.credit_bytes = conn.credit_bytes.saturating_add(c.bytes);
                conn.max_credit_bytes = conn.max_credit_bytes.max(conn.credit_bytes);
                conn.paused = false;
                self.emit(ClientEvent::Credit(c));
            }
            engine_message::Body::Signal(s) => {
                match SignalKind::try_from(s.kind).unwrap_or(SignalKind::Unspecified) {
                    SignalKind::SlowDown => {
                        conn.slowed = true;
                        conn.slow_delay = match s.retry_after_ms {
                            0 => DEFAULT_SLOW_DELAY,
                            ms => Duration::from_millis(ms.into()),
                        };
                        self.p.slow_downs += 1;
                    }
                    SignalKind::Pause => {
                        conn.paused = true;
                        let wait = match s.retry_after_ms {
                            0 => DEFAULT_PAUSE_DELAY,
                            ms => Duration::from_millis(ms.into()),
                        };
                        conn.paused_until = Some(Instant::now() + wait);
                        self.p.pauses += 1;
                    }
                    SignalKind::Resume => {
                        conn.paused = false;
                        conn.slowed = false;
                        conn.not_before = conn.not_before.filter(|_| conn.in_backoff);
                        self.p.resumes += 1;
                    }
                    SignalKind::Unspecified => return,
                }
                debug!(source_id = %self.source_id, signal = ?s, "signal");
                self.p.last_signal = Some(s.clone());
                self.emit(ClientEvent::Signal(s));
            }
            engine_message::Body::Ack(a) => {
                self.absorb_ack(a.through_seq);
                // Batches wholly acked were processed by the engine.
                while conn
                    .in_flight
                    .front()
                    .is_some_and(|b| b.last <= self.acked_through)
                {
                    conn.in_flight.pop_front();
                }
                conn.cursor = conn.cursor.max(self.acked_through + 1);
                self.p.delivered = a.delivered;
                self.p.dead_lettered = a.dead_lettered;
                self.p.filtered = a.filtered;
                self.emit(ClientEvent::Ack(a));
            }
            engine_message::Body::Reject(r) => self.on_reject(conn, r),
        }
    }

    fn on_reject(&mut self, conn: &mut Conn, r: Reject) {
        self.p.rejected += r.count;
        let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
        debug!(source_id = %self.source_id, first_seq = r.first_seq, count = r.count, ?reason, message = %r.message, "reject");
        let front = self.front_seq();
        self.sync_credit(conn, &r);
        let primary = r.first_seq == r.admitted_through_seq.saturating_add(1);
        if primary && r.first_seq >= front && r.first_seq < self.next_assign {
            if reason == RejectReason::RecordTooLarge {
                let idx = (r.first_seq - front) as usize;
                if let Some(h) = self.pending.remove(idx) {
                    for later in self.pending.range_mut(idx..) {
                        later.seq -= 1;
                    }
                    self.next_assign -= 1;
                    if self.highest_sent >= h.seq {
                        self.highest_sent -= 1;
                    }
                    self.permits.add_permits(1);
                    self.p.too_large += 1;
                    warn!(source_id = %self.source_id, seq = h.seq, size = h.size, "record can never be admitted; taken out of the stream");
                    self.emit(ClientEvent::RecordTooLarge {
                        seq: h.seq,
                        record: h.record,
                    });
                }
                conn.cursor = r.first_seq;
            } else {
                conn.cursor = r.first_seq;
                let wait = match r.retry_after_ms {
                    0 => DEFAULT_REJECT_DELAY,
                    ms => Duration::from_millis(ms.into()),
                };
                conn.not_before = Some(Instant::now() + wait);
                conn.in_backoff = true;
            }
        }
        self.emit(ClientEvent::Reject(r));
    }

    /// Aligns the client's credit with the engine's after a reject.
    ///
    /// The engine does not charge credit for records it did not admit, and
    /// its count is the authority: `Reject.credit` is what it counts the
    /// stream as holding right after the rejected batch. The batches sent
    /// after that one are still on their way (each gets its own outcome), so
    /// their charge is taken off. Older engines send no `credit`: then the
    /// rejected records' charge is given back.
    fn sync_credit(&mut self, conn: &mut Conn, r: &Reject) {
        let last = (r.first_seq + r.count).saturating_sub(1);
        // The batch this reject is about: a reject covers the tail of one
        // batch, and the engine answers batches in the order they were sent.
        let found = conn
            .in_flight
            .iter()
            .position(|b| b.last == last && b.first <= r.first_seq);
        if let Some(i) = found {
            conn.in_flight.drain(..=i);
        }
        match r.credit {
            Some(credit) => {
                let (records, bytes) = if found.is_some() {
                    conn.in_flight
                        .iter()
                        .fold((0, 0), |(r, b), s| (r + s.records, b + s.bytes))
                } else {
                    (0, 0)
                };
                conn.credit_records = credit.records.saturating_sub(records);
                conn.credit_bytes = credit.bytes.saturating_sub(bytes);
                conn.max_credit_bytes = conn.max_credit_bytes.max(credit.bytes);
            }
            None => {
                for h in self.pending.iter() {
                    if h.seq >= r.first_seq && h.seq <= last {
                        conn.credit_records += 1;
                        conn.credit_bytes += h.size;
                    }
                }
            }
        }
        debug!(source_id = %self.source_id, credit_records = conn.credit_records,
            credit_bytes = conn.credit_bytes, in_flight = conn.in_flight.len(), "credit after reject");
    }

    fn end(mut self, error: Option<ClientError>) -> Summary {
        if let Some(e) = &error {
            warn!(source_id = %self.source_id, error = %e, "client stopped");
            if let Ok(mut slot) = self.failure.lock() {
                *slot = Some(e.clone());
            }
        }
        self.permits.close();
        self.input.close();
        let mut dropped = 0u64;
        while self.input.try_recv().is_ok() {
            dropped += 1;
        }
        self.p.submitted += dropped;
        self.p.state = if error.is_some() {
            ClientState::Failed
        } else {
            ClientState::Done
        };
        self.publish(None);
        let unacked = self.pending.len() as u64 + dropped;
        Summary::of(&self.p, unacked, self.started.elapsed(), error)
    }
}

fn prost_len(record: &Record) -> usize {
    prost::Message::encoded_len(record)
}
