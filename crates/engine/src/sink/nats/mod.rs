//! The `nats` sink: every record a message in a NATS JetStream stream.
//!
//! Each record is published as its JSON line (the object of
//! [`write_json_line`], without the newline) to the subject its template
//! gives, with the header `Nats-Msg-Id: <source_id>:<seq>`: JetStream drops
//! a message whose id it saw within the stream's `duplicate_window`, so a
//! batch written again (after a sink-level failure, an engine crash, a
//! source's resend, on any replica) is stored once.
//!
//! Publishing is asynchronous, at most `max_in_flight` messages awaiting
//! their PubAck. `write` returns only when every message of the batch has
//! its PubAck, which is JetStream's commit (the message is stored in the
//! stream); `commit` has nothing left to do. So a record is acked to its
//! source only after JetStream acknowledged it.
//!
//! Failures, kept apart as the [sink contract](super::Sink) says:
//!
//! - record-level ([`Written::Refused`], then retries and dead letters): a
//!   message over the server's `max_payload` (from its INFO) or the
//!   stream's maximum message size; a subject that no stream captures (no
//!   responders, and JetStream says no stream has the subject); a key that
//!   makes no valid subject; a source id with a control character (it
//!   cannot be a header value);
//! - sink-level ([`SinkError::Target`](super::SinkError)): no connection, a
//!   PubAck timeout, the connection lost, the stream full or out of
//!   storage, no responders while a stream does capture the subject
//!   (JetStream not ready after a restart).

mod connect;
mod error;
mod subject;

use std::collections::HashMap;
use std::time::Instant;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject, header::NATS_MESSAGE_ID};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sluice_config::NatsSinkSpec;

pub use error::NatsError;

use self::connect::{Connection, Connector};
use self::subject::SubjectTemplate;
use super::contract::{RecordFailure, Sink, SinkBatch, SinkError, SinkFuture, Written};
use super::json::write_json_line;
use crate::observe;

/// Publishes records to NATS JetStream (see the [module docs](self)).
///
/// It connects at its first batch, not when built: an engine starts while
/// NATS is down, its sink stalled (sources paused with reason `SINK`) until
/// the server is there. Once connected, the client reconnects by itself.
#[derive(Debug)]
pub struct NatsSink {
    connector: Connector,
    conn: tokio::sync::OnceCell<Connection>,
    subject: SubjectTemplate,
    template: String,
    max_in_flight: usize,
    pipeline: String,
}

impl NatsSink {
    /// A sink for `pipeline` (its name fills `{pipeline}` in the subject),
    /// credentials read now: an unset variable or unreadable file is an
    /// error here, at the engine's start.
    pub fn new(spec: &NatsSinkSpec, pipeline: &str) -> Result<Self, NatsError> {
        Ok(Self {
            connector: Connector::new(spec, pipeline)?,
            conn: tokio::sync::OnceCell::new(),
            subject: SubjectTemplate::new(&spec.subject, pipeline),
            template: spec.subject.clone(),
            max_in_flight: spec.max_in_flight.max(1),
            pipeline: pipeline.to_owned(),
        })
    }

