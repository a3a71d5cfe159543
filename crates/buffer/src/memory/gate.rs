//! The gate's hysteresis, without any runtime: [`Gate`] and the
//! [`GateState`] it publishes.

use super::MemoryError;
use super::probe::{Measured, MemoryReading, ProbeError};
use crate::limits::MemoryGateConfig;

/// The memory gate as published to flow control.
#[derive(Debug, Clone, PartialEq)]
pub struct GateState {
    /// While true no new credits are granted and every source is paused.
    pub closed: bool,
    /// What the last good reading measured: when the gate is closed by a
    /// reading, the one that closed it.
    pub measured: Measured,
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
        measured: Measured::Process,
        used_bytes: 0,
        limit_bytes: 0,
        percent: 0.0,
        error: None,
    };

    /// Which reading closed (or last fed) the gate, in words: "this
    /// process's resident memory at 91% of 2147483648 bytes", or the
    /// failure for a gate closed by a failed reading.
    pub fn describe(&self) -> String {
        match &self.error {
            Some(e) => format!("the memory reading failed ({e}); a failed reading counts as full"),
            None => format!(
                "{} at {:.0}% of {} bytes",
                self.measured.describe(),
                self.percent,
                self.limit_bytes
            ),
        }
    }

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
    /// threshold not below the activate one, by the rules of
    /// [`MemoryGateConfig::validate`].
    pub fn new(config: &MemoryGateConfig) -> Result<Self, MemoryError> {
        config
            .validate_thresholds()
            .map_err(|e| MemoryError::InvalidConfig(e.to_string()))?;
        let (a, r) = (config.activate_percent, config.resume_percent);
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
                self.state.measured = r.measured;
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
    fn the_state_names_the_reading_that_closed_the_gate() {
        let mut g = gate(85.0, 75.0);
        g.observe(Ok(MemoryReading::of(Measured::Process, 10, 100)));
        assert_eq!(g.state().measured, Measured::Process);
        // The host reading is the fuller one and closes the gate.
        g.observe(Ok(MemoryReading::of(Measured::Host, 90, 100)));
        assert!(g.is_closed());
        assert_eq!(g.state().measured, Measured::Host);
        let why = g.state().describe();
        assert!(
            why.contains("the host's used memory") && why.contains("90%"),
            "{why}"
        );
        g.observe(Err(ProbeError::new("no /proc")));
        assert!(g.state().describe().contains("no /proc"));
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
            (80.0, 0.0),
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
}
