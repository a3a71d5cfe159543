//! Readings of memory use: the [`MemoryProbe`] trait, the real
//! [`SysinfoProbe`] and the hand-set [`ManualProbe`].

use std::sync::Arc;

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::sync::Mutex;

/// What a [`MemoryReading`] measured: which "used" against which "limit".
/// Stats, metrics, logs and signal texts name it, so that it is always
/// clear which reading closed the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measured {
    /// This process's resident memory (RSS) against `memory.limit_bytes`,
    /// or against the host's total memory when there is neither a limit
    /// nor a cgroup.
    #[default]
    Process,
    /// The whole charge of this process's cgroup (page cache included, as
    /// the kernel's OOM killer counts it) against the cgroup's limit.
    Cgroup,
    /// The host's used memory (total − available, other processes
    /// included) against its total: the optional second reading
    /// (`memory.include_host`).
    Host,
}

impl Measured {
    /// A short name for stats, metric labels and logs: `process`, `cgroup`, `host`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Cgroup => "cgroup",
            Self::Host => "host",
        }
    }

    /// What it is, in words (for messages).
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Process => "this process's resident memory",
            Self::Cgroup => "this process's cgroup memory",
            Self::Host => "the host's used memory (all processes)",
        }
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reading of memory use: `used_bytes` of `limit_bytes`, of what
/// [`measured`](Self::measured) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Bytes in use.
    pub used_bytes: u64,
    /// The limit they are compared with.
    pub limit_bytes: u64,
    /// What was measured.
    pub measured: Measured,
}

impl MemoryReading {
    /// A reading of `used_bytes` out of `limit_bytes` of this process
    /// ([`Measured::Process`]).
    pub const fn new(used_bytes: u64, limit_bytes: u64) -> Self {
        Self::of(Measured::Process, used_bytes, limit_bytes)
    }

    /// A reading of `used_bytes` out of `limit_bytes` of `measured`.
    pub const fn of(measured: Measured, used_bytes: u64, limit_bytes: u64) -> Self {
        Self {
            used_bytes,
            limit_bytes,
            measured,
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

/// Where a [`SysinfoProbe`] takes its main reading from: the process
/// against its limit, which is the cgroup's where there is one, else an
/// explicit `limit_bytes`, else the host's total memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// The cgroup of this process (or the tightest of its parents):
    /// `used = total_memory − free_memory` of [`sysinfo::CGroupLimits`], which
    /// is the cgroup's whole charge (page cache included, as the kernel's OOM
    /// killer sees it), against its `total_memory`. (`CGroupLimits::rss` is
    /// the cgroup's anonymous memory, not this process's RSS; it is not used.)
    Cgroup,
    /// This process's RSS against the host's total memory (no cgroup limit,
    /// no explicit limit). Other processes' memory does not count here; the
    /// host's used memory is the separate, optional [`Measured::Host`]
    /// reading.
    HostTotal,
    /// This process's RSS against an explicit limit (`limit_bytes` of the config).
    Process {
        /// The configured limit.
        limit_bytes: u64,
    },
}

/// A [`MemoryProbe`] backed by `sysinfo`.
///
/// The readings are chosen once, at construction: the process's cgroup
/// against its limit when there is one (`Process::cgroup_limits`, which
/// follows the process's own cgroup and its parents, unlike
/// `System::cgroup_limits`); this process's RSS against an explicit limit
/// when one is configured (with a cgroup too, the fuller of the two counts);
/// with neither, this process's RSS against the host's total memory; and,
/// with `include_host`, the host's used memory as well. Each read reports
/// the fullest of them, named by its [`Measured`]. A cgroup that was found at start and cannot be read later
/// is an error (fail closed), never a silent switch to the larger host limit.
pub struct SysinfoProbe {
    system: System,
    pid: Pid,
    source: MemorySource,
    /// This process is in a cgroup with a memory limit: with an explicit
    /// limit too, both are read and the fuller one counts (the kernel's
    /// limit applies whatever the configuration says).
    cgroup: bool,
    /// Also read the host's used memory and report whichever reading is
    /// fuller (`memory.include_host`).
    include_host: bool,
}

impl std::fmt::Debug for SysinfoProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysinfoProbe")
            .field("pid", &self.pid)
            .field("source", &self.source)
            .field("include_host", &self.include_host)
            .finish_non_exhaustive()
    }
}

impl SysinfoProbe {
    /// A probe for this process, with an optional explicit limit in bytes.
    pub fn new(limit_bytes: Option<u64>) -> Result<Self, ProbeError> {
        Self::with_host(limit_bytes, false)
    }

