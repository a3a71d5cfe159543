//! The memory gate: a [`MemoryMonitor`] samples memory use on its own task and
//! publishes a [`GateState`] that closes near the memory limit, so that flow
//! control stops granting credits *before* the process is killed.
//!
//! The pieces are described on [`MemoryMonitor`]; each is a private part,
//! re-exported here:
//!
//! - `probe.rs`: readings ([`MemoryProbe`], [`SysinfoProbe`], [`ManualProbe`]).
//! - `gate.rs`: the pure hysteresis ([`Gate`]) and what it publishes ([`GateState`]).
//! - `monitor.rs`: the task that runs a probe and publishes the gate ([`MemoryMonitor`]).

mod gate;
mod monitor;
mod probe;

pub use gate::{Gate, GateState, GateTransition};
pub use monitor::MemoryMonitor;
pub use probe::{
    ManualProbe, Measured, MemoryProbe, MemoryReading, MemorySource, ProbeError, SysinfoProbe,
};

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
