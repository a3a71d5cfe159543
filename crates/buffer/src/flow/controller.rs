//! The [`BackpressureController`]: its configuration, its lock and the
//! invariants it keeps, evaluation of every source's state, shutdown and
//! the background task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::fair::min_credit;
use super::handle::SourceHandle;
use super::signal::{BackpressureSignal, SignalKind, SignalReason, SignalReceiver};
use super::state::{SourceState, SourceStatus, Transition, step};
use crate::error::BufferError;
use crate::limits::Watermarks;
use crate::manager::{BufferManager, Credit};
use crate::memory::GateState;
use crate::metrics::{self as m, EpisodeLabels};
use crate::record::{PipelineId, SourceId, StageId};
use crate::sync::Mutex;

/// Expected record size behind the default byte window.
pub const DEFAULT_EXPECTED_RECORD_BYTES: u64 = 1024;

/// The default credit window in records. A source's throughput is bounded by
/// about window ÷ completion latency (records wait for a sink batch, up to
/// its linger), so the window must cover a few sink batches: with 1,024 the
/// engine idled at ~0.25 M records/s for 4 sources (BENCHMARKS.md).
pub const DEFAULT_WINDOW_RECORDS: u64 = 16_384;

/// The default guaranteed share of a session, in records (the bytes are
/// this × [`DEFAULT_EXPECTED_RECORD_BYTES`]). Small on purpose: every open
/// stream holds it whether it sends or not, so 1,000 idle streams hold 16,000
/// records / 16 MiB of the default per-stage limit of 100,000 records / 64
/// MiB, and a busy source still gets its whole window. A source that starts
/// sending gets the rest of its window at its first batch (one round trip).
pub const DEFAULT_GUARANTEED_RECORDS: u64 = 16;

/// The default credit lease: how long floating credit of a leased
/// ([`CreditMode::Leased`]) session may stay unused before it is revoked.
/// Long against a round trip and a sink batch's linger (so a source that
/// sends steadily never loses credit it is about to use), short against the
/// time an idle stream would otherwise hold capacity others are waiting for.
pub const DEFAULT_CREDIT_LEASE: Duration = Duration::from_secs(2);

/// How a session's credit above its guaranteed share ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreditMode {
    /// It never expires: the session keeps it until it uses it or closes
    /// (protocol version 1). Such a session claims floating credit while it
    /// used credit within the last [`ControllerConfig::credit_lease`].
    #[default]
    NonExpiring,
    /// Floating credit unused for [`ControllerConfig::credit_lease`] is
    /// revoked ([`FlowEvent::Revoke`](super::FlowEvent)), and the session
    /// claims floating credit only while its announced backlog
    /// ([`SourceHandle::announce_backlog`](super::SourceHandle::announce_backlog))
    /// is not zero (protocol version 2).
    Leased,
}

/// Settings of a [`BackpressureController`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerConfig {
    /// SLOW_DOWN at `high`, RESUME at or below `low`.
    pub watermarks: Watermarks,
    /// The credit window of a session: the most unused credit it may hold.
    /// Capped at `watermarks.low ×` the per-source limit. Default
    /// [`DEFAULT_WINDOW_RECORDS`] records and that many ×
    /// [`DEFAULT_EXPECTED_RECORD_BYTES`] bytes (16 MiB).
    pub window: Credit,
    /// In SLOW_DOWN the window is divided by this (at least 1 record and 1
    /// byte remain). Default 4.
    pub slow_down_divisor: u64,
    /// Period of the background evaluation. Default 10 ms.
    pub tick: Duration,
    /// `retry_after` of SLOW_DOWN signals: a suggested pause between
    /// batches. Default 50 ms.
    pub slow_down_retry_after: Duration,
    /// `retry_after` of PAUSE signals. Default 250 ms.
    pub pause_retry_after: Duration,
    /// The guaranteed share of a session: every session is topped up to it
    /// (when there is room) whether it claims credit or not, and it is never
    /// revoked. At most the window. Default [`DEFAULT_GUARANTEED_RECORDS`]
    /// records and that many × [`DEFAULT_EXPECTED_RECORD_BYTES`] bytes.
    pub guaranteed: Credit,
    /// How long floating credit may stay unused: a [`CreditMode::Leased`]
    /// session's floating credit is revoked after it; a
    /// [`CreditMode::NonExpiring`] session claims floating credit for this
    /// long after it last used credit. Default [`DEFAULT_CREDIT_LEASE`].
    pub credit_lease: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            watermarks: Watermarks::default(),
            window: Credit::new(
                DEFAULT_WINDOW_RECORDS,
                DEFAULT_WINDOW_RECORDS * DEFAULT_EXPECTED_RECORD_BYTES,
            ),
            slow_down_divisor: 4,
            tick: Duration::from_millis(10),
            slow_down_retry_after: Duration::from_millis(50),
            pause_retry_after: Duration::from_millis(250),
            guaranteed: Credit::new(
                DEFAULT_GUARANTEED_RECORDS,
                DEFAULT_GUARANTEED_RECORDS * DEFAULT_EXPECTED_RECORD_BYTES,
            ),
            credit_lease: DEFAULT_CREDIT_LEASE,
        }
    }
}

