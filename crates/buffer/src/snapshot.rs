//! Point-in-time readings of the buffer, for flow control, metrics and the Stats RPC.

use std::sync::Arc;

use crate::limits::Limit;
use crate::record::{PipelineId, SourceId, StageId};

/// Usage of one level against its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelSnapshot {
    /// Records counted (reservations included).
    pub records: u64,
    /// Bytes counted (reservations included).
    pub bytes: u64,
    /// Of `records`, how many are reserved credits not yet used.
    pub reserved_records: u64,
    /// Of `bytes`, how many are reserved credits not yet used.
    pub reserved_bytes: u64,
    /// The most records ever counted at once (high-water mark).
    pub peak_records: u64,
    /// The most bytes ever counted at once (high-water mark).
    pub peak_bytes: u64,
    /// The limit.
    pub limit: Limit,
}

impl LevelSnapshot {
    /// The larger of records/limit and bytes/limit, from 0.0 to 1.0.
    pub fn utilization(&self) -> f64 {
        let r = self.records as f64 / self.limit.records.max(1) as f64;
        let b = self.bytes as f64 / self.limit.bytes.max(1) as f64;
        r.max(b)
    }
}

/// One stage's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSnapshot {
    /// The stage.
    pub id: StageId,
    /// Its pipeline.
    pub pipeline: PipelineId,
    /// Its name.
    pub name: Arc<str>,
    /// Its usage (reservations of sources entering here included).
    pub level: LevelSnapshot,
    /// Records waiting in its queue, retried ones included.
    pub queued_records: u64,
    /// Bytes waiting in its queue.
    pub queued_bytes: u64,
    /// Of the queued records, those waiting for a retry backoff.
    pub delayed_records: u64,
    /// Records taken by workers and not yet forwarded, retried or completed.
    pub in_flight_records: u64,
}

/// One source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSnapshot {
    /// The source.
    pub id: SourceId,
    /// The name it was registered under.
    pub name: Arc<str>,
    /// The pipeline it feeds.
    pub pipeline: PipelineId,
    /// Its usage: reserved credits plus records in the engine.
    pub level: LevelSnapshot,
    /// Highest sequence number admitted.
    pub admitted_through: u64,
    /// Cumulative ack position: every seq up to it is completed.
    pub acked_through: u64,
    /// Records admitted, in total.
    pub admitted: u64,
    /// Records completed as delivered (committed by the sink), in total.
    pub delivered: u64,
    /// Records completed as filtered out by a stage, in total.
    pub filtered: u64,
    /// Records completed as dead letters, in total.
    pub dead_lettered: u64,
    /// Records `admit` handed back (a limit was reached, or a record was
    /// too large), in total. Not the engine's "rejected", which counts every
    /// record named in a `Reject`, whatever refused it.
    pub refused: u64,
    /// Retries, in total.
    pub retried: u64,
}

impl SourceSnapshot {
    /// Records admitted and not yet completed.
    pub fn in_engine(&self) -> u64 {
        self.level.records - self.level.reserved_records
    }
}

/// A consistent reading of the whole buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The global level.
    pub global: LevelSnapshot,
    /// Every stage of every pipeline.
    pub stages: Vec<StageSnapshot>,
    /// Every source ever registered.
    pub sources: Vec<SourceSnapshot>,
    /// Whether the manager was shut down.
    pub shut_down: bool,
}

/// Utilization (0.0–1.0) of each level one source touches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// The global level.
    pub global: f64,
    /// The most utilized stage of the source's pipeline.
    pub stage: f64,
    /// Which stage that is.
    pub stage_id: StageId,
    /// The source's own level.
    pub source: f64,
}

impl Pressure {
    /// The highest of the three.
    pub fn max(&self) -> f64 {
        self.global.max(self.stage).max(self.source)
    }
}
