//! Metrics through the `metrics` facade, captured by a local debugging
//! recorder (so tests do not fight over the global one): episodes and their
//! durations (complete and cut short by shutdown), credits granted, the
//! memory gate's gauge and transitions, and the per-level buffer gauges.

use std::sync::Arc;
use std::time::Duration;

use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use sluice_buffer::metrics as names;
use sluice_buffer::{
    BackpressureController, BufferManager, ControllerConfig, Credit, Limit, Limits, ManualProbe,
    MemoryGateConfig, MemoryMonitor, SignalKind, SignalReason,
};

type Row = (
    CompositeKey,
    Option<Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

/// `n` payloads of 10 bytes.
fn payloads(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|_| vec![0u8; 10]).collect()
}

fn find<'a>(
    rows: &'a [Row],
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    rows.iter()
        .find(|(k, ..)| {
            let key = k.key();
            let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let mut want = labels.to_vec();
            have.sort_unstable();
            want.sort_unstable();
            k.kind() == kind && key.name() == name && have == want
        })
        .map(|(.., v)| v)
}

fn counter(rows: &[Row], name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(rows, MetricKind::Counter, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("counter {name} {labels:?}: {other:?}"),
    }
}

fn gauge(rows: &[Row], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(rows, MetricKind::Gauge, name, labels) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("gauge {name} {labels:?}: {other:?}"),
    }
}

fn histogram(rows: &[Row], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match find(rows, MetricKind::Histogram, name, labels) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("histogram {name} {labels:?}: {other:?}"),
    }
}

#[test]
fn flow_control_and_gate_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(scenario());
    });
    let rows = snapshotter.snapshot().into_vec();
    let episode = |source, reason, complete| {
        histogram(
            &rows,
            names::BACKPRESSURE_EPISODE_SECONDS,
            &[
                ("source", source),
                ("reason", reason),
                ("stage", ""),
                ("complete", complete),
            ],
        )
    };

    // alpha: a SLOW_DOWN episode (global) of 2 s, a PAUSE episode (memory)
    // of 3 s, then one (global) cut short by shutdown after 1 s.
    let started = |source, reason| {
        counter(
            &rows,
            names::BACKPRESSURE_EPISODES_TOTAL,
            &[("source", source), ("reason", reason), ("stage", "")],
        )
    };
    assert_eq!(started("alpha", "global"), 2);
    assert_eq!(started("alpha", "memory"), 1);
    assert_eq!(started("beta", "global"), 1);
    assert_eq!(episode("alpha", "global", "true"), vec![2.0]);
    assert_eq!(episode("alpha", "memory", "true"), vec![3.0]);
    assert_eq!(
        episode("alpha", "global", "false"),
        vec![1.0],
        "open at shutdown: recorded, not lost"
    );
    assert_eq!(episode("beta", "global", "false"), vec![1.0]);
    assert_eq!(
        gauge(&rows, names::BACKPRESSURE_STATE, &[("source", "alpha")]),
        2.0,
        "paused at shutdown"
    );

    // Credits: alpha was granted its window (10) twice, beta once.
    let granted = |name, source| counter(&rows, name, &[("source", source)]);
    assert_eq!(granted(names::CREDITS_GRANTED_TOTAL, "alpha"), 20);
    assert_eq!(granted(names::CREDIT_BYTES_GRANTED_TOTAL, "alpha"), 200);
    assert_eq!(granted(names::CREDITS_GRANTED_TOTAL, "beta"), 10);

    // The memory gate closed once and opened once, and is open now.
    let flips = |direction| {
        counter(
            &rows,
            names::MEMORY_GATE_TRANSITIONS_TOTAL,
            &[("direction", direction)],
        )
    };
    assert_eq!(flips("close"), 1);
    assert_eq!(flips("open"), 1);
    assert_eq!(gauge(&rows, names::MEMORY_GATE_CLOSED, &[]), 0.0);
    // The reading names what it measured (a ManualProbe: the process); the
    // other readings' series read 0.
    let process = [("measured", "process")];
    assert_eq!(gauge(&rows, names::MEMORY_LIMIT_BYTES, &process), 1000.0);
    assert_eq!(gauge(&rows, names::MEMORY_USED_BYTES, &process), 100.0);
    let host = [("measured", "host")];
    assert_eq!(gauge(&rows, names::MEMORY_USED_BYTES, &host), 0.0);

    // Buffer gauges per level, from publish_buffer: alpha has 20 records in
    // the engine, beta 10, the filler 70 (in its own pipeline); no credit is unused.
    let global = [("level", "global"), ("name", "global"), ("pipeline", "")];
    assert_eq!(gauge(&rows, names::BUFFER_RECORDS, &global), 100.0);
    assert_eq!(gauge(&rows, names::BUFFER_RESERVED_RECORDS, &global), 0.0);
    assert_eq!(gauge(&rows, names::BUFFER_LIMIT_RECORDS, &global), 100.0);
    assert_eq!(
        gauge(&rows, names::BUFFER_LIMIT_BYTES, &global),
        1_000_000.0
    );
    assert_eq!(gauge(&rows, names::BUFFER_UTILIZATION, &global), 1.0);
    let stage = [("level", "stage"), ("name", "in"), ("pipeline", "p")];
    assert_eq!(gauge(&rows, names::BUFFER_RECORDS, &stage), 30.0);
    assert_eq!(gauge(&rows, names::BUFFER_LIMIT_RECORDS, &stage), 100.0);
    let alpha = [("level", "source"), ("name", "alpha"), ("pipeline", "p")];
    assert_eq!(gauge(&rows, names::BUFFER_RECORDS, &alpha), 20.0);
    assert_eq!(gauge(&rows, names::BUFFER_BYTES, &alpha), 200.0);
    assert_eq!(gauge(&rows, names::BUFFER_RESERVED_RECORDS, &alpha), 0.0);
    assert!((gauge(&rows, names::BUFFER_UTILIZATION, &alpha) - 0.2).abs() < 1e-9);

    // describe() registers units.
    let unit = rows
        .iter()
        .find(|(k, ..)| k.key().name() == names::BACKPRESSURE_EPISODE_SECONDS)
        .and_then(|(_, u, ..)| *u);
    assert_eq!(unit, Some(Unit::Seconds));
}