impl ControllerConfig {
    /// Sets the window to `records` records of about `expected_record_bytes` each.
    pub fn with_window_records(mut self, records: u64, expected_record_bytes: u64) -> Self {
        self.window = Credit::new(records, records.saturating_mul(expected_record_bytes));
        self
    }

    fn validate(&self) -> Result<(), ControllerError> {
        let bad = |m: String| Err(ControllerError::InvalidConfig(m));
        if let Err(errors) = self.watermarks.validate() {
            let all: Vec<String> = errors
                .iter()
                .map(|e| e.message_with(|f| format!("watermarks.{f}")))
                .collect();
            return bad(all.join("; "));
        }
        if self.window.is_zero() {
            return bad(format!(
                "the credit window must be non-zero, got {:?}",
                self.window
            ));
        }
        if self.slow_down_divisor == 0 {
            return bad("slow_down_divisor must be at least 1".into());
        }
        if self.tick.is_zero() {
            return bad("tick must be non-zero".into());
        }
        if self.credit_lease.is_zero() {
            return bad("credit_lease must be non-zero".into());
        }
        Ok(())
    }
}

/// Errors of the [`BackpressureController`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is out of range.
    #[error("invalid flow-control config: {0}")]
    InvalidConfig(String),
    /// The controller was shut down.
    #[error("flow control is shut down")]
    Closed,
    /// The buffer manager refused (e.g. an unknown source).
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

/// An open backpressure episode (the source is not NORMAL).
#[derive(Debug)]
pub(super) struct Episode {
    pub(super) started: Instant,
    pub(super) reason: SignalReason,
    /// The stalled sink's description, for [`SignalReason::Sink`].
    pub(super) sink: Option<Arc<str>>,
    pub(super) labels: EpisodeLabels,
}

/// Flow-control state of one source.
#[derive(Debug)]
pub(super) struct SourceEntry {
    pub(super) name: Arc<str>,
    /// The pipeline it feeds.
    pub(super) pipeline: PipelineId,
    pub(super) state: SourceState,
    /// Some exactly while `state != Normal` (and the controller is not shut down).
    pub(super) episode: Option<Episode>,
    pub(super) seq: u64,
    pub(super) tx: watch::Sender<SourceStatus>,
}

/// One open [`SourceHandle`]: one stream of a source and the credit it was
/// granted (the docs call it a session; the type is a lease, to keep it apart
/// from the engine's `Session`).
#[derive(Debug)]
pub(super) struct StreamLease {
    pub(super) source: SourceId,
    pub(super) mode: CreditMode,
    /// Credit granted to this session and not yet used, as far as the
    /// session reported usage; re-synchronised down to the manager's
    /// reservation of the source at each grant. The part up to the
    /// guaranteed share is guaranteed, the rest floating.
    pub(super) outstanding: Credit,
    /// [`CreditMode::Leased`]: the backlog the session announced, less what
    /// it used since. The session claims floating credit while it is not
    /// zero.
    pub(super) backlog: Credit,
    /// When the session last used credit; `None` before its first use.
    pub(super) last_used: Option<Instant>,
    /// When the session was last granted credit (or opened): a lease runs
    /// from the later of this and `last_used`.
    pub(super) last_granted: Instant,
    /// A revoke of floating credit that is pending: nothing more is granted
    /// and the credit stays reserved until the session releases it.
    pub(super) revoke: Option<PendingRevoke>,
    /// Wakes this session's `wait_flow` when its own use, backlog or
    /// release may have made it want credit (see `is_quiet`).
    pub(super) wake: Arc<Notify>,
}

