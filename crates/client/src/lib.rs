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
//!   `Opened.admitted_through_seq`. A first connection that fails for a
//!   transient reason (refused, unreachable, an engine that is shutting down)
//!   is retried the same way (see [`SourceClient::connect`]).
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

// The public face: the client, its options, what it reports, its errors.
mod client;
mod error;
mod event;
mod options;
pub mod tls;

// The private background task that owns the stream.
mod driver;

pub use client::SourceClient;
pub use error::ClientError;
pub use event::{ClientEvent, ClientEvents, ClientState, Progress, Summary};
pub use options::{ClientOptions, ReconnectPolicy};

/// The record size rule of the contract (what a record counts against
/// byte credits), from `sluice-proto`.
pub use sluice_proto::record_size;