    /// [`new`](Self::new), and with `include_host` the host's used memory
    /// as a second reading: each [`read`](MemoryProbe::read) then reports
    /// whichever of the two is the higher percentage, named by its
    /// [`Measured`].
    pub fn with_host(limit_bytes: Option<u64>, include_host: bool) -> Result<Self, ProbeError> {
        let pid =
            sysinfo::get_current_pid().map_err(|e| ProbeError::new(format!("current pid: {e}")))?;
        let mut system = System::new().map_err(|e| ProbeError::new(format!("sysinfo: {e}")))?;
        Self::refresh_process(&mut system, pid, false);
        let cgroup = system
            .process(pid)
            .and_then(|p| p.cgroup_limits())
            .is_some();
        let source = match limit_bytes {
            Some(0) => return Err(ProbeError::new("the explicit memory limit is 0 bytes")),
            Some(limit_bytes) => MemorySource::Process { limit_bytes },
            None if cgroup => MemorySource::Cgroup,
            None => MemorySource::HostTotal,
        };
        tracing::debug!(?source, "memory probe");
        Ok(Self {
            system,
            pid,
            source,
            cgroup,
            include_host,
        })
    }

    /// Where the readings come from.
    pub fn source(&self) -> MemorySource {
        self.source
    }

    /// The host's total memory, refreshed.
    fn host_total(&mut self) -> Result<u64, ProbeError> {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        match self.system.total_memory() {
            0 => Err(ProbeError::new("the host's total memory reads as 0")),
            total => Ok(total),
        }
    }

    /// This process's resident memory, refreshed.
    fn rss(&mut self) -> Result<u64, ProbeError> {
        Self::refresh_process(&mut self.system, self.pid, true);
        self.system
            .process(self.pid)
            .map(|p| p.memory())
            .ok_or_else(|| ProbeError::new("this process is not visible to sysinfo"))
    }

    /// The main reading: the process against its limit.
    fn read_process(&mut self) -> Result<MemoryReading, ProbeError> {
        self.read_source(self.source)
    }

    fn read_source(&mut self, source: MemorySource) -> Result<MemoryReading, ProbeError> {
        match source {
            MemorySource::Process { limit_bytes } => Ok(MemoryReading::of(
                Measured::Process,
                self.rss()?,
                limit_bytes,
            )),
            MemorySource::HostTotal => {
                let total = self.host_total()?;
                Ok(MemoryReading::of(Measured::Process, self.rss()?, total))
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
                Ok(MemoryReading::of(
                    Measured::Cgroup,
                    limits.total_memory.saturating_sub(limits.free_memory),
                    limits.total_memory,
                ))
            }
        }
    }

    /// The host's used memory against its total.
    fn read_host(&mut self) -> Result<MemoryReading, ProbeError> {
        let total = self.host_total()?;
        let used = total.saturating_sub(self.system.available_memory());
        Ok(MemoryReading::of(Measured::Host, used, total))
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
        let fuller = |a: MemoryReading, b: MemoryReading| {
            let p = |r: &MemoryReading| r.percent().unwrap_or(f64::INFINITY);
            if p(&b) > p(&a) { b } else { a }
        };
        let mut reading = self.read_process()?;
        if self.cgroup && matches!(self.source, MemorySource::Process { .. }) {
            reading = fuller(reading, self.read_source(MemorySource::Cgroup)?);
        }
        if self.include_host {
            reading = fuller(reading, self.read_host()?);
        }
        Ok(reading)
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

        // Without an explicit limit the main reading is this process (or
        // its cgroup), never the host's used memory.
        assert_ne!(r.measured, Measured::Host, "{r:?}");
        if probe.source() == MemorySource::HostTotal {
            let rss = own_rss();
            assert_eq!(r.measured, Measured::Process);
            // The same process, a moment apart.
            assert!(
                r.used_bytes.abs_diff(rss) < 64 << 20,
                "{r:?} against RSS {rss}"
            );
        }
        // With the host included: the fuller of the two, named.
        let mut both = SysinfoProbe::with_host(None, true).unwrap();
        let r = both.read().unwrap();
        let host = both.read_host().unwrap();
        let process = both.read_process().unwrap();
        assert!(
            r.percent().unwrap() + 1.0 >= host.percent().unwrap().max(process.percent().unwrap()),
            "{r:?} {host:?} {process:?}"
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
        assert_eq!(r.measured, Measured::Process);
        assert!(SysinfoProbe::new(Some(0)).is_err());
    }

    /// This process's resident set size, from `/proc/self/statm` (pages).
    fn own_rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }
}
