//! The memory gate: a [`MemoryMonitor`] samples memory use on its own task and
//! publishes a [`GateState`] that closes near the memory limit, so that flow
//! control stops granting credits *before* the process is killed.
//!
//! The pieces are described on [`MemoryMonitor`].

use std::sync::Arc;
use std::time::Duration;

use crate::sync::Mutex;
use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::limits::MemoryGateConfig;

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

/// Errors starting a [`MemoryMonitor`] or building a [`Gate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemoryError {
    /// The thresholds are out of range or in the wrong order.
    #[error("invalid memory gate config: {0}")]
    InvalidConfig(String),
    /// The monitor needs a Tokio runtime to run its sampling task.
    #[error("the memory monitor must be started inside a Tokio runtime")]
    NoRuntime,
    /// The probe could not be set up.
    #[error(transparent)]
    Probe(#[from] ProbeError),
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

/// The memory gate as published to flow control.
#[derive(Debug, Clone, PartialEq)]
pub struct GateState {
    /// While true no new credits are granted and every source is paused.
    pub closed: bool,
    /// Bytes in use at the last good reading.
    pub used_bytes: u64,
    /// The limit at the last good reading.
    pub limit_bytes: u64,
    /// `used_bytes` as a percentage of `limit_bytes`; 100 while readings
    /// fail (a failed reading counts as full).
    pub percent: f64,
    /// Why the last reading failed, if it did; the gate is then closed.
    pub error: Option<String>,
}

impl GateState {
    /// An open gate with no reading: the state of a disabled gate.
    pub const OPEN: GateState = GateState {
        closed: false,
        used_bytes: 0,
        limit_bytes: 0,
        percent: 0.0,
        error: None,
    };

    /// `percent` as a fraction (0.0–1.0 and above), as signals report it.
    pub fn utilization(&self) -> f64 {
        self.percent / 100.0
    }
}

impl Default for GateState {
    fn default() -> Self {
        Self::OPEN
    }
}

/// What a [`Gate::observe`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTransition {
    /// The gate was open and is now closed.
    Closed,
    /// The gate was closed and is now open.
    Opened,
}

/// The gate's hysteresis, without any runtime: closes when a reading
/// reaches `activate_percent` or fails, opens when a reading is at or below
/// `resume_percent`; in between it keeps its state.
///
/// ```
/// use sluice_buffer::{Gate, MemoryGateConfig, MemoryReading, ProbeError};
///
/// let mut gate = Gate::new(&MemoryGateConfig::default()).unwrap(); // 85 % / 75 %
/// gate.observe(Ok(MemoryReading::new(80, 100)));
/// assert!(!gate.is_closed());
/// gate.observe(Ok(MemoryReading::new(85, 100)));
/// assert!(gate.is_closed());
/// gate.observe(Ok(MemoryReading::new(80, 100))); // between the thresholds: stays closed
/// assert!(gate.is_closed());
/// gate.observe(Ok(MemoryReading::new(75, 100)));
/// assert!(!gate.is_closed());
/// gate.observe(Err(ProbeError::new("no /proc"))); // fail closed
/// assert!(gate.is_closed());
/// ```
#[derive(Debug, Clone)]
pub struct Gate {
    activate: f64,
    resume: f64,
    state: GateState,
}

impl Gate {
    /// An open gate with the thresholds of `config` (its other fields are
    /// not used here). Refuses thresholds outside (0, 100] or a resume
    /// threshold not below the activate one.
    pub fn new(config: &MemoryGateConfig) -> Result<Self, MemoryError> {
        let (a, r) = (config.activate_percent, config.resume_percent);
        if !(a > 0.0 && a <= 100.0) {
            return Err(MemoryError::InvalidConfig(format!(
                "activate_percent must be in (0, 100], got {a}"
            )));
        }
        if !(r >= 0.0 && r < a) {
            return Err(MemoryError::InvalidConfig(format!(
                "resume_percent must be at least 0 and below activate_percent ({a}), got {r}"
            )));
        }
        Ok(Self {
            activate: a,
            resume: r,
            state: GateState::OPEN,
        })
    }

