//! Observability: the Prometheus exporter, the engine's own metrics, the
//! per-stage time rates shared by `/metrics` and `Admin.Stats`, and
//! rate-limited warnings.
//!
//! Every second an engine task samples each stage's
//! [`StageTimes`] and turns the increase since the previous sample into
//! Flink-style rates (busy / idle / backpressured milliseconds per second
//! over the last interval), then publishes the buffer gauges
//! ([`sluice_buffer::metrics::publish_buffer`]), per-stage and per-source
//! gauges and the record counters. `Admin.Stats` reads the same rates, so
//! both views agree. Without an installed recorder the `metrics` calls cost
//! next to nothing; [`install_prometheus`] installs one (once per process)
//! and serves it over HTTP.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | [`RECORDS_RECEIVED_TOTAL`], [`RECORDS_REJECTED_TOTAL`], [`RECORDS_DELIVERED_TOTAL`], [`RECORDS_DEAD_LETTERED_TOTAL`], [`RECORDS_RETRIED_TOTAL`], [`RECORDS_FILTERED_TOTAL`] | counter | `source`, `pipeline` |
//! | [`SOURCE_STATE`] (1 normal, 2 slowed, 3 paused, 4 closed), [`SOURCE_CONNECTED`], [`SOURCE_CREDITS_RECORDS`], [`SOURCE_CREDITS_BYTES`], [`SOURCE_ADMITTED_THROUGH`], [`SOURCE_ACKED_THROUGH`] | gauge | `source`, `pipeline` |
//! | [`STAGE_BUSY_MS`], [`STAGE_IDLE_MS`], [`STAGE_BACKPRESSURED_MS`], [`STAGE_QUEUED_RECORDS`], [`STAGE_IN_FLIGHT_RECORDS`] | gauge | `pipeline`, `stage` |
//! | [`ACK_LATENCY_SECONDS`] | histogram | `pipeline` |
//!
//! plus everything [`sluice_buffer::metrics`] records (buffer levels,
//! backpressure episodes, memory gate).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use sluice_buffer::{BufferedRecord, StageId};

use crate::pipeline::StageTimes;
use crate::record::EngineRecord;
use crate::server::Shared;

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
/// Gauge: a source's state as in `Admin.Stats` (1 normal, 2 slowed down, 3 paused, 4 closed).
pub const SOURCE_STATE: &str = "sluice_source_state";
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
/// Gauge: milliseconds per second a stage's worker was busy, over the last interval.
pub const STAGE_BUSY_MS: &str = "sluice_stage_busy_ms_per_second";
/// Gauge: milliseconds per second a stage's worker waited for input.
pub const STAGE_IDLE_MS: &str = "sluice_stage_idle_ms_per_second";
/// Gauge: milliseconds per second a stage's worker waited for room downstream.
pub const STAGE_BACKPRESSURED_MS: &str = "sluice_stage_backpressured_ms_per_second";
/// Gauge: records waiting in a stage's queue (retries included).
pub const STAGE_QUEUED_RECORDS: &str = "sluice_stage_queued_records";
/// Gauge: records being processed by a stage.
pub const STAGE_IN_FLIGHT_RECORDS: &str = "sluice_stage_in_flight_records";
/// Histogram (seconds): time from admission to completion (sink commit,
/// filter or dead letter) of each record.
pub const ACK_LATENCY_SECONDS: &str = "sluice_ack_latency_seconds";

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
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            SOURCE_STATE,
            "Source state: 1 normal, 2 slowed, 3 paused, 4 closed",
        ),
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
        (
            STAGE_BUSY_MS,
            "Busy milliseconds per second per stage (last interval)",
        ),
        (
            STAGE_IDLE_MS,
            "Idle milliseconds per second per stage (last interval)",
        ),
        (
            STAGE_BACKPRESSURED_MS,
            "Backpressured milliseconds per second per stage (last interval)",
        ),
        (STAGE_QUEUED_RECORDS, "Records queued per stage"),
        (STAGE_IN_FLIGHT_RECORDS, "Records in flight per stage"),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(
        ACK_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from admission to completion per record"
    );
}

