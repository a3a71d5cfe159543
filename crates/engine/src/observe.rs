//! Observability: the names of the engine's metrics, the Prometheus
//! exporter, and rate-limited warnings.
//!
//! Every [`PUBLISH_INTERVAL`] an engine task (`server/publish.rs`) samples
//! each stage's time counters, publishes the buffer gauges
//! ([`sluice_buffer::metrics::publish_buffer`]), per-stage and per-source
//! gauges and the record counters. Stage time is exported as base-unit
//! counters (`…_seconds_total`); the per-second view over the last interval
//! is in `Admin.Stats` and `sluice top`. Without an installed recorder the `metrics` calls cost
//! next to nothing; [`install_prometheus`] installs one (once per process)
//! and serves it over HTTP.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | [`RECORDS_RECEIVED_TOTAL`], [`RECORDS_REJECTED_TOTAL`], [`RECORDS_DELIVERED_TOTAL`], [`RECORDS_DEAD_LETTERED_TOTAL`], [`RECORDS_RETRIED_TOTAL`], [`RECORDS_FILTERED_TOTAL`] | counter | `source`, `pipeline` |
//! | [`SOURCE_CONNECTED`], [`SOURCE_CREDITS_RECORDS`], [`SOURCE_CREDITS_BYTES`], [`SOURCE_ADMITTED_THROUGH`], [`SOURCE_ACKED_THROUGH`] | gauge | `source`, `pipeline` |
//! | [`STAGE_BUSY_SECONDS`], [`STAGE_IDLE_SECONDS`], [`STAGE_BACKPRESSURED_SECONDS`] | counter | `pipeline`, `stage` |
//! | [`STAGE_QUEUED_RECORDS`], [`STAGE_IN_FLIGHT_RECORDS`] | gauge | `pipeline`, `stage` |
//! | [`ACK_LATENCY_SECONDS`] | histogram | `pipeline` |
//! | [`SINK_STALLED`] | gauge | `pipeline`, `sink` (`sink` or `dead_letter`) |
//! | [`SINK_FAILURES_TOTAL`], [`SINK_RECORDS_REFUSED_TOTAL`], [`SINK_STALLS_TOTAL`] | counter | `pipeline`, `sink` |
//! | [`POSTGRES_STAGED_BATCHES_TOTAL`] | counter | `table`, `reason` (`always`, `duplicate`, `record_error`) |
//! | [`SINK_DUPLICATES_TOTAL`] | counter | `pipeline` |
//! | [`RECORD_MEMORY_BYTES`], [`UNCOVERED_MESSAGE_BYTES`] | gauge | none |
//! | [`RECORDS_COMPACTED_TOTAL`] | counter | none |
//!
//! plus everything [`sluice_buffer::metrics`] records (buffer levels,
//! backpressure episodes, the memory gate, and the one per-source flow-state
//! gauge, `sluice_backpressure_state`: 0 normal, 1 slowed down, 2 paused;
//! whether a source is connected is [`SOURCE_CONNECTED`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use sluice_buffer::BufferedRecord;

use crate::record::EngineRecord;

