//! What a source is told, and how it listens: the signal of each transition
//! and the watch-channel subscription that carries the latest status.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::SourceStatus;
use crate::record::StageId;

/// What a signal tells a source to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// A level is above the high watermark: send more slowly. The credit
    /// window is shrunk too.
    SlowDown,
    /// A level is full, the memory gate is closed, a sink of the source's
    /// pipeline is stalled, or the engine is shutting down: no new credit
    /// until [`Resume`](Self::Resume).
    Pause,
    /// Every level is back at or below the low watermark (and the gate is
    /// open): full speed again.
    Resume,
}

impl SignalKind {
    /// `slow_down`, `pause` or `resume`.
    pub fn label(&self) -> &'static str {
        match self {
            SignalKind::SlowDown => "slow_down",
            SignalKind::Pause => "pause",
            SignalKind::Resume => "resume",
        }
    }
}

impl std::fmt::Display for SignalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What caused a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalReason {
    /// The global limit.
    Global,
    /// The limit of this stage of the source's pipeline (the most utilized one).
    Stage(StageId),
    /// The source's own limit.
    Source,
    /// The memory gate.
    Memory,
    /// The controller or the buffer manager is shutting down.
    Shutdown,
    /// The sink written by this stage of the source's pipeline is stalled
    /// (unavailable: the embedder said so with
    /// [`BackpressureController::set_stage_stalled`](crate::BackpressureController::set_stage_stalled)).
    Sink(StageId),
}

impl SignalReason {
    /// `global`, `stage`, `source`, `memory`, `shutdown` or `sink` (the metric label).
    pub fn label(&self) -> &'static str {
        match self {
            SignalReason::Global => "global",
            SignalReason::Stage(_) => "stage",
            SignalReason::Source => "source",
            SignalReason::Memory => "memory",
            SignalReason::Shutdown => "shutdown",
            SignalReason::Sink(_) => "sink",
        }
    }

    /// The stage, for [`Stage`](Self::Stage) and [`Sink`](Self::Sink).
    pub fn stage(&self) -> Option<StageId> {
        match self {
            SignalReason::Stage(s) | SignalReason::Sink(s) => Some(*s),
            _ => None,
        }
    }
}

impl std::fmt::Display for SignalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalReason::Stage(s) => write!(f, "stage {s}"),
            SignalReason::Sink(s) => write!(f, "sink of stage {s}"),
            other => f.write_str(other.label()),
        }
    }
}

/// A flow-control signal for one source, published on each transition of
/// its state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct BackpressureSignal {
    /// What the source should do.
    pub kind: SignalKind,
    /// What caused it. For [`SignalKind::Resume`], the cause of the episode
    /// that ends.
    pub reason: SignalReason,
    /// The stage's name when `reason` is [`SignalReason::Stage`] or
    /// [`SignalReason::Sink`].
    pub stage_name: Option<Arc<str>>,
    /// The stalled sink's description when `reason` is [`SignalReason::Sink`].
    pub sink: Option<Arc<str>>,
    /// Utilization (0.0–1.0) of the level named by `reason` when the signal
    /// was made; for [`SignalReason::Memory`] the fraction of the memory
    /// limit in use; for [`SignalReason::Sink`] 1.0 (the sink takes nothing). For RESUME, the highest utilization of the source's
    /// levels (at or below the low watermark).
    pub utilization: f64,
    /// Suggested wait: between batches for SLOW_DOWN, before expecting a
    /// change for PAUSE; zero for RESUME.
    pub retry_after: Duration,
}
/// A subscription to one source's [`SourceStatus`].
///
/// Built on a `tokio::sync::watch` channel, which gives the three properties
/// flow control needs: the queue is bounded (one slot: the latest status),
/// the latest status is always visible ([`current`](Self::current)), and no
/// wake-up is lost: the channel is versioned, so a status published at any
/// time after the receiver last looked, even before `changed` is first
/// polled, makes [`changed`](Self::changed) return at once. Intermediate
/// statuses may be skipped (coalesced) when the consumer is slow; `seq`
/// tells how many.
#[derive(Debug, Clone)]
pub struct SignalReceiver {
    pub(super) rx: watch::Receiver<SourceStatus>,
}

impl SignalReceiver {
    /// The latest status (does not mark it as seen).
    pub fn current(&self) -> SourceStatus {
        self.rx.borrow().clone()
    }

    /// The latest status, marked as seen.
    pub fn latest(&mut self) -> SourceStatus {
        self.rx.borrow_and_update().clone()
    }

    /// Whether a status newer than the last one seen was published.
    pub fn has_changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Waits for a status newer than the last one seen and returns it
    /// (marked as seen). `None` once the controller is gone. Cancel-safe.
    pub async fn changed(&mut self) -> Option<SourceStatus> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}
