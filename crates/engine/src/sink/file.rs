//! The `file` sink: rotated JSON-lines files, optionally fsynced on commit.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::contract::{Sink, SinkBatch, SinkError, SinkFuture, Written};
use super::json::write_json_line;

/// JSON lines in `<dir>/<prefix>-<n>.jsonl`, a new file once the current one
/// would pass `rotate_bytes` (a file holds at least one line). `n` starts
/// after the highest existing file of the same prefix, so a restart never
/// appends to an old file. With `fsync`, `commit` returns only after the data
/// reached the disk (and a file is synced before it is rotated away).
///
/// Its failures are all sink-level (I/O: the directory, the disk, the
/// file system); it refuses no record, since every record has a JSON line
/// ([`write_json_line`] embeds what is not JSON as a string or base64). When its
/// directory is gone it creates it again and carries on: a missing
/// directory at the first write of a file is created then and there; a
/// file removed under it (with its directory, or alone) is found at the
/// next flush (a file whose last link is gone takes writes without error,
/// and they are lost), reported as a sink-level error so that the runtime
/// writes the batch again, into a new file.
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

    /// Flushes the current file (and syncs it with `fsync`), keeping it open.
    /// A file removed under the sink is dropped and reported.
    async fn flush(&self, st: &mut FileState) -> Result<(), SinkError> {
        let Some((f, path)) = st.file.as_mut() else {
            return Ok(());
        };
        let io = |source| SinkError::Io {
            path: path.clone(),
            source,
        };
        let result = async {
            f.flush().await?;
            if self.fsync {
                f.sync_data().await?;
            }
            if removed(f).await? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the file was removed while being written",
                ));
            }
            Ok(())
        }
        .await
        .map_err(io);
        if result.is_err() {
            // Whatever this file holds is not committed: start afresh.
            st.file = None;
        }
        result
    }

    /// Flushes and closes the current file (before rotating it away).
    async fn finish_file(&self, st: &mut FileState) -> Result<(), SinkError> {
        self.flush(st).await?;
        st.file = None;
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
            let f = self.create(&path).await.map_err(|source| SinkError::Io {
                path: path.clone(),
                source,
            })?;
            st.next_index += 1;
            st.size = 0;
            st.file = Some((f, path));
        }
        if let Some((f, path)) = st.file.as_mut()
            && let Err(source) = f.write_all(buf).await
        {
            let path = path.clone();
            // Part of `buf` may be in the file: start a new one.
            st.file = None;
            return Err(SinkError::Io { path, source });
        }
        st.size += buf.len() as u64;
        Ok(())
    }
}

impl FileSink {
    /// Creates the file `path` (in `dir`), creating `dir` again if it is gone.
    async fn create(&self, path: &Path) -> std::io::Result<tokio::fs::File> {
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).append(true);
        let open = || options.open(path);
        match open().await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(&self.dir).await?;
                tracing::info!(dir = %self.dir.display(), "file sink: the directory was gone; created it again");
                open().await
            }
            other => other,
        }
    }
}

/// Whether `f`'s last link is gone (the file, or its directory, was removed).
#[cfg(unix)]
async fn removed(f: &tokio::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(f.metadata().await?.nlink() == 0)
}

/// Elsewhere a file in use cannot be removed.
#[cfg(not(unix))]
async fn removed(_f: &tokio::fs::File) -> std::io::Result<bool> {
    Ok(false)
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}/{}-*.jsonl", self.dir.display(), self.prefix)
    }

    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            // The batch's lines, in one buffer.
            let mut pending: Vec<u8> = Vec::with_capacity(batch.len() * 128);
            for r in batch.iter() {
                let start = pending.len();
                write_json_line(&mut pending, &r);
                let line = (pending.len() - start) as u64;
                let size = st.size + start as u64;
                if size > 0 && size + line > self.rotate_bytes {
                    // The lines before this one fill the current file.
                    self.append(&mut st, &pending[..start]).await?;
                    self.finish_file(&mut st).await?;
                    st.size = 0;
                    pending.drain(..start);
                }
            }
            self.append(&mut st, &pending).await?;
            Ok(Written::All)
        })
    }

    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            self.flush(&mut st).await
        })
    }
}
