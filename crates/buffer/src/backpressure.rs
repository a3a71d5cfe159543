//! Credit-based flow control over a [`BufferManager`]: the
//! [`BackpressureController`] hands out credits (reservations) fairly and
//! drives a per-source hysteresis state machine that tells sources to slow
//! down, pause and resume. The rules are documented on
//! [`BackpressureController`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sync::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::BufferError;
use crate::limits::Watermarks;
use crate::manager::{Admission, BufferManager, Credit};
use crate::memory::GateState;
use crate::metrics::{self as m, EpisodeLabels};
use crate::record::{ByteSize, SourceId, StageId};
use crate::snapshot::Pressure;

/// What a signal tells a source to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// A level is above the high watermark: send more slowly. The credit
    /// window is shrunk too.
    SlowDown,
    /// A level is full, the memory gate is closed, or the engine is shutting
    /// down: no new credit until [`Resume`](Self::Resume).
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
}

impl SignalReason {
    /// `global`, `stage`, `source`, `memory` or `shutdown` (the metric label).
    pub fn label(&self) -> &'static str {
        match self {
            SignalReason::Global => "global",
            SignalReason::Stage(_) => "stage",
            SignalReason::Source => "source",
            SignalReason::Memory => "memory",
            SignalReason::Shutdown => "shutdown",
        }
    }

    /// The stage, for [`Stage`](Self::Stage).
    pub fn stage(&self) -> Option<StageId> {
        match self {
            SignalReason::Stage(s) => Some(*s),
            _ => None,
        }
    }
}

impl std::fmt::Display for SignalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalReason::Stage(s) => write!(f, "stage {s}"),
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
    /// The stage's name when `reason` is [`SignalReason::Stage`].
    pub stage_name: Option<Arc<str>>,
    /// Utilization (0.0–1.0) of the level named by `reason` when the signal
    /// was made; for [`SignalReason::Memory`] the fraction of the memory
    /// limit in use. For RESUME, the highest utilization of the source's
    /// levels (at or below the low watermark).
    pub utilization: f64,
    /// Suggested wait: between batches for SLOW_DOWN, before expecting a
    /// change for PAUSE; zero for RESUME.
    pub retry_after: Duration,
}

/// The flow-control state of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceState {
    /// Full credit window.
    #[default]
    Normal,
    /// A level is above the high watermark: the window is shrunk.
    SlowedDown,
    /// No new credit.
    Paused,
}

impl SourceState {
    /// The value of the [`BACKPRESSURE_STATE`](crate::metrics::BACKPRESSURE_STATE) gauge: 0, 1 or 2.
    pub fn as_gauge(&self) -> f64 {
        match self {
            SourceState::Normal => 0.0,
            SourceState::SlowedDown => 1.0,
            SourceState::Paused => 2.0,
        }
    }
}

/// What a subscription holds: the source's current state, the signal of the
/// transition that led to it, and a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    /// The current state.
    pub state: SourceState,
    /// The signal of the latest transition (`None` before the first one).
    pub signal: Option<BackpressureSignal>,
    /// Number of transitions so far: +1 per signal. A consumer that sees it
    /// jump by more than one missed intermediate signals that are
    /// superseded by this one.
    pub seq: u64,
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
    rx: watch::Receiver<SourceStatus>,
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

/// Expected record size behind the default byte window.
pub const DEFAULT_EXPECTED_RECORD_BYTES: u64 = 1024;

/// The default credit window in records. A source's throughput is bounded by
/// about window ÷ completion latency (records wait for a sink batch, up to
/// its linger), so the window must cover a few sink batches: with 1,024 the
/// engine idled at ~0.25 M records/s for 4 sources (BENCHMARKS.md).
pub const DEFAULT_WINDOW_RECORDS: u64 = 16_384;

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
        let Watermarks { high, low } = self.watermarks;
        let bad = |m: String| Err(ControllerError::InvalidConfig(m));
        if !(low > 0.0 && low < high && high <= 1.0) {
            return bad(format!(
                "watermarks must satisfy 0 < low < high <= 1, got low {low}, high {high}"
            ));
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

/// One step of the state machine: the transition, if any, from `state` given
/// the source's `pressure` and, when the gate is closed, the memory
/// utilization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transition {
    pub(crate) to: SourceState,
    pub(crate) kind: SignalKind,
    pub(crate) reason: SignalReason,
    pub(crate) utilization: f64,
}

