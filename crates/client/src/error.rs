//! [`ClientError`], what can go wrong with a client, and the rendering of a
//! transport error's chain of causes.

use tonic::Code;

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

/// `e` and its sources, joined by `": "`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
