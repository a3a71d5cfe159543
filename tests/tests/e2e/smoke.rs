//! In-process gRPC smoke tests of the engine over 127.0.0.1:0 with the
//! generated client: acks and the file sink, protocol errors as statuses,
//! rejects and takeover, dead letters and filters, the memory gate and
//! shutdown, and a slow sink.

use std::time::Duration;

use sluice_buffer::{ManualProbe, MemoryGateConfig};
use sluice_config::{StageSpec, TransformSpec};
use sluice_engine::EngineHandle;
use sluice_proto::v1::{self, SourceMessage, engine_message::Body as EBody};
use sluice_tests::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn identity() -> Vec<StageSpec> {
    vec![StageSpec {
        name: "identity".into(),
        transform: TransformSpec::Identity,
    }]
}

/// `n` orders from `first_seq`, `{"i": seq, "status": "paid" | "new"}`
/// alternately (the filter tests keep the paid half).
fn batch(first_seq: u64, n: usize) -> SourceMessage {
    batch_of(
        first_seq,
        (0..n).map(|i| {
            let status = if i % 2 == 0 { "paid" } else { "new" };
            format!("{{\"i\":{},\"status\":\"{status}\"}}", first_seq + i as u64).into()
        }),
    )
}

async fn connect(engine: &EngineHandle, first: SourceMessage) -> Result<Raw, tonic::Status> {
    raw_stream(&url(engine), first).await
}

async fn next(conn: &mut Raw) -> Result<Option<EBody>, tonic::Status> {
    conn.next_within(WAIT).await
}

/// Reads `conn` until its stream ends with an error status, and returns
/// that; a clean end panics with `otherwise`.
async fn final_status(conn: &mut Raw, otherwise: &str) -> tonic::Status {
    loop {
        match next(conn).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("{otherwise}"),
            Err(s) => break s,
        }
    }
}

async fn opened(conn: &mut Raw) -> v1::Opened {
    tokio::time::timeout(WAIT, conn.opened())
        .await
        .expect("no Opened in time")
        .unwrap()
}

/// Reads messages until an Ack through `seq`; returns it and the rejects seen.
async fn until_ack(conn: &mut Raw, seq: u64) -> (v1::Ack, Vec<v1::Reject>) {
    conn.until_ack(seq, WAIT).await
}

#[tokio::test]
async fn ten_records_are_acked_and_in_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(staged_settings(dir.path(), identity()), |b| b).await;
    let mut conn = connect(&engine, open_msg("src-1", "")).await.unwrap();
    let o = opened(&mut conn).await;
    assert_eq!(o.admitted_through_seq, 0);
    assert_eq!(o.acked_through_seq, 0);
    assert!(o.credit.unwrap().records >= 10);
    assert!(o.max_batch_records > 0);
    conn.must_send(batch(1, 10)).await;
    let (ack, rejects) = until_ack(&mut conn, 10).await;
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(ack.delivered, 10);
    assert_eq!(ack.dead_lettered, 0);
    // Half-close: the stream ends OK once everything is acked.
    conn.tx = None;
    loop {
        match next(&mut conn).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) => panic!("stream ended with {s:?}"),
        }
    }
    let lines = read_jsonl(&dir.path().join("sink"));
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["source_id"], "src-1");
        assert_eq!(l["seq"], i as u64 + 1);
        assert_eq!(l["payload"]["i"], i as u64 + 1);
    }
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(&url(&engine)).await);
    for service in ["", "sluice.v1.Ingest", "sluice.v1.Admin"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let mut admin = v1::admin_client::AdminClient::connect(url(&engine))
        .await
        .unwrap();
    let stats = admin.stats(v1::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.pipelines[0].stages, ["identity", "sink"]);
    assert_eq!(stats.sources[0].source_id, "src-1");
    assert_eq!(stats.sources[0].state, v1::SourceState::Closed as i32);
    let stats = engine.stats();
    assert_eq!(stats.sources[0].delivered, 10);
    assert_eq!(stats.sources[0].received, 10);
    let report = engine.shutdown().await.unwrap();
    assert!(report.drained);
}

