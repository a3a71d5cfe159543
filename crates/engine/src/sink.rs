//! Sinks: where completed records (and dead letters) are written.
//!
//! A [`Sink`] takes a batch with [`write`](Sink::write), then makes it
//! durable with [`commit`](Sink::commit); only after `commit` returns `Ok`
//! are the records completed (and acked to their sources). The trait uses
//! boxed futures so that it is object-safe: the runtime holds
//! `Arc<dyn Sink>`, and tests may pass their own (see
//! [`EngineBuilder::sink`](crate::EngineBuilder::sink)).
//!
//! Every record is written as one JSON line ([`json_line`]) carrying its
//! `source_id` and `seq` (the idempotency key), its key, attributes and event
//! time, and its payload: embedded as JSON when it parses as JSON, else as a
//! string (valid UTF-8) or base64, named by `payload_encoding`. A dead letter
//! ([`SinkRecord::dead_letter`]) also carries the pipeline, the failing
//! stage, the error, the retry count and the payload as the source sent it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use sluice_config::SinkSpec;
use tokio::io::AsyncWriteExt;

use sluice_buffer::{BufferedRecord, DeadLetter, SourceId};

use crate::record::EngineRecord;
use crate::transform::hits;

/// The future a [`Sink`] returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Why a sink failed. The runtime retries the batch with backoff and, past
/// `retry.max_retries`, dead-letters its records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An I/O error, with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An I/O error on standard output.
    #[error("stdout: {0}")]
    Stdout(std::io::Error),
    /// A failure injected by the `fail_rate` test knob.
    #[error("injected sink failure (fail_rate {0})")]
    Injected(f64),
    /// Any other failure (custom sinks).
    #[error("{0}")]
    Other(String),
}

/// What a dead letter carries besides the record.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterInfo<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The stage where the record failed for the last time.
    pub stage: &'a str,
    /// The error of that failure.
    pub error: &'a str,
    /// How many retries it had.
    pub retries: u32,
}

/// One record handed to a sink.
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    /// The source's id (`Open.source_id`).
    pub source: &'a str,
    /// The record's sequence number; with `source`, an idempotency key.
    pub seq: u64,
    /// The record.
    pub record: &'a EngineRecord,
    /// Set for records written to a dead-letter sink.
    pub dead_letter: Option<DeadLetterInfo<'a>>,
}

/// A destination for records. Object-safe (`Arc<dyn Sink>`).
///
/// The runtime calls `write` then `commit` for each batch, from one task per
/// pipeline, and completes the records only when both succeeded.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// A short description (kind and target) for `Admin.Stats` and logs.
    fn describe(&self) -> String;
    /// Writes a batch (not necessarily durable yet).
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a>;
    /// Makes everything written so far durable.
    fn commit(&self) -> SinkFuture<'_>;
}

fn bytes_field(out: &mut Map<String, Value>, name: &str, bytes: &[u8], json_ok: bool) {
    let (value, encoding) = if json_ok && let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        (v, "json")
    } else if let Ok(s) = std::str::from_utf8(bytes) {
        (Value::String(s.to_owned()), "string")
    } else {
        (Value::String(BASE64.encode(bytes)), "base64")
    };
    out.insert(name.to_owned(), value);
    out.insert(format!("{name}_encoding"), Value::String(encoding.into()));
}

/// The JSON object a sink writes for one record (see the [module docs](self)).
pub fn json_value(r: &SinkRecord<'_>) -> Value {
    let mut out = Map::new();
    out.insert("source_id".into(), json!(r.source));
    out.insert("seq".into(), json!(r.seq));
    let rec = r.record;
    if !rec.key.is_empty() {
        bytes_field(&mut out, "key", &rec.key, false);
    }
    if !rec.attributes().is_empty() {
        let attrs: Map<String, Value> = rec
            .attributes()
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.insert("attributes".into(), Value::Object(attrs));
    }
    if rec.event_time_ms != 0 {
        out.insert("event_time_ms".into(), json!(rec.event_time_ms));
    }
    bytes_field(&mut out, "payload", rec.payload(), true);
    if let Some(d) = r.dead_letter {
        out.insert("pipeline".into(), json!(d.pipeline));
        out.insert("stage".into(), json!(d.stage));
        out.insert("error".into(), json!(d.error));
        out.insert("retries".into(), json!(d.retries));
        if rec.payload_rewritten() && rec.original_payload() != rec.payload() {
            bytes_field(&mut out, "original_payload", rec.original_payload(), true);
        }
    }
    Value::Object(out)
}

