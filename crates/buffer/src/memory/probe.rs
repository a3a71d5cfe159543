//! Readings of memory use: the [`MemoryProbe`] trait, the real
//! [`SysinfoProbe`] and the hand-set [`ManualProbe`].

use std::sync::Arc;

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::sync::Mutex;

/// One reading of memory use: `used_bytes` of `limit_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Bytes in use.
    pub used_bytes: u64,
    /// The limit they are compared with.
    pub limit_bytes: u64,
}

impl MemoryReading {
    /// A reading of `used_bytes` out of `limit_bytes`.
    pub const fn new(used_bytes: u64, limit_bytes: u64) -> Self {
        Self {
            used_bytes,
            limit_bytes,
        }
    }

    /// `used` as a percentage of `limit` (0–100, above 100 when over the
    /// limit); `None` for a zero limit, which cannot be compared with.
    pub fn percent(&self) -> Option<f64> {
        (self.limit_bytes > 0).then(|| self.used_bytes as f64 * 100.0 / self.limit_bytes as f64)
    }
}

/// A memory reading that could not be taken. The gate treats it as full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory reading failed: {0}")]
pub struct ProbeError(pub String);

impl ProbeError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Something that reads memory use. Called on the monitor's task every
/// `refresh_ms`; it should be quick (a few small file reads), since it runs
/// inline on the runtime.
pub trait MemoryProbe: Send + 'static {
    /// Takes one reading.
    fn read(&mut self) -> Result<MemoryReading, ProbeError>;
}

impl<F> MemoryProbe for F
where
    F: FnMut() -> Result<MemoryReading, ProbeError> + Send + 'static,
{
    fn read(&mut self) -> Result<MemoryReading, ProbeError> {
        self()
    }
}

/// Where a [`SysinfoProbe`] takes its numbers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// The cgroup of this process (or the tightest of its parents):
    /// `used = total_memory − free_memory` of [`sysinfo::CGroupLimits`], which
    /// is the cgroup's whole charge (page cache included, as the kernel's OOM
    /// killer sees it), against its `total_memory`. (`CGroupLimits::rss` is
    /// the cgroup's anonymous memory, not this process's RSS; it is not used.)
    Cgroup,
    /// The host: `used = total − available` RAM, against the total.
    Host,
    /// This process's RSS against an explicit limit (`limit_bytes` of the config).
    Process {
        /// The configured limit.
        limit_bytes: u64,
    },
}

/// A [`MemoryProbe`] backed by `sysinfo`.
///
/// The source is chosen once, at construction: an explicit limit compares
/// this process's RSS with it; otherwise the process's cgroup limit is used
/// when there is one (`Process::cgroup_limits`, which follows the process's
/// own cgroup and its parents, unlike `System::cgroup_limits`), else the
/// host's memory. A cgroup that was found at start and cannot be read later
/// is an error (fail closed), never a silent switch to the larger host limit.
pub struct SysinfoProbe {
    system: System,
    pid: Pid,
    source: MemorySource,
}

impl std::fmt::Debug for SysinfoProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysinfoProbe")
            .field("pid", &self.pid)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SysinfoProbe {
    /// A probe for this process, with an optional explicit limit in bytes.
    pub fn new(limit_bytes: Option<u64>) -> Result<Self, ProbeError> {
        let pid =
            sysinfo::get_current_pid().map_err(|e| ProbeError::new(format!("current pid: {e}")))?;
        let mut system = System::new().map_err(|e| ProbeError::new(format!("sysinfo: {e}")))?;
        let source = match limit_bytes {
            Some(0) => return Err(ProbeError::new("the explicit memory limit is 0 bytes")),
            Some(limit_bytes) => MemorySource::Process { limit_bytes },
            None => {
                Self::refresh_process(&mut system, pid, false);
                match system.process(pid).and_then(|p| p.cgroup_limits()) {
                    Some(_) => MemorySource::Cgroup,
                    None => MemorySource::Host,
                }
            }
        };
        tracing::debug!(?source, "memory probe");
        Ok(Self {
            system,
            pid,
            source,
        })
    }

    /// Where the readings come from.
    pub fn source(&self) -> MemorySource {
        self.source
    }

    fn refresh_process(system: &mut System, pid: Pid, memory: bool) {
        let kind = if memory {
            ProcessRefreshKind::nothing().with_memory()
        } else {
            ProcessRefreshKind::nothing()
        };
        system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    }
}