/// The most utilized level (ties go to global, then stage, then source).
fn worst(p: &Pressure) -> (SignalReason, f64) {
    let mut w = (SignalReason::Global, p.global);
    if p.stage > w.1 {
        w = (SignalReason::Stage(p.stage_id), p.stage);
    }
    if p.source > w.1 {
        w = (SignalReason::Source, p.source);
    }
    w
}

pub(crate) fn step(
    state: SourceState,
    p: &Pressure,
    memory: Option<f64>,
    marks: Watermarks,
) -> Option<Transition> {
    let (reason, util) = worst(p);
    let pause = match memory {
        Some(m) => Some((SignalReason::Memory, m)),
        None if util >= 1.0 => Some((reason, util)),
        None => None,
    };
    let t = |to, kind, (reason, utilization): (SignalReason, f64)| {
        Some(Transition {
            to,
            kind,
            reason,
            utilization,
        })
    };
    match (state, pause) {
        (SourceState::Paused, Some(_)) => None,
        (_, Some(cause)) => t(SourceState::Paused, SignalKind::Pause, cause),
        (SourceState::Normal, None) if util >= marks.high => t(
            SourceState::SlowedDown,
            SignalKind::SlowDown,
            (reason, util),
        ),
        (SourceState::SlowedDown | SourceState::Paused, None) if util <= marks.low => {
            t(SourceState::Normal, SignalKind::Resume, (reason, util))
        }
        _ => None,
    }
}

/// An open backpressure episode (the source is not NORMAL).
#[derive(Debug)]
struct Episode {
    started: Instant,
    reason: SignalReason,
    labels: EpisodeLabels,
}

/// Flow-control state of one source.
#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    state: SourceState,
    /// Some exactly while `state != Normal` (and the controller is not shut down).
    episode: Option<Episode>,
    seq: u64,
    tx: watch::Sender<SourceStatus>,
}