/// A revoke asked of a leased session ([`FlowEvent::Revoke`](super::FlowEvent)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingRevoke {
    pub(super) id: u64,
    /// The floating credit asked back.
    pub(super) credit: Credit,
    /// Whether the session was told (returned by `wait_flow`).
    pub(super) told: bool,
}

impl StreamLease {
    /// Whether the session claims floating credit (competes for the fair
    /// share and may be topped up beyond its guaranteed share): a leased
    /// session while its announced backlog is not zero, a non-expiring one
    /// while it used credit within `lease`. A stream that only opened claims
    /// nothing, so idle streams hold no more than their guaranteed share.
    pub(super) fn claims(&self, now: Instant, lease: Duration) -> bool {
        match self.mode {
            CreditMode::Leased => self.backlog.records > 0,
            CreditMode::NonExpiring => self
                .last_used
                .is_some_and(|t| now.saturating_duration_since(t) <= lease),
        }
    }
}

/// Everything behind the controller's lock (see `BackpressureController::inner`).
#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Indexed by `SourceId::index()`; an entry exists once the source was
    /// opened or subscribed to, and stays for the controller's life.
    pub(super) entries: Vec<Option<SourceEntry>>,
    pub(super) leases: HashMap<u64, StreamLease>,
    pub(super) next_lease: u64,
    /// The id of the last revoke (ids start at 1).
    pub(super) next_revoke: u64,
    pub(super) shut_down: bool,
    /// Stages whose sink is stalled ([`BackpressureController::set_stage_stalled`]):
    /// the stage, its pipeline, the sink's description.
    pub(super) stalled: Vec<(StageId, PipelineId, Arc<str>)>,
}

