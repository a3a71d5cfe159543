//! Metric names and the helpers that record them, through the `metrics`
//! facade.
//!
//! This crate installs no exporter: whatever recorder the program installed
//! (the engine installs a Prometheus exporter) receives these metrics, and
//! without one they cost next to nothing. Names follow Prometheus
//! conventions (`_total` for counters, base units).
//!
//! What records what:
//!
//! | metric | kind | labels | recorded by |
//! |---|---|---|---|
//! | [`BACKPRESSURE_EPISODES_TOTAL`] | counter | `source`, `reason`, `stage` | the controller, when a source leaves NORMAL |
//! | [`BACKPRESSURE_EPISODE_SECONDS`] | histogram | `source`, `reason`, `stage`, `complete` | the controller, when an episode ends (`complete="true"`) or is cut short by shutdown (`complete="false"`) |
//! | [`BACKPRESSURE_STATE`] | gauge | `source` | the controller, on each transition (0 normal, 1 slowed down, 2 paused) |
//! | [`CREDITS_GRANTED_TOTAL`], [`CREDIT_BYTES_GRANTED_TOTAL`] | counter | `source` | the controller, on each grant |
//! | [`MEMORY_GATE_CLOSED`] | gauge | – | the memory monitor (0 open, 1 closed) |
//! | [`MEMORY_GATE_TRANSITIONS_TOTAL`] | counter | `direction` (`close`/`open`) | the memory monitor |
//! | [`MEMORY_USED_BYTES`], [`MEMORY_LIMIT_BYTES`] | gauge | – | the memory monitor, each sample |
//! | [`BUFFER_RECORDS`], [`BUFFER_BYTES`], [`BUFFER_RESERVED_RECORDS`], [`BUFFER_RESERVED_BYTES`], [`BUFFER_LIMIT_RECORDS`], [`BUFFER_LIMIT_BYTES`], [`BUFFER_UTILIZATION`] | gauge | `level`, `name`, `pipeline` | [`publish_snapshot`] / [`publish_buffer`], called periodically by the program |
//!
//! `reason` is one of `global`, `stage`, `source`, `memory` (see
//! [`SignalReason::label`](crate::SignalReason::label)); `stage` names the
//! stage when `reason="stage"` and is empty otherwise. For buffer gauges
//! `level` is `global`, `stage` or `source`; `name` is the stage or source
//! name (`global` for the global level) and `pipeline` the pipeline's name
//! (empty for the global level).

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::manager::{BufferManager, Credit, PipelineInfo};
use crate::memory::Measured;
use crate::snapshot::{LevelSnapshot, Snapshot};

/// Counter: backpressure episodes started, per source and cause.
pub const BACKPRESSURE_EPISODES_TOTAL: &str = "sluice_backpressure_episodes_total";
/// Histogram (seconds): duration of backpressure episodes, recorded when
/// they end; one cut short by shutdown is recorded with `complete="false"`.
pub const BACKPRESSURE_EPISODE_SECONDS: &str = "sluice_backpressure_episode_seconds";
/// Gauge: each source's flow-control state (0 normal, 1 slowed down, 2 paused).
pub const BACKPRESSURE_STATE: &str = "sluice_backpressure_state";
/// Counter: record credits granted, per source.
pub const CREDITS_GRANTED_TOTAL: &str = "sluice_credits_granted_total";
/// Counter: byte credits granted, per source.
pub const CREDIT_BYTES_GRANTED_TOTAL: &str = "sluice_credit_bytes_granted_total";
/// Gauge: 1 while the memory gate is closed, else 0.
pub const MEMORY_GATE_CLOSED: &str = "sluice_memory_gate_closed";
/// Counter: memory gate transitions, by `direction` (`close` or `open`).
pub const MEMORY_GATE_TRANSITIONS_TOTAL: &str = "sluice_memory_gate_transitions_total";
/// Gauge (bytes): memory in use as the memory monitor last read it, labelled
/// `measured` (`process`, `cgroup` or `host`: which reading it is; the
/// others read 0).
pub const MEMORY_USED_BYTES: &str = "sluice_memory_used_bytes";
/// Gauge (bytes): the memory limit the monitor compares against, labelled
/// like [`MEMORY_USED_BYTES`].
pub const MEMORY_LIMIT_BYTES: &str = "sluice_memory_limit_bytes";
/// Gauge: records counted at a level (reservations included).
pub const BUFFER_RECORDS: &str = "sluice_buffer_records";
/// Gauge (bytes): bytes counted at a level (reservations included).
pub const BUFFER_BYTES: &str = "sluice_buffer_bytes";
/// Gauge: of [`BUFFER_RECORDS`], credits reserved and not yet used.
pub const BUFFER_RESERVED_RECORDS: &str = "sluice_buffer_reserved_records";
/// Gauge (bytes): of [`BUFFER_BYTES`], credits reserved and not yet used.
pub const BUFFER_RESERVED_BYTES: &str = "sluice_buffer_reserved_bytes";
/// Gauge: a level's record limit.
pub const BUFFER_LIMIT_RECORDS: &str = "sluice_buffer_limit_records";
/// Gauge (bytes): a level's byte limit.
pub const BUFFER_LIMIT_BYTES: &str = "sluice_buffer_limit_bytes";
/// Gauge (0–1): a level's utilization, the larger of records/limit and bytes/limit.
pub const BUFFER_UTILIZATION: &str = "sluice_buffer_utilization";

