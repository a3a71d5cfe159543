//! Record memory: the bytes the buffer charges cover the batch memory its
//! records keep alive (`sluice_engine::record_memory`), read through the
//! engine's counter, not the RSS.

use std::time::Duration;

use sluice_buffer::{Limit, SourceSnapshot};
use sluice_client::{ClientOptions, SourceClient};
use sluice_config::{Settings, StageSpec, TransformSpec};
use sluice_engine::EngineHandle;
use sluice_engine::record::EngineRecord;
use sluice_engine::transform::Transform;
use sluice_tests::*;

/// Records each test sends, of [`SIZE`] bytes, in batches of 1,000.
const N: u64 = 20_000;
const SIZE: usize = 200;
/// The byte budget of every level: 1 MiB, well below the 4 MB the test's
/// batch copies would take if they stayed alive.
const BUDGET: Limit = Limit::new(100_000, 1 << 20);

/// Settings with one stage of `transform` and the 1 MiB budget.
fn small_budget(dir: &std::path::Path, stage: &str, transform: TransformSpec) -> Settings {
    let mut s = test_settings(dir);
    s.pipelines[0].stages = vec![StageSpec {
        name: stage.into(),
        transform,
    }];
    s.buffer.global = BUDGET;
    s.buffer.per_stage = BUDGET;
    s.buffer.per_source = BUDGET;
    s.server.shutdown_timeout = Duration::from_secs(1);
    s
}

/// How many of the records `1..=N` the engine's `transform` would keep
/// (`Ok(Keep)`) or fail (`Err`), by sequence number.
fn count(transform: &Transform, kept: bool) -> u64 {
    let mut probe = EngineRecord::from_payload(&b"{}"[..]);
    (1..=N)
        .filter(|&seq| match transform.apply(seq, &mut probe) {
            Ok(outcome) => kept && outcome == sluice_engine::transform::Outcome::Keep,
            Err(_) => !kept,
        })
        .count() as u64
}

/// Sends `N` records from `source` in batches of 1,000 and waits until
/// `settled` holds for the source's snapshot (at most 30 s); returns the
/// client (still open: its records stay in the engine) and the global
/// bytes the buffer charges then.
async fn send_until(
    engine: &EngineHandle,
    source: &str,
    settled: impl Fn(&SourceSnapshot) -> bool,
) -> (SourceClient, u64) {
    let opts = ClientOptions {
        max_batch_records: 1_000,
        linger: Duration::from_millis(20),
        ..ClientOptions::default()
    };
    let (client, _events) = SourceClient::connect(&url(engine), source, "", opts)
        .await
        .expect("client connects");
    for i in 1..=N {
        client.send_payload(payload(i, SIZE)).await.expect("send");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let snap = engine.buffer().snapshot();
        let src = snap.sources.iter().find(|s| &*s.name == source);
        if src.is_some_and(&settled) {
            return (client, snap.global.bytes);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {src:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The batch copies the engine's records keep alive are covered by what
/// the buffer charges (`charged`); `what` names the records.
fn assert_covered(engine: &EngineHandle, what: &str, charged: u64) {
    let memory = engine.record_memory();
    let held = memory.held_bytes();
    eprintln!(
        "{what}: the buffer charges {charged} bytes, their copies hold {held} bytes in {} \
         copies; {} records compacted",
        memory.copies(),
        memory.compacted_records()
    );
    assert!(held > 0, "{what} hold their bytes");
    assert!(memory.compacted_records() > 0, "{what} were compacted");
    assert!(
        held <= charged,
        "{what} keep {held} bytes of batch copies alive, the buffer charges {charged} \
         (budget {} bytes)",
        BUDGET.bytes
    );
}

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
        const RATE: f64 = 0.01;
        let mut s = small_budget(dir.path(), "flaky", TransformSpec::Fail { rate: RATE });
        s.retry.max_retries = 3;
        s.retry.initial_backoff = Duration::from_secs(60);
        s.retry.max_backoff = Duration::from_secs(60);
        let engine = start_engine(s, |b| b).await;
        let fails = count(&Transform::Fail { rate: RATE }, false);
        assert!(fails > 100, "{fails} failing records");
        // Settled: everything admitted, and the buffer holds only the
        // failed records (waiting out their 60 s backoff).
        let (client, charged) = send_until(&engine, "retained", |s| {
            s.admitted_through == N && s.delivered == N - fails && s.in_engine() == fails
        })
        .await;
        assert_covered(&engine, &format!("{fails} retried records"), charged);
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
        const KEEP: f64 = 0.01;
        let mut s = small_budget(dir.path(), "sample", TransformSpec::Sample { keep: KEEP });
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_secs(3), 0.0);
        let engine = start_engine(s, |b| b).await;
        let kept = count(&Transform::Sample { keep: KEEP }, true);
        assert!(kept > 100, "{kept} kept records");
        // Settled: every record went through the sample stage; the
        // survivors wait for the slow sink, the rest is completed.
        let (client, charged) = send_until(&engine, "sampled", |s| {
            s.admitted_through == N && s.filtered == N - kept && s.in_engine() + s.delivered == kept
        })
        .await;
        assert_covered(&engine, &format!("{kept} kept records"), charged);
        drop(client);
        let _ = engine.shutdown().await;
    })
    .await
    .expect("in time");
}