    /// Takes a reading into account and reports whether the gate flipped.
    pub fn observe(
        &mut self,
        reading: Result<MemoryReading, ProbeError>,
    ) -> Option<GateTransition> {
        let was_closed = self.state.closed;
        match reading.and_then(|r| {
            r.percent()
                .map(|p| (r, p))
                .ok_or_else(|| ProbeError::new("the memory limit reads as 0 bytes"))
        }) {
            Ok((r, percent)) => {
                self.state.used_bytes = r.used_bytes;
                self.state.limit_bytes = r.limit_bytes;
                self.state.percent = percent;
                self.state.error = None;
                // A gate closed by a failed reading is closed like any other:
                // it opens only at or below `resume`.
                self.state.closed = if was_closed {
                    percent > self.resume
                } else {
                    percent >= self.activate
                };
            }
            Err(e) => {
                self.state.closed = true;
                self.state.percent = 100.0;
                self.state.error = Some(e.0);
            }
        }
        match (was_closed, self.state.closed) {
            (false, true) => Some(GateTransition::Closed),
            (true, false) => Some(GateTransition::Opened),
            _ => None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &GateState {
        &self.state
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.state.closed
    }
}

/// Samples memory on its own task and publishes the [`Gate`], so that
/// flow control stops granting credits *before* the process is killed.
///
/// The pieces:
///
/// - [`MemoryProbe`]: one reading of "used" against "limit". [`SysinfoProbe`]
///   reads the real thing (the process's cgroup, else the host, or this
///   process's RSS against an explicit limit); [`ManualProbe`] is set by
///   hand (tests, examples).
/// - [`Gate`]: the hysteresis, a plain struct without any runtime: it closes
///   at `activate_percent`, opens again at or below `resume_percent`, and a
///   reading that fails counts as full (fail closed).
/// - `MemoryMonitor`: runs a probe every `refresh_ms` and publishes the
///   gate's [`GateState`] through a `tokio::sync::watch` channel; the
///   [`BackpressureController`](crate::BackpressureController) subscribes to it.
///
/// The task reads the probe every `refresh_ms` (missed ticks are skipped,
/// not bunched up), feeds the gate, and publishes the state through a
/// `watch` channel: subscribers always see the latest state, and are woken
/// whenever the gate opens or closes or the error of a failing probe
/// changes (the byte counts are refreshed in place on every sample without
/// waking anyone). It also records the [`MEMORY_GATE_CLOSED`](crate::metrics::MEMORY_GATE_CLOSED)
/// gauge and transition counter, and logs a warning when a reading starts
/// failing (once per change, not every sample).
///
/// The task stops when the monitor is dropped or [`shutdown`](Self::shutdown);
/// the last published state then stays visible to subscribers.
///
/// ```
/// use sluice_buffer::{ManualProbe, MemoryGateConfig, MemoryMonitor};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// let probe = ManualProbe::new(10, 100);
/// let monitor = MemoryMonitor::spawn(MemoryGateConfig::default(), probe.clone()).unwrap();
/// let mut gate = monitor.subscribe();
/// assert!(!gate.borrow().closed);
/// probe.set_used(95);
/// gate.changed().await.unwrap();
/// assert!(gate.borrow().closed);
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryMonitor {
    rx: watch::Receiver<GateState>,
    task: Option<JoinHandle<()>>,
}

impl MemoryMonitor {
    /// Starts sampling `probe` per `config`, on a task of the current Tokio
    /// runtime. The first reading is taken before this returns, so the
    /// initial state is real. A disabled config gives an always-open gate
    /// and no task.
    pub fn spawn(
        config: MemoryGateConfig,
        mut probe: impl MemoryProbe,
    ) -> Result<Self, MemoryError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let mut gate = Gate::new(&config)?;
        if config.refresh_ms == 0 {
            return Err(MemoryError::InvalidConfig(
                "refresh_ms must be at least 1".into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MemoryError::NoRuntime)?;
        let period = Duration::from_millis(config.refresh_ms);
        let first = probe.read();
        let flip = gate.observe(first);
        report(&gate, flip, None);
        let (tx, rx) = watch::channel(gate.state().clone());
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            tick.tick().await; // the first tick is immediate; we just read
            loop {
                tick.tick().await;
                let previous_error = gate.state().error.clone();
                let flip = gate.observe(probe.read());
                report(&gate, flip, previous_error.as_deref());
                let state = gate.state();
                let notify = flip.is_some() || state.error != previous_error;
                tx.send_if_modified(|s| {
                    s.clone_from(state);
                    notify
                });
                if tx.is_closed() {
                    // No subscriber left, including the monitor itself.
                    break;
                }
            }
        });
        Ok(Self {
            rx,
            task: Some(task),
        })
    }

    /// Starts a monitor on the real memory of this process ([`SysinfoProbe`],
    /// with `config.limit_bytes` as an explicit limit when set).
    pub fn spawn_sysinfo(config: MemoryGateConfig) -> Result<Self, MemoryError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let probe = SysinfoProbe::new(config.limit_bytes)?;
        Self::spawn(config, probe)
    }

    /// A monitor whose gate is always open (no task).
    pub fn disabled() -> Self {
        let (_tx, rx) = watch::channel(GateState::OPEN);
        Self { rx, task: None }
    }

