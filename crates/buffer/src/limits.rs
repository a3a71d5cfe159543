//! Limits and policies: the numbers that bound the buffer.
//!
//! These types are the single definition of a limit in the workspace. The
//! settings crate (`sluice-config`) composes them (with the `serde` feature)
//! instead of declaring its own, so a limit means the same thing in a config
//! file, in the buffer and in a snapshot.

use std::time::Duration;

/// A bound on records *and* bytes. Both are enforced; whichever is reached
/// first stops admission. Either may be unbounded ([`UNBOUNDED`](Self::UNBOUNDED),
/// `u64::MAX`): [`Limit::records`] bounds only the count, [`Limit::bytes`]
/// only the bytes.
///
/// ```
/// use sluice_buffer::Limit;
/// let l = Limit::new(10_000, 64 * 1024 * 1024);
/// assert!(l.records > 0 && l.bytes > 0);
/// assert_eq!(Limit::records(100).bytes, Limit::UNBOUNDED);
/// assert!(!Limit::bytes(1 << 20).bounds_records());
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
    /// The value of a dimension that is not bounded.
    pub const UNBOUNDED: u64 = u64::MAX;

    /// A limit of `records` records and `bytes` bytes.
    pub const fn new(records: u64, bytes: u64) -> Self {
        Self { records, bytes }
    }

    /// At most `records` records, whatever their size.
    pub const fn records(records: u64) -> Self {
        Self::new(records, Self::UNBOUNDED)
    }

    /// At most `bytes` payload bytes, however many records carry them.
    pub const fn bytes(bytes: u64) -> Self {
        Self::new(Self::UNBOUNDED, bytes)
    }

    /// Whether the record count is bounded.
    pub const fn bounds_records(&self) -> bool {
        self.records != Self::UNBOUNDED
    }

    /// Whether the byte count is bounded.
    pub const fn bounds_bytes(&self) -> bool {
        self.bytes != Self::UNBOUNDED
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

impl Limits {
    /// The same `limit` at every level: what a buffer with one pipeline of
    /// one stage (a [`channel`](crate::channel)) needs, where the global,
    /// stage and source levels hold the same records unless there are
    /// several sources. Narrow a level with [`per_source`](Self::per_source)
    /// or [`per_stage`](Self::per_stage).
    pub const fn uniform(limit: Limit) -> Self {
        Self {
            global: limit,
            per_stage: limit,
            per_source: limit,
        }
    }

    /// At most `records` records at every level, bytes unbounded.
    ///
    /// ```
    /// use sluice_buffer::{Limit, Limits};
    /// let l = Limits::records(10_000).per_source(Limit::records(2_500));
    /// assert!(l.validate().is_ok());
    /// assert!(!l.global.bounds_bytes());
    /// ```
    pub const fn records(records: u64) -> Self {
        Self::uniform(Limit::records(records))
    }

    /// At most `bytes` payload bytes at every level, records unbounded.
    pub const fn bytes(bytes: u64) -> Self {
        Self::uniform(Limit::bytes(bytes))
    }

    /// These limits with `limit` for each source.
    pub const fn per_source(mut self, limit: Limit) -> Self {
        self.per_source = limit;
        self
    }

    /// These limits with `limit` for each stage.
    pub const fn per_stage(mut self, limit: Limit) -> Self {
        self.per_stage = limit;
        self
    }
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
    /// absent the process's cgroup is compared with its limit where there is
    /// one, else this process's RSS with the host's total memory.
    pub limit_bytes: Option<u64>,
    /// Also read the host's used memory (all processes) against its total,
    /// as a second, separately named reading ([`Measured::Host`](crate::Measured::Host)):
    /// the gate then closes when either reading reaches `activate_percent`.
    /// Off by default: other processes on the host do not close sluice's gate.
    pub include_host: bool,
}

impl Default for MemoryGateConfig {
    /// Enabled, close at 85 %, reopen at 75 %, sample every 100 ms, the
    /// process against its cgroup limit or the host's total, host reading off.
    fn default() -> Self {
        Self {
            enabled: true,
            activate_percent: 85.0,
            resume_percent: 75.0,
            refresh_ms: 100,
            limit_bytes: None,
            include_host: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Validation: the one definition of what a valid limit or policy is. The
// buffer's constructors (the builder, the gate, the monitor, the controller)
// and the settings crate (`sluice-config`) all call these, so they can never
// disagree.
// ---------------------------------------------------------------------------

/// A rule a field of a limit or policy breaks (see [`FieldError`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FieldRule {
    /// The value must be greater than 0.
    Positive,
    /// An optional byte limit, when given, must be greater than 0.
    PositiveOrAbsent,
    /// `value` must lie in `range`, written as an interval (`(0, 1]`).
    InRange {
        /// The value found.
        value: f64,
        /// The allowed interval, as written in the message.
        range: &'static str,
    },
    /// `value` must be below the field `other`, whose value is `other_value`.
    Below {
        /// The value found.
        value: f64,
        /// The other field.
        other: &'static str,
        /// Its value.
        other_value: f64,
    },
    /// `value` must not exceed the field `other`, whose value is `other_value`.
    NotAbove {
        /// The value found.
        value: u64,
        /// The other field.
        other: &'static str,
        /// Its value.
        other_value: u64,
    },
    /// `value` must not be below the field `other`, whose value is `other_value`.
    NotBelow {
        /// The value found.
        value: Duration,
        /// The other field.
        other: &'static str,
        /// Its value.
        other_value: Duration,
    },
}

/// One field of a [`Limits`], [`Watermarks`], [`MemoryGateConfig`] or
/// [`RetryPolicy`] that breaks a rule.
///
/// `field` is the field's path within the checked value (`per_stage.records`,
/// `low`, `resume_percent`); [`message_with`](Self::message_with) renders the
/// sentence with the names a caller uses for the fields (a settings file's
/// keys), and `Display` renders it with the field paths as they are.
///
/// ```
/// use sluice_buffer::{FieldRule, MemoryGateConfig};
///
/// let config = MemoryGateConfig { resume_percent: 0.0, ..MemoryGateConfig::default() };
/// let errors = config.validate().unwrap_err();
/// let e = errors.iter().next().unwrap();
/// assert_eq!(e.field, "resume_percent");
/// assert_eq!(e.to_string(), "resume_percent (0) must be in (0, 100]");
/// assert_eq!(
///     e.message_with(|f| format!("memory.{f}")),
///     "memory.resume_percent (0) must be in (0, 100]"
/// );
/// assert!(matches!(e.rule, FieldRule::InRange { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.message_with(str::to_owned))]
pub struct FieldError {
    /// The offending field's path within the checked value.
    pub field: &'static str,
    /// The rule it breaks.
    pub rule: FieldRule,
}

impl FieldError {
    /// The whole sentence, naming each field (this one, and the other field
    /// of a comparison) by `name(field)`.
    pub fn message_with(&self, name: impl Fn(&str) -> String) -> String {
        let key = name(self.field);
        match self.rule {
            FieldRule::Positive => format!("{key} must be greater than 0"),
            FieldRule::PositiveOrAbsent => {
                format!("{key} must be greater than 0 (omit it to use the cgroup or host limit)")
            }
            FieldRule::InRange { value, range } => format!("{key} ({value}) must be in {range}"),
            FieldRule::Below {
                value,
                other,
                other_value,
            } => format!(
                "{key} ({value}) must be below {} ({other_value})",
                name(other)
            ),
            FieldRule::NotAbove {
                value,
                other,
                other_value,
            } => format!(
                "{key} ({value}) must not exceed {} ({other_value})",
                name(other)
            ),
            FieldRule::NotBelow {
                value,
                other,
                other_value,
            } => format!(
                "{key} ({value:?}) must not be below {} ({other_value:?})",
                name(other)
            ),
        }
    }
}

/// Every [`FieldError`] of one value, in the order of its fields; never empty.
/// Displayed joined with `; `.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// The errors, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// The first error.
    pub fn first(&self) -> &FieldError {
        &self.0[0]
    }

    fn check(errors: Vec<FieldError>) -> Result<(), FieldErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FieldErrors(errors))
        }
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn field(field: &'static str, rule: FieldRule) -> FieldError {
    FieldError { field, rule }
}

impl Limits {
    /// The largest record any level can take, in bytes: the smallest byte
    /// limit, and below `u32::MAX` (a record's size is kept in 32 bits).
    /// A larger record is refused `TooLarge` whatever the credit.
    pub fn max_record_bytes(&self) -> u64 {
        self.global
            .bytes
            .min(self.per_stage.bytes)
            .min(self.per_source.bytes)
            .min(u64::from(u32::MAX) - 1)
    }

    /// Checks that every level admits something (no zero records or bytes)
    /// and that no bounded per-stage or per-source limit exceeds a bounded
    /// global one. Fields: `global.records`, `per_stage.bytes`, …; what the
    /// builder refuses.
    ///
    /// Why the second rule, and where it is relaxed: a lower level above
    /// the global one can never be reached, so a configured number there is
    /// a mistake worth naming at start-up. An *unbounded* lower level
    /// ([`Limit::UNBOUNDED`]) says "no limit of its own" and is accepted
    /// under a bounded global one, and any lower level fits under an
    /// unbounded global one.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        const FIELDS: [(&str, &str); 3] = [
            ("global.records", "global.bytes"),
            ("per_stage.records", "per_stage.bytes"),
            ("per_source.records", "per_source.bytes"),
        ];
        let levels = [self.global, self.per_stage, self.per_source];
        let mut errors = Vec::new();
        for (limit, (records, bytes)) in levels.iter().zip(FIELDS) {
            if limit.records == 0 {
                errors.push(field(records, FieldRule::Positive));
            }
            if limit.bytes == 0 {
                errors.push(field(bytes, FieldRule::Positive));
            }
        }
        for (limit, (records, bytes)) in levels.iter().zip(FIELDS).skip(1) {
            for (name, value, other, other_value) in [
                (
                    records,
                    limit.records,
                    "global.records",
                    self.global.records,
                ),
                (bytes, limit.bytes, "global.bytes", self.global.bytes),
            ] {
                if value != Limit::UNBOUNDED && value > other_value {
                    errors.push(field(
                        name,
                        FieldRule::NotAbove {
                            value,
                            other,
                            other_value,
                        },
                    ));
                }
            }
        }
        FieldErrors::check(errors)
    }
}

