//! The per-source hysteresis state machine, as a pure function (`step`) of
//! the state, the pressures and the memory gate. The table is on
//! [`BackpressureController`](crate::BackpressureController).

use super::signal::{BackpressureSignal, SignalKind, SignalReason};
use crate::limits::Watermarks;
use crate::snapshot::Pressure;

/// The flow-control state of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceState {
    /// Full credit window.
    #[default]
    Normal,
    /// A level is above the high watermark: the window is shrunk.
    SlowedDown,
    /// No new credit.
    Paused,
}

impl SourceState {
    /// The value of the [`BACKPRESSURE_STATE`](crate::metrics::BACKPRESSURE_STATE) gauge: 0, 1 or 2.
    pub fn as_gauge(&self) -> f64 {
        match self {
            SourceState::Normal => 0.0,
            SourceState::SlowedDown => 1.0,
            SourceState::Paused => 2.0,
        }
    }
}

/// What a subscription holds: the source's current state, the signal of the
/// transition that led to it, and a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    /// The current state.
    pub state: SourceState,
    /// The signal of the latest transition (`None` before the first one).
    pub signal: Option<BackpressureSignal>,
    /// Number of transitions so far: +1 per signal. A consumer that sees it
    /// jump by more than one missed intermediate signals that are
    /// superseded by this one.
    pub seq: u64,
}

/// One step of the state machine: the transition, if any, from `state` given
/// the source's `pressure` and a *hold*: a cause that pauses whatever the
/// levels read, with its utilization (the memory gate closed, with the
/// memory utilization; else a stalled sink of the source's pipeline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transition {
    pub(crate) to: SourceState,
    pub(crate) kind: SignalKind,
    pub(crate) reason: SignalReason,
    pub(crate) utilization: f64,
}

/// The most utilized level (ties go to global, then stage, then source).
fn worst(p: &Pressure) -> (SignalReason, f64) {
    let mut w = (SignalReason::Global, p.global);
    if p.stage > w.1 {
        w = (SignalReason::Stage(p.stage_id), p.stage);
    }
    if p.source > w.1 {
        w = (SignalReason::Source, p.source);
    }
    w
}

