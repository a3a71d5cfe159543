//! Record memory: the bytes the buffer charges cover the batch memory its
//! records keep alive (`sluice_engine::record_memory`), read through the
//! engine's counter, not the RSS.

use std::time::Duration;

use sluice_buffer::Limit;
use sluice_client::{ClientOptions, SourceClient};
use sluice_config::{StageSpec, TransformSpec};
use sluice_engine::record::EngineRecord;
use sluice_engine::transform::Transform;
use sluice_tests::*;

/// A small budget and a `fail` stage: records waiting out a long retry
/// backoff are all that is left in the buffer. Each came from a batch of
/// 1,000 records, whose copy it would keep alive (about 200 KB for one
/// record of 200 B, 40 times the budget's worth of records in all); moved
/// into an allocation of its own on its first failure, the buffer's
/// charge covers what is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_records_do_not_keep_their_batch_alive() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        const RATE: f64 = 0.01;
        s.pipelines[0].stages = vec![StageSpec {
            name: "flaky".into(),
            transform: TransformSpec::Fail { rate: RATE },
        }];
        let budget = Limit::new(100_000, 1 << 20);
        s.buffer.global = budget;
        s.buffer.per_stage = budget;
        s.buffer.per_source = budget;
        s.retry.max_retries = 3;
        s.retry.initial_backoff = Duration::from_secs(60);
        s.retry.max_backoff = Duration::from_secs(60);
        s.server.shutdown_timeout = Duration::from_secs(1);
        let engine = start_engine(s, |b| b).await;

        const N: u64 = 20_000;
        const SIZE: usize = 200;
        let fail = Transform::Fail { rate: RATE };
        let mut probe = EngineRecord::from_payload(&b"{}"[..]);
        let fails = (1..=N)
            .filter(|&seq| fail.apply(seq, &mut probe).is_err())
            .count() as u64;
        assert!(fails > 100, "{fails} failing records");

        let opts = ClientOptions {
            max_batch_records: 1_000,
            linger: Duration::from_millis(20),
            ..ClientOptions::default()
        };
        let (client, _events) = SourceClient::connect(&url(&engine), "retained", "", opts)
            .await
            .expect("client connects");
        for i in 1..=N {
            client.send_payload(payload(i, SIZE)).await.expect("send");
        }
        // Wait until everything was admitted and the buffer holds only the
        // failed records (waiting out their 60 s backoff).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let snap = loop {
            let snap = engine.buffer().snapshot();
            let src = snap.sources.iter().find(|s| &*s.name == "retained");
            let settled = src.is_some_and(|s| {
                s.admitted_through == N && s.delivered == N - fails && s.in_engine() == fails
            });
            if settled {
                break snap;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled: {src:?}, {fails} failing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let memory = engine.record_memory();
        let held = memory.held_bytes();
        let charged = snap.global.bytes;
        eprintln!(
            "{fails} records retained: the buffer charges {charged} bytes, their copies hold \
             {held} bytes in {} copies; {} records compacted",
            memory.copies(),
            memory.compacted_records()
        );
        assert!(held > 0, "the retained records hold their bytes");
        assert!(
            held <= charged,
            "the retained records keep {held} bytes of batch copies alive, the buffer \
             charges {charged} (budget {} bytes)",
            budget.bytes
        );
        drop(client);
        let _ = engine.shutdown().await;
    })
    .await
    .expect("in time");
}

/// A `sample` stage keeping 1 record in 100 in front of a sink that waits
/// 3 s before each batch: the survivors queue for the sink while the rest
/// of their batches is filtered out. Moved together into one allocation
/// per part (less than half of it survives), they keep only their own
/// bytes alive, which the buffer charges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_survivors_do_not_keep_their_batch_alive() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        const KEEP: f64 = 0.01;
        s.pipelines[0].stages = vec![StageSpec {
            name: "sample".into(),
            transform: TransformSpec::Sample { keep: KEEP },
        }];
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_secs(3), 0.0);
        let budget = Limit::new(100_000, 1 << 20);
        s.buffer.global = budget;
        s.buffer.per_stage = budget;
        s.buffer.per_source = budget;
        s.server.shutdown_timeout = Duration::from_secs(1);
        let engine = start_engine(s, |b| b).await;

        const N: u64 = 20_000;
        const SIZE: usize = 200;
        let sample = Transform::Sample { keep: KEEP };
        let mut probe = EngineRecord::from_payload(&b"{}"[..]);
        let kept = (1..=N)
            .filter(|&seq| {
                sample.apply(seq, &mut probe).ok() == Some(sluice_engine::transform::Outcome::Keep)
            })
            .count() as u64;
        assert!(kept > 100, "{kept} kept records");

        let opts = ClientOptions {
            max_batch_records: 1_000,
            linger: Duration::from_millis(20),
            ..ClientOptions::default()
        };
        let (client, _events) = SourceClient::connect(&url(&engine), "sampled", "", opts)
            .await
            .expect("client connects");
        for i in 1..=N {
            client.send_payload(payload(i, SIZE)).await.expect("send");
        }
        // Wait until every record went through the sample stage: the
        // survivors wait for the slow sink, the rest is completed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let snap = loop {
            let snap = engine.buffer().snapshot();
            let src = snap.sources.iter().find(|s| &*s.name == "sampled");
            let settled = src.is_some_and(|s| {
                s.admitted_through == N
                    && s.filtered == N - kept
                    && s.in_engine() + s.delivered == kept
            });
            if settled {
                break snap;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled: {src:?}, {kept} kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let memory = engine.record_memory();
        let held = memory.held_bytes();
        let charged = snap.global.bytes;
        eprintln!(
            "{kept} records kept: the buffer charges {charged} bytes, their copies hold {held} \
             bytes in {} copies; {} records compacted",
            memory.copies(),
            memory.compacted_records()
        );
        assert!(memory.compacted_records() > 0, "survivors were compacted");
        assert!(
            held <= charged,
            "the kept records keep {held} bytes of batch copies alive, the buffer charges \
             {charged} (budget {} bytes)",
            budget.bytes
        );
        drop(client);
        let _ = engine.shutdown().await;
    })
    .await
    .expect("in time");
}
