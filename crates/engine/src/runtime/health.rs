//! [`SinkHealth`]: whether a sink is stalled (a sink-level failure that the
//! stage is waiting out), since when and why, and its failure counters, as
//! the sink stage (or any stage writing dead letters) reports them and
//! `Admin.Stats`, `/metrics` and `sluice top` read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_buffer::StageId;

/// The health of one sink (a pipeline's sink or its dead-letter sink).
#[derive(Debug, Default)]
pub(crate) struct SinkHealth {
    stall: Mutex<Option<Stall>>,
    /// Sink-level failures: failed write or commit attempts.
    failures: AtomicU64,
    /// Records refused one by one (record-level failures).
    refused: AtomicU64,
    /// Stall episodes begun.
    stalls: AtomicU64,
}

/// An ongoing stall.
#[derive(Debug, Clone)]
struct Stall {
    since: Instant,
    error: String,
    /// The stage that reported it stalled (to flow control).
    stage: StageId,
}

/// What [`SinkHealth::view`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HealthView {
    /// The latest error while stalled.
    pub(crate) stalled: Option<(String, Duration)>,
    pub(crate) failures: u64,
    pub(crate) refused: u64,
    pub(crate) stalls: u64,
}

impl SinkHealth {
    /// A sink-level failure with `error`, met by `stage`; true if it
    /// begins a stall (reported by `stage`).
    pub(crate) fn failed(&self, stage: StageId, error: String) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut stall = self.stall.lock();
        match stall.as_mut() {
            Some(s) => {
                s.error = error;
                false
            }
            None => {
                *stall = Some(Stall {
                    since: Instant::now(),
                    error,
                    stage,
                });
                self.stalls.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// The sink took a batch: the stall, if any, ends; returns how long it
    /// lasted and the stage that reported it.
    pub(crate) fn recovered(&self) -> Option<(Duration, StageId)> {
        self.stall
            .lock()
            .take()
            .map(|s| (s.since.elapsed(), s.stage))
    }

    /// `n` records refused by the sink.
    pub(crate) fn refused(&self, n: usize) {
        self.refused.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The current state and counters.
    pub(crate) fn view(&self) -> HealthView {
        HealthView {
            stalled: self
                .stall
                .lock()
                .as_ref()
                .map(|s| (s.error.clone(), s.since.elapsed())),
            failures: self.failures.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_one_episode_until_recovered() {
        let m = sluice_buffer::BufferManager::<()>::builder(sluice_buffer::Limits::default())
            .pipeline("p", ["sink"])
            .build::<()>()
            .unwrap();
        let stage = m.stages()[0].id;
        let h = SinkHealth::default();
        assert_eq!(h.recovered(), None);
        assert!(h.failed(stage, "down".into()));
        assert!(!h.failed(stage, "still down".into()));
        let v = h.view();
        assert_eq!(v.stalled.as_ref().map(|s| s.0.as_str()), Some("still down"));
        assert_eq!((v.failures, v.stalls), (2, 1));
        assert_eq!(h.recovered().map(|r| r.1), Some(stage));
        h.refused(3);
        let v = h.view();
        assert_eq!(
            (v.stalled, v.failures, v.refused, v.stalls),
            (None, 2, 3, 1)
        );
        assert!(h.failed(stage, "again".into()));
        assert_eq!(h.view().stalls, 2);
    }
}
