//! The memory gate: the MemoryMonitor's hysteresis through its watch
//! channel, fail-closed readings, the controller pausing every source with
//! reason MEMORY and resuming them, and wake-ups that are never lost.

use std::sync::Arc;
use std::time::Duration;

use sluice_buffer::{
    BackpressureController, BackpressureSignal, BufferManager, ControllerConfig, Credit, Limits,
    ManualProbe, MemoryGateConfig, MemoryMonitor, SignalKind, SignalReason, SignalReceiver,
    SourceId, SourceState, SourceStatus,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: u64 = 1000;

fn gate_config(refresh_ms: u64) -> MemoryGateConfig {
    MemoryGateConfig {
        enabled: true,
        activate_percent: 85.0,
        resume_percent: 75.0,
        refresh_ms,
        limit_bytes: None,
        include_host: false,
    }
}

fn manager(sources: usize) -> (Arc<BufferManager<Vec<u8>>>, Vec<SourceId>) {
    let m = Arc::new(
        BufferManager::<Vec<u8>>::builder(Limits::default())
            .pipeline("p", ["sink"])
            .build()
            .unwrap(),
    );
    let p = m.pipelines()[0].id;
    let ids = (0..sources)
        .map(|i| m.register_source(&format!("s{i}"), p).unwrap())
        .collect();
    (m, ids)
}

/// Sets the probe and lets the monitor take at least one more sample.
async fn sample(probe: &ManualProbe, used: u64, refresh_ms: u64) {
    probe.set_used(used);
    tokio::time::sleep(Duration::from_millis(refresh_ms + 1)).await;
}

#[tokio::test(start_paused = true)]
async fn gate_closes_and_opens_at_the_thresholds_with_hysteresis() {
    let probe = ManualProbe::new(100, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(100), probe.clone()).unwrap();
    let mut rx = monitor.subscribe();
    assert!(!monitor.is_closed());
    // (used, expected closed, whether subscribers are woken)
    let steps = [
        (800, false, false),
        (849, false, false),
        (850, true, true), // activate
        (999, true, false),
        (800, true, false), // between the thresholds: stays closed
        (751, true, false),
        (750, false, true),  // resume
        (800, false, false), // between the thresholds: stays open
        (849, false, false),
        (1200, true, true),
        (10, false, true),
    ];
    for (used, closed, woken) in steps {
        sample(&probe, used, 100).await;
        assert_eq!(monitor.is_closed(), closed, "at {used}");
        assert_eq!(rx.has_changed().unwrap(), woken, "wake-up at {used}");
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.used_bytes, used, "the reading is refreshed in place");
        assert_eq!(state.limit_bytes, LIMIT);
        assert!((state.percent - used as f64 / 10.0).abs() < 1e-9);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_reading_counts_as_full() {
    let probe = ManualProbe::new(100, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(100), probe.clone()).unwrap();
    probe.fail("cannot read /proc");
    tokio::time::sleep(Duration::from_millis(101)).await;
    let state = monitor.state();
    assert!(state.closed);
    assert_eq!(state.percent, 100.0);
    assert!(
        state
            .error
            .as_deref()
            .unwrap()
            .contains("cannot read /proc")
    );
    // Recovery is like any closed gate: at or below the resume threshold.
    sample(&probe, 800, 100).await;
    assert!(monitor.is_closed());
    assert_eq!(monitor.state().error, None);
    sample(&probe, 700, 100).await;
    assert!(!monitor.is_closed());
}

#[tokio::test(start_paused = true)]
async fn the_first_reading_is_taken_before_spawn_returns() {
    let probe = ManualProbe::new(900, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(100), probe).unwrap();
    assert!(
        monitor.is_closed(),
        "closed from the start, not after the first tick"
    );
    let disabled = MemoryMonitor::spawn(
        MemoryGateConfig {
            enabled: false,
            ..gate_config(100)
        },
        ManualProbe::new(900, LIMIT),
    )
    .unwrap();
    assert!(!disabled.is_closed(), "a disabled gate is always open");
}

/// The next status `rx` publishes (within 1 s) is `state`, with a signal of
/// `kind` for the memory gate; that signal.
async fn next_memory_signal(
    rx: &mut SignalReceiver,
    state: SourceState,
    kind: SignalKind,
) -> BackpressureSignal {
    let st = timeout(Duration::from_secs(1), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.state, state);
    let sig = st.signal.unwrap();
    assert_eq!((sig.kind, sig.reason), (kind, SignalReason::Memory));
    sig
}

#[tokio::test(start_paused = true)]
async fn closed_gate_pauses_every_source_and_reopening_resumes_them() {
    let (m, ids) = manager(3);
    let probe = ManualProbe::new(100, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(100), probe.clone()).unwrap();
    let flow = BackpressureController::new(
        m.clone(),
        ControllerConfig::default().with_window_records(100, 10),
        Some(monitor.subscribe()),
    )
    .unwrap();
    let _task = flow.spawn();
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| flow.open_source(id).unwrap())
        .collect();
    let mut rxs: Vec<_> = handles.iter().map(|h| h.subscribe()).collect();
    for (i, h) in handles.iter().enumerate() {
        // A stream that only opened gets its guaranteed share; once it
        // sends, the rest of its window.
        let first = h.grant().records;
        let _ = h.admit(1, vec![vec![0u8; 10]; first as usize]).unwrap();
        assert_eq!(first + h.grant().records, 100 + first);
        // Use 60 of the 100 credits, so each wants more.
        let batch = (0..60).map(|_| vec![0u8; 10]).collect::<Vec<_>>();
        let _ = h.admit(first + 1, batch).unwrap();
        assert!(h.outstanding().records <= 50, "source {i} wants a refill");
    }

    sample(&probe, 900, 100).await;
    for rx in &mut rxs {
        let sig = next_memory_signal(rx, SourceState::Paused, SignalKind::Pause).await;
        assert!(
            (sig.utilization - 0.9).abs() < 1e-9,
            "the memory fraction in use"
        );
    }
    for h in &handles {
        assert_eq!(
            h.grant(),
            Credit::ZERO,
            "no credit while the gate is closed"
        );
        let waited = timeout(Duration::from_millis(500), h.wait_credit()).await;
        assert!(
            waited.is_err(),
            "wait_credit waits while the gate is closed"
        );
    }

    // Between the thresholds the gate stays closed and the sources paused.
    sample(&probe, 800, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (h, rx) in handles.iter().zip(&rxs) {
        assert!(!rx.has_changed());
        assert_eq!(h.grant(), Credit::ZERO);
    }

    sample(&probe, 700, 100).await;
    for rx in &mut rxs {
        next_memory_signal(rx, SourceState::Normal, SignalKind::Resume).await;
    }
    for h in &handles {
        assert!(h.grant().records > 0, "credits again once the gate is open");
    }
    flow.audit().unwrap();
}

const ITERATIONS: usize = 500;

/// A task parked on the gate's watch channel is woken on every flip.
#[tokio::test(start_paused = true)]
async fn a_parked_gate_subscriber_is_woken_on_every_flip() {
    let probe = ManualProbe::new(100, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(10), probe.clone()).unwrap();
    let mut rx = monitor.subscribe();
    let (tx, mut seen) = mpsc::channel(1);
    let waiter = tokio::spawn(async move {
        for _ in 0..2 * ITERATIONS {
            timeout(Duration::from_secs(5), rx.changed())
                .await
                .expect("lost wake-up: the gate flipped but the subscriber was not woken")
                .expect("monitor alive");
            let closed = rx.borrow_and_update().closed;
            tx.send(closed).await.unwrap();
        }
    });
    for i in 0..ITERATIONS {
        probe.set_used(900);
        assert_eq!(
            timeout(Duration::from_secs(5), seen.recv()).await.unwrap(),
            Some(true),
            "iteration {i}"
        );
        probe.set_used(100);
        assert_eq!(
            timeout(Duration::from_secs(5), seen.recv()).await.unwrap(),
            Some(false),
            "iteration {i}"
        );
    }
    waiter.await.unwrap();
}

/// Drives `ITERATIONS` gate flips and checks that a consumer parked on a
/// source's signal subscription sees PAUSE(MEMORY), then RESUME, each time.
async fn flips_wake_the_signal_subscriber(refresh_ms: u64, deadline: Duration) {
    let (m, ids) = manager(1);
    let probe = ManualProbe::new(100, LIMIT);
    let monitor = MemoryMonitor::spawn(gate_config(refresh_ms), probe.clone()).unwrap();
    // A background tick far in the future: only the gate's own wake-up can
    // drive the evaluation, so a lost one would show.
    let config = ControllerConfig {
        tick: Duration::from_secs(3600),
        ..ControllerConfig::default()
    };
    let flow = BackpressureController::new(m, config, Some(monitor.subscribe())).unwrap();
    let task = flow.spawn();
    let handle = flow.open_source(ids[0]).unwrap();
    let mut rx = handle.subscribe();
    let (tx, mut seen) = mpsc::channel::<SourceStatus>(1);
    let consumer = tokio::spawn(async move {
        for _ in 0..2 * ITERATIONS {
            let st = timeout(deadline, rx.changed())
                .await
                .expect("lost wake-up: the gate flipped but the signal consumer was not woken")
                .expect("controller alive");
            tx.send(st).await.unwrap();
        }
    });
    let mut last_seq = 0;
    for i in 0..ITERATIONS {
        probe.set_used(900);
        let st = timeout(deadline, seen.recv()).await.unwrap().unwrap();
        let sig = st.signal.clone().unwrap();
        assert_eq!(
            (st.state, sig.kind, sig.reason),
            (SourceState::Paused, SignalKind::Pause, SignalReason::Memory),
            "iteration {i}"
        );
        assert_eq!(st.seq, last_seq + 1, "no transition skipped");
        probe.set_used(100);
        let st = timeout(deadline, seen.recv()).await.unwrap().unwrap();
        assert_eq!(
            (st.state, st.signal.unwrap().kind),
            (SourceState::Normal, SignalKind::Resume),
            "iteration {i}"
        );
        last_seq = st.seq;
    }
    consumer.await.unwrap();
    flow.shutdown();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parked_signal_consumer_is_woken_on_every_gate_flip() {
    flips_wake_the_signal_subscriber(10, Duration::from_secs(5)).await;
}

/// The same on a real multi-thread runtime, where the monitor, the
/// controller and the consumer run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_signal_consumer_is_woken_on_every_gate_flip_multi_thread() {
    flips_wake_the_signal_subscriber(1, Duration::from_secs(2)).await;
}