/// Records the ack latency of `records`, about to be completed.
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
    // The records of one admitted batch share their admission time: one
    // observation per run of equal times, counted for every record of it.
    let mut run: Option<(Instant, usize)> = None;
    for r in records {
        match &mut run {
            Some((at, n)) if *at == r.buffered_at() => *n += 1,
            _ => {
                if let Some((at, n)) = run.replace((r.buffered_at(), 1)) {
                    h.record_many(now.saturating_duration_since(at).as_secs_f64(), n);
                }
            }
        }
    }
    if let Some((at, n)) = run {
        h.record_many(now.saturating_duration_since(at).as_secs_f64(), n);
    }
}

/// Flink-style time rates of one stage over the last interval, in
/// milliseconds per second (they add up to 1000 per worker).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageRates {
    /// Processing records.
    pub busy_ms_per_s: f64,
    /// Waiting for input.
    pub idle_ms_per_s: f64,
    /// Waiting for room in the next stage.
    pub backpressured_ms_per_s: f64,
}

impl StageRates {
    /// Rates from the increase of busy and blocked nanoseconds over
    /// `elapsed`. A worker adds its time when a step ends, so a long step
    /// may land in one interval: each rate is capped at 1000 ms/s, and idle
    /// is the rest of the interval (a worker waiting for input adds its idle
    /// time only when input arrives).
    pub fn from_deltas(busy_ns: u64, blocked_ns: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-6);
        let ms = |ns: u64| ns as f64 / 1e6 / secs;
        let busy = ms(busy_ns).min(1000.0);
        let blocked = ms(blocked_ns).min(1000.0 - busy);
        Self {
            busy_ms_per_s: busy,
            idle_ms_per_s: (1000.0 - busy - blocked).max(0.0),
            backpressured_ms_per_s: blocked,
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    at: Option<Instant>,
    totals: HashMap<StageId, (u64, u64)>,
}

/// Per-engine observability state: recent stage rates and the warning
/// rate limiter.
#[derive(Debug)]
pub(crate) struct Observer {
    rates: Mutex<HashMap<StageId, StageRates>>,
    samples: Mutex<Samples>,
    rejections: WarnLimiter,
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            rates: Mutex::default(),
            samples: Mutex::default(),
            rejections: WarnLimiter::new(Duration::from_secs(5)),
        }
    }
}

impl Observer {
    /// The rates of `stage` over the last interval (zero before the second sample).
    pub(crate) fn rates(&self, stage: StageId) -> StageRates {
        self.rates.lock().get(&stage).copied().unwrap_or_default()
    }

    /// Samples the stage times and updates the rates.
    fn sample(&self, times: &HashMap<StageId, Arc<StageTimes>>) {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        let elapsed = samples.at.map(|at| now.saturating_duration_since(at));
        let mut rates = HashMap::with_capacity(times.len());
        for (id, t) in times {
            let cur = (
                t.busy_ns.load(Ordering::Relaxed),
                t.blocked_ns.load(Ordering::Relaxed),
            );
            let prev = samples.totals.insert(*id, cur);
            if let (Some(elapsed), Some(prev)) = (elapsed, prev) {
                rates.insert(
                    *id,
                    StageRates::from_deltas(
                        cur.0.saturating_sub(prev.0),
                        cur.1.saturating_sub(prev.1),
                        elapsed,
                    ),
                );
            }
        }
        samples.at = Some(now);
        if elapsed.is_some() {
            *self.rates.lock() = rates;
        }
    }