/// Counter: records received from a source (admitted or not).
pub const RECORDS_RECEIVED_TOTAL: &str = "sluice_records_received_total";
/// Counter: records named in a `Reject`.
pub const RECORDS_REJECTED_TOTAL: &str = "sluice_records_rejected_total";
/// Counter: records committed by the sink (filtered ones excluded).
pub const RECORDS_DELIVERED_TOTAL: &str = "sluice_records_delivered_total";
/// Counter: records written to the dead-letter sink.
pub const RECORDS_DEAD_LETTERED_TOTAL: &str = "sluice_records_dead_lettered_total";
/// Counter: record retries (a failed record returned to its stage's queue).
pub const RECORDS_RETRIED_TOTAL: &str = "sluice_records_retried_total";
/// Counter: records filtered out by a transform.
pub const RECORDS_FILTERED_TOTAL: &str = "sluice_records_filtered_total";
/// Counter: batches of a postgres sink inserted through its staging table
/// (`reason`: `always` by its setting, `duplicate` a row already in the
/// table, `record_error` a record the database refused), per `table`.
pub const POSTGRES_STAGED_BATCHES_TOTAL: &str = "sluice_postgres_staged_batches_total";
/// Gauge: 1 while a stream of the source is open.
pub const SOURCE_CONNECTED: &str = "sluice_source_connected";
/// Gauge: record credits granted to a source and not used yet.
pub const SOURCE_CREDITS_RECORDS: &str = "sluice_source_credits_outstanding_records";
/// Gauge (bytes): byte credits granted to a source and not used yet.
pub const SOURCE_CREDITS_BYTES: &str = "sluice_source_credits_outstanding_bytes";
/// Gauge: highest sequence number of a source admitted so far.
pub const SOURCE_ADMITTED_THROUGH: &str = "sluice_source_admitted_through_seq";
/// Gauge: sequence number through which every record of a source is acked.
pub const SOURCE_ACKED_THROUGH: &str = "sluice_source_acked_through_seq";
/// Counter (seconds): time a stage's worker spent processing records
/// (Prometheus: `rate()` of it is the busy fraction; `Admin.Stats` and
/// `sluice top` show the same as milliseconds per second).
pub const STAGE_BUSY_SECONDS: &str = "sluice_stage_busy_seconds_total";
/// Counter (seconds): time a stage's worker waited for input.
pub const STAGE_IDLE_SECONDS: &str = "sluice_stage_idle_seconds_total";
/// Counter (seconds): time a stage's worker waited for room downstream.
pub const STAGE_BACKPRESSURED_SECONDS: &str = "sluice_stage_backpressured_seconds_total";
/// Gauge: records waiting in a stage's queue (retries included).
pub const STAGE_QUEUED_RECORDS: &str = "sluice_stage_queued_records";
/// Gauge: records being processed by a stage.
pub const STAGE_IN_FLIGHT_RECORDS: &str = "sluice_stage_in_flight_records";
/// Histogram (seconds): time from admission to completion (sink commit,
/// filter or dead letter) of each record.
pub const ACK_LATENCY_SECONDS: &str = "sluice_ack_latency_seconds";

/// Gauge: 1 while a sink is stalled (a sink-level failure: the stage keeps
/// its batch and writes it again with backoff; sources are paused with
/// reason `SINK`), else 0. Label `sink`: `sink` or `dead_letter`.
pub const SINK_STALLED: &str = "sluice_sink_stalled";
/// Counter: sink-level failures (failed write or commit attempts) of a sink.
pub const SINK_FAILURES_TOTAL: &str = "sluice_sink_failures_total";
/// Counter: records a sink refused one by one (record-level failures).
pub const SINK_RECORDS_REFUSED_TOTAL: &str = "sluice_sink_records_refused_total";
/// Counter: messages a sink's target dropped as duplicates of ones it
/// already had (the NATS sink: PubAck `duplicate`, by `Nats-Msg-Id`):
/// resends after a crash or a retried batch. Label `pipeline`.
pub const SINK_DUPLICATES_TOTAL: &str = "sluice_sink_duplicates_total";
/// Counter: stall episodes of a sink.
pub const SINK_STALLS_TOTAL: &str = "sluice_sink_stalls_total";

/// Gauge: bytes of the message copies (and compacted copies) that records
/// in the engine still reference: the memory held for record bytes, to
/// compare with the bytes the buffer charges (`record_memory`).
pub const RECORD_MEMORY_BYTES: &str = "sluice_record_memory_bytes";
/// Gauge: bytes of the pool for messages beyond their stream's credit
/// (`server.uncovered_message_bytes`) that messages read and not yet
/// handled hold (`ingest/gate.rs`).
pub const UNCOVERED_MESSAGE_BYTES: &str = "sluice_uncovered_message_bytes";
/// Counter: records moved out of their batch's copy (`record_memory`).
pub const RECORDS_COMPACTED_TOTAL: &str = "sluice_records_compacted_total";

/// How often the engine samples stage times and publishes its gauges.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Buckets of [`ACK_LATENCY_SECONDS`].
pub const ACK_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the backpressure episode durations.
pub const EPISODE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("metrics exporter: {0}")]
pub struct MetricsError(String);