/// One record as a JSON line, newline included.
pub fn json_line(r: &SinkRecord<'_>) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    let mut line = serde_json::to_vec(&json_value(r)).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Builds the sink a [`SinkSpec`] describes, test knobs included.
pub fn build_sink(spec: &SinkSpec) -> Result<Arc<dyn Sink>, SinkError> {
    let inner: Arc<dyn Sink> = match spec {
        SinkSpec::File {
            dir,
            prefix,
            rotate_bytes,
            fsync,
            ..
        } => Arc::new(FileSink::open(dir, prefix, *rotate_bytes, *fsync)?),
        SinkSpec::Stdout { .. } => Arc::new(StdoutSink),
        SinkSpec::Null { .. } => Arc::new(NullSink),
    };
    Ok(with_knobs(inner, spec.delay(), spec.fail_rate()))
}

/// Wraps `sink` with the test knobs (unchanged when both are off).
pub fn with_knobs(sink: Arc<dyn Sink>, delay: Duration, fail_rate: f64) -> Arc<dyn Sink> {
    if delay.is_zero() && fail_rate <= 0.0 {
        return sink;
    }
    Arc::new(Knobs {
        inner: sink,
        delay,
        fail_rate,
        batches: AtomicU64::new(0),
    })
}

/// The batch a [`Sink`] writes: its records in order, each made into a
/// [`SinkRecord`] as it is read.
///
/// Why not a slice of `SinkRecord`s: the runtime holds a batch as the parts
/// the buffer handed out, and building a `SinkRecord` for every record up
/// front cost every sink a pass and an allocation per batch, also sinks
/// that read no record (`null`, BENCHMARKS.md). A slice still converts:
///
/// ```
/// use sluice_engine::record::EngineRecord;
/// use sluice_engine::sink::{SinkBatch, SinkRecord};
///
/// let record = EngineRecord::from_payload(&b"{}"[..]);
/// let records = [SinkRecord { source: "app", seq: 1, record: &record, dead_letter: None }];
/// let batch = SinkBatch::from(&records[..]);
/// assert_eq!(batch.len(), 1);
/// assert_eq!(batch.iter().next().unwrap().seq, 1);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SinkBatch<'a>(Inner<'a>);

#[derive(Debug, Clone, Copy)]
enum Inner<'a> {
    /// Ready-made records.
    Records(&'a [SinkRecord<'a>]),
    /// Records as the buffer handed them out.
    Parts {
        parts: &'a [Vec<BufferedRecord<EngineRecord>>],
        names: &'a SourceNames,
    },
    /// Dead letters, with the name of the stage each failed at.
    Dead {
        dead: &'a [DeadLetter<EngineRecord>],
        stages: &'a [Arc<str>],
        names: &'a SourceNames,
        pipeline: &'a str,
    },
}

impl<'a> SinkBatch<'a> {
    /// A batch of the records in `parts`, in order.
    pub(crate) fn parts(
        parts: &'a [Vec<BufferedRecord<EngineRecord>>],
        names: &'a SourceNames,
    ) -> Self {
        Self(Inner::Parts { parts, names })
    }

