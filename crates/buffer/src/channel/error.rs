//! What a send that did not go through hands back: the records, always.

use crate::error::{BufferError, RejectReason};
use crate::manager::Rejected;
use crate::pending::Pending;

/// Why a [`Producer`](crate::Producer) could not send records, for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The buffer refused the batch as a whole: it is shut down
    /// ([`BufferError::Closed`]), or an explicit numbering was wrong (a gap,
    /// sequence number 0, past `u64::MAX`).
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// A record can never be admitted (larger than a byte limit).
    #[error(transparent)]
    Refused(RejectReason),
}

/// A send that failed for good, with every record it did not admit, like
/// tokio's `SendError<T>`. Records before `first_seq` of the same send were
/// admitted (a send that waited for room may have admitted a prefix).
#[derive(thiserror::Error)]
#[error("{failure}")]
pub struct SendError<T> {
    /// Why.
    pub failure: SendFailure,
    /// The sequence number the first returned record had (or would have had).
    pub first_seq: u64,
    /// The records not admitted, in order, in their laid-out form.
    pub records: Pending<T>,
}

impl<T> SendError<T> {
    /// The records back, as payloads.
    pub fn into_payloads(self) -> Vec<T> {
        self.records.into_payloads()
    }
}

impl<T> std::fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendError")
            .field("failure", &self.failure)
            .field("first_seq", &self.first_seq)
            .field("records", &self.records.len())
            .finish()
    }
}

/// A [`try_send`](crate::Producer::try_send) that did not admit everything.
#[derive(thiserror::Error)]
pub enum TrySendError<T> {
    /// A limit is full: the records from `first_seq` on come back (those
    /// before it were admitted); retry later, or [`send`](crate::Producer::send)
    /// them, which waits.
    #[error("{}", .0.reason)]
    Full(Rejected<T>),
    /// Failed for good, as a [`send`](crate::Producer::send) would.
    #[error(transparent)]
    Failed(SendError<T>),
}

impl<T> TrySendError<T> {
    /// The records back, as payloads.
    pub fn into_payloads(self) -> Vec<T> {
        match self {
            TrySendError::Full(r) => r.into_payloads(),
            TrySendError::Failed(e) => e.into_payloads(),
        }
    }
}

impl<T> std::fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrySendError::Full(r) => f
                .debug_struct("Full")
                .field("first_seq", &r.first_seq)
                .field("records", &r.records.len())
                .field("reason", &r.reason)
                .finish(),
            TrySendError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// Why [`try_recv`](crate::Consumer::try_recv) returned no records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is ready now; more may come.
    #[error("no records are ready")]
    Empty,
    /// Nothing more will come: the stage is drained and its pipeline closed
    /// (or the buffer shut down).
    #[error("the stage is drained and its pipeline closed")]
    Ended,
}