#[tokio::test]
async fn protocol_errors_are_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(staged_settings(dir.path(), identity()), |b| b).await;
    let err = connect(&engine, batch(1, 1)).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Open"), "{err:?}");
    let err = connect(&engine, open_msg("a", "nope")).await.err().unwrap();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = connect(&engine, open_msg("", "")).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A second Open ends the stream.
    let mut conn = connect(&engine, open_msg("a", "default")).await.unwrap();
    opened(&mut conn).await;
    conn.must_send(open_msg("a", "default")).await;
    let status = final_status(&mut conn, "expected an error status").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn gaps_and_oversized_batches_are_rejected_and_reconnect_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(staged_settings(dir.path(), identity()), |b| {
        b.max_batch_records(5)
    })
    .await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    assert_eq!(opened(&mut conn).await.max_batch_records, 5);
    conn.must_send(batch(1, 8)).await;
    conn.must_send(batch(9, 2)).await; // a gap: 6..8 were rejected
    let (ack, rejects) = until_ack(&mut conn, 5).await;
    assert_eq!(ack.through_seq, 5);
    let mut rejects = rejects;
    while rejects.len() < 2 {
        if let Some(EBody::Reject(r)) = next(&mut conn).await.unwrap() {
            rejects.push(r);
        }
    }
    assert_eq!(rejects[0].reason, v1::RejectReason::BatchTooLarge as i32);
    assert_eq!((rejects[0].first_seq, rejects[0].count), (6, 3));
    assert_eq!(rejects[0].admitted_through_seq, 5);
    assert_eq!(rejects[1].reason, v1::RejectReason::SequenceGap as i32);
    assert_eq!((rejects[1].first_seq, rejects[1].count), (9, 2));

    // A second stream takes over; the first ends ABORTED.
    let mut conn2 = connect(&engine, open_msg("src", "")).await.unwrap();
    let o = opened(&mut conn2).await;
    assert_eq!(o.admitted_through_seq, 5);
    let status = final_status(&mut conn, "expected ABORTED").await;
    assert_eq!(status.code(), Code::Aborted);
    // A resend overlapping what was admitted is not admitted twice.
    conn2.must_send(batch(4, 5)).await;
    let (ack, rejects) = until_ack(&mut conn2, 8).await;
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(ack.delivered, 8);
    assert_eq!(read_jsonl(&dir.path().join("sink")).len(), 8);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn failures_become_dead_letters_and_filters_count() {
    let dir = tempfile::tempdir().unwrap();
    let stages = vec![
        StageSpec {
            name: "paid".into(),
            transform: TransformSpec::Filter {
                field: "status".into(),
                op: sluice_config::FilterOp::Eq,
                value: Some("paid".into()),
            },
        },
        StageSpec {
            name: "boom".into(),
            transform: TransformSpec::Fail { rate: 1.0 },
        },
    ];
    let engine = start_engine(staged_settings(dir.path(), stages), |b| b).await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    conn.must_send(batch(1, 10)).await;
    let (ack, _) = until_ack(&mut conn, 10).await;
    assert_eq!(ack.filtered, 5);
    assert_eq!(ack.dead_lettered, 5);
    assert_eq!(ack.delivered, 0);
    let dead = read_jsonl(&dir.path().join("dead"));
    assert_eq!(dead.len(), 5);
    for d in &dead {
        assert_eq!(d["stage"], "boom");
        assert_eq!(d["retries"], 1);
        assert_eq!(d["payload"]["status"], "paid");
        assert!(d["error"].as_str().unwrap().contains("injected"));
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn memory_gate_pauses_and_shutdown_pauses_then_ends_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = staged_settings(dir.path(), identity());
    s.memory = MemoryGateConfig {
        enabled: true,
        refresh_ms: 5,
        ..MemoryGateConfig::default()
    };
    let probe = ManualProbe::new(10, 100);
    let engine = start_engine(s, |b| b.memory_probe(probe.clone())).await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    probe.set_used(95);
    let sig = loop {
        if let Some(EBody::Signal(s)) = next(&mut conn).await.unwrap() {
            break s;
        }
    };
    assert_eq!(sig.kind, v1::SignalKind::Pause as i32);
    assert_eq!(sig.reason, v1::SignalReason::Memory as i32);
    assert!(engine.stats().memory.unwrap().closed);
    probe.set_used(10);
    let sig = loop {
        if let Some(EBody::Signal(s)) = next(&mut conn).await.unwrap() {
            break s;
        }
    };
    assert_eq!(sig.kind, v1::SignalKind::Resume as i32);

    conn.must_send(batch(1, 3)).await;
    until_ack(&mut conn, 3).await;
    let shutdown = tokio::spawn(engine.shutdown());
    let mut saw_pause = false;
    let status = loop {
        match next(&mut conn).await {
            Ok(Some(EBody::Signal(s))) => {
                saw_pause |= s.kind == v1::SignalKind::Pause as i32
                    && s.reason == v1::SignalReason::Shutdown as i32;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected UNAVAILABLE"),
            Err(s) => break s,
        }
    };
    assert!(saw_pause);
    assert_eq!(status.code(), Code::Unavailable);
    let report = shutdown.await.unwrap().unwrap();
    assert!(report.drained);
    assert_eq!(report.undelivered, 0);
}

/// An engine with a stage of 20 records, sources of 100, and a null sink
/// that takes 20 ms per batch of at most 5 records (250 records/s).
async fn slow_small_stage(dir: &std::path::Path) -> EngineHandle {
    let mut s = staged_settings(dir, identity());
    s.buffer.per_stage = sluice_buffer::Limit::new(20, 1 << 20);
    s.buffer.per_source = sluice_buffer::Limit::new(100, 1 << 20);
    s.pipelines[0].batch.max_records = 5;
    let slow = sluice_engine::sink::with_knobs(
        std::sync::Arc::new(sluice_engine::sink::NullSink),
        Duration::from_millis(20),
        0.0,
    );
    start_engine(s, |b| b.sink("default", slow)).await
}

#[tokio::test]
async fn a_slow_sink_slows_the_source_down_and_everything_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = slow_small_stage(dir.path()).await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    // Send past the credits: the excess is rejected, never dropped.
    let mut next_seq = 1;
    let mut signal = None;
    let mut acked = 0;
    while signal.is_none() {
        conn.must_send(batch(next_seq, 10)).await;
        loop {
            match tokio::time::timeout(Duration::from_millis(5), conn.inbound.message()).await {
                Err(_) => break,
                Ok(m) => match m.unwrap().and_then(|m| m.body) {
                    Some(EBody::Reject(r)) => next_seq = r.admitted_through_seq + 1,
                    Some(EBody::Signal(sig)) => signal = Some(sig),
                    Some(EBody::Ack(a)) => acked = a.through_seq,
                    Some(_) => {}
                    None => panic!("stream ended"),
                },
            }
        }
        if signal.is_none() {
            next_seq = engine
                .buffer()
                .admitted_through(engine.buffer().source_id("src").unwrap())
                .unwrap()
                + 1;
        }
    }
    let sig = signal.unwrap();
    assert!(
        sig.kind == v1::SignalKind::SlowDown as i32 || sig.kind == v1::SignalKind::Pause as i32,
        "{sig:?}"
    );
    assert_eq!(sig.reason, v1::SignalReason::Stage as i32, "{sig:?}");
    assert!(!sig.stage.is_empty());
    let source = engine.buffer().source_id("src").unwrap();
    let admitted = engine.buffer().admitted_through(source).unwrap();
    assert!(admitted > 0 && acked <= admitted);
    let (ack, _) = until_ack(&mut conn, admitted).await;
    assert_eq!(ack.delivered, admitted);
    engine.shutdown().await.unwrap();
}

/// `Signal.target_records_per_second`: a source that sends past its credit
/// into a slow sink (20 ms per batch of at most 5 records: at most 250
/// records/s) keeps crossing the stage's high watermark; the SLOW_DOWNs it
/// gets after its records have completed for a while carry its drain rate,
/// positive and never above what the sink takes; other signals carry 0.
#[tokio::test]
async fn slow_down_carries_the_sources_drain_rate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = slow_small_stage(dir.path()).await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    let source = engine.buffer().source_id("src").unwrap();
    let started = std::time::Instant::now();
    let mut next_seq = 1;
    let mut rates = Vec::new();
    while started.elapsed() < Duration::from_millis(2_500) {
        conn.must_send(batch(next_seq, 10)).await;
        loop {
            match tokio::time::timeout(Duration::from_millis(5), conn.inbound.message()).await {
                Err(_) => break,
                Ok(m) => match m.unwrap().and_then(|m| m.body) {
                    Some(EBody::Signal(sig)) if sig.kind == v1::SignalKind::SlowDown as i32 => {
                        rates.push(sig.target_records_per_second)
                    }
                    Some(EBody::Signal(sig)) => assert_eq!(sig.target_records_per_second, 0.0),
                    Some(_) => {}
                    None => panic!("stream ended"),
                },
            }
        }
        next_seq = engine.buffer().admitted_through(source).unwrap() + 1;
    }
    eprintln!("SLOW_DOWN target rates: {rates:?}");
    assert!(
        rates.iter().any(|&r| r > 0.0),
        "no SLOW_DOWN carried a rate: {rates:?}"
    );
    // 250 records/s at most, with room for the 50 ms step of the readings.
    assert!(
        rates.iter().all(|&r| (0.0..=400.0).contains(&r)),
        "{rates:?}"
    );
    drop(conn);
    engine.shutdown().await.unwrap();
}

