//! The `file` sink: rotated JSON-lines files, optionally fsynced on commit,
//! written and synced by a thread of its own (`writer`) so that the
//! pipeline's sink stage encodes the next batches while a sync runs
//! (group commit, [`Sink::group_commit`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::contract::{Sink, SinkBatch, SinkError, SinkFuture, Written};
use super::json::write_json_line;

mod writer;

use writer::{Op, Stats, Writer};

/// JSON lines in `<dir>/<prefix>-<n>.jsonl`, a new file once the current one
/// would pass `rotate_bytes` (a file holds at least one line). `n` starts
/// after the highest existing file of the same prefix, so a restart never
/// appends to an old file. With `fsync`, `commit` returns only after the data
/// reached the disk (`sync_data`; a file is synced before it is rotated away).
///
/// `write` encodes the batch's lines into one buffer and hands it to the
/// sink's writer thread (a plain OS thread, one per sink, which ends when the
/// sink is dropped); `commit` queues a sync behind it and waits for it. The
/// thread takes them in order, so a commit covers every batch whose `write`
/// returned before `commit` was called, and the runtime may write more
/// batches while a commit runs: up to `group_commit_batches`
/// ([`with_group_commit`](Self::with_group_commit), default 16), which one
/// fsync then covers.
///
/// Its failures are all sink-level (I/O: the directory, the disk, the
/// file system); it refuses no record, since every record has a JSON line
/// ([`write_json_line`] embeds what is not JSON as a string or base64). A
/// failed write is reported by the next commit (and what the writer is handed
/// until then is dropped, since the runtime writes it again). When its
/// directory is gone it creates it again and carries on: a missing
/// directory at the first write of a file is created then and there; a
/// file removed under it (with its directory, or alone) is found at the
/// next commit (a file whose last link is gone takes writes without error,
/// and they are lost), reported as a sink-level error so that the runtime
/// writes the batch again, into a new file.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    prefix: String,
    group_commit: usize,
    /// To the writer thread, in the order of the calls (unbounded: the
    /// runtime bounds what is written and not committed, see
    /// [`Sink::group_commit`]; a direct caller that never commits grows it).
    ops: mpsc::UnboundedSender<Op>,
    stats: Arc<Stats>,
}

impl FileSink {
    /// Creates `dir` if needed, starts the writer thread and prepares the
    /// sink (the first file is created at the first write).
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
        let stats = Arc::new(Stats::default());
        let (ops, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(
            dir.clone(),
            prefix.to_owned(),
            rotate_bytes.max(1),
            fsync,
            next_index,
            stats.clone(),
        );
        std::thread::Builder::new()
            .name(format!("sluice-file-{prefix}"))
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(Self {
            dir,
            prefix: prefix.to_owned(),
            group_commit: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
            ops,
            stats,
        })
    }

    /// Sets how many batches one commit may cover (the file sink's
    /// `group_commit_batches`, at least 1; see [`Sink::group_commit`]).
    pub fn with_group_commit(mut self, batches: usize) -> Self {
        self.group_commit = batches.max(1);
        self
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times the writer synced a file with `sync_data` (at a
    /// commit, or before rotating a file away) and it succeeded.
    pub fn syncs(&self) -> u64 {
        self.stats.syncs()
    }

    /// How many lines a commit that succeeded covered so far (counted
    /// before that commit returns; a batch written again after a failed
    /// commit counts again). With `fsync`, these lines were synced.
    pub fn durable_lines(&self) -> u64 {
        self.stats.durable_lines()
    }

    fn send(&self, op: Op) -> Result<(), SinkError> {
        self.ops.send(op).map_err(|_| self.writer_gone())
    }

    fn writer_gone(&self) -> SinkError {
        SinkError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("the file sink's writer thread is gone"),
        }
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}/{}-*.jsonl", self.dir.display(), self.prefix)
    }

    /// Encodes the batch and queues it for the writer, all before the
    /// future is returned (no await point): see [`Sink::group_commit`].
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        let mut buf: Vec<u8> = Vec::with_capacity(batch.len() * 192);
        for r in batch.iter() {
            write_json_line(&mut buf, &r);
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            self.send(Op::Append {
                buf,
                lines: batch.len() as u64,
            })
        };
        Box::pin(std::future::ready(result.map(|()| Written::All)))
    }

    /// Queues a sync behind every write so far (when called, not when first
    /// polled) and waits for it.
    fn commit(&self) -> SinkFuture<'_> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Sync(tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| self.writer_gone())?
        })
    }

    fn group_commit(&self) -> usize {
        self.group_commit
    }
}
