//! Sinks: where completed records (and dead letters) are written.
//!
//! A [`Sink`] takes a batch with [`write`](Sink::write), then makes it
//! durable with [`commit`](Sink::commit); only after `commit` returns `Ok`
//! are the records completed (and acked to their sources). `write` tells
//! which records it refused ([`Written::Refused`]: record-level failures,
//! retried then dead-lettered) apart from a failure of the sink itself
//! ([`SinkError`]: sink-level, the records are not charged and the batch is
//! written again once the sink is back; see [`Sink`]). The trait uses
//! boxed futures so that it is object-safe: the runtime holds
//! `Arc<dyn Sink>`, and tests may pass their own (see
//! [`EngineBuilder::sink`](crate::EngineBuilder::sink)).
//!
//! Every record is written as one JSON line ([`write_json_line`]) carrying its
//! `source_id` and `seq` (the idempotency key), its key, attributes and event
//! time, and its payload: embedded as JSON when it parses as JSON, else as a
//! string (valid UTF-8) or base64, named by `payload_encoding`. A dead letter
//! ([`SinkRecord::dead_letter`]) also carries the pipeline, the failing
//! stage, the error, the retry count and the payload as the source sent it.

//!
//! One file per sink: a folder for [`file`](FileSink) (its writer thread),
//! [`stdout`](StdoutSink),
//! [`null`](NullSink), a folder for [`postgres`](PostgresSink), one for [`nats`](NatsSink), the [`Knobs`] wrapper (delay, injected record
//! failures) and the [`Outage`] wrapper (an injected sink-level outage);
//! [`SinkBatch`] is the batch they are handed, [`json_line`] the record
//! format they write.

use std::sync::Arc;

use sluice_config::SinkSpec;

mod contract;
mod file;
mod json;
mod knobs;
mod nats;
mod null;
mod postgres;
mod stdout;

pub(crate) use contract::SourceNames;
pub use contract::{
    DeadLetterInfo, RecordFailure, Sink, SinkBatch, SinkError, SinkFuture, SinkRecord, Written,
};
pub use file::FileSink;
pub use json::{json_line, json_value, write_json_line};
pub use knobs::{INJECTED_RECORD_FAILURE, Knobs, Outage, with_knobs};
pub use nats::{NatsError, NatsSink};
pub use null::NullSink;
pub use postgres::PostgresSink;
pub use stdout::StdoutSink;