pub(crate) fn step(
    state: SourceState,
    p: &Pressure,
    hold: Option<(SignalReason, f64)>,
    marks: Watermarks,
) -> Option<Transition> {
    let (reason, util) = worst(p);
    let pause = match hold {
        Some(cause) => Some(cause),
        None if util >= 1.0 => Some((reason, util)),
        None => None,
    };
    let t = |to, kind, (reason, utilization): (SignalReason, f64)| {
        Some(Transition {
            to,
            kind,
            reason,
            utilization,
        })
    };
    match (state, pause) {
        (SourceState::Paused, Some(_)) => None,
        (_, Some(cause)) => t(SourceState::Paused, SignalKind::Pause, cause),
        (SourceState::Normal, None) if util > marks.high => t(
            SourceState::SlowedDown,
            SignalKind::SlowDown,
            (reason, util),
        ),
        (SourceState::SlowedDown | SourceState::Paused, None) if util <= marks.low => {
            t(SourceState::Normal, SignalKind::Resume, (reason, util))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::StageId;
    use proptest::prelude::*;

    const MARKS: Watermarks = Watermarks {
        high: 0.8,
        low: 0.5,
    };

    fn p(global: f64, stage: f64, source: f64) -> Pressure {
        Pressure {
            global,
            stage,
            stage_id: StageId(3),
            source,
        }
    }

    fn run(seq: &[f64]) -> Vec<(SignalKind, SourceState)> {
        let mut state = SourceState::Normal;
        let mut out = Vec::new();
        for &u in seq {
            if let Some(t) = step(state, &p(u, 0.0, 0.0), None, MARKS) {
                state = t.to;
                out.push((t.kind, t.to));
            }
        }
        out
    }

    #[test]
    fn hysteresis_between_the_watermarks() {
        let seq = [0.3, 0.81, 0.6, 0.79, 0.85, 0.51, 0.9, 0.55, 0.5];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::SlowDown, SourceState::SlowedDown),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
    }

    #[test]
    fn full_pauses_and_pause_holds_until_low() {
        let seq = [0.2, 1.0, 0.9, 0.7, 0.81, 0.5];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::Pause, SourceState::Paused),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
        let seq = [0.85, 1.0, 0.95, 0.4];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::SlowDown, SourceState::SlowedDown),
                (SignalKind::Pause, SourceState::Paused),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
    }

    #[test]
    fn reason_is_the_worst_level() {
        let t = step(SourceState::Normal, &p(0.1, 0.9, 0.85), None, MARKS).unwrap();
        assert_eq!(
            (t.reason, t.utilization),
            (SignalReason::Stage(StageId(3)), 0.9)
        );
        let t = step(SourceState::Normal, &p(0.1, 0.2, 1.0), None, MARKS).unwrap();
        assert_eq!(
            (t.kind, t.reason),
            (SignalKind::Pause, SignalReason::Source)
        );
        let t = step(SourceState::Normal, &p(0.85, 0.85, 0.85), None, MARKS).unwrap();
        assert_eq!(
            t.reason,
            SignalReason::Global,
            "ties go to the widest level"
        );
    }

    #[test]
    fn slow_down_only_above_the_high_watermark() {
        // Paced credit fills a level up to the high watermark exactly: that
        // is not "above" it (ingest.proto), so no signal.
        assert_eq!(
            step(SourceState::Normal, &p(0.8, 0.8, 0.8), None, MARKS),
            None
        );
        assert!(step(SourceState::Normal, &p(0.0, 0.0, 0.8001), None, MARKS).is_some());
    }

    #[test]
    fn memory_pauses_and_holds_even_when_buffers_are_empty() {
        let t = step(
            SourceState::Normal,
            &p(0.0, 0.0, 0.0),
            Some((SignalReason::Memory, 0.9)),
            MARKS,
        )
        .unwrap();
        assert_eq!(
            (t.kind, t.reason, t.utilization),
            (SignalKind::Pause, SignalReason::Memory, 0.9)
        );
        assert_eq!(
            step(
                SourceState::Paused,
                &p(0.0, 0.0, 0.0),
                Some((SignalReason::Memory, 0.9)),
                MARKS
            ),
            None
        );
        let t = step(SourceState::Paused, &p(0.0, 0.0, 0.0), None, MARKS).unwrap();
        assert_eq!(t.kind, SignalKind::Resume);
        // Gate open again but a level still between the watermarks: stay paused.
        assert_eq!(
            step(SourceState::Paused, &p(0.6, 0.0, 0.0), None, MARKS),
            None
        );
    }

    #[test]
    fn a_stalled_sink_pauses_until_it_clears_and_levels_are_low() {
        let sink = Some((SignalReason::Sink(StageId(3)), 1.0));
        let t = step(SourceState::Normal, &p(0.0, 0.0, 0.0), sink, MARKS).unwrap();
        assert_eq!(
            (t.kind, t.to, t.reason),
            (
                SignalKind::Pause,
                SourceState::Paused,
                SignalReason::Sink(StageId(3))
            )
        );
        assert_eq!(
            step(SourceState::Paused, &p(0.0, 0.0, 0.0), sink, MARKS),
            None
        );
        // Cleared, but the stage is still draining: stay paused.
        assert_eq!(
            step(SourceState::Paused, &p(0.0, 0.7, 0.0), None, MARKS),
            None
        );
        let t = step(SourceState::Paused, &p(0.0, 0.4, 0.0), None, MARKS).unwrap();
        assert_eq!(t.kind, SignalKind::Resume);
    }

    proptest! {
        /// Whatever the sequence of readings: signals alternate between an
        /// episode start (SLOW_DOWN/PAUSE) and its end (RESUME); a RESUME comes
        /// only at or below low with the gate open; a SLOW_DOWN only above
        /// high; a PAUSE only when full or with the gate closed; and the state
        /// never leaves PAUSED except by RESUME.
        #[test]
        fn signals_follow_the_hysteresis(
            readings in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, prop::option::weighted(0.1, 0.5f64..1.0)), 1..200)
        ) {
            let mut state = SourceState::Normal;
            for (g, s, src, mem) in readings {
                let pr = p(g, s, src);
                let max = pr.max();
                let before = state;
                if let Some(t) = step(state, &pr, mem.map(|m| (SignalReason::Memory, m)), MARKS) {
                    match t.kind {
                        SignalKind::Resume => {
                            prop_assert!(before != SourceState::Normal);
                            prop_assert!(max <= MARKS.low && mem.is_none());
                        }
                        SignalKind::SlowDown => {
                            prop_assert_eq!(before, SourceState::Normal);
                            prop_assert!(max > MARKS.high && max < 1.0 && mem.is_none());
                        }
                        SignalKind::Pause => {
                            prop_assert!(before != SourceState::Paused);
                            prop_assert!(max >= 1.0 || mem.is_some());
                        }
                    }
                    state = t.to;
                } else {
                    // No transition: the state is consistent with the reading.
                    match state {
                        SourceState::Normal => prop_assert!(max <= MARKS.high && mem.is_none()),
                        SourceState::SlowedDown => prop_assert!(max > MARKS.low && max < 1.0 && mem.is_none()),
                        SourceState::Paused => prop_assert!(max > MARKS.low || mem.is_some()),
                    }
                }
            }
        }
    }
}
