//! The `file` sink: rotated JSON-lines files, optionally fsynced on commit.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::contract::{Sink, SinkBatch, SinkError, SinkFuture};
use super::json::json_line;

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

    /// Flushes the current file (and syncs it with `fsync`), keeping it open.
    async fn flush(&self, st: &mut FileState) -> Result<(), SinkError> {
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
            self.flush(&mut st).await
        })
    }
}