    /// A receiver of the gate's state, for a
    /// [`BackpressureController`](crate::BackpressureController) or anyone else.
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.rx.clone()
    }

    /// The latest state.
    pub fn state(&self) -> GateState {
        self.rx.borrow().clone()
    }

    /// Whether the gate is closed now.
    pub fn is_closed(&self) -> bool {
        self.rx.borrow().closed
    }

    /// Stops sampling. The last state stays published.
    pub fn shutdown(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for MemoryMonitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn report(gate: &Gate, flip: Option<GateTransition>, previous_error: Option<&str>) {
    let s = gate.state();
    crate::metrics::memory_gate(s.closed, s.used_bytes, s.limit_bytes);
    if let Some(error) = &s.error
        && previous_error != Some(error.as_str())
    {
        tracing::warn!(%error, "memory reading failed; the memory gate counts it as full");
    }
    match flip {
        Some(GateTransition::Closed) => {
            crate::metrics::memory_gate_transition(true);
            tracing::warn!(
                used_bytes = s.used_bytes,
                limit_bytes = s.limit_bytes,
                percent = s.percent,
                "memory gate closed: no new credits until memory use falls"
            );
        }
        Some(GateTransition::Opened) => {
            crate::metrics::memory_gate_transition(false);
            tracing::info!(
                used_bytes = s.used_bytes,
                limit_bytes = s.limit_bytes,
                percent = s.percent,
                "memory gate open again"
            );
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(activate: f64, resume: f64) -> Gate {
        Gate::new(&MemoryGateConfig {
            activate_percent: activate,
            resume_percent: resume,
            ..MemoryGateConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn gate_closes_at_activate_and_opens_at_resume() {
        let mut g = gate(85.0, 75.0);
        let mut at = |used| g.observe(Ok(MemoryReading::new(used, 1000)));
        assert_eq!(at(849), None);
        assert_eq!(at(850), Some(GateTransition::Closed));
        assert_eq!(at(999), None);
        assert_eq!(
            at(800),
            None,
            "between the thresholds a closed gate stays closed"
        );
        assert_eq!(at(751), None);
        assert_eq!(at(750), Some(GateTransition::Opened));
        assert_eq!(
            at(800),
            None,
            "between the thresholds an open gate stays open"
        );
        assert_eq!(at(849), None);
        assert_eq!(at(1200), Some(GateTransition::Closed), "above the limit");
        assert_eq!(at(0), Some(GateTransition::Opened));
    }

    #[test]
    fn failed_reading_closes_the_gate_and_records_the_error() {
        let mut g = gate(85.0, 75.0);
        assert_eq!(g.observe(Ok(MemoryReading::new(10, 100))), None);
        assert_eq!(
            g.observe(Err(ProbeError::new("boom"))),
            Some(GateTransition::Closed)
        );
        assert_eq!(g.state().error.as_deref(), Some("boom"));
        assert_eq!(g.state().percent, 100.0);
        assert_eq!(
            (g.state().used_bytes, g.state().limit_bytes),
            (10, 100),
            "last good reading kept"
        );
        // Recovery needs a reading at or below resume, like any closed gate.
        assert_eq!(g.observe(Ok(MemoryReading::new(80, 100))), None);
        assert!(g.is_closed());
        assert_eq!(
            g.state().error,
            None,
            "the error is cleared by a good reading"
        );
        assert_eq!(
            g.observe(Ok(MemoryReading::new(75, 100))),
            Some(GateTransition::Opened)
        );
    }

    #[test]
    fn zero_limit_is_a_failed_reading() {
        let mut g = gate(85.0, 75.0);
        assert_eq!(
            g.observe(Ok(MemoryReading::new(0, 0))),
            Some(GateTransition::Closed)
        );
        assert!(g.state().error.is_some());
    }

    #[test]
    fn thresholds_are_checked() {
        let bad = [
            (0.0, 0.0),
            (101.0, 50.0),
            (80.0, 80.0),
            (80.0, 90.0),
            (80.0, -1.0),
            (f64::NAN, 1.0),
        ];
        for (a, r) in bad {
            let c = MemoryGateConfig {
                activate_percent: a,
                resume_percent: r,
                ..MemoryGateConfig::default()
            };
            assert!(Gate::new(&c).is_err(), "{a}/{r} accepted");
        }
    }

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

    #[test]
    fn monitor_needs_a_runtime_and_a_valid_config() {
        let probe = ManualProbe::new(1, 10);
        assert_eq!(
            MemoryMonitor::spawn(MemoryGateConfig::default(), probe.clone()).err(),
            Some(MemoryError::NoRuntime)
        );
        let off = MemoryGateConfig {
            enabled: false,
            ..MemoryGateConfig::default()
        };
        let m = MemoryMonitor::spawn(off, probe).unwrap();
        assert!(
            !m.is_closed(),
            "a disabled gate is open, even without a runtime"
        );
    }
}
