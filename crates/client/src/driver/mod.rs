//! The driver: the private background task of a client. It owns the held
//! records and one stream at a time, and runs the flow-control state machine
//! of the contract (see the crate documentation).
//!
//! - [`held`]: the records held until acked, in sequence order.
//! - [`conn`]: one open stream ([`Conn`]) and how it is opened.
//! - [`send`]: what may be sent next within credits and signals ([`Plan`]),
//!   and the batch that sends it.
//! - [`inbound`]: the engine's answers: credit, signals, acks, rejects.
//! - [`serve`]: the loop that serves one stream until it ends.
//!
//! This module ties them together: the [`Driver`] itself, its reconnect loop
//! and its end.

mod conn;
mod held;
mod inbound;
mod send;
mod serve;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_proto::v1::Record;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tracing::warn;

use crate::error::ClientError;
use crate::event::{ClientEvent, ClientState, Progress, Summary};
use crate::options::ClientOptions;

use conn::{Conn, OpenError};
use held::Held;

/// The driver's ends of what it shares with its
/// [`SourceClient`](crate::SourceClient).
pub(crate) struct Links {
    /// Records handed to `send`.
    pub(crate) input: mpsc::UnboundedReceiver<Record>,
    /// One permit per record the client may still hold (`max_unacked`).
    pub(crate) permits: Arc<Semaphore>,
    /// Where [`Progress`] is published.
    pub(crate) progress: watch::Sender<Progress>,
    /// Where [`ClientEvent`]s go.
    pub(crate) events: mpsc::UnboundedSender<ClientEvent>,
    /// The error that stopped the driver, for `send` to return.
    pub(crate) failure: Arc<Mutex<Option<ClientError>>>,
    /// When the client was created.
    pub(crate) started: Instant,
}

/// The background task of a client: owns the held records and the stream.
pub(crate) struct Driver {
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

/// How a stream ended.
enum ConnEnd {
    /// Everything acked and the stream is over.
    Done,
    /// Ended early; reconnect.
    Retry(String),
    /// Cannot go on.
    Fatal(ClientError),
}

/// How a stream that ended with `status` ended: transient codes are
/// retried, the others stop the client.
fn classify(status: &Status) -> ConnEnd {
    match status.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal => ConnEnd::Retry(format!("{:?}: {}", status.code(), status.message())),
        code => ConnEnd::Fatal(ClientError::Refused {
            code,
            message: status.message().to_owned(),
        }),
    }
}

impl Driver {
    /// A driver for `source_id` on `pipeline` at `addr`, not connected yet.
    pub(crate) fn new(
        addr: &str,
        endpoint: Endpoint,
        source_id: &str,
        pipeline: &str,
        opts: ClientOptions,
        links: Links,
    ) -> Self {
        let first_seq = opts.first_seq.unwrap_or(1);
        let mut driver = Self {
            addr: addr.to_owned(),
            endpoint,
            source_id: source_id.to_owned(),
            pipeline: pipeline.to_owned(),
            opts,
            input: links.input,
            input_closed: false,
            pending: VecDeque::new(),
            next_assign: 0,
            acked_through: 0,
            highest_sent: 0,
            permits: links.permits,
            progress: links.progress,
            events: links.events,
            failure: links.failure,
            p: Progress::default(),
            started: links.started,
        };
        driver.start_at(first_seq);
        driver
    }

    /// Opens the first stream (see [`open_first`](Self::open_first)) and
    /// spawns the driver on it.
    pub(crate) async fn start(mut self) -> Result<JoinHandle<Summary>, ClientError> {
        let mut conn = self.open_first().await?;
        if self.opts.first_seq.is_none() {
            self.start_at(conn.opened_admitted + 1);
            conn.cursor = self.next_assign;
        } else if conn.opened_admitted >= self.next_assign {
            warn!(
                source_id = self.source_id.as_str(),
                first_seq = self.next_assign,
                admitted_through = conn.opened_admitted,
                "records up to the engine's admitted sequence number will be skipped by the engine"
            );
        }
        Ok(tokio::spawn(self.run(conn)))
    }

    /// Opens the first stream. A transient failure (refused, unreachable or
    /// timed out; `UNAVAILABLE` from a draining engine, `RESOURCE_EXHAUSTED`,
    /// …) is retried like a reconnect: up to `reconnect.max_attempts` more
    /// attempts, after the policy's backoff, each announced by a
    /// [`ClientEvent::Disconnected`]. A permanent one (the engine refused the
    /// source, a protocol or TLS failure) is returned at once. When the
    /// attempts are used up, the last error is returned with their number.
    async fn open_first(&mut self) -> Result<Conn, ClientError> {
        let mut attempt = 0u32;
        loop {
            let failed = match self.open(attempt).await {
                Ok(conn) => return Ok(conn),
                Err(failed) => failed,
            };
            if !failed.transient {
                return Err(failed.error);
            }
            if attempt >= self.opts.reconnect.max_attempts {
                return Err(match failed.error {
                    ClientError::Connect { addr, reason } if attempt > 0 => ClientError::Connect {
                        addr,
                        reason: format!("{reason} (gave up after {} attempts)", attempt + 1),
                    },
                    error => error,
                });
            }
            attempt += 1;
            let wait = self.opts.reconnect.backoff(attempt);
            let error = failed.error.to_string();
            warn!(source_id = %self.source_id, %error, retry_in = ?wait, attempt, "first connection failed; trying again");
            self.emit(ClientEvent::Disconnected {
                error,
                retry_in: wait,
            });
            tokio::time::sleep(wait).await;
        }
    }

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

    /// Runs the client to its end and returns its summary.
    async fn run(mut self, first: Conn) -> Summary {
        let mut conn = first;
        let mut attempts = 0u32;
        let error = loop {
            self.publish(Some(&conn));
            // Progress is any record acked, by the frontier or by a range.
            let acked_before = self.p.acked;
            let end = self.serve(&mut conn).await;
            if self.p.acked > acked_before {
                attempts = 0;
            }
            let reason = match end {
                ConnEnd::Done => break None,
                ConnEnd::Fatal(e) => break Some(e),
                ConnEnd::Retry(reason) => reason,
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
                    Err(OpenError {
                        error: e @ (ClientError::Refused { .. } | ClientError::Protocol(_)),
                        ..
                    }) => {
                        return self.end(Some(e));
                    }
                    Err(e) => last = e.error.to_string(),
                }
            };
        };
        self.end(error)
    }

    /// Stops the driver (`error`: why, if it failed): closes the input,
    /// publishes the last progress and returns the summary.
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