impl RetryPolicy {
    /// Checks that `max_backoff` is not below `initial_backoff`.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = Vec::new();
        if self.max_backoff < self.initial_backoff {
            errors.push(field(
                "max_backoff",
                FieldRule::NotBelow {
                    value: self.max_backoff,
                    other: "initial_backoff",
                    other_value: self.initial_backoff,
                },
            ));
        }
        FieldErrors::check(errors)
    }
}

impl Watermarks {
    /// Checks `0 < low < high <= 1`: each in (0, 1] (fields `high`, `low`),
    /// and `low` below `high`.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = Vec::new();
        for (name, value) in [("high", self.high), ("low", self.low)] {
            if !(value > 0.0 && value <= 1.0) {
                errors.push(field(
                    name,
                    FieldRule::InRange {
                        value,
                        range: "(0, 1]",
                    },
                ));
            }
        }
        if self.low >= self.high {
            errors.push(field(
                "low",
                FieldRule::Below {
                    value: self.low,
                    other: "high",
                    other_value: self.high,
                },
            ));
        }
        FieldErrors::check(errors)
    }
}

impl MemoryGateConfig {
    /// Checks every field, whether or not the gate is `enabled`: the
    /// thresholds (see [`Gate::new`](crate::Gate::new)), `refresh_ms` at
    /// least 1 and `limit_bytes`, when given, above 0.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = self.threshold_errors();
        if self.refresh_ms == 0 {
            errors.push(field("refresh_ms", FieldRule::Positive));
        }
        if self.limit_bytes == Some(0) {
            errors.push(field("limit_bytes", FieldRule::PositiveOrAbsent));
        }
        FieldErrors::check(errors)
    }

    /// The thresholds alone: each in (0, 100], `resume_percent` below
    /// `activate_percent`. What [`Gate::new`](crate::Gate::new) refuses.
    pub(crate) fn validate_thresholds(&self) -> Result<(), FieldErrors> {
        FieldErrors::check(self.threshold_errors())
    }

    fn threshold_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, value) in [
            ("activate_percent", self.activate_percent),
            ("resume_percent", self.resume_percent),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                errors.push(field(
                    name,
                    FieldRule::InRange {
                        value,
                        range: "(0, 100]",
                    },
                ));
            }
        }
        if self.resume_percent >= self.activate_percent {
            errors.push(field(
                "resume_percent",
                FieldRule::Below {
                    value: self.resume_percent,
                    other: "activate_percent",
                    other_value: self.activate_percent,
                },
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(r: Result<(), FieldErrors>) -> Vec<String> {
        r.err()
            .map(|e| e.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Limits::default().validate().is_ok());
        assert!(Watermarks::default().validate().is_ok());
        assert!(MemoryGateConfig::default().validate().is_ok());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    #[test]
    fn limits_rules() {
        let mut l = Limits::default();
        l.per_stage.records = 0;
        l.per_source.bytes = l.global.bytes + 1;
        assert_eq!(
            messages(l.validate()),
            [
                "per_stage.records must be greater than 0".to_owned(),
                format!(
                    "per_source.bytes ({}) must not exceed global.bytes ({})",
                    l.global.bytes + 1,
                    l.global.bytes
                ),
            ]
        );
    }

    #[test]
    fn watermark_rules() {
        let w = |high, low| messages(Watermarks { high, low }.validate());
        assert_eq!(w(0.8, 0.9), ["low (0.9) must be below high (0.8)"]);
        assert_eq!(w(1.5, 0.5), ["high (1.5) must be in (0, 1]"]);
        assert_eq!(
            w(0.8, 0.0),
            ["low (0) must be in (0, 1]"],
            "low = 0 is refused"
        );
        assert!(w(1.0, 0.5).is_empty());
        assert!(!w(f64::NAN, 0.5).is_empty());
    }

    #[test]
    fn memory_rules() {
        let m = |activate_percent, resume_percent| MemoryGateConfig {
            activate_percent,
            resume_percent,
            ..MemoryGateConfig::default()
        };
        assert_eq!(
            messages(m(85.0, 0.0).validate()),
            ["resume_percent (0) must be in (0, 100]"]
        );
        assert_eq!(
            messages(m(85.0, 90.0).validate()),
            ["resume_percent (90) must be below activate_percent (85)"]
        );
        let c = MemoryGateConfig {
            refresh_ms: 0,
            limit_bytes: Some(0),
            ..MemoryGateConfig::default()
        };
        assert_eq!(
            messages(c.validate()),
            [
                "refresh_ms must be greater than 0",
                "limit_bytes must be greater than 0 (omit it to use the cgroup or host limit)"
            ]
        );
        assert!(c.validate_thresholds().is_ok(), "thresholds alone are fine");
    }

    #[test]
    fn retry_rules() {
        let r = RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(
            messages(r.validate()),
            ["max_backoff (1s) must not be below initial_backoff (5s)"]
        );
    }

    #[test]
    fn the_builder_refuses_what_validate_refuses() {
        use crate::{BufferManager, BuildError};
        let build = |limits: Limits, retry: RetryPolicy| {
            BufferManager::<Vec<u8>>::builder(limits)
                .retry(retry)
                .pipeline("p", ["s"])
                .build::<Vec<u8>>()
                .err()
        };
        let mut l = Limits::default();
        l.per_source.records = 0;
        assert!(l.validate().is_err());
        assert_eq!(
            build(l, RetryPolicy::default()),
            Some(BuildError::ZeroLimit("per-source"))
        );
        let mut l = Limits::default();
        l.per_stage.bytes = l.global.bytes + 1;
        assert_eq!(
            build(l, RetryPolicy::default()),
            Some(BuildError::AboveGlobal("per-stage"))
        );
        let r = RetryPolicy {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert!(r.validate().is_err());
        assert!(matches!(
            build(Limits::default(), r),
            Some(BuildError::Retry(_))
        ));
        assert_eq!(build(Limits::default(), RetryPolicy::default()), None);
    }
}
