//! What a client tells its caller: its [`ClientState`] and [`Progress`]
//! (a `watch` snapshot), the [`ClientEvent`]s of its stream, and the
//! [`Summary`] it ends with.

use std::time::Duration;

use sluice_proto::v1::{Ack, Credit, Opened, Record, Reject, Signal};
use tokio::sync::mpsc;

use crate::error::ClientError;

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
    /// Records handed to [`SourceClient::send`](crate::SourceClient::send).
    pub submitted: u64,
    /// Distinct records sent at least once.
    pub sent: u64,
    /// Records sent again (after a reject or a reconnect).
    pub resent: u64,
    /// Highest sequence number acked by the engine (cumulatively: records
    /// above it may be acked too, by a range of `Ack.completed`).
    pub acked_through: u64,
    /// Records acked (and forgotten by the client), cumulatively or by a
    /// completed range.
    pub acked: u64,
    /// Records held: sent or queued, not acked yet (neither cumulatively
    /// nor by a range): what counts against `max_unacked`.
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
    /// The stream is open (`attempt` 0 is the first connection at its first
    /// try).
    Connected {
        /// Attempt that succeeded: 0 for the first try of the first
        /// connection, then from 1 for its retries and for each reconnect.
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
    /// The stream ended before everything was acked, or an attempt at the
    /// first connection failed for a transient reason.
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

/// The outcome of a client, returned by [`SourceClient::finish`](crate::SourceClient::finish).
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
    pub(crate) fn of(
        p: &Progress,
        unacked: u64,
        elapsed: Duration,
        error: Option<ClientError>,
    ) -> Self {
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
