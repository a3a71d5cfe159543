//! In-process gRPC tests of the engine over 127.0.0.1:0 with the generated client.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_buffer::{ManualProbe, MemoryGateConfig, RetryPolicy};
use sluice_config::{PipelineSpec, Settings, SinkSpec, StageSpec, TransformSpec};
use sluice_engine::{EngineBuilder, EngineHandle};
use sluice_proto::v1::{
    self, Batch, EngineMessage, Open, SourceMessage, engine_message::Body as EBody,
    ingest_client::IngestClient, source_message::Body as SBody,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

fn file_sink(dir: &Path, prefix: &str) -> SinkSpec {
    SinkSpec::File {
        dir: dir.to_path_buf(),
        prefix: prefix.into(),
        rotate_bytes: 1 << 20,
        fsync: false,
        delay: Duration::ZERO,
        fail_rate: 0.0,
    }
}

fn settings(dir: &Path, stages: Vec<StageSpec>) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.shutdown_timeout = Duration::from_secs(5);
    s.memory.enabled = false;
    s.retry = RetryPolicy {
        max_retries: 1,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let mut p = PipelineSpec {
        name: "default".into(),
        stages,
        sink: file_sink(&dir.join("out"), "records"),
        dead_letter: file_sink(&dir.join("dead"), "dead-letters"),
        ..PipelineSpec::default()
    };
    p.batch.linger = Duration::from_millis(5);
    s.pipelines = vec![p];
    s
}

fn identity() -> Vec<StageSpec> {
    vec![StageSpec {
        name: "identity".into(),
        transform: TransformSpec::Identity,
    }]
}

struct Conn {
    tx: mpsc::Sender<SourceMessage>,
    rx: Streaming<EngineMessage>,
}

fn open_msg(source: &str, pipeline: &str) -> SourceMessage {
    SourceMessage {
        body: Some(SBody::Open(Open {
            source_id: source.into(),
            pipeline: pipeline.into(),
        })),
    }
}

fn batch(first_seq: u64, n: usize) -> SourceMessage {
    SourceMessage {
        body: Some(SBody::Batch(Batch {
            first_seq,
            records: (0..n)
                .map(|i| v1::Record {
                    payload: format!(
                        "{{\"i\":{},\"status\":\"{}\"}}",
                        first_seq + i as u64,
                        if i % 2 == 0 { "paid" } else { "new" }
                    )
                    .into_bytes()
                    .into(),
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

async fn connect(engine: &EngineHandle, first: SourceMessage) -> Result<Conn, tonic::Status> {
    let mut client = IngestClient::connect(format!("http://{}", engine.local_addr()))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Conn { tx, rx })
}

async fn next(conn: &mut Conn) -> Result<Option<EBody>, tonic::Status> {
    match tokio::time::timeout(WAIT, conn.rx.message()).await {
        Ok(r) => r.map(|m| m.and_then(|m| m.body)),
        Err(_) => panic!("no message from the engine within {WAIT:?}"),
    }
}

async fn opened(conn: &mut Conn) -> v1::Opened {
    match next(conn).await.unwrap() {
        Some(EBody::Opened(o)) => o,
        other => panic!("expected Opened, got {other:?}"),
    }
}

/// Reads messages until an Ack through `seq`; returns it and the rejects seen.
async fn until_ack(conn: &mut Conn, seq: u64) -> (v1::Ack, Vec<v1::Reject>) {
    let mut rejects = Vec::new();
    loop {
        match next(conn).await.unwrap() {
            Some(EBody::Ack(a)) if a.through_seq >= seq => return (a, rejects),
            Some(EBody::Reject(r)) => rejects.push(r),
            Some(_) => {}
            None => panic!("stream ended before ack {seq}"),
        }
    }
}

fn read_lines(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[tokio::test]
async fn ten_records_are_acked_and_in_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineBuilder::new(settings(dir.path(), identity()))
        .start()
        .await
        .unwrap();
    let mut conn = connect(&engine, open_msg("src-1", "")).await.unwrap();
    let o = opened(&mut conn).await;
    assert_eq!(o.admitted_through_seq, 0);
    assert_eq!(o.acked_through_seq, 0);
    assert!(o.credit.unwrap().records >= 10);
    assert!(o.max_batch_records > 0);
    conn.tx.send(batch(1, 10)).await.unwrap();
    let (ack, rejects) = until_ack(&mut conn, 10).await;
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(ack.delivered, 10);
    assert_eq!(ack.dead_lettered, 0);
    // Half-close: the stream ends OK once everything is acked.
    drop(conn.tx);
    loop {
        match next_or_end(&mut conn.rx).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) => panic!("stream ended with {s:?}"),
        }
    }
    let lines = read_lines(&dir.path().join("out"));
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["source_id"], "src-1");
        assert_eq!(l["seq"], i as u64 + 1);
        assert_eq!(l["payload"]["i"], i as u64 + 1);
    }
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", engine.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
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
    let mut admin =
        v1::admin_client::AdminClient::connect(format!("http://{}", engine.local_addr()))
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

async fn next_or_end(
    rx: &mut Streaming<EngineMessage>,
) -> Result<Option<EngineMessage>, tonic::Status> {
    tokio::time::timeout(WAIT, rx.message())
        .await
        .expect("stream stalled")
}

#[tokio::test]
async fn protocol_errors_are_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineBuilder::new(settings(dir.path(), identity()))
        .start()
        .await
        .unwrap();
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
    conn.tx.send(open_msg("a", "default")).await.unwrap();
    let status = loop {
        match next(&mut conn).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected an error status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn gaps_and_oversized_batches_are_rejected_and_reconnect_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineBuilder::new(settings(dir.path(), identity()))
        .max_batch_records(5)
        .start()
        .await
        .unwrap();
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    assert_eq!(opened(&mut conn).await.max_batch_records, 5);
    conn.tx.send(batch(1, 8)).await.unwrap();
    conn.tx.send(batch(9, 2)).await.unwrap(); // a gap: 6..8 were rejected
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
    let status = loop {
        match next(&mut conn).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected ABORTED"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Aborted);
    // A resend overlapping what was admitted is not admitted twice.
    conn2.tx.send(batch(4, 5)).await.unwrap();
    let (ack, rejects) = until_ack(&mut conn2, 8).await;
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(ack.delivered, 8);
    assert_eq!(read_lines(&dir.path().join("out")).len(), 8);
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
    let engine = EngineBuilder::new(settings(dir.path(), stages))
        .start()
        .await
        .unwrap();
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    conn.tx.send(batch(1, 10)).await.unwrap();
    let (ack, _) = until_ack(&mut conn, 10).await;
    assert_eq!(ack.filtered, 5);
    assert_eq!(ack.dead_lettered, 5);
    assert_eq!(ack.delivered, 0);
    let dead = read_lines(&dir.path().join("dead"));
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
    let mut s = settings(dir.path(), identity());
    s.memory = MemoryGateConfig {
        enabled: true,
        refresh_ms: 5,
        ..MemoryGateConfig::default()
    };
    let probe = ManualProbe::new(10, 100);
    let engine = EngineBuilder::new(s)
        .memory_probe(probe.clone())
        .start()
        .await
        .unwrap();
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

    conn.tx.send(batch(1, 3)).await.unwrap();
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

#[tokio::test]
async fn a_slow_sink_slows_the_source_down_and_everything_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), identity());
    s.buffer.per_stage = sluice_buffer::Limit::new(20, 1 << 20);
    s.buffer.per_source = sluice_buffer::Limit::new(100, 1 << 20);
    s.pipelines[0].batch.max_records = 5;
    let slow = sluice_engine::sink::with_knobs(
        std::sync::Arc::new(sluice_engine::sink::NullSink),
        Duration::from_millis(20),
        0.0,
    );
    let engine = EngineBuilder::new(s)
        .sink("default", slow)
        .start()
        .await
        .unwrap();
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    opened(&mut conn).await;
    // Send past the credits: the excess is rejected, never dropped.
    let mut next_seq = 1;
    let mut signal = None;
    let mut acked = 0;
    while signal.is_none() {
        conn.tx.send(batch(next_seq, 10)).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_millis(5), conn.rx.message()).await {
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
    ) -> sluice_engine::sink::SinkFuture<'a> {
        self.sizes.lock().unwrap().push(batch.len());
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(())
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
    let mut s = settings(dir.path(), Vec::new());
    s.pipelines[0].batch.max_records = 100;
    let sink = std::sync::Arc::new(BatchSizes {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let engine = EngineBuilder::new(s)
        .sink("default", sink.clone())
        .start()
        .await
        .unwrap();
    let mut conn = connect(&engine, open_msg("src", "")).await.unwrap();
    let credit = opened(&mut conn).await.credit.unwrap().records;
    // 20 batches of 80 records (larger than what the buffer merges), all
    // within the first credit.
    let total = 1600u64;
    assert!(credit >= total, "credit {credit}");
    for i in 0..20 {
        conn.tx.send(batch(1 + i * 80, 80)).await.unwrap();
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
