//! [`MemoryMonitor`]: samples a probe on its own task and publishes the
//! gate's state on a watch channel.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::MemoryError;
use super::gate::{Gate, GateState, GateTransition};
use super::probe::{MemoryProbe, SysinfoProbe};
use crate::limits::MemoryGateConfig;

/// Samples memory on its own task and publishes the [`Gate`], so that
/// flow control stops granting credits *before* the process is killed.
///
/// The pieces:
///
/// - [`MemoryProbe`]: one reading of "used" against "limit". [`SysinfoProbe`]
///   reads the real thing (the process's cgroup, else the host, or this
///   process's RSS against an explicit limit); [`ManualProbe`](crate::ManualProbe) is set by
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
        config
            .validate()
            .map_err(|e| MemoryError::InvalidConfig(e.to_string()))?;
        let mut gate = Gate::new(&config)?;
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
        let probe = SysinfoProbe::with_host(config.limit_bytes, config.include_host)?;
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
    crate::metrics::memory_gate(s.closed, s.measured, s.used_bytes, s.limit_bytes);
    if let Some(error) = &s.error
        && previous_error != Some(error.as_str())
    {
        tracing::warn!(%error, "memory reading failed; the memory gate counts it as full");
    }
    let Some(flip) = flip else { return };
    let closed = flip == GateTransition::Closed;
    crate::metrics::memory_gate_transition(closed);
    // `reading` names what was measured (process, cgroup, host) and how full.
    let reading = s.describe();
    if closed {
        tracing::warn!(%reading, "memory gate closed: no new credits until memory use falls");
    } else {
        tracing::info!(%reading, "memory gate open again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ManualProbe;

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
