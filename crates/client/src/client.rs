//! [`SourceClient`], the public face of a client: it checks the options,
//! starts the [driver](crate::driver) that owns the stream, and feeds it
//! records within the client's own backpressure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::v1::Record;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::driver::{Driver, Links};
use crate::error::{ClientError, error_chain};
use crate::event::{ClientEvents, Progress, Summary};
use crate::options::{ClientOptions, bearer};

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
    /// Returns the client and its event receiver (holding the events of the
    /// attempts made so far).
    ///
    /// A first connection that fails for a transient reason is tried again
    /// like a reconnect, with the backoff and attempt limit of
    /// [`ClientOptions::reconnect`]: a refused, unreachable or timed-out TCP
    /// connection, or a stream that ends before `Opened` with `UNAVAILABLE`
    /// (for example an engine that is shutting down), `RESOURCE_EXHAUSTED` or
    /// another status a reconnect retries. Each failed attempt is reported as a
    /// [`ClientEvent::Disconnected`](crate::ClientEvent::Disconnected) with the
    /// wait before the next one; the `Connected` event carries the number of
    /// the attempt that succeeded. After `max_attempts` retries, the last
    /// error is returned ([`ClientError::Connect`], naming the address and the
    /// number of attempts); with `max_attempts` 0 the first failure is returned
    /// at once.
    ///
    /// Permanent failures are returned at once, with the engine's message: an
    /// invalid address or options, a refusal of the source
    /// ([`ClientError::Refused`]: `NOT_FOUND` for an unknown pipeline,
    /// `INVALID_ARGUMENT`, `PERMISSION_DENIED`, `UNAUTHENTICATED`,
    /// `FAILED_PRECONDITION`, …), a protocol error, and a TLS configuration
    /// or handshake failure (an untrusted certificate, TLS against a
    /// plaintext port).
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
        let driver = Driver::new(
            addr,
            endpoint,
            source_id,
            pipeline,
            options,
            Links {
                input: input_rx,
                permits: permits.clone(),
                progress: progress_tx,
                events: events_tx,
                failure: failure.clone(),
                started,
            },
        );
        let handle = driver.start().await?;
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
