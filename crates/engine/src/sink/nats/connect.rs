//! Connecting the `nats` sink: options from the settings (credentials,
//! TLS, timeouts), the connection, and the stream it may create.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sluice_config::{NatsAuth, NatsSinkSpec, NatsStorage, NatsStreamSpec};

use super::error::NatsError;

/// A connected client and its JetStream context.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
}

/// Everything needed to connect, resolved when the sink is built (so a
/// missing secret fails the engine's start, naming the key).
#[derive(Debug)]
pub(crate) struct Connector {
    urls: Vec<String>,
    auth: NatsAuth,
    tls: Option<sluice_config::NatsTls>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    max_in_flight: usize,
    stream: Option<NatsStreamSpec>,
    name: String,
}

impl Connector {
    /// Reads the credentials of `spec` (from the environment or files).
    pub(crate) fn new(spec: &NatsSinkSpec, pipeline: &str) -> Result<Self, NatsError> {
        Ok(Self {
            urls: spec.urls.clone(),
            auth: spec.auth()?,
            tls: spec.tls.clone(),
            connect_timeout: spec.connect_timeout,
            ack_timeout: spec.ack_timeout,
            max_in_flight: spec.max_in_flight,
            stream: spec.create_stream.clone(),
            name: format!("sluice/{pipeline}"),
        })
    }

    /// The servers, for messages.
    pub(crate) fn urls(&self) -> String {
        self.urls.join(",")
    }

    /// Whether the sink creates its stream (and so may create it again,
    /// e.g. a memory stream lost with a server restart).
    pub(crate) fn creates_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Connects and creates the stream if asked. Every failure is
    /// sink-level: the runtime retries with backoff.
    pub(crate) async fn connect(&self) -> Result<Connection, NatsError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.ack_timeout))
            // Why unlimited: an outage is a stall with backpressure, never
            // a give-up; the runtime keeps the batches meanwhile.
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats sink: connected"),
                    async_nats::Event::Disconnected => tracing::warn!("nats sink: disconnected"),
                    other => tracing::info!("nats sink: {other}"),
                }
            });
        opts = match &self.auth {
            NatsAuth::None => opts,
            NatsAuth::Credentials(path) => {
                opts.credentials_file(path)
                    .await
                    .map_err(|source| NatsError::Credentials {
                        path: path.clone(),
                        source,
                    })?
            }
            NatsAuth::Token(token) => opts.token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.clone())
            }
        };
        if let Some(tls) = &self.tls {
            opts = opts.require_tls(tls.required);
            if let Some(ca) = &tls.ca {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let client = opts
            .connect(&self.urls)
            .await
            .map_err(|source| NatsError::Connect {
                urls: self.urls(),
                source,
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .ack_timeout(self.ack_timeout)
            // Our own bound (`max_in_flight`) is the one that holds; the
            // context's must not be the smaller.
            .max_ack_inflight(self.max_in_flight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        let conn = Connection { client, js };
        self.ensure_stream(&conn).await?;
        Ok(conn)
    }

    /// Creates the configured stream unless it exists (an existing stream
    /// is used as it is: its settings are the operator's).
    pub(crate) async fn ensure_stream(&self, conn: &Connection) -> Result<(), NatsError> {
        let Some(s) = &self.stream else {
            return Ok(());
        };
        let config = stream::Config {
            name: s.stream.clone(),
            subjects: s.subjects.clone(),
            storage: match s.storage {
                NatsStorage::File => stream::StorageType::File,
                NatsStorage::Memory => stream::StorageType::Memory,
            },
            duplicate_window: s.duplicate_window,
            ..Default::default()
        };
        conn.js
            .get_or_create_stream(config)
            .await
            .map_err(|source| NatsError::CreateStream {
                stream: s.stream.clone(),
                source,
            })?;
        tracing::info!(stream = %s.stream, "nats sink: stream ready");
        Ok(())
    }
}
