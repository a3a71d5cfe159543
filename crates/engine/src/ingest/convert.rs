//! The buffer's types in their wire (proto) form: credits, signals, reject
//! reasons, and the envelope of every message the engine sends.

use sluice_buffer::{
    Credit, Level, RejectReason as BufReject, SignalKind as BufKind, SignalReason as BufReason,
};
use sluice_proto::v1::{
    self, EngineMessage, RejectReason, SignalKind, SignalReason, engine_message,
};

pub(crate) fn msg(body: engine_message::Body) -> EngineMessage {
    EngineMessage { body: Some(body) }
}

pub(crate) fn credit_msg(c: Credit) -> v1::Credit {
    v1::Credit {
        records: c.records,
        bytes: c.bytes,
    }
}

/// The proto form of a flow-control signal; `drain_rate` (the source's
/// records completed per second, 0 when unknown) is sent with SLOW_DOWN
/// only, as `target_records_per_second`.
pub(crate) fn signal_msg(s: &sluice_buffer::BackpressureSignal, drain_rate: f64) -> v1::Signal {
    v1::Signal {
        kind: match s.kind {
            BufKind::SlowDown => SignalKind::SlowDown,
            BufKind::Pause => SignalKind::Pause,
            BufKind::Resume => SignalKind::Resume,
        } as i32,
        reason: match s.reason {
            BufReason::Global => SignalReason::Global,
            BufReason::Stage(_) => SignalReason::Stage,
            BufReason::Source => SignalReason::Source,
            BufReason::Memory => SignalReason::Memory,
            BufReason::Shutdown => SignalReason::Shutdown,
            BufReason::Sink(_) => SignalReason::Sink,
        } as i32,
        utilization: s.utilization,
        retry_after_ms: u32::try_from(s.retry_after.as_millis()).unwrap_or(u32::MAX),
        stage: s.stage_name.as_deref().unwrap_or_default().to_owned(),
        target_records_per_second: match s.kind {
            BufKind::SlowDown if drain_rate.is_finite() => drain_rate.max(0.0),
            _ => 0.0,
        },
        sink: s.sink.as_deref().unwrap_or_default().to_owned(),
    }
}

pub(crate) fn reject_reason(r: &BufReject) -> RejectReason {
    match r {
        BufReject::Limit { level, .. } => match level {
            Level::Global => RejectReason::GlobalLimit,
            Level::Stage(_) => RejectReason::StageLimit,
            Level::Source(_) => RejectReason::SourceLimit,
        },
        BufReject::TooLarge { .. } => RejectReason::RecordTooLarge,
    }
}

/// The text of a buffer's reject for a source: the level named the way the
/// settings name it (the stage by its name, the source by its id, and the
/// setting that sets the limit), never by an internal number.
pub(crate) fn reject_text(
    r: &BufReject,
    source_id: &str,
    stage_name: impl Fn(sluice_buffer::StageId) -> Option<String>,
) -> String {
    let level = |level: &Level| match level {
        Level::Global => "the global limit (buffer.global)".to_owned(),
        Level::Stage(s) => format!(
            "the limit of stage {:?} (buffer.per_stage)",
            stage_name(*s).unwrap_or_else(|| s.to_string())
        ),
        Level::Source(_) => format!("the limit of source {source_id:?} (buffer.per_source)"),
    };
    match r {
        BufReject::Limit {
            level: l,
            unit,
            limit,
            used,
        } => {
            let unit = match unit {
                sluice_buffer::Unit::Records => "records",
                sluice_buffer::Unit::Bytes => "bytes",
            };
            format!(
                "{} is reached in {unit}: {used} of {limit} in use",
                level(l)
            )
        }
        BufReject::TooLarge {
            level: l,
            size,
            limit,
        } => format!(
            "a record of {size} bytes is larger than {} of {limit} bytes: it can never be admitted",
            level(l)
        ),
    }
}
