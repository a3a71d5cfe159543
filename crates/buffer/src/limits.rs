//! Limits and policies: the numbers that bound the buffer.
//!
//! These types are the single definition of a limit in the workspace. The
//! settings crate (`sluice-config`) composes them (with the `serde` feature)
//! instead of declaring its own, so a limit means the same thing in a config
//! file, in the buffer and in a snapshot.

use std::time::Duration;

/// A bound on records *and* bytes. Both are enforced; whichever is reached
/// first stops admission.
///
/// ```
/// use sluice_buffer::Limit;
/// let l = Limit::new(10_000, 64 * 1024 * 1024);
/// assert!(l.records > 0 && l.bytes > 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Limit {
    /// Maximum number of records.
    pub records: u64,
    /// Maximum number of payload bytes (as reported by [`ByteSize`](crate::ByteSize)).
    pub bytes: u64,
}

impl Limit {
    /// A limit of `records` records and `bytes` bytes.
    pub const fn new(records: u64, bytes: u64) -> Self {
        Self { records, bytes }
    }

    /// True when either dimension is zero: such a limit admits nothing.
    pub const fn is_zero(&self) -> bool {
        self.records == 0 || self.bytes == 0
    }

    /// True when `self` is no larger than `other` in both dimensions.
    pub const fn fits_within(&self, other: &Limit) -> bool {
        self.records <= other.records && self.bytes <= other.bytes
    }
}

/// The three levels of limits the [`BufferManager`](crate::BufferManager) enforces.
///
/// A record counts against `global` and against its source's `per_source`
/// limit from the moment capacity is reserved for it until it is completed;
/// it counts against a stage's `per_stage` limit while it waits in, or is
/// processed by, that stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Limits {
    /// Bound over everything buffered in the process.
    pub global: Limit,
    /// Bound for each stage's queue (waiting plus in flight).
    pub per_stage: Limit,
    /// Bound for each source's records (reserved plus in the engine).
    pub per_source: Limit,
}

impl Default for Limits {
    /// 1M records / 256 MiB globally, 100k records / 64 MiB per stage and per source.
    fn default() -> Self {
        Self {
            global: Limit::new(1_000_000, 256 * 1024 * 1024),
            per_stage: Limit::new(100_000, 64 * 1024 * 1024),
            per_source: Limit::new(100_000, 64 * 1024 * 1024),
        }
    }
}

/// How failed records are retried before they become dead letters.
///
/// A record that fails goes back to its stage's queue with `retry_count + 1`
/// and is not handed out again before `initial_backoff * 2^(retry_count-1)`
/// (capped at `max_backoff`) has passed. Once `retry_count` would exceed
/// `max_retries` it is returned as a [`DeadLetter`](crate::DeadLetter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RetryPolicy {
    /// Retries allowed after the first failure; `0` dead-letters on the first failure.
    pub max_retries: u32,
    /// Delay before the first retry.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub initial_backoff: Duration,
    /// Upper bound of the exponential backoff.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, 100 ms doubling up to 5 s.
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry_count` (1-based).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sluice_buffer::RetryPolicy;
    /// let p = RetryPolicy { max_retries: 5, initial_backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(50) };
    /// assert_eq!(p.backoff(1), Duration::from_millis(10));
    /// assert_eq!(p.backoff(3), Duration::from_millis(40));
    /// assert_eq!(p.backoff(9), Duration::from_millis(50));
    /// ```
    pub fn backoff(&self, retry_count: u32) -> Duration {
        let shift = retry_count.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// Utilization thresholds of the backpressure hysteresis, as fractions of a limit.
///
/// A source is told to slow down when any level it touches reaches `high`,
/// and is resumed only when every such level is at or below `low`; the gap
/// between the two keeps signals from flapping.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Watermarks {
    /// Utilization (0.0–1.0) at which SLOW_DOWN starts.
    pub high: f64,
    /// Utilization (0.0–1.0) at or below which a slowed or paused source resumes.
    pub low: f64,
}

impl Default for Watermarks {
    /// High 0.8, low 0.5.
    fn default() -> Self {
        Self {
            high: 0.8,
            low: 0.5,
        }
    }
}

/// Settings of the memory gate ([`MemoryMonitor`](crate::MemoryMonitor)).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct MemoryGateConfig {
    /// Whether the gate is active at all; when false it is always open.
    pub enabled: bool,
    /// Percentage of the memory limit (0–100) at which the gate closes.
    pub activate_percent: f64,
    /// Percentage at or below which a closed gate opens again; below `activate_percent`.
    pub resume_percent: f64,
    /// Sampling period in milliseconds.
    pub refresh_ms: u64,
    /// An explicit limit in bytes, compared with this process's RSS. When
    /// absent the process's cgroup limit is used, else the host's memory.
    pub limit_bytes: Option<u64>,
}

impl Default for MemoryGateConfig {
    /// Enabled, close at 85 %, reopen at 75 %, sample every 100 ms, limit from cgroup or host.
    fn default() -> Self {
        Self {
            enabled: true,
            activate_percent: 85.0,
            resume_percent: 75.0,
            refresh_ms: 100,
            limit_bytes: None,
        }
    }
}