/// A sink that records the size of every batch it is given and takes
/// `delay` per batch (a slow sink, one commit per batch).
#[derive(Debug, Default)]
struct BatchSizes {
    delay: Duration,
    sizes: std::sync::Mutex<Vec<usize>>,
}

impl sluice_engine::sink::Sink for BatchSizes {
    fn describe(&self) -> String {
        "batch-sizes".into()
    }
    fn write<'a>(
        &'a self,
        batch: sluice_engine::sink::SinkBatch<'a>,
    ) -> sluice_engine::sink::SinkFuture<'a, sluice_engine::sink::Written> {
        self.sizes.lock().unwrap().push(batch.len());
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(sluice_engine::sink::Written::All)
        })
    }
    fn commit(&self) -> sluice_engine::sink::SinkFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// Records queue up in front of a slow sink: the sink must still get full
/// batches of `batch.max_records`, even when sources send batches that do
/// not divide it (the buffer hands out queued batches whole; the worker
/// puts several together). Smaller batches would cut a per-batch sink's
/// throughput.
#[tokio::test]
async fn a_slow_sink_gets_full_batches_while_records_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = staged_settings(dir.path(), Vec::new());
    s.pipelines[0].batch.max_records = 100;
    // The whole window with `Opened`, so all batches go out at once.
    s.buffer.guaranteed_credit_records = s.buffer.credit_window_records;
    let sink = std::sync::Arc::new(BatchSizes {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let engine = start_engine(s, |b| b.sink("default", sink.clone())).await;
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    let credit = opened(&mut conn).await.credit.unwrap().records;
    // 20 batches of 80 records (larger than what the buffer merges), all
    // within the first credit.
    let total = 1600u64;
    assert!(credit >= total, "credit {credit}");
    for i in 0..20 {
        conn.must_send(batch(1 + i * 80, 80)).await;
    }
    let (ack, rejects) = until_ack(&mut conn, total).await;
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(ack.delivered, total);
    let sizes = sink.sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>() as u64, total);
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    // Full batches except while the queue fills at the start and drains
    // at the end; with batches of 80 only there would be 20.
    assert!(sizes.len() <= 16 + 3, "{} batches: {sizes:?}", sizes.len());
    drop(conn);
    engine.shutdown().await.unwrap();
}