/// Describes every metric of this crate to the installed recorder (units and
/// help texts). Call it once after installing a recorder; it is optional.
pub fn describe() {
    describe_counter!(
        BACKPRESSURE_EPISODES_TOTAL,
        "Backpressure episodes (a source leaving NORMAL) by source and cause"
    );
    describe_histogram!(
        BACKPRESSURE_EPISODE_SECONDS,
        Unit::Seconds,
        "Duration of backpressure episodes; complete=\"false\" for episodes cut short by shutdown"
    );
    describe_gauge!(
        BACKPRESSURE_STATE,
        "Flow-control state per source: 0 normal, 1 slowed down, 2 paused"
    );
    describe_counter!(CREDITS_GRANTED_TOTAL, "Record credits granted per source");
    describe_counter!(
        CREDIT_BYTES_GRANTED_TOTAL,
        Unit::Bytes,
        "Byte credits granted per source"
    );
    describe_gauge!(
        MEMORY_GATE_CLOSED,
        "1 while the memory gate is closed, else 0"
    );
    describe_counter!(
        MEMORY_GATE_TRANSITIONS_TOTAL,
        "Memory gate transitions by direction (close, open)"
    );
    describe_gauge!(
        MEMORY_USED_BYTES,
        Unit::Bytes,
        "Memory in use as last sampled"
    );
    describe_gauge!(
        MEMORY_LIMIT_BYTES,
        Unit::Bytes,
        "Memory limit the gate compares against"
    );
    describe_gauge!(
        BUFFER_RECORDS,
        "Records counted at a buffer level, reservations included"
    );
    describe_gauge!(
        BUFFER_BYTES,
        Unit::Bytes,
        "Bytes counted at a buffer level, reservations included"
    );
    describe_gauge!(
        BUFFER_RESERVED_RECORDS,
        "Reserved, unused record credits at a buffer level"
    );
    describe_gauge!(
        BUFFER_RESERVED_BYTES,
        Unit::Bytes,
        "Reserved, unused byte credits at a buffer level"
    );
    describe_gauge!(BUFFER_LIMIT_RECORDS, "Record limit of a buffer level");
    describe_gauge!(
        BUFFER_LIMIT_BYTES,
        Unit::Bytes,
        "Byte limit of a buffer level"
    );
    describe_gauge!(BUFFER_UTILIZATION, "Utilization (0-1) of a buffer level");
}