/// Builds the sink a [`SinkSpec`] of `pipeline` describes, test knobs
/// included (a postgres sink connects and checks its table here; the
/// pipeline's name is part of some sinks' targets, e.g. a NATS subject).
pub async fn build_sink(pipeline: &str, spec: &SinkSpec) -> Result<Arc<dyn Sink>, SinkError> {
    let inner: Arc<dyn Sink> = match spec {
        SinkSpec::File {
            dir,
            prefix,
            rotate_bytes,
            fsync,
            group_commit_batches,
            ..
        } => Arc::new(
            FileSink::open(dir, prefix, *rotate_bytes, *fsync)?
                .with_group_commit(*group_commit_batches),
        ),
        SinkSpec::Stdout { .. } => Arc::new(StdoutSink),
        SinkSpec::Null { .. } => Arc::new(NullSink),
        SinkSpec::Postgres(p) => Arc::new(PostgresSink::connect(p).await?),
        SinkSpec::Nats(n) => Arc::new(NatsSink::new(n, pipeline)?),
    };
    Ok(with_knobs(inner, spec.delay(), spec.fail_rate()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::record::EngineRecord;

    /// `records` as one source's sink records, numbered from `first_seq`.
    fn sink_records<'a>(
        source: &'a str,
        first_seq: u64,
        records: &'a [EngineRecord],
    ) -> Vec<SinkRecord<'a>> {
        (records.iter().enumerate())
            .map(|(i, record)| SinkRecord {
                source,
                seq: first_seq + i as u64,
                record,
                dead_letter: None,
            })
            .collect()
    }
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::{Value, json};

    use super::*;

    /// The `seq` of every line under `dir`, file by file in name order.
    fn seqs(dir: &Path) -> Vec<u64> {
        lines(dir)
            .into_iter()
            .flat_map(|(_, v)| v)
            .map(|v| v["seq"].as_u64().unwrap())
            .collect()
    }

    fn lines(dir: &Path) -> Vec<(String, Vec<Value>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let values = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    values,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn file_sink_writes_parseable_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), "records", 200, true).unwrap();
        let recs: Vec<EngineRecord> = (0..10)
            .map(|i| match i % 3 {
                0 => EngineRecord::from_payload(format!("{{\"i\":{i}}}").into_bytes()),
                1 => EngineRecord::from_payload(format!("plain {i}\nline").into_bytes()),
                _ => EngineRecord::from_payload(vec![0xff, 0x00, i as u8]),
            })
            .collect();
        let batch = sink_records("src-a", 1, &recs);
        sink.write(batch[..5].into()).await.unwrap();
        sink.commit().await.unwrap();
        sink.write(batch[5..].into()).await.unwrap();
        sink.commit().await.unwrap();
        let files = lines(dir.path());
        assert!(files.len() > 1, "rotation expected: {files:?}");
        for (name, _) in &files {
            assert!(name.starts_with("records-") && name.ends_with(".jsonl"));
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len <= 200 || files.len() == 1, "{name} is {len} bytes");
        }
        let all: Vec<Value> = files.into_iter().flat_map(|(_, v)| v).collect();
        assert_eq!(all.len(), 10);
        for (i, v) in all.iter().enumerate() {
            assert_eq!(v["source_id"], "src-a");
            assert_eq!(v["seq"], i as u64 + 1);
        }
        assert_eq!(all[0]["payload"], json!({"i": 0}));
        assert_eq!(all[0]["payload_encoding"], "json");
        assert_eq!(all[1]["payload"], "plain 1\nline");
        assert_eq!(all[1]["payload_encoding"], "string");
        assert_eq!(all[2]["payload_encoding"], "base64");
        assert_eq!(
            BASE64.decode(all[2]["payload"].as_str().unwrap()).unwrap(),
            vec![0xff, 0x00, 2]
        );

        // A new sink on the same directory starts a new file.
        let again = FileSink::open(dir.path(), "records", 200, false).unwrap();
        let n_before = lines(dir.path()).len();
        again.write(batch[..1].into()).await.unwrap();
        again.commit().await.unwrap();
        assert_eq!(lines(dir.path()).len(), n_before + 1);
    }

    #[tokio::test]
    async fn dead_letters_keep_error_stage_retries_and_original() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SinkSpec::File {
            dir: dir.path().to_path_buf(),
            prefix: "dead-letters".into(),
            rotate_bytes: 1 << 20,
            fsync: true,
            group_commit_batches: 4,
            delay: Duration::ZERO,
            fail_rate: 0.0,
        };
        let sink = build_sink("p", &spec).await.unwrap();
        let mut rec = EngineRecord::from_payload(&b"{\"a\":1}"[..]);
        rec.set_payload(&b"{\"a\":2}"[..]);
        let batch = [SinkRecord {
            source: "s",
            seq: 9,
            record: &rec,
            dead_letter: Some(DeadLetterInfo {
                pipeline: "p",
                stage: "enrich",
                error: "boom",
                retries: 3,
            }),
        }];
        sink.write(batch[..].into()).await.unwrap();
        sink.commit().await.unwrap();
        let files = lines(dir.path());
        let v = &files[0].1[0];
        assert_eq!(files[0].0, "dead-letters-0.jsonl");
        assert_eq!(v["stage"], "enrich");
        assert_eq!(v["error"], "boom");
        assert_eq!(v["retries"], 3);
        assert_eq!(v["pipeline"], "p");
        assert_eq!(v["payload"], json!({"a": 2}));
        assert_eq!(v["original_payload"], json!({"a": 1}));
    }

    #[tokio::test]
    async fn knobs_refuse_some_records_and_write_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let file: Arc<dyn Sink> =
            Arc::new(FileSink::open(dir.path(), "r", 1 << 20, false).unwrap());
        let sink = with_knobs(file, Duration::ZERO, 0.3);
        let recs: Vec<EngineRecord> = (0..100)
            .map(|i| EngineRecord::from_payload(format!("{i}").into_bytes()))
            .collect();
        let batch = sink_records("s", 0, &recs);
        let Written::Refused(refused) = sink.write(batch[..].into()).await.unwrap() else {
            panic!("some records refused at 0.3");
        };
        sink.commit().await.unwrap();
        assert!((10..50).contains(&refused.len()), "{}", refused.len());
        assert!(refused.windows(2).all(|w| w[0].index < w[1].index));
        let written: Vec<u64> = seqs(dir.path());
        let expect: Vec<u64> = (0..100)
            .filter(|i| !refused.iter().any(|f| f.index as u64 == *i))
            .collect();
        assert_eq!(written, expect, "the others are written, in order");
    }

    #[tokio::test]
    async fn outage_fails_sink_level_until_it_is_over() {
        let out = Outage::new(Arc::new(NullSink));
        let rec = EngineRecord::from_payload(&b"x"[..]);
        let batch = sink_records("s", 1, std::slice::from_ref(&rec));
        out.set_down(true);
        assert!(matches!(
            out.write(batch[..].into()).await,
            Err(SinkError::Injected)
        ));
        assert!(out.commit().await.is_err());
        assert_eq!(out.failures(), 2);
        out.set_down(false);
        assert_eq!(out.write(batch[..].into()).await.unwrap(), Written::All);
        out.commit().await.unwrap();
    }

    /// The directory removed under the sink: the batch whose file was
    /// removed fails sink-level at commit (its lines went into a removed
    /// file), and written again it lands in a new file in the recreated
    /// directory; nothing is refused.
    #[tokio::test]
    async fn file_sink_recreates_its_directory_and_reports_the_lost_batch() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sink");
        let sink = FileSink::open(&dir, "records", 1 << 20, true).unwrap();
        let recs: Vec<EngineRecord> = (0..4)
            .map(|i| EngineRecord::from_payload(format!("{{\"i\":{i}}}").into_bytes()))
            .collect();
        let batch = sink_records("s", 1, &recs);
        assert_eq!(sink.write(batch[..2].into()).await.unwrap(), Written::All);
        sink.commit().await.unwrap();

        std::fs::remove_dir_all(&dir).unwrap();
        // The open file takes the lines without error...
        assert_eq!(sink.write(batch[2..].into()).await.unwrap(), Written::All);
        // ...and the commit finds it removed: a sink-level error.
        let err = sink.commit().await.unwrap_err();
        assert!(matches!(err, SinkError::Io { .. }), "{err}");
        // Written again: the directory is back, with the batch once.
        assert_eq!(sink.write(batch[2..].into()).await.unwrap(), Written::All);
        sink.commit().await.unwrap();
        let written = seqs(&dir);
        assert_eq!(written, vec![3, 4]);

        // Removed between batches (no file open): created at the next write.
        std::fs::remove_dir_all(&dir).unwrap();
        let fresh = FileSink::open(&dir, "records", 1 << 20, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(fresh.write(batch[..1].into()).await.unwrap(), Written::All);
        fresh.commit().await.unwrap();
        assert_eq!(lines(&dir).len(), 1);
    }

    /// A commit covers exactly the writes made before it was called: a
    /// write made while it runs waits for the next one. The counters are
    /// up to date when a commit returns.
    #[tokio::test]
    async fn file_sink_group_commit_covers_writes_made_during_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), "records", 1 << 20, true).unwrap();
        assert_eq!(
            sink.group_commit(),
            sluice_config::DEFAULT_GROUP_COMMIT_BATCHES
        );
        let recs: Vec<EngineRecord> = (0..30)
            .map(|i| EngineRecord::from_payload(format!("{{\"i\":{i}}}").into_bytes()))
            .collect();
        let batch = sink_records("s", 1, &recs);
        sink.write(batch[..10].into()).await.unwrap();
        let first = sink.commit();
        sink.write(batch[10..20].into()).await.unwrap();
        first.await.unwrap();
        assert_eq!(
            sink.durable_lines(),
            10,
            "the first commit covers the first write only"
        );
        assert_eq!(sink.syncs(), 1);
        sink.write(batch[20..].into()).await.unwrap();
        sink.commit().await.unwrap();
        assert_eq!((sink.durable_lines(), sink.syncs()), (30, 2));
        let written = seqs(dir.path());
        assert_eq!(written, (1..=30).collect::<Vec<_>>());
    }

    /// Batches written before one commit rotate where a line would pass
    /// `rotate_bytes`, within a batch and across batches; a line longer
    /// than `rotate_bytes` gets a file of its own. Each rotated file was
    /// synced before it was closed.
    #[tokio::test]
    async fn file_sink_rotates_within_and_across_batches_before_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), "r", 300, true).unwrap();
        let recs: Vec<EngineRecord> = (0..40)
            .map(|i| {
                let n = if i == 17 { 400 } else { i % 7 * 5 };
                EngineRecord::from_payload(
                    format!("{{\"i\":{i},\"s\":\"{}\"}}", "x".repeat(n)).into_bytes(),
                )
            })
            .collect();
        let batch = sink_records("s", 1, &recs);
        for chunk in batch.chunks(6) {
            sink.write(chunk.into()).await.unwrap();
        }
        sink.commit().await.unwrap();
        let mut files = lines(dir.path());
        // In the order written: by the number in `r-<n>.jsonl`.
        files.sort_by_key(|(name, _)| {
            name.trim_start_matches("r-")
                .trim_end_matches(".jsonl")
                .parse::<u64>()
                .unwrap()
        });
        assert!(files.len() > 5, "{}", files.len());
        let mut seqs = Vec::new();
        for (name, values) in &files {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(
                len <= 300 || values.len() == 1,
                "{name}: {len} bytes, {} lines",
                values.len()
            );
            seqs.extend(values.iter().map(|v| v["seq"].as_u64().unwrap()));
        }
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert_eq!(sink.syncs(), files.len() as u64, "each file synced once");
    }

    /// A write that fails in the writer (here: the rotation finds its file
    /// removed) is reported by the next commit, and what was written until
    /// then is dropped, not written twice once the runtime writes it again.
    #[tokio::test]
    async fn file_sink_reports_a_failed_write_at_the_next_commit() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sink");
        let sink = FileSink::open(&dir, "records", 1, false).unwrap();
        let recs: Vec<EngineRecord> = (0..3)
            .map(|i| EngineRecord::from_payload(format!("{i}").into_bytes()))
            .collect();
        let batch = sink_records("s", 1, &recs);
        sink.write(batch[..1].into()).await.unwrap();
        sink.commit().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Accepted, then lost in the writer (rotating finds the file gone)...
        assert_eq!(sink.write(batch[1..2].into()).await.unwrap(), Written::All);
        // ...and this one dropped until the failure is reported.
        assert_eq!(sink.write(batch[2..].into()).await.unwrap(), Written::All);
        let err = sink.commit().await.unwrap_err();
        assert!(matches!(err, SinkError::Io { .. }), "{err}");
        assert_eq!(sink.durable_lines(), 1);
        sink.write(batch[1..].into()).await.unwrap();
        sink.commit().await.unwrap();
        let written = seqs(&dir);
        assert_eq!(written, vec![2, 3]);
        assert_eq!(sink.durable_lines(), 3);
    }

    #[tokio::test]
    async fn knobs_fail_and_delay() {
        let all_fail = with_knobs(Arc::new(NullSink), Duration::ZERO, 1.0);
        let rec = EngineRecord::from_payload(&b"x"[..]);
        let batch = sink_records("s", 1, std::slice::from_ref(&rec));
        let refused = |w: Written| match w {
            Written::All => 0,
            Written::Refused(f) => f.len(),
        };
        assert_eq!(
            all_fail.write(batch[..].into()).await.unwrap(),
            Written::Refused(vec![RecordFailure {
                index: 0,
                error: INJECTED_RECORD_FAILURE.into()
            }])
        );
        let slow = with_knobs(Arc::new(NullSink), Duration::from_millis(30), 0.0);
        let t = std::time::Instant::now();
        slow.write(batch[..].into()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        let half = with_knobs(Arc::new(NullSink), Duration::ZERO, 0.5);
        let mut failed = 0;
        for _ in 0..200 {
            failed += refused(half.write(batch[..].into()).await.unwrap());
        }
        assert!((60..140).contains(&failed), "{failed}");
    }
}
