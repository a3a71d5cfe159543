//! Consistent readings of the counts: [`pressures`](BufferManager::pressures)
//! (what flow control decides on) and [`snapshot`](BufferManager::snapshot).

use super::state::{State, Usage};
use super::{BufferManager, Credit};
use crate::limits::Limit;
use crate::record::{PipelineId, SourceId};
use crate::snapshot::{LevelSnapshot, Pressure, Snapshot, SourceSnapshot, StageSnapshot};

impl<T> BufferManager<T> {
    /// Utilization of every level each source touches, for all sources, in
    /// one consistent reading.
    ///
    /// Pressure is *load*: records in the engine (queued or in flight), not
    /// unused reservations. Credits are promised capacity; they already stop
    /// further grants through [`available`](Self::available), and counting
    /// them as load would make a source that holds credit it has not used
    /// yet slow itself down (and, paused, never use it: a stall).
    pub fn pressures(&self) -> Vec<(SourceId, Pressure)> {
        let st = self.state.lock();
        let (global, stage_utils) = self.loads(&st);
        st.sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (stage, stage_util) = self.pipelines[s.pipeline.index()]
                    .stages
                    .iter()
                    .map(|&id| (id, stage_utils[id.index()]))
                    .fold((s.entry, 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
                (
                    SourceId(i as u32),
                    Pressure {
                        global,
                        stage: stage_util,
                        stage_id: stage,
                        source: util(load(s.usage.used, s.reserved), self.limits.per_source),
                    },
                )
            })
            .collect()
    }

    /// The highest utilization of any level `pipeline`'s records count
    /// against: the global level, each of its stages, each of its sources,
    /// as load (the same reading as [`pressures`](Self::pressures), which
    /// flow control decides on). The stage workers ask it whether to wait
    /// for a fuller batch (not while the pipeline is under pressure).
    pub fn pipeline_pressure(&self, pipeline: PipelineId) -> f64 {
        let st = self.state.lock();
        let (global, stage_utils) = self.loads(&st);
        let stages = self.pipelines[pipeline.index()]
            .stages
            .iter()
            .map(|id| stage_utils[id.index()]);
        let sources = st
            .sources
            .iter()
            .filter(|s| s.pipeline == pipeline)
            .map(|s| util(load(s.usage.used, s.reserved), self.limits.per_source));
        stages.chain(sources).fold(global, f64::max)
    }

    /// The global utilization and each stage's, as load.
    fn loads(&self, st: &State<T>) -> (f64, Vec<f64>) {
        let global = util(load(st.global.used, st.global_reserved), self.limits.global);
        let stages = st
            .stages
            .iter()
            .map(|s| util(load(s.usage.used, s.reserved), self.limits.per_stage))
            .collect();
        (global, stages)
    }

    /// Utilization of every level `source` touches.
    pub fn pressure(&self, source: SourceId) -> Option<Pressure> {
        self.pressures()
            .into_iter()
            .find(|(id, _)| *id == source)
            .map(|(_, p)| p)
    }

    /// A consistent snapshot of every level and source.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        let level = |u: &Usage, reserved: Credit, limit: Limit| LevelSnapshot {
            records: u.used.records,
            bytes: u.used.bytes,
            reserved_records: reserved.records,
            reserved_bytes: reserved.bytes,
            peak_records: u.peak.records,
            peak_bytes: u.peak.bytes,
            limit,
        };
        Snapshot {
            global: level(&st.global, st.global_reserved, self.limits.global),
            stages: self
                .stages
                .iter()
                .zip(&st.stages)
                .map(|(info, s)| StageSnapshot {
                    id: info.id,
                    pipeline: info.pipeline,
                    name: info.name.clone(),
                    level: level(&s.usage, s.reserved, self.limits.per_stage),
                    queued_records: s.queued.records,
                    queued_bytes: s.queued.bytes,
                    delayed_records: s.delayed.len() as u64,
                    in_flight_records: s.usage.used.records - s.reserved.records - s.queued.records,
                })
                .collect(),
            sources: st
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| SourceSnapshot {
                    id: SourceId(i as u32),
                    name: s.name.clone(),
                    pipeline: s.pipeline,
                    level: level(&s.usage, s.reserved, self.limits.per_source),
                    admitted_through: s.admitted_through,
                    acked_through: s.acks.through,
                    admitted: s.admitted,
                    delivered: s.delivered,
                    filtered: s.filtered,
                    dead_lettered: s.dead_lettered,
                    refused: s.refused,
                    retried: s.retried,
                })
                .collect(),
            shut_down: st.shutdown,
        }
    }
}

/// What a level holds for records in the engine: its use less the unused
/// reservations in it.
fn load(used: Credit, reserved: Credit) -> Credit {
    Credit::new(used.records - reserved.records, used.bytes - reserved.bytes)
}

fn util(used: Credit, limit: Limit) -> f64 {
    let r = used.records as f64 / limit.records.max(1) as f64;
    let b = used.bytes as f64 / limit.bytes.max(1) as f64;
    r.max(b)
}
