//! The options of a [`SourceClient`](crate::SourceClient): batching, the
//! client's own backpressure, reconnects, timeouts, TLS and the bearer token.

use std::time::Duration;

use crate::error::ClientError;
use crate::tls::ClientIdentity;

/// How the client reconnects after its stream ends early, and how it tries
/// again when its first connection fails for a transient reason (refused,
/// unreachable or timed out, `UNAVAILABLE` from a draining engine,
/// `RESOURCE_EXHAUSTED`; see
/// [`SourceClient::connect`](crate::SourceClient::connect)): the same
/// backoff, and up to `max_attempts` attempts after the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Reconnect attempts in a row (without an ack in between) before the
    /// client gives up; also the attempts after a failed first connection.
    /// Default 10; 0 never reconnects (and a failed first connection is an
    /// error at once).
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
        let shift = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// Options of a [`SourceClient`](crate::SourceClient).
#[derive(Clone, PartialEq)]
pub struct ClientOptions {
    /// Most records held by the client (queued, sent and not acked yet);
    /// [`SourceClient::send`](crate::SourceClient::send) waits while this
    /// many are held. Default 10 000.
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
    pub identity: Option<ClientIdentity>,
}

impl ClientOptions {
    /// These options presenting the client certificate chain `cert_pem` and
    /// private key `key_pem` (PEM) to the engine (mutual TLS).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(ClientIdentity::from_pem(cert_pem, key_pem));
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

/// The `authorization` metadata value for `token`.
pub(crate) fn bearer(token: &str) -> Result<tonic::metadata::AsciiMetadataValue, ClientError> {
    format!("Bearer {token}").parse().map_err(|_| {
        ClientError::InvalidOptions("token must be printable ASCII without spaces".into())
    })
}
