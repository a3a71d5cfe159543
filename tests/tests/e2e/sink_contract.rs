//! The sink contract: a failure of the sink is not a failure of the
//! records. A sink-level outage (the file sink's directory removed, an
//! injected outage of the sink or of the dead-letter sink) stalls the
//! stage: no retry is spent, nothing is dead-lettered, sources are paused
//! with reason `SINK`, `Admin.Stats` shows the stall, and everything is
//! delivered once the sink is back. Records the sink refuses one by one go
//! through retries to dead letters with the sink's message, and the rest of
//! their batch is delivered. Nothing here sleeps to wait: every wait polls
//! a condition with a bounded deadline.

use std::sync::Arc;
use std::time::Duration;

use sluice_client::ClientOptions;
use sluice_engine::EngineHandle;
use sluice_engine::sink::{FileSink, Sink};
use sluice_proto::v1::{self, SignalKind, SignalReason};
use sluice_tests::*;

/// The default pipeline's stats.
fn pipeline(engine: &EngineHandle) -> v1::PipelineStats {
    engine
        .stats()
        .pipelines
        .into_iter()
        .next()
        .expect("a pipeline")
}

/// Record retries of every source, from the buffer.
fn retried(engine: &EngineHandle) -> u64 {
    engine
        .buffer()
        .snapshot()
        .sources
        .iter()
        .map(|s| s.retried)
        .sum()
}

/// A temporary directory and a test engine's settings under it, with quick
/// retries (2, 5–50 ms) and sink batches of 100 records.
fn quick_retries() -> (tempfile::TempDir, sluice_config::Settings) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(dir.path());
    s.retry.max_retries = 2;
    s.retry.initial_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(50);
    s.pipelines[0].batch.max_records = 100;
    (dir, s)
}

/// The file sink's directory removed under a running engine, mid-stream:
/// the batch that went into the removed file is written again into the
/// recreated directory; nothing is dead-lettered, no retry is spent, no
/// record is lost or doubled. (What was committed before the removal went
/// with the directory: every record acked after it must be in the new one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_directory_removed_mid_stream_loses_nothing() {
    within(async {
        const N: u64 = 4_000;
        let (dir, s) = quick_retries();
        let sink_dir = dir.path().join("sink");
        let engine = start_engine(s, |b| b).await;
        let (c, _events) =
            client_with_events(&url(&engine), "rm-src", ClientOptions::default()).await;
        let c = Arc::new(c);
        let progress = c.progress();

        let first = send_range(c.clone(), 1..=N / 2);
        wait_for("a quarter acked", Duration::from_secs(20), || {
            progress.borrow().acked_through >= N / 4
        })
        .await;
        std::fs::remove_dir_all(&sink_dir).unwrap();
        // Acked after the removal: committed after it, so in the new directory.
        let acked_at_removal = engine.stats().sources[0].acked_through_seq;
        first.await;
        send_range(c.clone(), N / 2 + 1..=N).await;
        let summary = finish(c).await;
        assert_all_delivered(&summary, N);
        assert_eq!(retried(&engine), 0, "no retry spent on the records");
        let p = pipeline(&engine);
        let h = p.sink_health.unwrap();
        assert!(!h.stalled, "{h:?}");
        assert!(
            h.failures >= 1 && h.stalls >= 1,
            "the removed file was noticed: {h:?}"
        );
        assert_eq!(h.records_refused, 0);
        engine.shutdown().await.unwrap();

        assert!(
            read_jsonl(&dir.path().join("dead")).is_empty(),
            "nothing dead-lettered"
        );
        let keys = delivered_keys(&sink_dir);
        let seqs = seqs_of(&keys, "rm-src");
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(seqs, unique, "no record twice in the new directory");
        let missing: Vec<u64> = (acked_at_removal + 1..=N)
            .filter(|q| seqs.binary_search(q).is_err())
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "acked after the removal but not in the new directory: {missing:?}"
        );
    })
    .await;
}

/// A sink-level outage that lasts: sources are paused with reason SINK
/// (naming the stage and the sink), `Admin.Stats` shows the stall with the
/// sink's error, and when the sink is back everything is delivered and
/// acked, once, with no retry spent and nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_sink_outage_pauses_sources_and_loses_nothing() {
    within(async {
        const N: u64 = 3_000;
        let (dir, s) = quick_retries();
        let sink_dir = dir.path().join("sink");
        let file: Arc<dyn Sink> =
            Arc::new(FileSink::open(&sink_dir, "records", 1 << 26, false).unwrap());
        let outage = Outage::new(file);
        let description = outage.describe();
        outage.set_down(true);
        let engine = start_engine(s, |b| b.sink("default", outage.clone())).await;
        let (c, events) =
            client_with_events(&url(&engine), "outage-src", ClientOptions::default()).await;
        let c = Arc::new(c);
        let sending = send_range(c.clone(), 1..=N);

        wait_for("PAUSE with reason SINK", Duration::from_secs(20), || {
            !signals(&events, SignalKind::Pause).is_empty()
        })
        .await;
        let pauses = signals(&events, SignalKind::Pause);
        assert_eq!(
            pauses[0],
            (SignalReason::Sink, "sink".to_owned(), description.clone()),
            "{pauses:?}"
        );
        wait_for("the stall in Admin.Stats", Duration::from_secs(5), || {
            pipeline(&engine).sink_health.is_some_and(|h| h.stalled)
        })
        .await;
        let h = pipeline(&engine).sink_health.unwrap();
        assert!(h.error.contains("injected sink outage"), "{h:?}");
        assert_eq!(h.stalls, 1);
        // Let the outage last through a few attempts (backoff rounds).
        wait_for("several failed attempts", Duration::from_secs(10), || {
            outage.failures() >= 4
        })
        .await;
        assert_eq!(
            engine.stats().sources[0].acked_through_seq,
            0,
            "nothing acked while down"
        );
        assert_eq!(retried(&engine), 0, "the outage spends no retry");
        assert_eq!(engine.stats().sources[0].dead_lettered, 0);

        outage.set_down(false);
        sending.await;
        let summary = finish(c).await;
        assert_all_delivered(&summary, N);
        let resumes = signals(&events, SignalKind::Resume);
        assert!(
            resumes
                .iter()
                .any(|r| r.0 == SignalReason::Sink && r.2 == description),
            "RESUME ends the SINK episode: {resumes:?}"
        );
        assert_eq!(retried(&engine), 0);
        let h = pipeline(&engine).sink_health.unwrap();
        assert!(!h.stalled && h.error.is_empty(), "{h:?}");
        assert_eq!((h.stalls, h.records_refused), (1, 0), "{h:?}");
        assert!(h.failures >= 4, "{h:?}");
        assert!(engine.controller().stalled_stages().is_empty());
        engine.shutdown().await.unwrap();

        assert!(
            read_jsonl(&dir.path().join("dead")).is_empty(),
            "nothing dead-lettered"
        );
        assert_exactly_once(&delivered_keys(&sink_dir), "outage-src", N);
    })
    .await;
}