    /// A batch of dead letters of `pipeline`; `stages[i]` names the stage
    /// where `dead[i]` failed.
    pub(crate) fn dead_letters(
        dead: &'a [DeadLetter<EngineRecord>],
        stages: &'a [Arc<str>],
        names: &'a SourceNames,
        pipeline: &'a str,
    ) -> Self {
        Self(Inner::Dead {
            dead,
            stages,
            names,
            pipeline,
        })
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        match self.0 {
            Inner::Records(records) => records.len(),
            Inner::Parts { parts, .. } => parts.iter().map(Vec::len).sum(),
            Inner::Dead { dead, .. } => dead.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = SinkRecord<'a>> + 'a {
        match self.0 {
            Inner::Records(records) => Iter::Records(records.iter()),
            Inner::Parts { parts, names } => Iter::Parts(parts.iter().flatten(), names),
            Inner::Dead {
                dead,
                stages,
                names,
                pipeline,
            } => Iter::Dead(dead.iter().zip(stages), names, pipeline),
        }
    }
}

/// [`SinkBatch::iter`].
enum Iter<'a> {
    Records(std::slice::Iter<'a, SinkRecord<'a>>),
    Parts(
        std::iter::Flatten<std::slice::Iter<'a, Vec<BufferedRecord<EngineRecord>>>>,
        &'a SourceNames,
    ),
    Dead(
        std::iter::Zip<
            std::slice::Iter<'a, DeadLetter<EngineRecord>>,
            std::slice::Iter<'a, Arc<str>>,
        >,
        &'a SourceNames,
        &'a str,
    ),
}

impl<'a> Iterator for Iter<'a> {
    type Item = SinkRecord<'a>;

    fn next(&mut self) -> Option<SinkRecord<'a>> {
        match self {
            Iter::Records(records) => records.next().copied(),
            Iter::Parts(records, names) => records.next().map(|r| SinkRecord {
                source: names.get(r.source()),
                seq: r.seq(),
                record: &r.payload,
                dead_letter: None,
            }),
            Iter::Dead(dead, names, pipeline) => dead.next().map(|(d, stage)| SinkRecord {
                source: names.get(d.record.source()),
                seq: d.record.seq(),
                record: &d.record.payload,
                dead_letter: Some(DeadLetterInfo {
                    pipeline,
                    stage,
                    error: &d.error,
                    retries: d.retries(),
                }),
            }),
        }
    }
}

impl<'a> From<&'a [SinkRecord<'a>]> for SinkBatch<'a> {
    fn from(records: &'a [SinkRecord<'a>]) -> Self {
        Self(Inner::Records(records))
    }
}

/// The names of a batch's sources (a handful), looked up once per batch.
#[derive(Debug)]
pub(crate) struct SourceNames(pub(crate) Vec<(SourceId, Arc<str>)>);

impl SourceNames {
    /// The name of `id`, which should be one of the looked-up sources.
    pub(crate) fn get(&self, id: SourceId) -> &str {
        self.0
            .iter()
            .find(|(s, _)| *s == id)
            .map_or("?", |(_, name)| name)
    }
}

/// The `delay` / `fail_rate` test knobs around another sink: a pause before
/// each batch, and a deterministic fraction of batches that fail.
#[derive(Debug)]
pub struct Knobs {
    inner: Arc<dyn Sink>,
    delay: Duration,
    fail_rate: f64,
    batches: AtomicU64,
}

impl Sink for Knobs {
    fn describe(&self) -> String {
        format!(
            "{} (delay {:?}, fail_rate {})",
            self.inner.describe(),
            self.delay,
            self.fail_rate
        )
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let n = self.batches.fetch_add(1, Ordering::Relaxed);
            if hits(n, self.fail_rate) {
                return Err(SinkError::Injected(self.fail_rate));
            }
            self.inner.write(batch).await
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        self.inner.commit()
    }
}

/// Discards records.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn describe(&self) -> String {
        "null".into()
    }
    fn write<'a>(&'a self, _batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// JSON lines on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".into()
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut buf = Vec::new();
            for r in batch.iter() {
                buf.extend(json_line(&r));
            }
            tokio::io::stdout()
                .write_all(&buf)
                .await
                .map_err(SinkError::Stdout)
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { tokio::io::stdout().flush().await.map_err(SinkError::Stdout) })
    }
}

/// JSON lines in `<dir>/<prefix>-<n>.jsonl`, a new file once the current one
/// would pass `rotate_bytes` (a file holds at least one line). `n` starts
/// after the highest existing file of the same prefix, so a restart never
/// appends to an old file. With `fsync`, `commit` returns only after the data
/// reached the disk (and a file is synced before it is rotated away).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    prefix: String,
    rotate_bytes: u64,
    fsync: bool,
    state: tokio::sync::Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    file: Option<(tokio::fs::File, PathBuf)>,
    next_index: u64,
    size: u64,
}