    async fn publish(&self, batch: SinkBatch<'_>) -> Result<Written, NatsError> {
        let conn = self
            .conn
            .get_or_try_init(|| self.connector.connect())
            .await?;
        let started = Instant::now();
        let max_payload = conn.client.max_payload();
        let mut out = Outcomes::default();
        let mut acks = FuturesUnordered::new();
        for (index, r) in batch.iter().enumerate() {
            let subject: Subject = match self.subject.render(&r) {
                Ok(s) => s.into(),
                Err(error) => {
                    out.refused.push(RecordFailure { index, error });
                    continue;
                }
            };
            // Why: a line break in a header value would end the header and
            // let a source id forge others (another `Nats-Msg-Id`).
            if r.source.chars().any(char::is_control) {
                let error = "the source id holds a control character: no Nats-Msg-Id".into();
                out.refused.push(RecordFailure { index, error });
                continue;
            }
            let mut line = Vec::with_capacity(96 + r.record.payload().len());
            write_json_line(&mut line, &r);
            line.pop(); // the newline: one message is one record
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, format!("{}:{}", r.source, r.seq));
            // The bound on messages awaiting their PubAck: settle one first.
            while acks.len() >= self.max_in_flight {
                if let Some(done) = acks.next().await {
                    out.settle(done, max_payload)?;
                }
            }
            let publish = PublishMessage::build()
                .payload(line.into())
                .headers(headers);
            match conn.js.send_publish(subject.clone(), publish).await {
                Ok(ack) => acks.push(async move { (index, subject, ack.await) }),
                Err(source) => match error::record_level(&source, max_payload) {
                    Some(error) => out.refused.push(RecordFailure { index, error }),
                    None => {
                        return Err(NatsError::Publish {
                            subject: subject.to_string(),
                            source,
                        });
                    }
                },
            }
        }
        while let Some(done) = acks.next().await {
            out.settle(done, max_payload)?;
        }
        self.unbound(conn, &mut out).await?;
        if out.duplicates > 0 {
            // Resends after a crash or a retried batch: expected, counted.
            metrics::counter!(observe::SINK_DUPLICATES_TOTAL, "pipeline" => self.pipeline.clone())
                .increment(out.duplicates);
        }
        tracing::debug!(
            records = batch.len(),
            refused = out.refused.len(),
            duplicates = out.duplicates,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "nats sink: batch acknowledged"
        );
        out.refused.sort_by_key(|f| f.index);
        Ok(if out.refused.is_empty() {
            Written::All
        } else {
            Written::Refused(out.refused)
        })
    }

    /// Decides about the messages nobody answered: their subject is bound
    /// to no stream (record-level), or JetStream is not ready (sink-level).
    async fn unbound(&self, conn: &Connection, out: &mut Outcomes) -> Result<(), NatsError> {
        if out.unbound.is_empty() {
            return Ok(());
        }
        if self.connector.creates_stream() {
            // A memory stream is gone after a server restart: create it again.
            self.connector.ensure_stream(conn).await?;
        }
        let mut verdicts: HashMap<String, String> = HashMap::new();
        for (index, subject) in std::mem::take(&mut out.unbound) {
            if !verdicts.contains_key(subject.as_str()) {
                match conn.js.stream_by_subject(subject.to_string()).await {
                    Ok(stream) => {
                        return Err(NatsError::NoResponders {
                            subject: subject.to_string(),
                            stream,
                        });
                    }
                    Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                        let error = format!("nats subject {subject} is not bound to any stream");
                        verdicts.insert(subject.to_string(), error);
                    }
                    Err(source) => {
                        return Err(NatsError::StreamLookup {
                            subject: subject.to_string(),
                            source,
                        });
                    }
                }
            }
            if let Some(error) = verdicts.get(subject.as_str()) {
                out.refused.push(RecordFailure {
                    index,
                    error: error.clone(),
                });
            }
        }
        Ok(())
    }
}

/// What the PubAcks of a batch said so far.
#[derive(Default)]
struct Outcomes {
    refused: Vec<RecordFailure>,
    /// Messages nobody answered, decided at the end of the batch.
    unbound: Vec<(usize, Subject)>,
    duplicates: u64,
}

type AckResult = Result<PublishAck, async_nats::jetstream::context::PublishError>;

impl Outcomes {
    /// One PubAck (or its failure); a sink-level failure ends the batch.
    fn settle(
        &mut self,
        (index, subject, ack): (usize, Subject, AckResult),
        max_payload: usize,
    ) -> Result<(), NatsError> {
        match ack {
            Ok(ack) => self.duplicates += u64::from(ack.duplicate),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.unbound.push((index, subject))
            }
            Err(source) => match error::record_level(&source, max_payload) {
                Some(error) => self.refused.push(RecordFailure { index, error }),
                None => {
                    return Err(NatsError::Publish {
                        subject: subject.to_string(),
                        source,
                    });
                }
            },
        }
        Ok(())
    }
}

impl Sink for NatsSink {
    fn describe(&self) -> String {
        format!("nats {} {}", self.connector.urls(), self.template)
    }

    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move { Ok(self.publish(batch).await?) })
    }

    /// Nothing to do: `write` returned after JetStream's PubAck of every
    /// message, which is its commit.
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { Ok::<(), SinkError>(()) })
    }
}
