//! Group commit in the sink stage ([`Sink::group_commit`]): while a commit
//! runs the next batches are written, one commit covers them, and a record
//! is acked only after a commit that covers it returned. A model sink with
//! slow commits (so that an early ack would be seen) keeps what each commit
//! covers and loses it when the commit fails; the real file sink with fsync
//! is checked against its own count of synced lines.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_engine::sink::{FileSink, Sink, SinkBatch, SinkError, SinkFuture, Written};
use sluice_tests::*;

/// What the model sink saw.
#[derive(Debug, Default)]
struct Model {
    /// Sequence numbers written and not yet taken by a `commit` call.
    pending: Vec<u64>,
    /// Batches written since the last `commit` call.
    pending_batches: usize,
    /// Whether a write since the last `commit` call was lost (the next
    /// commit fails).
    pending_lost: bool,
    /// Covered by a commit that returned `Ok`.
    durable: BTreeSet<u64>,
    writes: u64,
    commits: u64,
    /// Batches written and not yet covered by a commit that returned; most seen.
    open_batches: usize,
    max_open_batches: usize,
    /// Commits running now; writes made while one ran.
    committing: usize,
    writes_during_commit: u64,
}

/// A sink that keeps, per commit, what it covers: written batches become
/// durable only when the commit called after them returns `Ok`; a failed
/// commit loses them. `fail_commit`: the n-th commit fails; `lose_write`:
/// the n-th write is lost (its `write` says `Ok`, the next commit fails).
#[derive(Debug)]
struct ModelSink {
    model: Mutex<Model>,
    window: usize,
    commit_time: Duration,
    fail_commit: Option<u64>,
    lose_write: Option<u64>,
}

impl ModelSink {
    fn new(window: usize, fail_commit: Option<u64>, lose_write: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(Model::default()),
            window,
            commit_time: Duration::from_millis(15),
            fail_commit,
            lose_write,
        })
    }

    /// Whether every record up to `through` is durable.
    fn durable_through(&self, through: u64) -> bool {
        let m = self.model.lock().unwrap();
        through == 0 || m.durable.range(1..=through).count() as u64 == through
    }
}

impl Sink for ModelSink {
    fn describe(&self) -> String {
        "model".into()
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        let mut m = self.model.lock().unwrap();
        m.writes += 1;
        if self.lose_write == Some(m.writes) {
            m.pending_lost = true;
        } else {
            m.pending.extend(batch.iter().map(|r| r.seq));
        }
        m.pending_batches += 1;
        m.open_batches += 1;
        m.max_open_batches = m.max_open_batches.max(m.open_batches);
        if m.committing > 0 {
            m.writes_during_commit += 1;
        }
        Box::pin(std::future::ready(Ok(Written::All)))
    }
    fn commit(&self) -> SinkFuture<'_> {
        // What this commit covers is taken when it is called.
        let (cover, batches, lost, n) = {
            let mut m = self.model.lock().unwrap();
            m.commits += 1;
            m.committing += 1;
            let cover = std::mem::take(&mut m.pending);
            let batches = std::mem::take(&mut m.pending_batches);
            let lost = std::mem::take(&mut m.pending_lost);
            (cover, batches, lost, m.commits)
        };
        Box::pin(async move {
            tokio::time::sleep(self.commit_time).await;
            let mut m = self.model.lock().unwrap();
            m.committing -= 1;
            m.open_batches -= batches;
            if lost || self.fail_commit == Some(n) {
                return Err(SinkError::Other(format!("model: commit {n} failed")));
            }
            m.durable.extend(cover);
            Ok(())
        })
    }
    fn group_commit(&self) -> usize {
        self.window
    }
}