/// Credit-based flow control and backpressure signals over a shared
/// [`BufferManager`].
///
/// # The state machine
///
/// Each source is in one of three [`SourceState`]s. Its inputs are the
/// utilization of every level it touches (global, the stages of its
/// pipeline, itself) and the memory gate. Utilization is *load*: records in
/// the engine, not unused credit (see [`BufferManager::pressures`]):
///
///
/// | from | when | to | signal |
/// |---|---|---|---|
/// | NORMAL | a level is full (utilization 1.0), the gate is closed or a sink of its pipeline is stalled | PAUSED | PAUSE |
/// | NORMAL | a level is above the high watermark | SLOWED_DOWN | SLOW_DOWN |
/// | SLOWED_DOWN | a level is full, the gate is closed or a sink is stalled | PAUSED | PAUSE |
/// | SLOWED_DOWN | every level is at or below the low watermark | NORMAL | RESUME |
/// | PAUSED | every level is at or below the low watermark, the gate is open and no sink of its pipeline is stalled | NORMAL | RESUME |
///
/// A level is *full* at utilization 1.0. Between the watermarks nothing
/// changes, which is what keeps the signals from flapping. A paused source
/// stays paused until it can resume (it does not step back to SLOWED_DOWN):
/// PAUSE promises "no new credit until RESUME". Every transition publishes
/// one [`BackpressureSignal`]; shutting the controller (or the manager) down
/// pauses every source with reason [`SignalReason::Shutdown`], for good.
///
/// A stalled sink is not a level: a sink that is down completes nothing
/// however empty its queue is, so the embedder reports it
/// ([`set_stage_stalled`](Self::set_stage_stalled)) and the sources of that
/// pipeline are paused with reason [`SignalReason::Sink`] until it clears.
///
/// # Credits
///
/// A session ([`SourceHandle`]) asks for credit with [`SourceHandle::grant`]
/// (or waits for it with [`SourceHandle::wait_credit`]). A grant is reserved
/// in the manager at once, so a source that stays within its credits is
/// never rejected. The rules:
///
/// - **Window.** Each session may hold at most one *window* of unused credit:
///   [`ControllerConfig::window`], capped at `low watermark × per-source
///   limit` so that a full window of unused credit can never by itself push
///   the source's own level past the low watermark.
/// - **Guaranteed share, floating credit.** Every session is topped up to
///   its guaranteed share ([`ControllerConfig::guaranteed`]) whatever it
///   does; beyond it, up to the window, only while it *claims* credit: a
///   [`CreditMode::Leased`] session while its announced backlog is not zero
///   (and at most that much), a [`CreditMode::NonExpiring`] one for
///   [`ControllerConfig::credit_lease`] after it last used credit. So a
///   stream that only opened holds its guaranteed share and no more.
/// - **Leases.** Floating credit of a leased session that stays unused for
///   the lease is revoked ([`FlowEvent::Revoke`](super::FlowEvent)): nothing
///   more is granted to it, and the credit stays reserved, until the session
///   releases it ([`SourceHandle::release`]), so what it sent before it
///   learned of the revoke is still covered.
/// - **Refill at half.** A session is granted more only once it has used at
///   least half of what it may hold (in records or in bytes); then it is
///   topped up. Before that, `grant` returns zero.
/// - **Paced.** Only room below the high watermark of every level is granted
///   ([`BufferManager::available_below`]), so a source within its credit
///   never pushes a level past it: signals are for what credit cannot
///   prevent.
/// - **SLOW_DOWN shrinks the window** to `window / slow_down_divisor`
///   (default a quarter), so a slowed source really gets less, not just a
///   delay hint. **PAUSED gets nothing**, nor does anyone while the memory
///   gate is closed.
/// - **Fair share.** The claimants are the sources with a session that
///   claims floating credit (see above) and is not paused. The free
///   global capacity plus what the claimants already use (unused credit and records in the engine) is shared max-min fairly
///   among them: equal shares, except that a claimant already using more
///   keeps what it uses (it cannot be taken back) and the others share the
///   rest. The grant is `min(window − unused credit, share − usage, the
///   source's paced room (global, entry stage, source))`, per dimension
///   (records, bytes). Equal usage means equal throughput through FIFO
///   stages; the share does not depend on the order in which claimants ask
///   (a grant moves capacity from free to used, leaving the pool as it
///   was), so a source cannot run ahead by asking first or more often; and
///   a session that stops claiming leaves the claimants, so capacity nobody
///   asks for is not held back.
///
/// # Evaluation
///
/// [`evaluate`](Self::evaluate) recomputes every source's state from
/// one [`BufferManager::pressures`] reading and the gate. It runs on the
/// background task ([`run`](Self::run)/[`spawn`](Self::spawn))
/// every [`ControllerConfig::tick`], whenever the manager reports freed
/// capacity and whenever the gate changes, and also inside every grant that
/// may hand out credit, so a grant never uses a stale state.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use sluice_buffer::{BackpressureController, BufferManager, ControllerConfig, Limits, SourceState};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let buffer = Arc::new(BufferManager::<Vec<u8>>::builder(Limits::default()).pipeline("p", ["sink"]).build().unwrap());
/// let pipeline = buffer.pipeline_by_name("p").unwrap().id;
/// let id = buffer.register_source("app", pipeline).unwrap();
///
/// let flow = BackpressureController::new(buffer.clone(), ControllerConfig::default(), None).unwrap();
/// let _task = flow.spawn(); // background evaluation
/// let source = flow.open_source(id).unwrap();
/// // A stream that has not sent yet gets its guaranteed share ...
/// let credit = source.grant(); // reserved in the manager already
/// assert_eq!(credit.records, sluice_buffer::DEFAULT_GUARANTEED_RECORDS);
/// let admission = source.admit(1, vec![b"hello".to_vec(); 10]).unwrap();
/// assert!(admission.rejected.is_none());
/// // ... and, once it sends, the rest of its window (floating credit).
/// let more = source.grant();
/// assert_eq!(more.records + 6, sluice_buffer::DEFAULT_WINDOW_RECORDS);
/// assert_eq!(source.status().state, SourceState::Normal);
/// flow.shutdown();
/// # });
/// ```
pub struct BackpressureController<T> {
    pub(super) manager: Arc<BufferManager<T>>,
    pub(super) config: ControllerConfig,
    /// The full window after capping to the per-source limit.
    pub(super) window: Credit,
    /// The guaranteed share after capping to the window.
    pub(super) guaranteed: Credit,
    pub(super) gate: Option<watch::Receiver<GateState>>,
    /// All per-source state. INVARIANTS, each kept by making every change
    /// (and every call into the manager that a change depends on) inside one
    /// critical section of this lock.
    ///
    /// LOCK ORDER (see `crate::sync`): this lock is taken first; while it is
    /// held the controller calls into the manager, which takes the manager's
    /// `state` lock. Never the other way round: the manager never calls the
    /// controller.
    ///
    /// 1. *Published = current*: every entry's `state` and `seq` are those
    ///    last sent on its watch channel (the send happens under the lock),
    ///    so subscribers see transitions in order and end on the true state.
    /// 2. *Episodes*: an entry has an open episode exactly while its state is
    ///    not NORMAL, until shutdown closes them all (recorded with
    ///    `complete="false"`).
    /// 3. *Grants*: a grant is computed from one reading of the free capacity
    ///    and reserved in the same critical section, so two grants never
    ///    share out the same free capacity; a PAUSED source (or any source
    ///    while the gate is closed or after shutdown) is granted nothing.
    ///
    /// [`audit`](Self::audit) checks 1 and 2.
    pub(super) inner: Mutex<Inner>,
    /// Mirror of `Inner::shut_down` for lock-free checks; set under the lock.
    pub(super) shut_down: AtomicBool,
    /// Woken after every background evaluation, after any evaluation with a
    /// transition, when a session closes and at shutdown. Protocol (no lost
    /// wake-up): a waiter enables its `Notified` before it tries to grant,
    /// and every notifier notifies after its change.
    pub(super) credit: Notify,
    /// Woken only when something a *quiet* session (`is_quiet`: one that
    /// wants nothing and has nothing to be revoked) waits for may have
    /// changed: a transition, a revoke started, a stall set or cleared,
    /// shutdown. Why: every open stream waits in `wait_flow`, and waking
    /// 1,000 idle streams at every evaluation (each completion runs one)
    /// cost a busy source three quarters of its throughput (BENCHMARKS.md,
    /// idle streams). Same protocol as `credit`.
    pub(super) changes: Notify,
    /// Tells the background task to stop.
    pub(super) stop: watch::Sender<bool>,
}

