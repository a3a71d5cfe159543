//! The file sink's writer thread: appends the encoded batches, rotates the
//! files, syncs them, in the order the sink's calls queued them.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::sink::SinkError;

/// What the sink asks of its writer.
#[derive(Debug)]
pub(super) enum Op {
    /// Whole JSON lines (each ending with `\n`) to append.
    Append {
        /// The lines.
        buf: Vec<u8>,
        /// How many.
        lines: u64,
    },
    /// Make every line appended so far durable, then answer.
    Sync(oneshot::Sender<Result<(), SinkError>>),
}

/// Counters the writer keeps for the sink's readers (tests, benchmarks).
///
/// Invariant: both only grow, and the writer updates them *before* it answers
/// the [`Op::Sync`] they concern, so a commit that returned `Ok` is already
/// counted (checked by `file_sink_group_commit_covers_writes_made_during_a_sync`).
/// Relaxed ordering is enough for that: the answer travels through a
/// `oneshot` channel, which orders the stores before the receiver's loads.
#[derive(Debug, Default)]
pub(super) struct Stats {
    syncs: AtomicU64,
    durable_lines: AtomicU64,
}

impl Stats {
    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(super) fn durable_lines(&self) -> u64 {
        self.durable_lines.load(Ordering::Relaxed)
    }
}

/// The writer's state, owned by its thread.
#[derive(Debug)]
pub(super) struct Writer {
    dir: PathBuf,
    prefix: String,
    rotate_bytes: u64,
    fsync: bool,
    /// The open file and its path.
    file: Option<(File, PathBuf)>,
    /// The index of the next file to create.
    next_index: u64,
    /// The size of the open file.
    size: u64,
    /// Lines appended since the last sync that answered.
    pending_lines: u64,
    /// A failure since the last sync that answered: the next one reports it,
    /// and what comes until then is dropped (the runtime writes it again).
    lost: Option<SinkError>,
    stats: Arc<Stats>,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        prefix: String,
        rotate_bytes: u64,
        fsync: bool,
        next_index: u64,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            dir,
            prefix,
            rotate_bytes,
            fsync,
            file: None,
            next_index,
            size: 0,
            pending_lines: 0,
            lost: None,
            stats,
        }
    }

    /// Takes the sink's operations until the sink is dropped.
    pub(super) fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = ops.blocking_recv() {
            match op {
                Op::Append { buf, lines } => {
                    if self.lost.is_none() {
                        if let Err(e) = self.append(&buf) {
                            // Part of the lines may be in the file: start a new one.
                            self.file = None;
                            self.lost = Some(e);
                        } else {
                            self.pending_lines += lines;
                        }
                    }
                }
                Op::Sync(answer) => {
                    let result = match self.lost.take() {
                        Some(e) => Err(e),
                        None => self.sync(),
                    };
                    match &result {
                        Ok(()) => {
                            self.stats
                                .durable_lines
                                .fetch_add(self.pending_lines, Ordering::Relaxed);
                        }
                        // Whatever the file holds is not committed: start afresh.
                        Err(_) => self.file = None,
                    }
                    self.pending_lines = 0;
                    // The caller may be gone (its task ended): nothing to tell.
                    let _ = answer.send(result);
                }
            }
        }
    }

    /// Appends `buf`, starting new files where a line would pass
    /// `rotate_bytes` (a file holds at least one line).
    fn append(&mut self, buf: &[u8]) -> Result<(), SinkError> {
        let mut rest = buf;
        while !rest.is_empty() {
            let room = self.rotate_bytes.saturating_sub(self.size);
            if rest.len() as u64 <= room {
                return self.write(rest);
            }
            // The whole lines that fit; a new file takes one line at least.
            let fit = &rest[..room as usize];
            let mut cut = fit.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if cut == 0 && self.size == 0 {
                cut = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
            }
            if cut > 0 {
                self.write(&rest[..cut])?;
                rest = &rest[cut..];
            }
            if !rest.is_empty() {
                // The current file is full: synced, then closed.
                self.sync()?;
                self.file = None;
                self.size = 0;
            }
        }
        Ok(())
    }

    /// Writes `bytes` to the open file, creating it first if there is none.
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if self.file.is_none() {
            let path = self
                .dir
                .join(format!("{}-{}.jsonl", self.prefix, self.next_index));
            let f = self.create(&path).map_err(|source| SinkError::Io {
                path: path.clone(),
                source,
            })?;
            self.next_index += 1;
            self.size = 0;
            self.file = Some((f, path));
        }
        let Some((f, path)) = self.file.as_mut() else {
            unreachable!("a file was just opened");
        };
        f.write_all(bytes).map_err(|source| SinkError::Io {
            path: path.clone(),
            source,
        })?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the open file (with `fsync`) and checks that it is still linked.
    fn sync(&mut self) -> Result<(), SinkError> {
        let Some((f, path)) = self.file.as_ref() else {
            return Ok(());
        };
        let io = |source| SinkError::Io {
            path: path.clone(),
            source,
        };
        if self.fsync {
            f.sync_data().map_err(io)?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if removed(f).map_err(io)? {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the file was removed while being written",
            )));
        }
        Ok(())
    }

    /// Creates the file `path` (in `dir`), creating `dir` again if it is gone.
    fn create(&self, path: &Path) -> std::io::Result<File> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        match options.open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir)?;
                tracing::info!(dir = %self.dir.display(), "file sink: the directory was gone; created it again");
                options.open(path)
            }
            other => other,
        }
    }
}

/// Whether `f`'s last link is gone (the file, or its directory, was removed).
#[cfg(unix)]
fn removed(f: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(f.metadata()?.nlink() == 0)
}

/// Elsewhere a file in use cannot be removed.
#[cfg(not(unix))]
fn removed(_f: &File) -> std::io::Result<bool> {
    Ok(false)
}
