//! The BackpressureController: credit rules (window, refill at half, fair
//! share, SLOW_DOWN shrink, nothing while PAUSED), the hysteresis seen
//! through subscriptions (anti-flapping), fairness under a slow consumer,
//! and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_buffer::{
    BackpressureController, BackpressureSignal, BufferManager, ControllerConfig, ControllerError,
    Credit, CreditMode, Limit, Limits, SignalKind, SignalReason, SignalReceiver, SourceHandle,
    SourceId, SourceState, StageId, Watermarks,
};

type Manager = BufferManager<Vec<u8>>;

/// A manager with one pipeline `p` of stages `a`, `b`, and sources `s0`…`sN-1`
/// plus a `filler` source that tests use to move the global level directly.
fn setup(limits: Limits, sources: usize) -> (Arc<Manager>, Vec<SourceId>, SourceId, Vec<StageId>) {
    let m = Arc::new(
        Manager::builder(limits)
            .pipeline("p", ["a", "b"])
            .build()
            .unwrap(),
    );
    let p = m.pipeline_by_name("p").unwrap().clone();
    let ids = (0..sources)
        .map(|i| m.register_source(&format!("s{i}"), p.id).unwrap())
        .collect();
    let filler = m.register_source("filler", p.id).unwrap();
    (m, ids, filler, p.stages)
}

fn limits(global: u64, per_stage: u64, per_source: u64) -> Limits {
    Limits {
        global: Limit::new(global, 1 << 30),
        per_stage: Limit::new(per_stage, 1 << 30),
        per_source: Limit::new(per_source, 1 << 30),
    }
}

/// A config with a window of `window_records` records of 10 bytes, whose
/// guaranteed share is the whole window: every session is topped up to its
/// window whether it claims floating credit or not, which isolates the
/// window, refill and fair-share rules (the claims and leases are tested in
/// `credit_leases.rs` and below).
fn config(window_records: u64, high: f64, low: f64) -> ControllerConfig {
    let c = ControllerConfig {
        watermarks: Watermarks { high, low },
        ..ControllerConfig::default()
    }
    .with_window_records(window_records, 10);
    ControllerConfig {
        guaranteed: c.window,
        ..c
    }
}

/// For the fair-share tests: watermarks out of the way (high 1.0, so paced
/// credit may use the whole limits), a guaranteed share of one record, and
/// sessions that claim floating credit by announcing a backlog.
fn shares_config(window_records: u64) -> ControllerConfig {
    ControllerConfig {
        watermarks: Watermarks {
            high: 1.0,
            low: 0.9,
        },
        guaranteed: Credit::new(1, 10),
        ..ControllerConfig::default()
    }
    .with_window_records(window_records, 10)
}

/// A leased session of `id` that announces a large backlog (it claims).
fn claiming(flow: &Arc<BackpressureController<Vec<u8>>>, id: SourceId) -> SourceHandle<Vec<u8>> {
    let h = flow.open_source_with(id, CreditMode::Leased).unwrap();
    h.announce_backlog(Credit::new(1_000_000, 1 << 30));
    h
}

fn payloads(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|_| vec![0u8; 10]).collect()
}

/// The next status `rx` publishes is `state`, with a signal of `kind` for
/// `reason`; that signal.
async fn next_signal(
    rx: &mut SignalReceiver,
    state: SourceState,
    (kind, reason): (SignalKind, SignalReason),
) -> BackpressureSignal {
    let st = rx.changed().await.unwrap();
    assert_eq!(st.state, state);
    let sig = st.signal.unwrap();
    assert_eq!((sig.kind, sig.reason), (kind, reason));
    sig
}

/// Sets the filler's records *in the engine* (load, which is what signals
/// measure) to exactly `records`: admits more, or completes the oldest of
/// stage `a`, which must be the filler's.
fn fill(m: &Manager, filler: SourceId, records: u64) {
    let held = m.snapshot().sources[filler.index()].in_engine();
    if held < records {
        let next = m.admitted_through(filler).unwrap() + 1;
        let out = m.admit(filler, next, payloads(records - held)).unwrap();
        assert!(out.rejected.is_none(), "the filler must fit");
    } else if held > records {
        let stage = m.pipeline_by_name("p").unwrap().stages[0];
        // A take stops at a queued batch it would have to split: loop.
        let mut left = held - records;
        while left > 0 {
            let batch = m.try_batch(stage, left as usize);
            assert!(!batch.is_empty(), "records are queued");
            assert!(
                batch.iter().all(|r| r.source() == filler),
                "only the filler's records are taken"
            );
            assert!(batch.len() as u64 <= left);
            left -= batch.len() as u64;
            m.complete(batch);
        }
    }
}