/// Sets the per-level buffer gauges from a snapshot. `pipelines` (from
/// [`BufferManager::pipelines`]) supplies the pipeline names, since stage
/// names are unique only within their pipeline.
///
/// Meant to be called periodically (say every second) by the program; each
/// call sets every gauge, so a scrape sees one consistent reading.
pub fn publish_snapshot(snapshot: &Snapshot, pipelines: &[PipelineInfo]) {
    let pipeline_name = |id: crate::PipelineId| -> Arc<str> {
        pipelines
            .get(id.index())
            .map_or_else(|| Arc::from(id.to_string()), |p| p.name.clone())
    };
    publish_level(
        "global",
        Arc::from("global"),
        Arc::from(""),
        &snapshot.global,
    );
    let stages = (snapshot.stages.iter()).map(|s| ("stage", &s.name, s.pipeline, &s.level));
    let sources = (snapshot.sources.iter()).map(|s| ("source", &s.name, s.pipeline, &s.level));
    for (kind, name, pipeline, level) in stages.chain(sources) {
        publish_level(kind, name.clone(), pipeline_name(pipeline), level);
    }
}

/// Takes a snapshot of `manager` and [`publish_snapshot`]s it.
pub fn publish_buffer<T>(manager: &BufferManager<T>) {
    publish_snapshot(&manager.snapshot(), manager.pipelines());
}

fn publish_level(level: &'static str, name: Arc<str>, pipeline: Arc<str>, l: &LevelSnapshot) {
    let labels = [
        ("level", Arc::from(level)),
        ("name", name),
        ("pipeline", pipeline),
    ];
    gauge!(BUFFER_RECORDS, &labels).set(l.records as f64);
    gauge!(BUFFER_BYTES, &labels).set(l.bytes as f64);
    gauge!(BUFFER_RESERVED_RECORDS, &labels).set(l.reserved_records as f64);
    gauge!(BUFFER_RESERVED_BYTES, &labels).set(l.reserved_bytes as f64);
    gauge!(BUFFER_LIMIT_RECORDS, &labels).set(l.limit.records as f64);
    gauge!(BUFFER_LIMIT_BYTES, &labels).set(l.limit.bytes as f64);
    gauge!(BUFFER_UTILIZATION, &labels).set(l.utilization());
}

/// Labels that identify one episode: source, reason and stage.
#[derive(Debug, Clone)]
pub(crate) struct EpisodeLabels {
    pub(crate) source: Arc<str>,
    pub(crate) reason: &'static str,
    pub(crate) stage: Arc<str>,
}

pub(crate) fn episode_started(l: &EpisodeLabels) {
    counter!(
        BACKPRESSURE_EPISODES_TOTAL,
        "source" => l.source.clone(),
        "reason" => l.reason,
        "stage" => l.stage.clone()
    )
    .increment(1);
}

pub(crate) fn episode_ended(l: &EpisodeLabels, duration: Duration, complete: bool) {
    histogram!(
        BACKPRESSURE_EPISODE_SECONDS,
        "source" => l.source.clone(),
        "reason" => l.reason,
        "stage" => l.stage.clone(),
        "complete" => if complete { "true" } else { "false" }
    )
    .record(duration.as_secs_f64());
}

pub(crate) fn source_state(source: &Arc<str>, state: f64) {
    gauge!(BACKPRESSURE_STATE, "source" => source.clone()).set(state);
}

pub(crate) fn credits_granted(source: &Arc<str>, credit: Credit) {
    counter!(CREDITS_GRANTED_TOTAL, "source" => source.clone()).increment(credit.records);
    counter!(CREDIT_BYTES_GRANTED_TOTAL, "source" => source.clone()).increment(credit.bytes);
}

pub(crate) fn memory_gate(closed: bool, measured: Measured, used_bytes: u64, limit_bytes: u64) {
    gauge!(MEMORY_GATE_CLOSED).set(if closed { 1.0 } else { 0.0 });
    // One series at a time: the label says which reading the gate last saw.
    for m in [Measured::Process, Measured::Cgroup, Measured::Host] {
        let (used, limit) = if m == measured {
            (used_bytes as f64, limit_bytes as f64)
        } else {
            (0.0, 0.0)
        };
        gauge!(MEMORY_USED_BYTES, "measured" => m.as_str()).set(used);
        gauge!(MEMORY_LIMIT_BYTES, "measured" => m.as_str()).set(limit);
    }
}

pub(crate) fn memory_gate_transition(closed: bool) {
    counter!(
        MEMORY_GATE_TRANSITIONS_TOTAL,
        "direction" => if closed { "close" } else { "open" }
    )
    .increment(1);
}