impl<T> std::fmt::Debug for BackpressureController<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackpressureController")
            .field("config", &self.config)
            .field("window", &self.window)
            .field("shut_down", &self.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T> BackpressureController<T> {
    /// A controller over `manager`, optionally watching a memory gate (from
    /// [`MemoryMonitor::subscribe`](crate::MemoryMonitor::subscribe)).
    /// Start its background evaluation with [`spawn`](Self::spawn) or [`run`](Self::run).
    pub fn new(
        manager: Arc<BufferManager<T>>,
        config: ControllerConfig,
        gate: Option<watch::Receiver<GateState>>,
    ) -> Result<Arc<Self>, ControllerError> {
        config.validate()?;
        let per_source = manager.limits().per_source;
        let low = config.watermarks.low;
        let cap = Credit::new(
            ((per_source.records as f64 * low) as u64).max(1),
            ((per_source.bytes as f64 * low) as u64).max(1),
        );
        let window = min_credit(config.window, cap);
        if window != config.window {
            tracing::debug!(configured = ?config.window, ?window, "credit window capped to low watermark × per-source limit");
        }
        let (stop, _) = watch::channel(false);
        let guaranteed = min_credit(config.guaranteed, window);
        Ok(Arc::new(Self {
            manager,
            config,
            window,
            guaranteed,
            gate,
            inner: Mutex::new(Inner::default()),
            shut_down: AtomicBool::new(false),
            credit: Notify::new(),
            changes: Notify::new(),
            stop,
        }))
    }

    /// The manager.
    pub fn manager(&self) -> &Arc<BufferManager<T>> {
        &self.manager
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The window a session gets in `state` (the full window is the
    /// configured one capped at `low ×` the per-source limit).
    pub fn window(&self, state: SourceState) -> Credit {
        match state {
            SourceState::Normal => self.window,
            SourceState::SlowedDown => Credit::new(
                (self.window.records / self.config.slow_down_divisor).max(1),
                (self.window.bytes / self.config.slow_down_divisor).max(1),
            ),
            SourceState::Paused => Credit::ZERO,
        }
    }

    /// The guaranteed share of a session ([`ControllerConfig::guaranteed`]
    /// capped at the window).
    pub fn guaranteed(&self) -> Credit {
        self.guaranteed
    }

    /// Opens a [`CreditMode::NonExpiring`] session for `source` (a source
    /// registered with the manager): the handle through which it is granted
    /// credit and observes its signals. A source may have several sessions
    /// (e.g. a reconnect that overlaps the old stream); they share the
    /// source's state and each has its own window.
    pub fn open_source(
        self: &Arc<Self>,
        source: SourceId,
    ) -> Result<SourceHandle<T>, ControllerError> {
        self.open_source_with(source, CreditMode::NonExpiring)
    }

    /// Opens a session for `source` whose floating credit ends as `mode` says.
    pub fn open_source_with(
        self: &Arc<Self>,
        source: SourceId,
        mode: CreditMode,
    ) -> Result<SourceHandle<T>, ControllerError> {
        let (session, rx, any) = {
            let mut inner = self.inner.lock();
            if inner.shut_down {
                return Err(ControllerError::Closed);
            }
            let rx = self.ensure_entry(&mut inner, source)?;
            let session = inner.next_lease;
            inner.next_lease += 1;
            inner.leases.insert(
                session,
                StreamLease {
                    source,
                    mode,
                    outstanding: Credit::ZERO,
                    backlog: Credit::ZERO,
                    // Opening is not using: a stream that only opened does
                    // not claim floating credit.
                    last_used: None,
                    last_granted: Instant::now(),
                    revoke: None,
                    wake: Arc::new(Notify::new()),
                },
            );
            // The new session starts from the source's current state.
            let any = !self.evaluate_locked(&mut inner).is_empty();
            (session, rx, any)
        };
        if any {
            self.credit.notify_waiters();
            self.changes.notify_waiters();
        }
        Ok(SourceHandle {
            controller: self.clone(),
            source,
            session,
            rx,
        })
    }

    /// A subscription to `source`'s status, without opening a session.
    pub fn subscribe(&self, source: SourceId) -> Result<SignalReceiver, ControllerError> {
        let mut inner = self.inner.lock();
        let rx = self.ensure_entry(&mut inner, source)?;
        if !inner.shut_down {
            self.evaluate_locked(&mut inner);
        }
        Ok(SignalReceiver { rx })
    }

    /// The current status of `source`, if it was opened or subscribed to.
    pub fn status(&self, source: SourceId) -> Option<SourceStatus> {
        let inner = self.inner.lock();
        let e = inner.entries.get(source.index())?.as_ref()?;
        Some(e.tx.borrow().clone())
    }

    /// The current state of `source`, if it was opened or subscribed to.
    pub fn state(&self, source: SourceId) -> Option<SourceState> {
        let inner = self.inner.lock();
        Some(inner.entries.get(source.index())?.as_ref()?.state)
    }

    fn ensure_entry(
        &self,
        inner: &mut Inner,
        source: SourceId,
    ) -> Result<watch::Receiver<SourceStatus>, ControllerError> {
        if let Some(Some(e)) = inner.entries.get(source.index()) {
            return Ok(e.tx.subscribe());
        }
        let (name, pipeline) = self
            .manager
            .snapshot()
            .sources
            .get(source.index())
            .map(|s| (s.name.clone(), s.pipeline))
            .ok_or(BufferError::UnknownSource(source))?;
        let initial = SourceStatus {
            state: if inner.shut_down {
                SourceState::Paused
            } else {
                SourceState::Normal
            },
            signal: None,
            seq: 0,
        };
        m::source_state(&name, initial.state.as_gauge());
        let (tx, rx) = watch::channel(initial.clone());
        if inner.entries.len() <= source.index() {
            inner.entries.resize_with(source.index() + 1, || None);
        }
        inner.entries[source.index()] = Some(SourceEntry {
            name,
            pipeline,
            state: initial.state,
            episode: None,
            seq: 0,
            tx,
        });
        Ok(rx)
    }

    /// The memory utilization while the gate is closed.
    pub(super) fn memory_pressure(&self) -> Option<f64> {
        let gate = self.gate.as_ref()?.borrow();
        gate.closed.then(|| gate.utilization())
    }

    /// Recomputes every source's state from the buffer's pressures and the
    /// gate, publishes each transition, and returns the signals it made.
    pub fn evaluate(&self) -> Vec<(SourceId, BackpressureSignal)> {
        let (signals, revoked) = {
            let mut inner = self.inner.lock();
            let signals = self.evaluate_locked(&mut inner);
            let revoked = self.expire_leases_locked(&mut inner, Instant::now());
            (signals, revoked)
        };
        self.credit.notify_waiters();
        if !signals.is_empty() || revoked {
            self.changes.notify_waiters();
        }
        signals
    }

    pub(super) fn evaluate_locked(&self, inner: &mut Inner) -> Vec<(SourceId, BackpressureSignal)> {
        if inner.shut_down {
            return Vec::new();
        }
        if self.manager.is_shut_down() {
            return self.shutdown_locked(inner);
        }
        let memory = self.memory_pressure();
        let pressures = self.manager.pressures();
        let now = Instant::now();
        let mut out = Vec::new();
        let Inner {
            entries, stalled, ..
        } = inner;
        for (id, p) in pressures {
            let Some(Some(entry)) = entries.get_mut(id.index()) else {
                continue;
            };
            let stall = stalled.iter().find(|(_, p, _)| *p == entry.pipeline);
            let hold = match (memory, stall) {
                (Some(m), _) => Some((SignalReason::Memory, m)),
                (None, Some((stage, _, _))) => Some((SignalReason::Sink(*stage), 1.0)),
                (None, None) => None,
            };
            if let Some(t) = step(entry.state, &p, hold, self.config.watermarks) {
                let sink = stall.map(|(_, _, sink)| sink.clone());
                let signal = self.apply(entry, t, sink, now);
                out.push((id, signal));
            }
        }
        out
    }

    /// Tells flow control that the sink written by `stage` is stalled
    /// (`Some(description)`: it is unavailable, so the stage completes
    /// nothing however empty its queue) or back (`None`). While a stage of
    /// its pipeline is stalled a source is paused with reason
    /// [`SignalReason::Sink`] (the signal names the stage and the sink);
    /// once cleared it resumes by the usual rule (every level at or below
    /// the low watermark). Evaluates at once. An unknown stage is ignored.
    pub fn set_stage_stalled(&self, stage: StageId, sink: Option<Arc<str>>) {
        let Some(info) = self.manager.stage(stage) else {
            return;
        };
        {
            let mut inner = self.inner.lock();
            inner.stalled.retain(|(s, _, _)| *s != stage);
            if let Some(sink) = sink {
                inner.stalled.push((stage, info.pipeline, sink));
            }
            self.evaluate_locked(&mut inner);
        }
        self.credit.notify_waiters();
        self.changes.notify_waiters();
    }

    /// The stages whose sink is stalled, with the sink's description.
    pub fn stalled_stages(&self) -> Vec<(StageId, Arc<str>)> {
        let inner = self.inner.lock();
        inner
            .stalled
            .iter()
            .map(|(s, _, d)| (*s, d.clone()))
            .collect()
    }

    fn signal(
        &self,
        kind: SignalKind,
        reason: SignalReason,
        sink: Option<Arc<str>>,
        utilization: f64,
    ) -> BackpressureSignal {
        BackpressureSignal {
            kind,
            reason,
            stage_name: reason
                .stage()
                .and_then(|s| self.manager.stage(s))
                .map(|s| s.name.clone()),
            sink: sink.filter(|_| matches!(reason, SignalReason::Sink(_))),
            utilization,
            retry_after: match kind {
                SignalKind::SlowDown => self.config.slow_down_retry_after,
                SignalKind::Pause => self.config.pause_retry_after,
                SignalKind::Resume => Duration::ZERO,
            },
        }
    }

    fn apply(
        &self,
        entry: &mut SourceEntry,
        t: Transition,
        mut sink: Option<Arc<str>>,
        now: Instant,
    ) -> BackpressureSignal {
        let mut reason = t.reason;
        match t.kind {
            SignalKind::SlowDown | SignalKind::Pause => {
                if entry.episode.is_none() {
                    let stage = reason
                        .stage()
                        .and_then(|s| self.manager.stage(s))
                        .map_or_else(|| Arc::from(""), |s| s.name.clone());
                    let labels = EpisodeLabels {
                        source: entry.name.clone(),
                        reason: reason.label(),
                        stage,
                    };
                    m::episode_started(&labels);
                    entry.episode = Some(Episode {
                        started: now,
                        reason,
                        sink: sink.clone(),
                        labels,
                    });
                }
            }
            SignalKind::Resume => {
                if let Some(ep) = entry.episode.take() {
                    reason = ep.reason;
                    sink = ep.sink;
                    m::episode_ended(&ep.labels, now.saturating_duration_since(ep.started), true);
                }
            }
        }
        let signal = self.signal(t.kind, reason, sink, t.utilization);
        tracing::debug!(
            source = %entry.name,
            kind = %signal.kind,
            reason = %signal.reason,
            utilization = signal.utilization,
            "backpressure signal"
        );
        self.publish(entry, t.to, signal.clone());
        signal
    }

    fn publish(&self, entry: &mut SourceEntry, state: SourceState, signal: BackpressureSignal) {
        entry.state = state;
        entry.seq += 1;
        m::source_state(&entry.name, state.as_gauge());
        entry.tx.send_replace(SourceStatus {
            state,
            signal: Some(signal),
            seq: entry.seq,
        });
    }

    /// Pauses every source for good (reason [`SignalReason::Shutdown`]),
    /// records open episodes with `complete="false"`, stops granting, wakes
    /// every credit waiter and stops the background task. Does not shut the
    /// manager down (stage workers may still be draining it).
    pub fn shutdown(&self) {
        self.shutdown_locked(&mut self.inner.lock());
        self.stop.send_replace(true);
        self.credit.notify_waiters();
        self.changes.notify_waiters();
    }

    fn shutdown_locked(&self, inner: &mut Inner) -> Vec<(SourceId, BackpressureSignal)> {
        if inner.shut_down {
            return Vec::new();
        }
        inner.shut_down = true;
        self.shut_down.store(true, Ordering::Release);
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, entry) in inner.entries.iter_mut().enumerate() {
            let Some(entry) = entry else { continue };
            if let Some(ep) = entry.episode.take() {
                m::episode_ended(&ep.labels, now.saturating_duration_since(ep.started), false);
            }
            let signal = self.signal(SignalKind::Pause, SignalReason::Shutdown, None, 0.0);
            self.publish(entry, SourceState::Paused, signal.clone());
            out.push((SourceId(i as u32), signal));
        }
        tracing::debug!(sources = out.len(), "flow control shut down");
        out
    }

    /// Whether [`shutdown`](Self::shutdown) was called (or the manager was
    /// found shut down).
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Runs the background evaluation until [`shutdown`](Self::shutdown):
    /// every [`tick`](ControllerConfig::tick), whenever the manager frees
    /// capacity, and whenever the memory gate changes. Each evaluation wakes
    /// the sessions waiting in [`SourceHandle::wait_credit`].
    pub async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut gate = self.gate.clone();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            self.evaluate();
            if self.is_shut_down() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.manager.capacity_freed() => {}
                changed = async {
                    match gate.as_mut() {
                        Some(g) => g.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        // The monitor stopped: its last state stays in force
                        // (read at each evaluation); stop waiting on it.
                        gate = None;
                    }
                }
                _ = stop.changed() => {}
            }
        }
        self.credit.notify_waiters();
        self.changes.notify_waiters();
    }

    /// Spawns [`run`](Self::run) on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like `tokio::spawn`.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()>
    where
        T: Send + 'static,
    {
        tokio::spawn(self.clone().run())
    }

    /// Checks invariants 1 (published = current) and 2 (episodes) and
    /// describes every violation. For tests and debugging.
    pub fn audit(&self) -> Result<(), String> {
        let inner = self.inner.lock();
        let mut problems = Vec::new();
        for (i, e) in inner.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            let published = e.tx.borrow();
            if published.state != e.state || published.seq != e.seq {
                problems.push(format!(
                    "source {i}: published {:?}/{} != current {:?}/{}",
                    published.state, published.seq, e.state, e.seq
                ));
            }
            let expect_episode = e.state != SourceState::Normal && !inner.shut_down;
            if e.episode.is_some() != expect_episode {
                problems.push(format!(
                    "source {i}: state {:?} with episode {:?}",
                    e.state, e.episode
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

impl<T> Drop for BackpressureController<T> {
    fn drop(&mut self) {
        // Episodes still open are recorded, not lost.
        let inner = self.inner.get_mut();
        if inner.shut_down {
            return;
        }
        let now = Instant::now();
        for e in inner.entries.iter_mut().flatten() {
            if let Some(ep) = e.episode.take() {
                m::episode_ended(&ep.labels, now.saturating_duration_since(ep.started), false);
            }
        }
    }
}
