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

/// The proto form of a flow-control signal.
pub(crate) fn signal_msg(s: &sluice_buffer::BackpressureSignal) -> v1::Signal {
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
        target_records_per_second: 0.0,
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
