//! The `sluice.v1.Admin` service: `Stats`, a snapshot of levels, stages,
//! sources and the memory gate.

use std::sync::Arc;

use sluice_buffer::{LevelSnapshot, SourceState};
use sluice_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::state::EngineState;
use crate::ingest::Connection;
use crate::runtime::HealthView;

/// The proto form of a sink's health.
fn health(h: &HealthView) -> v1::SinkHealth {
    v1::SinkHealth {
        stalled: h.stalled.is_some(),
        error: h.stalled.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        stalled_ms: h.stalled.as_ref().map_or(0, |s| s.1.as_millis() as u64),
        failures: h.failures,
        records_refused: h.refused,
        stalls: h.stalls,
    }
}

/// The `sluice.v1.Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub(crate) state: Arc<EngineState>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        crate::auth::check(self.state.ingest.auth.as_ref(), request.metadata())?;
        Ok(Response::new(self.state.stats()))
    }
}

impl EngineState {
    /// What `Admin.Stats` answers now.
    pub(crate) fn stats(&self) -> v1::StatsResponse {
        let snap = self.runtime.buffer.snapshot();
        let level = |l: &LevelSnapshot| v1::LevelStats {
            records: l.records,
            bytes: l.bytes,
            limit_records: l.limit.records,
            limit_bytes: l.limit.bytes,
            utilization: l.utilization(),
            reserved_records: l.reserved_records,
            reserved_bytes: l.reserved_bytes,
        };
        let uptime = self.started.elapsed();
        let pipeline_name = |id: sluice_buffer::PipelineId| {
            self.runtime
                .buffer
                .pipeline(id)
                .map(|p| p.name.to_string())
                .unwrap_or_default()
        };
        let stages = snap
            .stages
            .iter()
            .map(|s| {
                // The same last-interval rates as the /metrics gauges.
                let rates = self.runtime.clocks.rates(s.id);
                v1::StageStats {
                    pipeline: pipeline_name(s.pipeline),
                    name: s.name.to_string(),
                    index: self
                        .runtime
                        .buffer
                        .stage(s.id)
                        .map_or(0, |i| i.index as u32),
                    level: Some(level(&s.level)),
                    queued: s.queued_records,
                    in_flight: s.in_flight_records,
                    busy_ms_per_s: rates.busy_ms_per_s,
                    idle_ms_per_s: rates.idle_ms_per_s,
                    backpressured_ms_per_s: rates.backpressured_ms_per_s,
                }
            })
            .collect();
        let connections = self.ingest.streams.connections();
        let sources = snap
            .sources
            .iter()
            .map(|s| {
                let connection = connections
                    .get(&s.id)
                    .copied()
                    .unwrap_or(Connection::Disconnected);
                let connected = connection != Connection::Disconnected;
                let state = if connection != Connection::Open {
                    v1::SourceState::Closed
                } else {
                    match self.runtime.controller.state(s.id) {
                        Some(SourceState::SlowedDown) => v1::SourceState::Slowed,
                        Some(SourceState::Paused) => v1::SourceState::Paused,
                        _ => v1::SourceState::Normal,
                    }
                };
                let (received, rejected) = self.runtime.hub.counters(s.id);
                v1::SourceStats {
                    source_id: s.name.to_string(),
                    pipeline: pipeline_name(s.pipeline),
                    state: state as i32,
                    connected,
                    credits_outstanding_records: s.level.reserved_records,
                    credits_outstanding_bytes: s.level.reserved_bytes,
                    admitted_through_seq: s.admitted_through,
                    acked_through_seq: s.acked_through,
                    received,
                    delivered: s.delivered,
                    dead_lettered: s.dead_lettered,
                    rejected,
                    filtered: s.filtered,
                    level: Some(level(&s.level)),
                }
            })
            .collect();
        let gate = self.runtime.gate.borrow().clone();
        let mem = &self.settings.memory;
        v1::StatsResponse {
            uptime_ms: uptime.as_millis() as u64,
            draining: self.ingest.draining.is_cancelled(),
            global: Some(level(&snap.global)),
            pipelines: self
                .runtime
                .pipelines
                .iter()
                .enumerate()
                .map(|(i, p)| v1::PipelineStats {
                    name: p.name.to_string(),
                    is_default: i == 0,
                    stages: self
                        .runtime
                        .buffer
                        .pipeline(p.id)
                        .map(|info| {
                            info.stages
                                .iter()
                                .filter_map(|s| {
                                    self.runtime.buffer.stage(*s).map(|s| s.name.to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    sink: p.sink.describe(),
                    dead_letter: p.dead_letter.describe(),
                    sink_health: Some(health(&p.sink_health.view())),
                    dead_letter_health: Some(health(&p.dead_letter_health.view())),
                })
                .collect(),
            stages,
            sources,
            memory: Some(v1::MemoryStats {
                enabled: mem.enabled,
                closed: gate.closed,
                used_bytes: gate.used_bytes,
                limit_bytes: gate.limit_bytes,
                percent: gate.percent,
                activate_percent: mem.activate_percent,
                resume_percent: mem.resume_percent,
                measured: gate.measured.as_str().to_owned(),
            }),
        }
    }
}