/// One open [`SourceHandle`].
#[derive(Debug)]
struct Session {
    source: SourceId,
    /// Credit granted to this session and not yet used, as far as the
    /// session reported usage; re-synchronised down to the manager's
    /// reservation of the source at each grant.
    outstanding: Credit,
    /// When the session last asked for credit (or opened). A session that
    /// asked within the claim window is *backlogged*: it competes for the
    /// fair share. A session parked in `wait_credit` asks again at every
    /// evaluation, so it stays backlogged while it waits.
    last_ask: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Indexed by `SourceId::index()`; an entry exists once the source was
    /// opened or subscribed to, and stays for the controller's life.
    entries: Vec<Option<Entry>>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    shut_down: bool,
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
/// | NORMAL | a level is full (utilization 1.0) or the gate is closed | PAUSED | PAUSE |
/// | NORMAL | a level is at or above the high watermark | SLOWED_DOWN | SLOW_DOWN |
/// | SLOWED_DOWN | a level is full or the gate is closed | PAUSED | PAUSE |
/// | SLOWED_DOWN | every level is at or below the low watermark | NORMAL | RESUME |
/// | PAUSED | every level is at or below the low watermark and the gate is open | NORMAL | RESUME |
///
/// A level is *full* at utilization 1.0. Between the watermarks nothing
/// changes, which is what keeps the signals from flapping. A paused source
/// stays paused until it can resume (it does not step back to SLOWED_DOWN):
/// PAUSE promises "no new credit until RESUME". Every transition publishes
/// one [`BackpressureSignal`]; shutting the controller (or the manager) down
/// pauses every source with reason [`SignalReason::Shutdown`], for good.
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
/// - **Refill at half.** A session is granted more only once it has used at
///   least half of its window (in records or in bytes); then it is topped up
///   towards a full window. Before that, `grant` returns zero.
/// - **SLOW_DOWN shrinks the window** to `window / slow_down_divisor`
///   (default a quarter), so a slowed source really gets less, not just a
///   delay hint. **PAUSED gets nothing**, nor does anyone while the memory
///   gate is closed.
/// - **Fair share.** The claimants are the sources with a *backlogged*
///   session: one that asked for credit recently (a session waiting in
///   [`SourceHandle::wait_credit`] asks again at every evaluation) and is
///   not paused. The free global capacity plus what the claimants already
///   use (unused credit and records in the engine) is shared max-min fairly
///   among them: equal shares, except that a claimant already using more
///   keeps what it uses (it cannot be taken back) and the others share the
///   rest. The grant is `min(window − unused credit, share − usage, the
///   source's free room (global, entry stage, source))`, per dimension
///   (records, bytes). Equal usage means equal throughput through FIFO
///   stages; the share does not depend on the order in which claimants ask
///   (a grant moves capacity from free to used, leaving the pool as it
///   was), so a source cannot run ahead by asking first or more often; and
///   a session that stops asking leaves the claimants, so capacity nobody
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
/// let credit = source.grant(); // reserved in the manager already
/// assert_eq!(credit.records, sluice_buffer::DEFAULT_WINDOW_RECORDS);
/// let admission = source.admit(1, vec![b"hello".to_vec()]).unwrap();
/// assert!(admission.rejected.is_none());
/// assert_eq!(source.status().state, SourceState::Normal);
/// flow.shutdown();
/// # });
/// ```
pub struct BackpressureController<T> {
    manager: Arc<BufferManager<T>>,
    config: ControllerConfig,
    /// The full window after capping to the per-source limit.
    window: Credit,
    gate: Option<watch::Receiver<GateState>>,
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
    inner: Mutex<Inner>,
    /// Mirror of `Inner::shut_down` for lock-free checks; set under the lock.
    shut_down: AtomicBool,
    /// Woken after every background evaluation, after any evaluation with a
    /// transition, when a session closes and at shutdown. Protocol (no lost
    /// wake-up): a waiter enables its `Notified` before it tries to grant,
    /// and every notifier notifies after its change.
    credit: Notify,
    /// Tells the background task to stop.
    stop: watch::Sender<bool>,
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

fn sub_sat(a: Credit, b: Credit) -> Credit {
    Credit::new(
        a.records.saturating_sub(b.records),
        a.bytes.saturating_sub(b.bytes),
    )
}

fn min_credit(a: Credit, b: Credit) -> Credit {
    Credit::new(a.records.min(b.records), a.bytes.min(b.bytes))
}

/// Whether a session holding `outstanding` of a `window` has used half of it
/// (in records or in bytes) and so may be refilled.
fn wants(window: Credit, outstanding: Credit) -> bool {
    !window.is_zero()
        && (outstanding.records.saturating_mul(2) <= window.records
            || outstanding.bytes.saturating_mul(2) <= window.bytes)
}

/// Max-min fair level of `pool` among backlogged claimants, each with a
/// floor (what it already uses, which cannot be taken back): the smallest
/// level `s` with `Σ max(s, floor) ≥ pool` (rounded up, so that a remainder
/// smaller than the number of claimants still goes to someone).
pub(crate) fn fair_level(pool: u64, floors: &[u64]) -> u64 {
    let fill = |s: u64| -> u128 { floors.iter().map(|&f| u128::from(s.max(f))).sum() };
    let (mut lo, mut hi) = (0u64, pool);
    if floors.is_empty() || fill(hi) < u128::from(pool) {
        return pool; // (no claimant; cannot happen with one or more)
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fill(mid) >= u128::from(pool) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
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
        Ok(Arc::new(Self {
            manager,
            config,
            window,
            gate,
            inner: Mutex::new(Inner::default()),
            shut_down: AtomicBool::new(false),
            credit: Notify::new(),
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

    /// Opens a session for `source` (a source registered with the manager):
    /// the handle through which it is granted credit and observes its signals.
    /// A source may have several sessions (e.g. a reconnect that overlaps the
    /// old stream); they share the source's state and each has its own window.
    pub fn open_source(
        self: &Arc<Self>,
        source: SourceId,
    ) -> Result<SourceHandle<T>, ControllerError> {
        let (session, rx, any) = {
            let mut inner = self.inner.lock();
            if inner.shut_down {
                return Err(ControllerError::Closed);
            }
            let rx = self.ensure_entry(&mut inner, source)?;
            let session = inner.next_session;
            inner.next_session += 1;
            inner.sessions.insert(
                session,
                Session {
                    source,
                    outstanding: Credit::ZERO,
                    last_ask: Instant::now(),
                },
            );
            // The new session starts from the source's current state.
            let any = !self.evaluate_locked(&mut inner).is_empty();
            (session, rx, any)
        };
        if any {
            self.credit.notify_waiters();
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
        let name = self
            .manager
            .snapshot()
            .sources
            .get(source.index())
            .map(|s| s.name.clone())
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
        inner.entries[source.index()] = Some(Entry {
            name,
            state: initial.state,
            episode: None,
            seq: 0,
            tx,
        });
        Ok(rx)
    }

    /// The memory utilization while the gate is closed.
    fn memory_pressure(&self) -> Option<f64> {
        let gate = self.gate.as_ref()?.borrow();
        gate.closed.then(|| gate.utilization())
    }

    /// Recomputes every source's state from the buffer's pressures and the
    /// gate, publishes each transition, and returns the signals it made.
    pub fn evaluate(&self) -> Vec<(SourceId, BackpressureSignal)> {
        let signals = self.evaluate_locked(&mut self.inner.lock());
        self.credit.notify_waiters();
        signals
    }

    fn evaluate_locked(&self, inner: &mut Inner) -> Vec<(SourceId, BackpressureSignal)> {
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
        for (id, p) in pressures {
            let Some(Some(entry)) = inner.entries.get_mut(id.index()) else {
                continue;
            };
            if let Some(t) = step(entry.state, &p, memory, self.config.watermarks) {
                let signal = self.apply(entry, t, now);
                out.push((id, signal));
            }
        }
        out
    }

    fn signal(
        &self,
        kind: SignalKind,
        reason: SignalReason,
        utilization: f64,
    ) -> BackpressureSignal {
        BackpressureSignal {
            kind,
            reason,
            stage_name: reason
                .stage()
                .and_then(|s| self.manager.stage(s))
                .map(|s| s.name.clone()),
            utilization,
            retry_after: match kind {
                SignalKind::SlowDown => self.config.slow_down_retry_after,
                SignalKind::Pause => self.config.pause_retry_after,
                SignalKind::Resume => Duration::ZERO,
            },
        }
    }

    fn apply(&self, entry: &mut Entry, t: Transition, now: Instant) -> BackpressureSignal {
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
                        labels,
                    });
                }
            }
            SignalKind::Resume => {
                if let Some(ep) = entry.episode.take() {
                    reason = ep.reason;
                    m::episode_ended(&ep.labels, now.saturating_duration_since(ep.started), true);
                }
            }
        }
        let signal = self.signal(t.kind, reason, t.utilization);
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

    fn publish(&self, entry: &mut Entry, state: SourceState, signal: BackpressureSignal) {
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
            let signal = self.signal(SignalKind::Pause, SignalReason::Shutdown, 0.0);
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

    fn grant_session(&self, session: u64) -> Credit {
        let (granted, any) = {
            let mut inner = self.inner.lock();
            if inner.shut_down {
                return Credit::ZERO;
            }
            let Some(s) = inner.sessions.get_mut(&session) else {
                return Credit::ZERO;
            };
            s.last_ask = Instant::now();
            let source = s.source;
            // Derive what is unused from the manager where possible: the
            // source's reservation bounds what any of its sessions holds.
            let reserved = self.manager.reserved(source).unwrap_or(Credit::ZERO);
            let outstanding = min_credit(s.outstanding, reserved);
            let state = inner
                .entries
                .get(source.index())
                .and_then(|e| e.as_ref())
                .map_or(SourceState::Paused, |e| e.state);
            if state != SourceState::Paused && !wants(self.window(state), outstanding) {
                // Not yet half used: nothing to do, and no evaluation needed.
                // (A paused source always re-evaluates: it may resume.)
                if let Some(s) = inner.sessions.get_mut(&session) {
                    s.outstanding = outstanding;
                }
                return Credit::ZERO;
            }
            let any = !self.evaluate_locked(&mut inner).is_empty();
            let granted = self.grant_locked(&mut inner, session, source, outstanding);
            (granted, any)
        };
        if any {
            self.credit.notify_waiters();
        }
        granted
    }

    fn grant_locked(
        &self,
        inner: &mut Inner,
        session: u64,
        source: SourceId,
        outstanding: Credit,
    ) -> Credit {
        let state_of = |inner: &Inner, src: SourceId| {
            inner
                .entries
                .get(src.index())
                .and_then(|e| e.as_ref())
                .map_or(SourceState::Paused, |e| e.state)
        };
        if inner.shut_down || self.memory_pressure().is_some() {
            return Credit::ZERO;
        }
        let window = self.window(state_of(inner, source));
        if !wants(window, outstanding) {
            return Credit::ZERO;
        }
        let own = sub_sat(window, outstanding);
        let mut want = self.fair_grant(inner, session, source, own);
        // A reservation needs both records and bytes: a session that needs
        // only one (e.g. it sends zero-byte records, so its byte credit is
        // never used) gets one unit of the other with it.
        if own.records == 0 && want.bytes > 0 {
            want.records = 1;
        }
        if own.bytes == 0 && want.records > 0 {
            want.bytes = 1;
        }
        let Ok(available) = self.manager.available(source) else {
            return Credit::ZERO;
        };
        let want = min_credit(want, available);
        if want.is_zero() {
            return Credit::ZERO;
        }
        let granted = self.manager.reserve(source, want).unwrap_or(Credit::ZERO);
        if let Some(s) = inner.sessions.get_mut(&session) {
            s.outstanding = Credit::new(
                outstanding.records + granted.records,
                outstanding.bytes + granted.bytes,
            );
        }
        if !granted.is_zero()
            && let Some(Some(e)) = inner.entries.get(source.index())
        {
            m::credits_granted(&e.name, granted);
        }
        granted
    }

    /// How long after its last request a session still counts as backlogged.
    fn claim_window(&self) -> Duration {
        (self.config.tick * 4).max(Duration::from_millis(50))
    }

    /// Caps `own` (what the session asks for) at its source's max-min fair
    /// share of the global capacity.
    ///
    /// The claimants are the sources with a *backlogged* session: one that
    /// asked for credit within the claim window (a session parked in
    /// `wait_credit` asks again at every evaluation) and is not paused. The
    /// pool is the free global capacity plus what the claimants already use
    /// (unused credit and records in the engine); it is shared equally, each
    /// claimant's share being at least what it uses now (in use cannot be
    /// taken back). So no backlogged source can run ahead of the others just
    /// because it asks first or more often, and equal usage means equal
    /// throughput through FIFO stages. A grant moves capacity from free to
    /// used without changing the pool, so the level does not depend on the
    /// order in which claimants ask. Sessions that stopped asking drop out
    /// of the claimants, which keeps the policy work-conserving.
    fn fair_grant(&self, inner: &Inner, session: u64, source: SourceId, own: Credit) -> Credit {
        let now = Instant::now();
        let claim = self.claim_window();
        let mut claimants: Vec<SourceId> = inner
            .sessions
            .iter()
            .filter(|&(&id, s)| {
                id == session
                    || (now.saturating_duration_since(s.last_ask) <= claim
                        && inner
                            .entries
                            .get(s.source.index())
                            .and_then(|e| e.as_ref())
                            .is_some_and(|e| e.state != SourceState::Paused))
            })
            .map(|(_, s)| s.source)
            .collect();
        claimants.sort_unstable();
        claimants.dedup();
        if claimants.len() <= 1 {
            // Alone: the source's free room (applied by the caller) is the limit.
            return own;
        }
        // One consistent reading of the usages (O(sources + stages), like
        // the evaluation that precedes every grant).
        let snapshot = self.manager.snapshot();
        let g = &snapshot.global;
        let usage = |src: SourceId| {
            snapshot.sources.get(src.index()).map_or(Credit::ZERO, |s| {
                Credit::new(s.level.records, s.level.bytes)
            })
        };
        let mut pool = Credit::new(
            g.limit.records.saturating_sub(g.records),
            g.limit.bytes.saturating_sub(g.bytes),
        );
        let mut records = Vec::with_capacity(claimants.len());
        let mut bytes = Vec::with_capacity(claimants.len());
        for &src in &claimants {
            let used = usage(src);
            pool = Credit::new(pool.records + used.records, pool.bytes + used.bytes);
            records.push(used.records);
            bytes.push(used.bytes);
        }
        let level = Credit::new(
            fair_level(pool.records, &records),
            fair_level(pool.bytes, &bytes),
        );
        min_credit(own, sub_sat(level, usage(source)))
    }

    fn on_admitted(&self, session: u64, used: Credit) {
        if let Some(s) = self.inner.lock().sessions.get_mut(&session) {
            s.outstanding = sub_sat(s.outstanding, used);
        }
    }

    fn outstanding(&self, session: u64) -> Credit {
        self.inner
            .lock()
            .sessions
            .get(&session)
            .map_or(Credit::ZERO, |s| s.outstanding)
    }

    fn close_session(&self, session: u64) -> Credit {
        let released = {
            let mut inner = self.inner.lock();
            let Some(s) = inner.sessions.remove(&session) else {
                return Credit::ZERO;
            };
            if s.outstanding.records == 0 && s.outstanding.bytes == 0 {
                Credit::ZERO
            } else {
                self.manager
                    .release(s.source, s.outstanding)
                    .unwrap_or(Credit::ZERO)
            }
        };
        self.credit.notify_waiters();
        released
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

/// One session of a source with the [`BackpressureController`]: asks for
/// credit, reports what it used, and observes the source's signals.
///
/// Dropping the handle (or [`close`](Self::close)) releases the credit it
/// still holds back to the manager.
pub struct SourceHandle<T> {
    controller: Arc<BackpressureController<T>>,
    source: SourceId,
    session: u64,
    rx: watch::Receiver<SourceStatus>,
}

impl<T> std::fmt::Debug for SourceHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("source", &self.source)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<T> SourceHandle<T> {
    /// The source.
    pub fn source(&self) -> SourceId {
        self.source
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<BackpressureController<T>> {
        &self.controller
    }

    /// A subscription to the source's status. A new receiver counts the
    /// current status as seen: read [`SignalReceiver::current`] first.
    pub fn subscribe(&self) -> SignalReceiver {
        SignalReceiver {
            rx: self.rx.clone(),
        }
    }

    /// The source's current status.
    pub fn status(&self) -> SourceStatus {
        self.rx.borrow().clone()
    }

    /// The next credit for this session, already reserved in the manager:
    /// zero unless at least half of its window is used (in records or
    /// bytes), the source is not paused, the gate is open and there is free
    /// capacity; else what tops its unused credit up to its fair level
    /// (at most its window), within the source's free room. See
    /// [`BackpressureController`] for the rules.
    pub fn grant(&self) -> Credit {
        self.controller.grant_session(self.session)
    }

    /// Waits until [`grant`](Self::grant) gives a non-zero credit and returns
    /// it; `None` once the controller is shut down. Wakes on every
    /// background evaluation, so run the controller's task. Cancel-safe:
    /// nothing is reserved unless the credit is returned.
    pub async fn wait_credit(&self) -> Option<Credit> {
        loop {
            let notified = self.controller.credit.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.controller.is_shut_down() {
                return None;
            }
            let credit = self.grant();
            if !credit.is_zero() {
                return Some(credit);
            }
            notified.await;
        }
    }

    /// Reports credit used: `used.records` records carrying `used.bytes`
    /// bytes were admitted for this session. Call it after
    /// [`BufferManager::admit`] (or use [`admit`](Self::admit), which does).
    pub fn on_admitted(&self, used: Credit) {
        self.controller.on_admitted(self.session, used);
    }

    /// [`BufferManager::admit`] for this source, with the credit it used
    /// reported to the controller.
    pub fn admit(
        &self,
        first_seq: u64,
        payloads: impl Into<crate::Pending<T>>,
    ) -> Result<Admission<T>, BufferError>
    where
        T: ByteSize,
    {
        let admission = self
            .controller
            .manager
            .admit(self.source, first_seq, payloads)?;
        self.on_admitted(Credit::new(
            admission.admitted as u64,
            admission.admitted_bytes,
        ));
        Ok(admission)
    }

    /// Credit granted to this session and not yet reported used.
    pub fn outstanding(&self) -> Credit {
        self.controller.outstanding(self.session)
    }

    /// This session's window in the source's current state.
    pub fn window(&self) -> Credit {
        self.controller.window(self.rx.borrow().state)
    }

    /// Ends the session and releases the credit it still holds; returns
    /// what was released.
    pub fn close(self) -> Credit {
        // Closing is idempotent: the drop that follows finds nothing left.
        self.controller.close_session(self.session)
    }
}

impl<T> Drop for SourceHandle<T> {
    fn drop(&mut self) {
        self.controller.close_session(self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MARKS: Watermarks = Watermarks {
        high: 0.8,
        low: 0.5,
    };

    fn p(global: f64, stage: f64, source: f64) -> Pressure {
        Pressure {
            global,
            stage,
            stage_id: StageId(3),
            source,
        }
    }

    fn run(seq: &[f64]) -> Vec<(SignalKind, SourceState)> {
        let mut state = SourceState::Normal;
        let mut out = Vec::new();
        for &u in seq {
            if let Some(t) = step(state, &p(u, 0.0, 0.0), None, MARKS) {
                state = t.to;
                out.push((t.kind, t.to));
            }
        }
        out
    }

    #[test]
    fn hysteresis_between_the_watermarks() {
        let seq = [0.3, 0.81, 0.6, 0.79, 0.85, 0.51, 0.9, 0.55, 0.5];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::SlowDown, SourceState::SlowedDown),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
    }

    #[test]
    fn full_pauses_and_pause_holds_until_low() {
        let seq = [0.2, 1.0, 0.9, 0.7, 0.81, 0.5];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::Pause, SourceState::Paused),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
        let seq = [0.85, 1.0, 0.95, 0.4];
        assert_eq!(
            run(&seq),
            vec![
                (SignalKind::SlowDown, SourceState::SlowedDown),
                (SignalKind::Pause, SourceState::Paused),
                (SignalKind::Resume, SourceState::Normal)
            ]
        );
    }

    #[test]
    fn reason_is_the_worst_level() {
        let t = step(SourceState::Normal, &p(0.1, 0.9, 0.85), None, MARKS).unwrap();
        assert_eq!(
            (t.reason, t.utilization),
            (SignalReason::Stage(StageId(3)), 0.9)
        );
        let t = step(SourceState::Normal, &p(0.1, 0.2, 1.0), None, MARKS).unwrap();
        assert_eq!(
            (t.kind, t.reason),
            (SignalKind::Pause, SignalReason::Source)
        );
        let t = step(SourceState::Normal, &p(0.8, 0.8, 0.8), None, MARKS).unwrap();
        assert_eq!(
            t.reason,
            SignalReason::Global,
            "ties go to the widest level"
        );
    }

    #[test]
    fn memory_pauses_and_holds_even_when_buffers_are_empty() {
        let t = step(SourceState::Normal, &p(0.0, 0.0, 0.0), Some(0.9), MARKS).unwrap();
        assert_eq!(
            (t.kind, t.reason, t.utilization),
            (SignalKind::Pause, SignalReason::Memory, 0.9)
        );
        assert_eq!(
            step(SourceState::Paused, &p(0.0, 0.0, 0.0), Some(0.9), MARKS),
            None
        );
        let t = step(SourceState::Paused, &p(0.0, 0.0, 0.0), None, MARKS).unwrap();
        assert_eq!(t.kind, SignalKind::Resume);
        // Gate open again but a level still between the watermarks: stay paused.
        assert_eq!(
            step(SourceState::Paused, &p(0.6, 0.0, 0.0), None, MARKS),
            None
        );
    }

    #[test]
    fn fair_level_is_max_min_with_floors() {
        assert_eq!(fair_level(100, &[0, 0, 0, 0]), 25);
        assert_eq!(fair_level(90, &[0, 0, 0]), 30);
        assert_eq!(
            fair_level(2, &[0, 0, 0]),
            1,
            "a small remainder still goes to someone"
        );
        assert_eq!(fair_level(0, &[0]), 0);
        // A claimant already using 40 keeps it (the floor); the others share the rest.
        assert_eq!(fair_level(100, &[40, 0, 0]), 30);
        assert_eq!(fair_level(70, &[40, 0]), 30);
        assert_eq!(
            fair_level(100, &[60, 30]),
            40,
            "the one above keeps 60, the other grows to 40"
        );
        assert_eq!(fair_level(100, &[10, 20]), 50);
    }

    #[test]
    fn refill_at_half_window() {
        let w = Credit::new(100, 1000);
        assert!(wants(w, Credit::ZERO));
        assert!(!wants(w, Credit::new(51, 900)));
        assert!(wants(w, Credit::new(50, 900)));
        assert!(wants(w, Credit::new(90, 500)), "half the bytes used");
        assert!(
            !wants(Credit::ZERO, Credit::ZERO),
            "a paused window never wants"
        );
    }

    proptest! {
        /// Whatever the sequence of readings: signals alternate between an
        /// episode start (SLOW_DOWN/PAUSE) and its end (RESUME); a RESUME comes
        /// only at or below low with the gate open; a SLOW_DOWN only at or above
        /// high; a PAUSE only when full or with the gate closed; and the state
        /// never leaves PAUSED except by RESUME.
        #[test]
        fn signals_follow_the_hysteresis(
            readings in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, prop::option::weighted(0.1, 0.5f64..1.0)), 1..200)
        ) {
            let mut state = SourceState::Normal;
            for (g, s, src, mem) in readings {
                let pr = p(g, s, src);
                let max = pr.max();
                let before = state;
                if let Some(t) = step(state, &pr, mem, MARKS) {
                    match t.kind {
                        SignalKind::Resume => {
                            prop_assert!(before != SourceState::Normal);
                            prop_assert!(max <= MARKS.low && mem.is_none());
                        }
                        SignalKind::SlowDown => {
                            prop_assert_eq!(before, SourceState::Normal);
                            prop_assert!((MARKS.high..1.0).contains(&max) && mem.is_none());
                        }
                        SignalKind::Pause => {
                            prop_assert!(before != SourceState::Paused);
                            prop_assert!(max >= 1.0 || mem.is_some());
                        }
                    }
                    state = t.to;
                } else {
                    // No transition: the state is consistent with the reading.
                    match state {
                        SourceState::Normal => prop_assert!(max < MARKS.high && mem.is_none()),
                        SourceState::SlowedDown => prop_assert!(max > MARKS.low && max < 1.0 && mem.is_none()),
                        SourceState::Paused => prop_assert!(max > MARKS.low || mem.is_some()),
                    }
                }
            }
        }
    }
}
