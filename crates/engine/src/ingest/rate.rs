//! A source's drain rate: how many of its records the engine completed
//! (delivered, filtered or dead-lettered) per second over the last second,
//! sent as `Signal.target_records_per_second` with SLOW_DOWN.
//!
//! Why the source's own rate and not its pipeline's: a source that keeps
//! below the rate at which *its* records complete lets *its* share of every
//! level fall, whatever the other sources do; the pipeline's total would
//! let each of N sources send N times too much. While a level is above its
//! high watermark the source's records queue, so the rate measured then is
//! what the pipeline gives this source, not what the source happened to
//! send.
//!
//! Pure: the session feeds it readings of its completion counter (at every
//! Ack and before every signal) and asks for the rate; no timer of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The span the rate is measured over.
pub(crate) const RATE_SPAN: Duration = Duration::from_secs(1);

/// Readings closer together than this are merged (keeps the queue at
/// about `2 × RATE_SPAN / MIN_STEP` entries however often Acks are sent).
const MIN_STEP: Duration = Duration::from_millis(50);

/// The shortest span a rate is computed over; below it the rate is unknown
/// (0): one Ack right after another says nothing about a rate.
const MIN_SPAN: Duration = Duration::from_millis(100);

/// Readings `(when, completed so far)` of one source's completion counter.
#[derive(Debug, Default)]
pub(crate) struct DrainRate {
    /// Oldest first; `completed` never decreases; spans at most
    /// `2 × RATE_SPAN`.
    readings: VecDeque<(Instant, u64)>,
}

impl DrainRate {
    /// Records that `completed` records of the source were completed in
    /// total at `now`.
    pub(crate) fn observe(&mut self, now: Instant, completed: u64) {
        if let Some(back) = self.readings.back_mut()
            && now.saturating_duration_since(back.0) < MIN_STEP
        {
            // Keep the newer count under the older time: a rate from it can
            // only be higher than the truth by at most MIN_STEP's share,
            // and the queue stays bounded.
            back.1 = back.1.max(completed);
            return;
        }
        self.readings.push_back((now, completed));
        while let Some(&(first, _)) = self.readings.front() {
            if now.saturating_duration_since(first) > 2 * RATE_SPAN && self.readings.len() > 2 {
                self.readings.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records per second completed over the last [`RATE_SPAN`] before
    /// `now` (from the newest reading at least that old, else the oldest
    /// one); 0 when the readings span less than 100 ms.
    pub(crate) fn per_second(&self, now: Instant) -> f64 {
        let Some(&(t1, c1)) = self.readings.back() else {
            return 0.0;
        };
        let from = self
            .readings
            .iter()
            .rev()
            .find(|(t, _)| now.saturating_duration_since(*t) >= RATE_SPAN)
            .or_else(|| self.readings.front());
        let Some(&(t0, c0)) = from else {
            return 0.0;
        };
        let span = t1.saturating_duration_since(t0);
        if span < MIN_SPAN {
            return 0.0;
        }
        c1.saturating_sub(c0) as f64 / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn unknown_until_readings_span_enough() {
        let t = Instant::now();
        let mut r = DrainRate::default();
        assert_eq!(r.per_second(t), 0.0);
        r.observe(t, 0);
        r.observe(ms(t, 60), 500);
        assert_eq!(r.per_second(ms(t, 60)), 0.0, "60 ms is too short a span");
        r.observe(ms(t, 200), 2_000);
        assert!((r.per_second(ms(t, 200)) - 10_000.0).abs() < 1.0);
    }

    #[test]
    fn measures_the_last_second_only() {
        let t = Instant::now();
        let mut r = DrainRate::default();
        // 1,000 records/s for 3 s, then 100 records/s for 1.5 s.
        let mut c = 0;
        for i in 0..=30 {
            r.observe(ms(t, i * 100), c);
            c += 100;
        }
        c -= 100;
        for i in 1..=15 {
            c += 10;
            r.observe(ms(t, 3_000 + i * 100), c);
        }
        let rate = r.per_second(ms(t, 4_500));
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
        assert!(r.readings.len() <= 2 * 20 + 2, "{}", r.readings.len());
    }

    #[test]
    fn frequent_readings_stay_bounded() {
        let t = Instant::now();
        let mut r = DrainRate::default();
        for i in 0..10_000u64 {
            r.observe(t + Duration::from_micros(i * 500), i * 5);
        }
        // 5 s of readings every 0.5 ms: at most 2 s of them, one per 50 ms.
        assert!(r.readings.len() <= 42, "{}", r.readings.len());
        let rate = r.per_second(t + Duration::from_micros(9_999 * 500));
        assert!((rate - 10_000.0).abs() < 600.0, "{rate}");
    }
}