/// Sends `n` records through an engine whose sink is `sink` (batches of
/// 100), checking at every ack received that everything acked is durable by
/// `durable_through`; returns the engine's sink health.
async fn run_checked(
    sink: Arc<dyn Sink>,
    n: u64,
    durable_through: impl Fn(u64) -> bool + Send + 'static,
) -> sluice_proto::v1::SinkHealth {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(dir.path());
    s.retry.initial_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(20);
    s.pipelines[0].batch.max_records = 100;
    let engine = start_engine(s, |b| b.sink("default", sink)).await;
    let (c, _events) = events_client(&engine, "gc-src").await;
    let c = Arc::new(c);
    let mut progress = c.progress();
    let checker = tokio::spawn(async move {
        let mut checks = 0u64;
        while progress.changed().await.is_ok() {
            let acked = progress.borrow_and_update().acked_through;
            assert!(
                durable_through(acked),
                "acked through {acked} before a commit covering it returned"
            );
            checks += 1;
            if acked >= n {
                break;
            }
        }
        checks
    });
    send_range(c.clone(), 1..=n).await;
    let summary = finish(c).await;
    assert_all_delivered(&summary, n);
    let checks = checker.await.expect("checker");
    assert!(checks > 1, "acks were checked as they came: {checks}");
    assert_eq!(retried(&engine), 0, "a sink failure spends no retry");
    let health = pipeline_stats(&engine).sink_health.unwrap();
    engine.shutdown().await.unwrap();
    health
}

/// With a window of 4, batches are written while a commit runs (fewer
/// commits than writes), at most 2 × 4 batches are written and not yet
/// covered, and no ack precedes the commit covering it. With a window of 1
/// the stage writes and commits in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_writes_while_committing_and_acks_only_after_the_commit() {
    within(async {
        const N: u64 = 5_000;
        let sink = ModelSink::new(4, None, None);
        let check = sink.clone();
        let health = run_checked(sink.clone(), N, move |t| check.durable_through(t)).await;
        assert_eq!(health.failures, 0, "{health:?}");
        {
            let m = sink.model.lock().unwrap();
            assert!(m.writes_during_commit > 0, "{m:?}");
            assert!(
                m.commits < m.writes,
                "one commit covers several batches: {m:?}"
            );
            assert!(m.max_open_batches <= 8, "bounded in flight: {m:?}");
            assert_eq!(m.durable.len() as u64, N);
        }

        let serial = ModelSink::new(1, None, None);
        let check = serial.clone();
        run_checked(serial.clone(), 2_000, move |t| check.durable_through(t)).await;
        let m = serial.model.lock().unwrap();
        assert_eq!(m.writes_during_commit, 0, "{m:?}");
        assert_eq!(m.max_open_batches, 1, "{m:?}");
    })
    .await;
}

/// A failed group commit (the commit itself, or a write lost and reported
/// by the next commit): the batches it covered are written again, one by
/// one through the stall logic, nothing acked is lost, nothing is
/// dead-lettered, and group commit resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_repairs_a_failed_commit_without_losing_acked_records() {
    within(async {
        const N: u64 = 5_000;
        for (fail_commit, lose_write) in [(Some(3), None), (None, Some(6))] {
            let sink = ModelSink::new(4, fail_commit, lose_write);
            let check = sink.clone();
            let health = run_checked(sink.clone(), N, move |t| check.durable_through(t)).await;
            assert!(health.failures >= 1 && health.stalls >= 1, "{health:?}");
            assert!(!health.stalled, "{health:?}");
            let m = sink.model.lock().unwrap();
            assert_eq!(m.durable.len() as u64, N, "every record durable: {m:?}");
            assert!(m.writes_during_commit > 0, "group commit resumed: {m:?}");
        }
    })
    .await;
}

/// The file sink with fsync under the engine: one `sync_data` covers
/// several batches, and every ack received is covered by the lines the
/// sink's writer had synced (counted before a commit returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_acks_follow_the_fsync_that_covers_them() {
    within(async {
        const N: u64 = 5_000;
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            FileSink::open(dir.path().join("out"), "records", 1 << 26, true)
                .unwrap()
                .with_group_commit(8),
        );
        let check = file.clone();
        // One source, each record once: lines durable >= records acked.
        run_checked(file.clone(), N, move |t| check.durable_lines() >= t).await;
        let batches = N / 100;
        assert!(file.durable_lines() >= N);
        assert!(
            file.syncs() < batches,
            "one fsync covers several batches: {} syncs for {batches} batches",
            file.syncs()
        );
        assert_exactly_once(&delivered_keys(&dir.path().join("out")), "gc-src", N);
    })
    .await;
}