static INSTALLED: Mutex<Option<(SocketAddr, PrometheusHandle)>> = Mutex::new(None);

/// Installs the Prometheus recorder as the process's global recorder and
/// serves it over HTTP on `listen` (any path, e.g. `/metrics`). Histograms
/// get explicit buckets. Idempotent: a second call returns the handle of the
/// first (whatever its address). Must run inside a Tokio runtime.
pub fn install_prometheus(listen: SocketAddr) -> Result<PrometheusHandle, MetricsError> {
    let mut installed = INSTALLED.lock();
    if let Some((addr, handle)) = installed.as_ref() {
        if *addr != listen {
            tracing::warn!(%addr, requested = %listen, "metrics exporter already installed");
        }
        return Ok(handle.clone());
    }
    let err = |e: &dyn std::fmt::Display| MetricsError(e.to_string());
    let (recorder, exporter) = builder()
        .map_err(|e| err(&e))?
        .with_http_listener(listen)
        .build()
        .map_err(|e| err(&e))?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| err(&e))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics exporter stopped");
        }
    });
    describe();
    tracing::info!(%listen, "serving Prometheus metrics");
    *installed = Some((listen, handle.clone()));
    Ok(handle)
}

/// A Prometheus builder with the engine's histogram buckets (for callers
/// that install a recorder their own way, e.g. tests with `install_recorder`).
pub fn builder() -> Result<PrometheusBuilder, MetricsError> {
    let err = |e: metrics_exporter_prometheus::BuildError| MetricsError(e.to_string());
    PrometheusBuilder::new()
        // Observations wait in the recorder until the upkeep drains them
        // into the buckets: every second rather than every 5 s (the
        // default) keeps what they hold small.
        .upkeep_timeout(std::time::Duration::from_secs(1))
        .set_buckets_for_metric(
            Matcher::Full(ACK_LATENCY_SECONDS.to_owned()),
            ACK_LATENCY_BUCKETS,
        )
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Full(sluice_buffer::metrics::BACKPRESSURE_EPISODE_SECONDS.to_owned()),
            EPISODE_BUCKETS,
        )
        .map_err(err)
}

/// Describes the engine's and the buffer's metrics to the installed recorder.
pub fn describe() {
    sluice_buffer::metrics::describe();
    for (name, help) in [
        (
            RECORDS_RECEIVED_TOTAL,
            "Records received per source (admitted or not)",
        ),
        (RECORDS_REJECTED_TOTAL, "Records rejected per source"),
        (
            RECORDS_DELIVERED_TOTAL,
            "Records committed by the sink per source",
        ),
        (
            RECORDS_DEAD_LETTERED_TOTAL,
            "Records dead-lettered per source",
        ),
        (RECORDS_RETRIED_TOTAL, "Record retries per source"),
        (RECORDS_FILTERED_TOTAL, "Records filtered out per source"),
        (
            SINK_FAILURES_TOTAL,
            "Sink-level failures (failed write or commit attempts) per sink",
        ),
        (
            SINK_RECORDS_REFUSED_TOTAL,
            "Records refused one by one per sink (record-level failures)",
        ),
        (SINK_STALLS_TOTAL, "Stall episodes per sink"),
        (
            POSTGRES_STAGED_BATCHES_TOTAL,
            "Batches a postgres sink inserted through its staging table, per table and reason",
        ),
        (
            SINK_DUPLICATES_TOTAL,
            "Messages the sink target dropped as duplicates (resends)",
        ),
        (
            RECORDS_COMPACTED_TOTAL,
            "Records moved out of their batch's copy into their own allocation",
        ),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (SOURCE_CONNECTED, "1 while a stream of the source is open"),
        (
            SOURCE_CREDITS_RECORDS,
            "Record credits outstanding per source",
        ),
        (SOURCE_CREDITS_BYTES, "Byte credits outstanding per source"),
        (
            SOURCE_ADMITTED_THROUGH,
            "Highest admitted sequence number per source",
        ),
        (
            SOURCE_ACKED_THROUGH,
            "Sequence number acked through per source",
        ),
        (STAGE_QUEUED_RECORDS, "Records queued per stage"),
        (STAGE_IN_FLIGHT_RECORDS, "Records in flight per stage"),
        (
            SINK_STALLED,
            "1 while the sink is stalled (sink-level failure)",
        ),
    ] {
        describe_gauge!(name, help);
    }
    {
        describe_gauge!(
            RECORD_MEMORY_BYTES,
            Unit::Bytes,
            "Bytes of message copies still referenced by records in the engine"
        );
        describe_gauge!(
            UNCOVERED_MESSAGE_BYTES,
            Unit::Bytes,
            "Bytes of messages beyond their stream's credit read and not yet handled"
        );
    }
    for (name, help) in [
        (
            STAGE_BUSY_SECONDS,
            "Time a stage's worker spent processing records",
        ),
        (STAGE_IDLE_SECONDS, "Time a stage's worker waited for input"),
        (
            STAGE_BACKPRESSURED_SECONDS,
            "Time a stage's worker waited for room in the next stage",
        ),
    ] {
        describe_counter!(name, Unit::Seconds, help);
    }
    describe_histogram!(
        ACK_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from admission to completion, one observation per run of records admitted together"
    );
}

