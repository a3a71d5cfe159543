//! The publishing task: once per [`PUBLISH_INTERVAL`] it samples the stage
//! clocks and publishes the engine's gauges and counters (derived from the
//! same view `Admin.Stats` answers, so the two agree).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, gauge};

use super::state::EngineState;
use crate::observe::*;

/// Spawns the engine's publishing task: every [`PUBLISH_INTERVAL`] it
/// samples stage times and publishes gauges and counters. It ends when the
/// engine's streams are stopped or the engine is dropped.
pub(crate) fn spawn(state: &Arc<EngineState>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    let stop = state.ingest.stop.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PUBLISH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => {}
            }
            let Some(state) = weak.upgrade() else { break };
            tick(&state);
        }
    })
}

/// One sampling and publishing round.
fn tick(state: &EngineState) {
    let runtime = &state.runtime;
    runtime.clocks.sample();
    sluice_buffer::metrics::publish_buffer(&runtime.buffer);
    let stats = state.stats();
    let snap = runtime.buffer.snapshot();
    gauge!(RECORD_MEMORY_BYTES).set(runtime.record_memory.held_bytes() as f64);
    gauge!(UNCOVERED_MESSAGE_BYTES).set(state.ingest.message_pool.in_use() as f64);
    counter!(RECORDS_COMPACTED_TOTAL).absolute(runtime.record_memory.compacted_records());
    let secs = |ns: &AtomicU64| ns.load(Ordering::Relaxed) / 1_000_000_000;
    for s in &snap.stages {
        let pipeline = runtime
            .buffer
            .pipeline(s.pipeline)
            .map(|p| p.name.to_string())
            .unwrap_or_default();
        let labels = [("pipeline", pipeline), ("stage", s.name.to_string())];
        gauge!(STAGE_QUEUED_RECORDS, &labels).set(s.queued_records as f64);
        gauge!(STAGE_IN_FLIGHT_RECORDS, &labels).set(s.in_flight_records as f64);
        if let Some(t) = runtime.clocks.times(s.id) {
            // Whole seconds: `metrics` counters are integers.
            counter!(STAGE_BUSY_SECONDS, &labels).absolute(secs(&t.busy_ns));
            counter!(STAGE_IDLE_SECONDS, &labels).absolute(secs(&t.idle_ns));
            counter!(STAGE_BACKPRESSURED_SECONDS, &labels).absolute(secs(&t.blocked_ns));
        }
    }
    let retried: HashMap<Arc<str>, u64> = snap
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.retried))
        .collect();
    for p in &stats.pipelines {
        for (sink, h) in [
            ("sink", &p.sink_health),
            ("dead_letter", &p.dead_letter_health),
        ] {
            let Some(h) = h else { continue };
            let labels = [("pipeline", p.name.clone()), ("sink", sink.to_owned())];
            gauge!(SINK_STALLED, &labels).set(if h.stalled { 1.0 } else { 0.0 });
            counter!(SINK_FAILURES_TOTAL, &labels).absolute(h.failures);
            counter!(SINK_RECORDS_REFUSED_TOTAL, &labels).absolute(h.records_refused);
            counter!(SINK_STALLS_TOTAL, &labels).absolute(h.stalls);
        }
    }
    for s in &stats.sources {
        let labels = [
            ("source", s.source_id.clone()),
            ("pipeline", s.pipeline.clone()),
        ];
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