#[test]
fn window_and_refill_at_half() {
    let (m, ids, _, _) = setup(limits(1000, 1000, 1000), 1);
    let flow = BackpressureController::new(m.clone(), config(100, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    assert_eq!(h.grant(), Credit::new(100, 1000), "a full window first");
    assert_eq!(
        m.reserved(ids[0]).unwrap(),
        Credit::new(100, 1000),
        "reserved at once"
    );
    assert_eq!(h.grant(), Credit::ZERO, "nothing used yet");

    let a = h.admit(1, payloads(49)).unwrap();
    assert_eq!(a.admitted, 49);
    assert_eq!(h.outstanding(), Credit::new(51, 510));
    assert_eq!(h.grant(), Credit::ZERO, "less than half used");
    let _ = h.admit(50, payloads(1)).unwrap();
    assert_eq!(
        h.grant(),
        Credit::new(50, 500),
        "half used: topped up to a full window"
    );
    assert_eq!(h.outstanding(), Credit::new(100, 1000));
    assert_eq!(
        m.reserved(ids[0]).unwrap(),
        h.outstanding(),
        "the session's view matches the manager"
    );

    // Close gives the unused credit back.
    assert_eq!(h.close(), Credit::new(100, 1000));
    assert_eq!(m.reserved(ids[0]).unwrap(), Credit::ZERO);
    m.audit().unwrap();
    flow.audit().unwrap();
}

#[test]
fn window_is_capped_by_the_per_source_limit() {
    let (m, ids, _, _) = setup(limits(1000, 1000, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(1000, 0.8, 0.5), None).unwrap();
    assert_eq!(
        flow.window(SourceState::Normal).records,
        50,
        "low watermark × per-source limit"
    );
    assert_eq!(
        flow.window(SourceState::SlowedDown).records,
        12,
        "a quarter in SLOW_DOWN"
    );
    assert_eq!(flow.window(SourceState::Paused), Credit::ZERO);
    let h = flow.open_source(ids[0]).unwrap();
    assert_eq!(h.grant().records, 50);
    // Reserving a full window never pushes the source out of NORMAL by itself.
    flow.evaluate();
    assert_eq!(h.status().state, SourceState::Normal);
}

#[test]
fn dropped_handle_releases_its_credit_and_engine_admits_are_derived() {
    let (m, ids, _, _) = setup(limits(1000, 1000, 1000), 1);
    let flow = BackpressureController::new(m.clone(), config(100, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    assert_eq!(h.grant().records, 100);
    // An engine that admits through the manager and never reports usage
    // still gets refills: the unused credit is derived from the reservation.
    let _ = m.admit(ids[0], 1, payloads(60)).unwrap();
    assert_eq!(h.grant(), Credit::new(60, 600));
    drop(h);
    assert_eq!(
        m.reserved(ids[0]).unwrap(),
        Credit::ZERO,
        "drop released the credit"
    );
    m.audit().unwrap();
}

#[test]
fn fair_share_is_max_min_over_usage() {
    let (m, ids, filler, _) = setup(limits(100, 100, 100), 3);
    // Watermarks out of the way: this test is about shares only.
    let flow = BackpressureController::new(m.clone(), shares_config(40), None).unwrap();
    let a = claiming(&flow, ids[0]);
    assert_eq!(a.grant().records, 40, "alone: a full window");
    let _ = a.admit(1, payloads(20)).unwrap(); // a uses 40: 20 unused credit + 20 in the engine
    let b = claiming(&flow, ids[1]);
    let c = claiming(&flow, ids[2]);
    fill(&m, filler, 0);
    assert_eq!(m.global_available().records, 60);
    // Claimants a (uses 40, wants 20 more), b and c (use 0, want 40): the
    // pool is 60 free + 40 used = 100; a keeps its 40 (what is in use is not
    // taken back) and b and c share the other 60: the level is 30.
    assert_eq!(b.grant().records, 30);
    // b (30 of 40) no longer wants. Claimants a and c: pool 30 free + 40 = 70
    // → the same level 30, whatever the order of asking.
    assert_eq!(c.grant().records, 30);
    // a is above the level: nothing more for it.
    assert_eq!(a.grant().records, 0);
    assert_eq!(m.global_available().records, 0);
    m.audit().unwrap();
}

#[test]
fn a_source_with_more_in_the_engine_gets_less() {
    let (m, ids, filler, _) = setup(limits(140, 140, 100), 2);
    let flow = BackpressureController::new(m.clone(), shares_config(40), None).unwrap();
    let a = claiming(&flow, ids[0]);
    let b = claiming(&flow, ids[1]);
    assert_eq!(a.grant().records, 40);
    assert_eq!(b.grant().records, 40);
    // a sends all of its credit, b only half: both want more.
    let _ = a.admit(1, payloads(40)).unwrap();
    let _ = b.admit(1, payloads(20)).unwrap();
    fill(&m, filler, 40);
    assert_eq!(m.global_available().records, 20);
    // Pool 20 free + 40 (a) + 40 (b) = 100 → level 50: a may grow by 10,
    // b by 10, rather than whoever asks first taking all 20.
    assert_eq!(a.grant().records, 10);
    assert_eq!(b.grant().records, 10);
}

/// Only claiming sessions compete: one that has nothing to send does not
/// hold back capacity nobody else may use.
#[tokio::test(start_paused = true)]
async fn idle_sessions_do_not_hold_back_capacity() {
    let (m, ids, _, _) = setup(limits(100, 100, 100), 2);
    let flow = BackpressureController::new(m.clone(), shares_config(80), None).unwrap();
    let b = claiming(&flow, ids[1]);
    let a = claiming(&flow, ids[0]);
    // Both claim: a's share is half.
    assert_eq!(a.grant().records, 50);
    a.close();
    // b runs dry: a fresh session of a is alone and may take a full window.
    b.announce_backlog(Credit::ZERO);
    let a = claiming(&flow, ids[0]);
    assert_eq!(a.grant().records, 80);
    // b has records again: it competes again, and gets what is left.
    b.announce_backlog(Credit::new(100, 1000));
    assert_eq!(b.grant().records, 20);
}

/// A non-expiring (version-1) session that only opened holds its guaranteed
/// share; once it uses credit it claims the rest of its window.
#[test]
fn a_session_that_only_opened_holds_its_guaranteed_share() {
    let (m, ids, _, _) = setup(limits(1000, 1000, 1000), 1);
    let flow = BackpressureController::new(m.clone(), shares_config(100), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    assert_eq!(h.grant(), Credit::new(1, 10));
    assert_eq!(
        h.grant(),
        Credit::ZERO,
        "nothing more while it does not send"
    );
    let _ = h.admit(1, payloads(1)).unwrap();
    assert_eq!(h.grant().records, 100, "sending: the whole window");
}

#[test]
fn grant_never_exceeds_the_sources_free_room() {
    let (m, ids, _, stages) = setup(limits(1000, 1000, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(40, 1.0, 0.95), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    // 90 records of this source already in the engine (admitted without credit).
    let _ = m.admit(ids[0], 1, payloads(90)).unwrap();
    assert_eq!(h.grant().records, 10, "per-source room is 10");
    let batch = m.try_batch(stages[0], 1000);
    m.complete(batch);
    m.audit().unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_down_shrinks_the_window_and_pause_grants_nothing() {
    let (m, ids, filler, _) = setup(limits(100, 100, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(40, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    let mut rx = h.subscribe();

    fill(&m, filler, 81); // above the high watermark (at it is not above)
    flow.evaluate();
    let sig = next_signal(
        &mut rx,
        SourceState::SlowedDown,
        (SignalKind::SlowDown, SignalReason::Global),
    )
    .await;
    assert!((sig.utilization - 0.81).abs() < 1e-9);
    assert!(sig.retry_after > Duration::ZERO);
    assert_eq!(h.window().records, 10);
    assert_eq!(
        h.grant(),
        Credit::ZERO,
        "paced: no room below the high watermark"
    );
    fill(&m, filler, 60); // between the watermarks: still slowed, 20 of room
    flow.evaluate();
    assert!(!rx.has_changed());
    assert_eq!(
        h.grant().records,
        10,
        "a quarter of the window, not the full 40"
    );

    fill(&m, filler, 90); // 90 in the engine + h's 10 reserved: no room left
    assert_eq!(h.grant(), Credit::ZERO, "nothing used, and no room anyway");
    flow.evaluate();
    assert!(!rx.has_changed(), "unused credit is not load: no PAUSE yet");
    let _ = h.admit(1, payloads(10)).unwrap(); // its credit is honoured: 100 % full
    flow.evaluate();
    let st = rx.changed().await.unwrap();
    assert_eq!(st.state, SourceState::Paused);
    assert_eq!(st.signal.unwrap().kind, SignalKind::Pause);
    assert_eq!(h.grant(), Credit::ZERO, "paused: nothing");

    fill(&m, filler, 60); // 70 %: not full, but above low
    flow.evaluate();
    assert_eq!(h.grant(), Credit::ZERO, "paused until at or below low");
    assert!(!rx.has_changed());

    fill(&m, filler, 30); // 40 %
    assert_eq!(
        h.grant().records,
        40,
        "the grant path itself resumes a paused source"
    );
    let sig = next_signal(
        &mut rx,
        SourceState::Normal,
        (SignalKind::Resume, SignalReason::Global),
    )
    .await;
    assert_eq!(sig.retry_after, Duration::ZERO);
    flow.audit().unwrap();
}

#[tokio::test]
async fn stage_reason_names_the_stage() {
    let (m, ids, _, stages) = setup(
        Limits {
            global: Limit::new(1000, 1 << 20),
            per_stage: Limit::new(10, 1 << 20),
            per_source: Limit::new(1000, 1 << 20),
        },
        2,
    );
    let flow = BackpressureController::new(m.clone(), config(4, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    // Another source fills stage b (index 1) to 90 %.
    let _ = m.admit(ids[1], 1, payloads(9)).unwrap();
    let batch = m.try_batch(stages[0], 100);
    m.forward(batch, stages[1]).await.unwrap();
    flow.evaluate();
    let st = h.status();
    assert_eq!(st.state, SourceState::SlowedDown);
    let sig = st.signal.unwrap();
    assert_eq!(sig.reason, SignalReason::Stage(stages[1]));
    assert_eq!(sig.stage_name.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_stalled_sink_pauses_its_pipeline_with_the_sink_named_until_cleared() {
    let m = Arc::new(
        Manager::builder(limits(1000, 100, 1000))
            .pipeline("p", ["a", "sink"])
            .pipeline("q", ["sink"])
            .build::<Vec<u8>>()
            .unwrap(),
    );
    let p = m.pipeline_by_name("p").unwrap().clone();
    let q = m.pipeline_by_name("q").unwrap().clone();
    let sp = m.register_source("sp", p.id).unwrap();
    let sq = m.register_source("sq", q.id).unwrap();
    let flow = BackpressureController::new(m.clone(), config(4, 0.8, 0.5), None).unwrap();
    let hp = flow.open_source(sp).unwrap();
    let hq = flow.open_source(sq).unwrap();
    assert!(!hp.grant().is_zero(), "credit before the stall");

    flow.set_stage_stalled(p.stages[1], Some(Arc::from("file /x")));
    let st = hp.status();
    assert_eq!(st.state, SourceState::Paused);
    let sig = st.signal.unwrap();
    assert_eq!(
        (sig.kind, sig.reason),
        (SignalKind::Pause, SignalReason::Sink(p.stages[1]))
    );
    assert_eq!(sig.stage_name.as_deref(), Some("sink"));
    assert_eq!(sig.sink.as_deref(), Some("file /x"));
    assert_eq!(SignalReason::Sink(p.stages[1]).label(), "sink");
    assert_eq!(
        hq.status().state,
        SourceState::Normal,
        "other pipeline unaffected"
    );
    assert_eq!(flow.stalled_stages().len(), 1);
    // Paused: no credit, however empty the levels are.
    assert!(hp.grant().is_zero());
    flow.evaluate();
    assert_eq!(hp.status().state, SourceState::Paused);
    flow.audit().unwrap();

    flow.set_stage_stalled(p.stages[1], None);
    let st = hp.status();
    assert_eq!(st.state, SourceState::Normal);
    let sig = st.signal.unwrap();
    assert_eq!(
        (sig.kind, sig.reason, sig.sink.as_deref()),
        (
            SignalKind::Resume,
            SignalReason::Sink(p.stages[1]),
            Some("file /x")
        )
    );
    assert!(flow.stalled_stages().is_empty());
    flow.audit().unwrap();
}

/// Anti-flapping: utilization oscillating between the watermarks gives one
/// SLOW_DOWN and no RESUME until it is at or below the low watermark.
#[tokio::test(start_paused = true)]
async fn oscillation_between_watermarks_does_not_flap() {
    let (m, ids, filler, _) = setup(limits(100, 100, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(10, 0.8, 0.5), None).unwrap();
    let mut rx = flow.subscribe(ids[0]).unwrap();
    let mut signals = Vec::new();
    let mut levels = vec![30, 85];
    for _ in 0..50 {
        levels.extend([60, 85, 51, 79, 99, 55]);
    }
    for level in levels {
        fill(&m, filler, level);
        signals.extend(flow.evaluate().into_iter().map(|(_, s)| s.kind));
        if rx.has_changed() {
            signals.push(rx.latest().signal.unwrap().kind); // same signal, seen by the subscriber
        }
    }
    assert_eq!(
        signals,
        [SignalKind::SlowDown, SignalKind::SlowDown],
        "one SLOW_DOWN (returned and published)"
    );
    assert_eq!(rx.current().seq, 1);
    fill(&m, filler, 50);
    let resumed = flow.evaluate();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].1.kind, SignalKind::Resume);
    let st = rx.changed().await.unwrap();
    assert_eq!((st.state, st.seq), (SourceState::Normal, 2));
    flow.audit().unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_task_follows_completions() {
    let (m, ids, _, stages) = setup(limits(100, 100, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(50, 0.8, 0.5), None).unwrap();
    let task = flow.spawn();
    let h = flow.open_source(ids[0]).unwrap();
    let mut rx = h.subscribe();
    // Fill the source's level to 90 % without credit (the engine admits
    // beyond credit when there is room), then let the task notice.
    let _ = m.admit(ids[0], 1, payloads(90)).unwrap();
    let st = tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.state, SourceState::SlowedDown);
    // Complete everything: capacity_freed wakes the task, which resumes the source.
    let b = m.try_batch(stages[0], 1000);
    m.forward(b, stages[1]).await.unwrap();
    let b = m.try_batch(stages[1], 1000);
    m.complete(b);
    let st = tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.state, SourceState::Normal);
    flow.shutdown();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn wait_credit_wakes_when_capacity_frees() {
    let (m, ids, filler, _) = setup(limits(100, 100, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(20, 1.0, 0.9), None).unwrap();
    let _task = flow.spawn();
    let h = flow.open_source(ids[0]).unwrap();
    fill(&m, filler, 98);
    assert_eq!(h.grant().records, 2);
    let _ = h.admit(1, payloads(2)).unwrap(); // full now: 98 + 2 in engine
    let waited = tokio::time::timeout(Duration::from_millis(200), h.wait_credit()).await;
    assert!(waited.is_err(), "no capacity, no credit");
    assert_eq!(h.status().state, SourceState::Paused);
    fill(&m, filler, 0);
    let credit = tokio::time::timeout(Duration::from_secs(1), h.wait_credit())
        .await
        .expect("woken once capacity was released")
        .expect("not shut down");
    assert!(credit.records > 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_pauses_everyone_for_good() {
    let (m, ids, _, _) = setup(limits(100, 100, 100), 2);
    let flow = BackpressureController::new(m.clone(), config(10, 0.8, 0.5), None).unwrap();
    let task = flow.spawn();
    let a = flow.open_source(ids[0]).unwrap();
    let b = flow.open_source(ids[1]).unwrap();
    let mut rxs = [a.subscribe(), b.subscribe()];
    assert!(a.grant().records > 0);
    let waiter = tokio::spawn({
        let flow = flow.clone();
        let id = ids[1];
        async move {
            let h = flow.open_source(id).unwrap();
            // Nothing used after the first grant: waits until shutdown ends it.
            let _ = h.grant();
            h.wait_credit().await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    flow.shutdown();
    for rx in &mut rxs {
        next_signal(
            rx,
            SourceState::Paused,
            (SignalKind::Pause, SignalReason::Shutdown),
        )
        .await;
    }
    assert_eq!(waiter.await.unwrap(), None, "a credit waiter is told");
    let _ = a.admit(1, payloads(10)).unwrap();
    assert_eq!(a.grant(), Credit::ZERO);
    assert!(matches!(
        flow.open_source(ids[0]),
        Err(ControllerError::Closed)
    ));
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    flow.audit().unwrap();
}

#[test]
fn manager_shutdown_is_seen_as_shutdown() {
    let (m, ids, _, _) = setup(limits(100, 100, 100), 1);
    let flow = BackpressureController::new(m.clone(), config(10, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    m.shutdown();
    assert_eq!(h.grant(), Credit::ZERO);
    flow.evaluate();
    let sig = h.status().signal.unwrap();
    assert_eq!(
        (sig.kind, sig.reason),
        (SignalKind::Pause, SignalReason::Shutdown)
    );
    assert!(flow.is_shut_down());
}

#[test]
fn config_is_validated_and_sources_are_checked() {
    let (m, _, _, _) = setup(limits(100, 100, 100), 0);
    for marks in [(0.5, 0.5), (0.8, 0.9), (1.1, 0.5), (0.8, 0.0)] {
        let c = config(10, marks.0, marks.1);
        assert!(matches!(
            BackpressureController::new(m.clone(), c, None),
            Err(ControllerError::InvalidConfig(_))
        ));
    }
    let c = ControllerConfig {
        window: Credit::ZERO,
        ..ControllerConfig::default()
    };
    assert!(BackpressureController::new(m.clone(), c, None).is_err());
    let flow = BackpressureController::new(m.clone(), ControllerConfig::default(), None).unwrap();
    // A source id our manager (which has one source) never handed out.
    let other = Manager::builder(limits(100, 100, 100))
        .pipeline("x", ["y"])
        .build::<Vec<u8>>()
        .unwrap();
    let pipeline = other.pipelines()[0].id;
    let bogus = (0..5)
        .map(|i| other.register_source(&format!("x{i}"), pipeline).unwrap())
        .last()
        .unwrap();
    assert!(matches!(
        flow.open_source(bogus),
        Err(ControllerError::Buffer(_))
    ));
    assert!(flow.subscribe(bogus).is_err());
}

/// Fairness: four sources of equal demand into one slow consumer get equal
/// shares of what is admitted (Jain's index ≥ 0.95, each within ±10% of the
/// mean), and, since they stay within their credits, none is ever rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_equal_sources_share_a_slow_consumer_fairly() {
    const RECORD: usize = 16;
    const SLOW_MS: u64 = 1;
    let limits = Limits {
        global: Limit::new(2_000, 1 << 30),
        per_stage: Limit::new(2_000, 1 << 30),
        per_source: Limit::new(2_000, 1 << 30),
    };
    let (m, ids, _, stages) = setup(limits, 4);
    let flow = BackpressureController::new(
        m.clone(),
        ControllerConfig::default().with_window_records(100, RECORD as u64),
        None,
    )
    .unwrap();
    let task = flow.spawn();
    let stop = Arc::new(AtomicBool::new(false));

    let mut producers = Vec::new();
    for &id in &ids {
        let flow = flow.clone();
        let stop = stop.clone();
        producers.push(tokio::spawn(async move {
            let h = flow.open_source(id).unwrap();
            let (mut records, mut bytes, mut seq) = (0u64, 0u64, 1u64);
            while !stop.load(Ordering::Relaxed) {
                if records == 0 || bytes < RECORD as u64 {
                    let wait =
                        tokio::time::timeout(Duration::from_millis(50), h.wait_credit()).await;
                    match wait {
                        Ok(Some(c)) => {
                            records += c.records;
                            bytes += c.bytes;
                        }
                        Ok(None) => break,
                        Err(_) => continue,
                    }
                }
                let n = records.min(bytes / RECORD as u64).min(50);
                if n == 0 {
                    continue;
                }
                let batch = (0..n).map(|_| vec![7u8; RECORD]).collect::<Vec<_>>();
                let a = h.admit(seq, batch).unwrap();
                assert!(
                    a.rejected.is_none(),
                    "a source within its credits is never rejected"
                );
                seq += n;
                records -= n;
                bytes -= n * RECORD as u64;
                tokio::task::yield_now().await;
            }
            // What it holds unused equals the manager's reservation.
            assert_eq!(h.outstanding(), flow.manager().reserved(id).unwrap());
            h.close();
        }));
    }

    let consumer = {
        let m = m.clone();
        let stages = stages.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut batches = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(b)) =
                    tokio::time::timeout(Duration::from_millis(50), m.next_batch(stages[0], 64))
                        .await
                else {
                    continue;
                };
                m.forward(b, stages[1]).await.unwrap();
                let b = m.try_batch(stages[1], 1000);
                m.complete(b);
                batches += 1;
                tokio::time::sleep(Duration::from_millis(SLOW_MS)).await; // the slow part
            }
            batches
        })
    };

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let batches = consumer.await.unwrap();
    flow.shutdown();
    task.await.unwrap();

    let snap = m.snapshot();
    let admitted: Vec<f64> = ids
        .iter()
        .map(|id| snap.sources[id.index()].admitted as f64)
        .collect();
    let rejected: u64 = ids.iter().map(|id| snap.sources[id.index()].refused).sum();
    assert_eq!(rejected, 0);
    let sum: f64 = admitted.iter().sum();
    let jain = sum * sum / (admitted.len() as f64 * admitted.iter().map(|x| x * x).sum::<f64>());
    let mean = sum / admitted.len() as f64;
    eprintln!(
        "admitted per source {admitted:?}, Jain's index {jain:.4}, {batches} consumer batches"
    );
    assert!(
        sum > 2_000.0 * 4.0,
        "the consumer was kept busy: {sum} records"
    );
    assert!(
        snap.global.peak_records as f64 >= 0.8 * 2_000.0,
        "the consumer was the bottleneck (peak {})",
        snap.global.peak_records
    );
    assert!(jain >= 0.95, "Jain's index {jain} for {admitted:?}");
    for x in &admitted {
        assert!(
            (x - mean).abs() <= 0.1 * mean,
            "{x} is not within 10% of {mean}: {admitted:?}"
        );
    }
    m.audit().unwrap();
    flow.audit().unwrap();
}

/// `SourceHandle::cover`, the admission rule of the contract: what a
/// stream's credit covers, resends free, and the two exceptions for records
/// no byte credit can ever cover.
#[test]
fn cover_is_the_contracts_admission_rule() {
    let limits = Limits {
        global: Limit::new(1000, 10_000),
        per_stage: Limit::new(1000, 10_000),
        per_source: Limit::new(1000, 5_000),
    };
    let (m, ids, _, _) = setup(limits, 1);
    // A window of 10 records of 10 bytes: 100 bytes.
    let flow = BackpressureController::new(m.clone(), config(10, 0.8, 0.5), None).unwrap();
    let h = flow.open_source(ids[0]).unwrap();
    let credit = h.grant();
    assert_eq!(credit, Credit::new(10, 100));
    assert_eq!(h.credit(), credit);
    let batch = |sizes: &[usize]| -> sluice_buffer::Pending<Vec<u8>> {
        sizes
            .iter()
            .map(|&n| vec![1u8; n])
            .collect::<Vec<_>>()
            .into()
    };

    // Within the credit: all of it, from the batch's totals.
    let c = h.cover(1, &batch(&[10; 10]));
    assert_eq!((c.duplicates, c.covered, c.credit), (0, 10, credit));
    // Beyond it in records, then in bytes: the covered prefix.
    assert_eq!(h.cover(1, &batch(&[10; 12])).covered, 10);
    assert_eq!(h.cover(1, &batch(&[40, 40, 40])).covered, 2);

    // Admit five; a resend of them with two new ones: the five are free.
    let out = h.admit(1, batch(&[10; 5])).unwrap();
    assert!(out.rejected.is_none());
    assert_eq!(h.credit(), Credit::new(5, 50));
    let c = h.cover(1, &batch(&[10; 7]));
    assert_eq!((c.duplicates, c.covered), (5, 7));

    // Larger than every byte limit allows: covered, and admit refuses it.
    assert_eq!(m.limits().max_record_bytes(), 5_000);
    let c = h.cover(6, &batch(&[10, 6_000, 10]));
    assert_eq!(c.covered, 2, "up to and including the too-large record");
    let out = h.admit(6, batch(&[10, 6_000])).unwrap();
    assert_eq!(out.admitted, 1);
    assert!(matches!(
        out.rejected.map(|r| r.reason),
        Some(sluice_buffer::RejectReason::TooLarge { .. })
    ));

    // Larger than half the byte window and first in its batch: covered
    // alone on one record credit, though the byte credit (40) is short.
    let credit = h.credit();
    assert!(credit.records >= 1 && credit.bytes < 60, "{credit:?}");
    let c = h.cover(7, &batch(&[60, 10]));
    assert_eq!(c.covered, 1);
    // Not first in its batch: not covered.
    assert_eq!(h.cover(7, &batch(&[10, 60])).covered, 1);
}