impl MemoryProbe for SysinfoProbe {
    fn read(&mut self) -> Result<MemoryReading, ProbeError> {
        match self.source {
            MemorySource::Process { limit_bytes } => {
                Self::refresh_process(&mut self.system, self.pid, true);
                let process = self
                    .system
                    .process(self.pid)
                    .ok_or_else(|| ProbeError::new("this process is not visible to sysinfo"))?;
                Ok(MemoryReading::new(process.memory(), limit_bytes))
            }
            MemorySource::Cgroup => {
                // cgroup_limits() reads the cgroup files on every call; the
                // process entry only has to exist.
                if self.system.process(self.pid).is_none() {
                    Self::refresh_process(&mut self.system, self.pid, false);
                }
                let limits = self
                    .system
                    .process(self.pid)
                    .and_then(|p| p.cgroup_limits())
                    .ok_or_else(|| {
                        ProbeError::new("the process's cgroup memory limits could not be read")
                    })?;
                Ok(MemoryReading::new(
                    limits.total_memory.saturating_sub(limits.free_memory),
                    limits.total_memory,
                ))
            }
            MemorySource::Host => {
                self.system
                    .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                let total = self.system.total_memory();
                if total == 0 {
                    return Err(ProbeError::new("the host's total memory reads as 0"));
                }
                Ok(MemoryReading::new(
                    total.saturating_sub(self.system.available_memory()),
                    total,
                ))
            }
        }
    }
}

/// A probe whose reading is set by hand; clones share the reading. For
/// tests and demonstrations.
///
/// ```
/// use sluice_buffer::{ManualProbe, MemoryProbe};
/// let probe = ManualProbe::new(50, 100);
/// let mut reader = probe.clone();
/// probe.set_used(90);
/// assert_eq!(reader.read().unwrap().used_bytes, 90);
/// probe.fail("no /proc");
/// assert!(reader.read().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct ManualProbe {
    /// LOCK ORDER (see `crate::sync`): a leaf, held only to read or set the
    /// reading, never together with the controller's or the manager's lock.
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    reading: MemoryReading,
    error: Option<String>,
}

impl ManualProbe {
    /// A probe reading `used_bytes` of `limit_bytes`.
    pub fn new(used_bytes: u64, limit_bytes: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(ManualState {
                reading: MemoryReading::new(used_bytes, limit_bytes),
                error: None,
            })),
        }
    }

    /// Sets the whole reading (and clears a failure).
    pub fn set(&self, reading: MemoryReading) {
        let mut s = self.state.lock();
        s.reading = reading;
        s.error = None;
    }

    /// Sets the bytes used, keeping the limit (and clears a failure).
    pub fn set_used(&self, used_bytes: u64) {
        let mut s = self.state.lock();
        s.reading.used_bytes = used_bytes;
        s.error = None;
    }

    /// Makes the following readings fail with `message`, until the next `set`.
    pub fn fail(&self, message: impl Into<String>) {
        self.state.lock().error = Some(message.into());
    }
}

impl MemoryProbe for ManualProbe {
    fn read(&mut self) -> Result<MemoryReading, ProbeError> {
        let s = self.state.lock();
        match &s.error {
            Some(e) => Err(ProbeError::new(e.clone())),
            None => Ok(s.reading),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysinfo_probe_reads_something_plausible() {
        let mut probe = SysinfoProbe::new(None).unwrap();
        let r = probe.read().unwrap();
        assert!(
            r.limit_bytes > 0 && r.used_bytes > 0,
            "{r:?} from {:?}",
            probe.source()
        );
        assert!(
            r.used_bytes <= r.limit_bytes,
            "{r:?} from {:?}",
            probe.source()
        );

        let mut explicit = SysinfoProbe::new(Some(1 << 40)).unwrap();
        assert_eq!(
            explicit.source(),
            MemorySource::Process {
                limit_bytes: 1 << 40
            }
        );
        let r = explicit.read().unwrap();
        assert!(r.used_bytes > 0 && r.used_bytes < (1 << 40), "RSS {r:?}");
        assert!(SysinfoProbe::new(Some(0)).is_err());
    }
}
