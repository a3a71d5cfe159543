//! The `nats` sink's failures, and which of them are the record's fault.

use std::path::PathBuf;

use async_nats::jetstream::context::{
    CreateStreamError, GetStreamByNameError, PublishError, PublishErrorKind,
};
use async_nats::jetstream::{self, ErrorCode};
use sluice_config::NatsAuthError;

/// A sink-level failure of the `nats` sink (the runtime stalls the stage
/// and writes the batch again with backoff).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The credentials in the settings cannot be had.
    #[error("nats sink credentials: {0}")]
    Auth(#[from] NatsAuthError),
    /// The credentials file cannot be read.
    #[error("nats credentials file {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No server could be reached.
    #[error("cannot connect to nats {urls}: {source}")]
    Connect {
        /// The servers tried.
        urls: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The configured stream could not be created or looked up.
    #[error("nats stream {stream}: {source}")]
    CreateStream {
        /// The stream.
        stream: String,
        /// Why.
        source: CreateStreamError,
    },
    /// A publish, or the wait for its PubAck, failed (timeout, connection
    /// lost, stream full or out of storage…).
    #[error("publishing to nats subject {subject}: {source}")]
    Publish {
        /// The message's subject.
        subject: String,
        /// Why.
        source: PublishError,
    },
    /// Nobody answered a publish although a stream captures its subject
    /// (JetStream not ready yet, e.g. just after a server restart).
    #[error("no JetStream answer for subject {subject} (stream {stream} exists)")]
    NoResponders {
        /// The message's subject.
        subject: String,
        /// The stream that captures it.
        stream: String,
    },
    /// Which stream captures a subject could not be asked.
    #[error("looking up the nats stream of subject {subject}: {source}")]
    StreamLookup {
        /// The subject.
        subject: String,
        /// Why.
        source: GetStreamByNameError,
    },
}

impl From<NatsError> for crate::sink::contract::SinkError {
    fn from(e: NatsError) -> Self {
        Self::Target {
            sink: "nats",
            source: Box::new(e),
        }
    }
}

/// The record-level reason of a publish failure, when it is the message's
/// own fault (retrying it can never succeed): larger than the server's
/// `max_payload` (checked by the client against the server's INFO) or than
/// the stream's maximum message or header size. `None`: sink-level.
pub(crate) fn record_level(err: &PublishError, max_payload: usize) -> Option<String> {
    if err.kind() == PublishErrorKind::MaxPayloadExceeded {
        return Some(format!(
            "message too large for nats: {err} (server max_payload {max_payload} bytes)"
        ));
    }
    let code = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code)?;
    [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
    ]
    .contains(&code)
    .then(|| format!("message refused by JetStream: {err}"))
}