impl FileSink {
    /// Creates `dir` if needed and prepares the sink (the first file is
    /// created at the first write).
    pub fn open(
        dir: impl AsRef<Path>,
        prefix: &str,
        rotate_bytes: u64,
        fsync: bool,
    ) -> Result<Self, SinkError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| SinkError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut next_index = 0;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                next_index = next_index.max(n + 1);
            }
        }
        Ok(Self {
            dir,
            prefix: prefix.to_owned(),
            rotate_bytes: rotate_bytes.max(1),
            fsync,
            state: tokio::sync::Mutex::new(FileState {
                file: None,
                next_index,
                size: 0,
            }),
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn finish_file(&self, st: &mut FileState) -> Result<(), SinkError> {
        if let Some((mut f, path)) = st.file.take() {
            let io = |source| SinkError::Io {
                path: path.clone(),
                source,
            };
            f.flush().await.map_err(io)?;
            if self.fsync {
                f.sync_data().await.map_err(io)?;
            }
        }
        Ok(())
    }

    async fn append(&self, st: &mut FileState, buf: &[u8]) -> Result<(), SinkError> {
        if buf.is_empty() {
            return Ok(());
        }
        if st.file.is_none() {
            let path = self
                .dir
                .join(format!("{}-{}.jsonl", self.prefix, st.next_index));
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(|source| SinkError::Io {
                    path: path.clone(),
                    source,
                })?;
            st.next_index += 1;
            st.size = 0;
            st.file = Some((f, path));
        }
        if let Some((f, path)) = st.file.as_mut() {
            f.write_all(buf).await.map_err(|source| SinkError::Io {
                path: path.clone(),
                source,
            })?;
        }
        st.size += buf.len() as u64;
        Ok(())
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}/{}-*.jsonl", self.dir.display(), self.prefix)
    }

    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let mut pending: Vec<u8> = Vec::new();
            for r in batch.iter() {
                let line = json_line(&r);
                let size = st.size + pending.len() as u64;
                if size > 0 && size + line.len() as u64 > self.rotate_bytes {
                    let chunk = std::mem::take(&mut pending);
                    self.append(&mut st, &chunk).await?;
                    self.finish_file(&mut st).await?;
                    st.size = 0;
                }
                pending.extend(line);
            }
            self.append(&mut st, &pending).await
        })
    }

    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            if let Some((f, path)) = st.file.as_mut() {
                let io = |source| SinkError::Io {
                    path: path.clone(),
                    source,
                };
                f.flush().await.map_err(io)?;
                if self.fsync {
                    f.sync_data().await.map_err(io)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let batch: Vec<SinkRecord> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| SinkRecord {
                source: "src-a",
                seq: i as u64 + 1,
                record: r,
                dead_letter: None,
            })
            .collect();
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
            delay: Duration::ZERO,
            fail_rate: 0.0,
        };
        let sink = build_sink(&spec).unwrap();
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
    async fn knobs_fail_and_delay() {
        let all_fail = with_knobs(Arc::new(NullSink), Duration::ZERO, 1.0);
        let rec = EngineRecord::from_payload(&b"x"[..]);
        let batch = [SinkRecord {
            source: "s",
            seq: 1,
            record: &rec,
            dead_letter: None,
        }];
        assert!(matches!(
            all_fail.write(batch[..].into()).await,
            Err(SinkError::Injected(_))
        ));
        let slow = with_knobs(Arc::new(NullSink), Duration::from_millis(30), 0.0);
        let t = std::time::Instant::now();
        slow.write(batch[..].into()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        let half = with_knobs(Arc::new(NullSink), Duration::ZERO, 0.5);
        let mut failed = 0;
        for _ in 0..200 {
            failed += half.write(batch[..].into()).await.is_err() as usize;
        }
        assert!((60..140).contains(&failed), "{failed}");
    }
}