    /// Logs a warning about rejected records of `source`, at most once per
    /// interval per source, with the number of rejections not logged since.
    pub(crate) fn rejected(&self, source: &str, count: u64, reason: &str, message: &str) {
        if let Some(suppressed) = self.rejections.check(source, Instant::now()) {
            tracing::warn!(
                source,
                count,
                reason,
                message,
                suppressed,
                "records rejected (further rejections of this source are summarised)"
            );
        }
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

/// Spawns the engine's publishing task: every [`PUBLISH_INTERVAL`] it
/// samples stage times and publishes gauges and counters. It ends when the
/// engine's streams are stopped or the engine is dropped.
pub(crate) fn spawn(shared: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PUBLISH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => {}
            }
            let Some(shared) = weak.upgrade() else { break };
            tick(&shared);
        }
    })
}

/// One sampling and publishing round.
pub(crate) fn tick(shared: &Shared) {
    shared.observe.sample(&shared.stage_times);
    sluice_buffer::metrics::publish_buffer(&shared.buffer);
    let stats = shared.stats();
    for s in &stats.stages {
        let labels = [("pipeline", s.pipeline.clone()), ("stage", s.name.clone())];
        gauge!(STAGE_BUSY_MS, &labels).set(s.busy_ms_per_s);
        gauge!(STAGE_IDLE_MS, &labels).set(s.idle_ms_per_s);
        gauge!(STAGE_BACKPRESSURED_MS, &labels).set(s.backpressured_ms_per_s);
        gauge!(STAGE_QUEUED_RECORDS, &labels).set(s.queued as f64);
        gauge!(STAGE_IN_FLIGHT_RECORDS, &labels).set(s.in_flight as f64);
    }
    let retried: HashMap<Arc<str>, u64> = shared
        .buffer
        .snapshot()
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.retried))
        .collect();
    for s in &stats.sources {
        let labels = [
            ("source", s.source_id.clone()),
            ("pipeline", s.pipeline.clone()),
        ];
        gauge!(SOURCE_STATE, &labels).set(f64::from(s.state));
        gauge!(SOURCE_CONNECTED, &labels).set(if s.connected { 1.0 } else { 0.0 });
        gauge!(SOURCE_CREDITS_RECORDS, &labels).set(s.credits_outstanding_records as f64);
        gauge!(SOURCE_CREDITS_BYTES, &labels).set(s.credits_outstanding_bytes as f64);
        gauge!(SOURCE_ADMITTED_THROUGH, &labels).set(s.admitted_through_seq as f64);
        gauge!(SOURCE_ACKED_THROUGH, &labels).set(s.acked_through_seq as f64);
        counter!(RECORDS_RECEIVED_TOTAL, &labels).absolute(s.received);
        counter!(RECORDS_REJECTED_TOTAL, &labels).absolute(s.rejected);
        counter!(RECORDS_DELIVERED_TOTAL, &labels).absolute(s.delivered);
        counter!(RECORDS_DEAD_LETTERED_TOTAL, &labels).absolute(s.dead_lettered);
        counter!(RECORDS_FILTERED_TOTAL, &labels).absolute(s.filtered);
        let r = retried.get(s.source_id.as_str()).copied().unwrap_or(0);
        counter!(RECORDS_RETRIED_TOTAL, &labels).absolute(r);
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

    #[test]
    fn rates_are_capped_and_add_up() {
        let s = Duration::from_secs(1);
        let r = StageRates::from_deltas(250_000_000, 500_000_000, s);
        assert!((r.busy_ms_per_s - 250.0).abs() < 1e-9);
        assert!((r.backpressured_ms_per_s - 500.0).abs() < 1e-9);
        assert!((r.idle_ms_per_s - 250.0).abs() < 1e-9);
        let r = StageRates::from_deltas(3_000_000_000, 1_000_000, s);
        assert_eq!(r.busy_ms_per_s, 1000.0);
        assert_eq!(r.backpressured_ms_per_s, 0.0);
        assert_eq!(r.idle_ms_per_s, 0.0);
        let r = StageRates::from_deltas(0, 0, Duration::from_millis(500));
        assert_eq!(r.idle_ms_per_s, 1000.0);
    }
}