/// Records the sink refuses one by one are retried and then dead-lettered
/// with the sink's message; the rest of their batches is delivered. The
/// dead-letter sink is down at first: its outage stalls the stage too (one
/// episode, no ERROR spin), and the dead letters are written once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_dead_lettered_with_the_sinks_message() {
    within(async {
        const N: u64 = 2_000;
        const BAD_EVERY: u64 = 50;
        const ERROR: &str = "column n: value out of range";
        let (dir, s) = quick_retries();
        let sink_dir = dir.path().join("sink");
        let dead_dir = dir.path().join("dead");
        let max_retries = s.retry.max_retries;
        let file: Arc<dyn Sink> =
            Arc::new(FileSink::open(&sink_dir, "records", 1 << 26, false).unwrap());
        // Payloads are {"n":<i>,"pad":"xx…"}: mark every BAD_EVERY-th by its n.
        let refuse = Refuse::new(file, "\"bad\"", ERROR);
        let dead_file: Arc<dyn Sink> =
            Arc::new(FileSink::open(&dead_dir, "dead-letters", 1 << 26, false).unwrap());
        let dead_outage = Outage::new(dead_file);
        dead_outage.set_down(true);
        let engine = start_engine(s, |b| {
            b.sink("default", refuse.clone())
                .dead_letter_sink("default", dead_outage.clone())
        })
        .await;
        let (c, _events) =
            client_with_events(&url(&engine), "refuse-src", ClientOptions::default()).await;
        let c = Arc::new(c);
        let bad = |i: u64| i.is_multiple_of(BAD_EVERY);
        let sender = c.clone();
        let sending = tokio::spawn(async move {
            for i in 1..=N {
                let body = if bad(i) {
                    format!("{{\"n\":{i},\"bad\":true}}")
                } else {
                    format!("{{\"n\":{i}}}")
                };
                sender
                    .send_payload(bytes::Bytes::from(body))
                    .await
                    .expect("send");
            }
        });

        wait_for(
            "the dead-letter sink stalled",
            Duration::from_secs(20),
            || {
                pipeline(&engine)
                    .dead_letter_health
                    .is_some_and(|h| h.stalled)
            },
        )
        .await;
        wait_for(
            "a few failed dead-letter attempts",
            Duration::from_secs(10),
            || dead_outage.failures() >= 3,
        )
        .await;
        assert_eq!(pipeline(&engine).dead_letter_health.unwrap().stalls, 1);
        dead_outage.set_down(false);
        sending.await.unwrap();
        let summary = finish(c).await;

        let n_bad = N / BAD_EVERY;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(
            (summary.acked, summary.delivered, summary.dead_lettered),
            (N, N - n_bad, n_bad),
            "{summary:?}"
        );
        let p = pipeline(&engine);
        let h = p.sink_health.unwrap();
        assert_eq!(
            h.records_refused,
            n_bad * (u64::from(max_retries) + 1),
            "{h:?}"
        );
        assert_eq!(
            (h.stalls, h.failures),
            (0, 0),
            "refusals are not a stall: {h:?}"
        );
        let dh = p.dead_letter_health.unwrap();
        assert!(!dh.stalled && dh.stalls == 1, "{dh:?}");
        assert_eq!(retried(&engine), n_bad * u64::from(max_retries));
        engine.shutdown().await.unwrap();

        let dead = read_jsonl(&dead_dir);
        assert_eq!(
            dead.len() as u64,
            n_bad,
            "each refused record dead-lettered once"
        );
        for d in &dead {
            assert_eq!(d["error"], ERROR, "{d}");
            assert_eq!(d["stage"], "sink", "{d}");
            assert_eq!(d["retries"].as_u64(), Some(u64::from(max_retries)), "{d}");
            assert!(bad(d["seq"].as_u64().unwrap()), "{d}");
        }
        let keys = delivered_keys(&sink_dir);
        let seqs = seqs_of(&keys, "refuse-src");
        let want: Vec<u64> = (1..=N).filter(|&i| !bad(i)).collect();
        assert_eq!(seqs, want, "the rest of every batch delivered once");
    })
    .await;
}
