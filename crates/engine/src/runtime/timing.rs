//! Where each stage's worker spends its time (busy, idle, blocked on the
//! next stage) and the Flink-style rates derived from it, sampled once per
//! publishing interval for `Admin.Stats`, `/metrics` and `sluice top`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_buffer::StageId;

/// Time a stage's worker spent busy, idle (waiting for input) and blocked
/// (waiting for room in the next stage), in nanoseconds since start.
#[derive(Debug, Default)]
pub(crate) struct StageTimes {
    /// Processing records (transform, sink write and commit).
    pub(crate) busy_ns: AtomicU64,
    /// Waiting for records.
    pub(crate) idle_ns: AtomicU64,
    /// Waiting for room in the next stage, or for a stalled sink to come back.
    pub(crate) blocked_ns: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Flink-style time rates of one stage over the last interval, in
/// milliseconds per second (they add up to 1000 per worker).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageRates {
    /// Processing records.
    pub busy_ms_per_s: f64,
    /// Waiting for input.
    pub idle_ms_per_s: f64,
    /// Waiting for room in the next stage.
    pub backpressured_ms_per_s: f64,
}

impl StageRates {
    /// Rates from the increase of busy and blocked nanoseconds over
    /// `elapsed`. A worker adds its time when a step ends, so a long step
    /// may land in one interval: each rate is capped at 1000 ms/s, and idle
    /// is the rest of the interval (a worker waiting for input adds its idle
    /// time only when input arrives).
    pub fn from_deltas(busy_ns: u64, blocked_ns: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-6);
        let ms = |ns: u64| ns as f64 / 1e6 / secs;
        let busy = ms(busy_ns).min(1000.0);
        let blocked = ms(blocked_ns).min(1000.0 - busy);
        Self {
            busy_ms_per_s: busy,
            idle_ms_per_s: (1000.0 - busy - blocked).max(0.0),
            backpressured_ms_per_s: blocked,
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    at: Option<Instant>,
    totals: HashMap<StageId, (u64, u64)>,
}

/// Every stage's [`StageTimes`] and the rates of the last sampling interval.
///
/// The workers only add to their `StageTimes` (atomics, no lock); the
/// publishing task calls [`sample`](Self::sample) once per interval; readers
/// (`Admin.Stats`, `/metrics`) take the last interval's [`StageRates`]. The
/// two locks are never held together and never while another lock is.
#[derive(Debug, Default)]
pub(crate) struct StageClocks {
    times: HashMap<StageId, Arc<StageTimes>>,
    /// The totals of the previous sample (rates are their deltas).
    samples: Mutex<Samples>,
    /// The rates of the last complete interval.
    rates: Mutex<HashMap<StageId, StageRates>>,
}

impl StageClocks {
    /// Clocks for `times`, one per stage (from [`spawn_workers`](super::spawn_workers)).
    pub(crate) fn new(times: HashMap<StageId, Arc<StageTimes>>) -> Self {
        Self {
            times,
            ..Self::default()
        }
    }

    /// The rates of `stage` over the last interval (zero before the second sample).
    pub(crate) fn rates(&self, stage: StageId) -> StageRates {
        self.rates.lock().get(&stage).copied().unwrap_or_default()
    }

    /// The time counters of `stage`.
    pub(crate) fn times(&self, stage: StageId) -> Option<&StageTimes> {
        self.times.get(&stage).map(|t| &**t)
    }

    /// Samples every stage's times and updates the rates.
    pub(crate) fn sample(&self) {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        let elapsed = samples.at.map(|at| now.saturating_duration_since(at));
        let mut rates = HashMap::with_capacity(self.times.len());
        for (id, t) in &self.times {
            let cur = (
                t.busy_ns.load(Ordering::Relaxed),
                t.blocked_ns.load(Ordering::Relaxed),
            );
            let prev = samples.totals.insert(*id, cur);
            if let (Some(elapsed), Some(prev)) = (elapsed, prev) {
                rates.insert(
                    *id,
                    StageRates::from_deltas(
                        cur.0.saturating_sub(prev.0),
                        cur.1.saturating_sub(prev.1),
                        elapsed,
                    ),
                );
            }
        }
        samples.at = Some(now);
        drop(samples);
        if elapsed.is_some() {
            *self.rates.lock() = rates;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_capped_and_add_up() {
        let s = Duration::from_secs(1);
        let r = StageRates::from_deltas(250_000_000, 500_000_000, s);
        assert!((r.busy_ms_per_s - 250.0).abs() < 1e-9);
        assert!((r.backpressured_ms_per_s - 500.0).abs() < 1e-9);
        assert!((r.idle_ms_per_s - 250.0).abs() < 1e-9);
        let r = StageRates::from_deltas(3_000_000_000, 1_000_000, s);
        assert_eq!(r.busy_ms_per_s, 1000.0);
        assert_eq!(r.backpressured_ms_per_s, 0.0);
        assert_eq!(r.idle_ms_per_s, 0.0);
        let r = StageRates::from_deltas(0, 0, Duration::from_millis(500));
        assert_eq!(r.idle_ms_per_s, 1000.0);
    }
}