/// Records the ack latency of `records`, about to be completed: one
/// observation per run of records admitted together (they share their
/// admission time; usually one admitted batch).
///
/// Why not one per record: the Prometheus exporter keeps every observation
/// until its upkeep or a scrape drains it into the buckets, so one per
/// record (`record_many(v, n)` pushes `n`) grew the RSS by 8 bytes per acked
/// record between drains, outside every budget: 420 MiB of a `sluice serve`
/// with no scraper after 5 s of 16-byte records, against 21 MiB with metrics
/// off (BENCHMARKS.md, "The engine in its own process").
pub(crate) fn ack_latency<'a>(
    pipeline: &Arc<str>,
    records: impl IntoIterator<Item = &'a BufferedRecord<EngineRecord>>,
) {
    let mut records = records.into_iter().peekable();
    if records.peek().is_none() {
        return;
    }
    let h = metrics::histogram!(ACK_LATENCY_SECONDS, "pipeline" => pipeline.clone());
    let now = Instant::now();
    let mut run: Option<Instant> = None;
    for r in records {
        if run != Some(r.buffered_at())
            && let Some(at) = run.replace(r.buffered_at())
        {
            h.record(now.saturating_duration_since(at).as_secs_f64());
        }
    }
    if let Some(at) = run {
        h.record(now.saturating_duration_since(at).as_secs_f64());
    }
}

/// Allows one event per key per interval; counts the ones it suppresses.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    state: Mutex<HashMap<Arc<str>, (Instant, u64)>>,
}

impl WarnLimiter {
    /// At most one event per key per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// `Some(suppressed)` when the event for `key` at `now` should be logged
    /// (with how many were suppressed since the last logged one), `None` when
    /// it is suppressed.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        match state.get_mut(key) {
            Some((last, suppressed)) => {
                if now.saturating_duration_since(*last) >= self.interval {
                    *last = now;
                    Some(std::mem::take(suppressed))
                } else {
                    *suppressed += 1;
                    None
                }
            }
            None => {
                state.insert(Arc::from(key), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_one_per_interval_and_counts_the_rest() {
        let l = WarnLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Some(0));
        assert_eq!(l.check("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check("a", t0 + Duration::from_secs(2)), None);
        // Another key has its own budget.
        assert_eq!(l.check("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(l.check("a", t0 + Duration::from_secs(4)), None);
        // After the interval: logged, with the three suppressed ones.
        assert_eq!(l.check("a", t0 + Duration::from_secs(5)), Some(3));
        assert_eq!(l.check("a", t0 + Duration::from_secs(6)), None);
        assert_eq!(l.check("a", t0 + Duration::from_secs(11)), Some(1));
    }

    #[test]
    fn limiter_bounds_a_flood() {
        let l = WarnLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let logged = (0..10_000u64)
            .filter(|i| l.check("s", t0 + Duration::from_millis(i * 2)).is_some())
            .count();
        // 20 s of rejections every 2 ms: one warning per 5 s.
        assert_eq!(logged, 4);
    }
}