async fn scenario() {
    names::describe();
    let limits = Limits {
        global: Limit::new(100, 1_000_000),
        per_stage: Limit::new(100, 1_000_000),
        per_source: Limit::new(100, 1_000_000),
    };
    let m = Arc::new(
        BufferManager::<Vec<u8>>::builder(limits)
            .pipeline("p", ["in"])
            .pipeline("q", ["load"])
            .build()
            .unwrap(),
    );
    let p = m.pipelines()[0].id;
    let alpha = m.register_source("alpha", p).unwrap();
    let beta = m.register_source("beta", p).unwrap();
    // The filler loads the global level from its own pipeline, so that
    // its records can be completed without touching alpha's.
    let q = m.pipelines()[1].clone();
    let filler = m.register_source("filler", q.id).unwrap();
    let probe = ManualProbe::new(100, 1000);
    let monitor = MemoryMonitor::spawn(
        MemoryGateConfig {
            refresh_ms: 100,
            ..MemoryGateConfig::default()
        },
        probe.clone(),
    )
    .unwrap();
    let flow = BackpressureController::new(
        m.clone(),
        ControllerConfig::default().with_window_records(10, 10),
        Some(monitor.subscribe()),
    )
    .unwrap();
    let a = flow.open_source(alpha).unwrap();
    assert_eq!(a.grant(), Credit::new(10, 100));
    let _ = a.admit(1, payloads(10)).unwrap();

    // Episode 1: SLOW_DOWN for global, 2 s.
    let _ = m.admit(filler, 1, payloads(75)).unwrap(); // 85 % load
    assert_eq!(flow.evaluate()[0].1.kind, SignalKind::SlowDown);
    tokio::time::advance(Duration::from_secs(2)).await;
    let load = m.try_batch(q.stages[0], 75);
    m.complete(load);
    assert_eq!(flow.evaluate()[0].1.kind, SignalKind::Resume);

    // Episode 2: the memory gate, 3 s.
    probe.set_used(900);
    tokio::time::sleep(Duration::from_millis(150)).await; // past the monitor's next sample
    let s = flow.evaluate();
    assert_eq!(
        (s[0].1.kind, s[0].1.reason),
        (SignalKind::Pause, SignalReason::Memory)
    );
    probe.set_used(100);
    tokio::time::advance(Duration::from_secs(3)).await; // the monitor samples on the way
    tokio::task::yield_now().await;
    assert!(!monitor.is_closed());
    let s = flow.evaluate();
    assert_eq!(s[0].1.kind, SignalKind::Resume);

    assert_eq!(
        a.grant(),
        Credit::new(10, 100),
        "refill: a used its whole window"
    );
    let b = flow.open_source(beta).unwrap();
    assert_eq!(b.grant(), Credit::new(10, 100));

    // Episode 3: full, cut short by shutdown after 1 s.
    // Alpha and beta use their credit, the filler takes the rest:
    // 10 + 10 + 10 + 70 = 100 records in the engine, full.
    let _ = a.admit(11, payloads(10)).unwrap();
    let _ = b.admit(1, payloads(10)).unwrap();
    let _ = m.admit(filler, 76, payloads(70)).unwrap();
    let s = flow.evaluate();
    assert_eq!(s.len(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    sluice_buffer::metrics::publish_buffer(&m);
    flow.shutdown();
}
