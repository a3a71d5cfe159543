//! The [`BufferManager`]: bounded queues per stage, with limits per level.
//!
//! This file is the manager's face: its public types, the [`BufferManager`]
//! struct with the lock that keeps every invariant (documented at the lock),
//! and the small operations (registration, lookups, lifecycle). The work is
//! done in private parts, one concept each:
//!
//! - `builder.rs`: [`BufferManagerBuilder`], checking limits and pipelines.
//! - `state.rs`: what the lock protects (`State`, per-stage `StageState`,
//!   per-source `SourceAccount`, the `AckFrontier`, `Usage`, `Delayed`).
//! - `admit.rs`: capacity in: credits (`reserve`/`release`) and `admit`.
//! - `forward.rs`: records out of a stage: `next_batch`, `try_batch`, `forward`.
//! - `take.rs`: the future that waits for records (`next_batch`, `Consumer::recv`)
//!   and when a stage has ended.
//! - `complete.rs`: records that reached their end: `complete*`.
//! - `acks.rs`: what a source may forget: [`ack_state`](BufferManager::ack_state)
//!   (the frontier and the completed ranges above it) and
//!   [`outstanding`](BufferManager::outstanding).
//! - `retry.rs`: failed records back to their queue, or dead letters.
//! - `observe.rs`: consistent readings: `pressures`, `snapshot`.
//! - `audit.rs`: the invariant check, `audit`.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::channel::waiters::{WaiterId, Wakeups};
use crate::error::{BufferError, RejectReason};
use crate::limits::{Limits, RetryPolicy};
use crate::pending::Pending;
use crate::record::{PipelineId, SourceId, StageId};
use crate::sync::Mutex;

mod acks;
mod admit;
mod audit;
mod builder;
mod complete;
mod forward;
mod observe;
mod retry;
mod state;
mod take;

pub(crate) use admit::{Numbering, Route, Wait};
pub use builder::BufferManagerBuilder;
pub(crate) use complete::Run;
use state::{AckFrontier, SourceAccount, State, Usage};
pub(crate) use take::{End, Take};

/// An amount of capacity reserved for a source: records and the bytes they may carry.
///
/// Credits are what flow control hands to sources: a source that sends no
/// more records and bytes than its credits is never rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Credit {
    /// Records that may be sent.
    pub records: u64,
    /// Payload bytes those records may carry in total.
    pub bytes: u64,
}

impl Credit {
    /// No credit at all.
    pub const ZERO: Credit = Credit {
        records: 0,
        bytes: 0,
    };

    /// A credit of `records` records and `bytes` bytes.
    pub const fn new(records: u64, bytes: u64) -> Self {
        Self { records, bytes }
    }

    /// True when nothing can be sent with it.
    pub const fn is_zero(&self) -> bool {
        self.records == 0 || self.bytes == 0
    }

    #[inline]
    pub(crate) fn add(&mut self, other: Credit) {
        self.records += other.records;
        self.bytes += other.bytes;
    }

    #[inline]
    fn sub(&mut self, other: Credit) {
        debug_assert!(self.records >= other.records && self.bytes >= other.bytes);
        self.records -= other.records;
        self.bytes -= other.bytes;
    }

    #[inline]
    fn min(self, other: Credit) -> Credit {
        Credit::new(self.records.min(other.records), self.bytes.min(other.bytes))
    }
}

/// How much one [`next_batch`](BufferManager::next_batch) may take.
///
/// `usize` converts into a record bound with no byte bound, so
/// `next_batch(stage, 256)` reads as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// At most this many records (at least one is taken when any is ready).
    pub records: usize,
    /// At most this many bytes, except that a single larger record is still taken alone.
    pub bytes: u64,
}

impl From<usize> for BatchSize {
    fn from(records: usize) -> Self {
        BatchSize {
            records,
            bytes: u64::MAX,
        }
    }
}

/// The outcome of [`BufferManager::admit`]: every payload handed in is
/// accounted for, as admitted, as a duplicate, or returned as rejected.
#[derive(Debug)]
#[must_use = "rejected records are handed back and must be reported to the sender"]
pub struct Admission<T> {
    /// Records now in the buffer.
    pub admitted: usize,
    /// Their bytes, as charged (the sum of their [`ByteSize`](crate::ByteSize)s).
    pub admitted_bytes: u64,
    /// Leading records whose sequence numbers were already admitted earlier
    /// (a resend after a reconnect); they were dropped as already held.
    pub duplicates: usize,
    /// The highest sequence number of this source admitted so far.
    pub admitted_through: u64,
    /// The tail of the batch that did not fit, handed back.
    pub rejected: Option<Rejected<T>>,
}

/// Records handed back by [`BufferManager::admit`] because a limit was hit.
#[derive(Debug)]
pub struct Rejected<T> {
    /// The sequence number of the first rejected payload; the rest follow contiguously.
    pub first_seq: u64,
    /// The records, in order, still in the layout they were admitted in:
    /// resending them admits them in place again (no copy).
    pub records: Pending<T>,
    /// The limit that stopped the first of them.
    pub reason: RejectReason,
}

impl<T> Rejected<T> {
    /// The records back, as payloads.
    pub fn into_payloads(self) -> Vec<T> {
        self.records.into_payloads()
    }
}

/// Per-source progress reported by [`BufferManager::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceProgress {
    /// The source.
    pub source: SourceId,
    /// Every record of the source with a sequence number up to this one is completed.
    pub acked_through: u64,
    /// Records of this source completed by this call.
    pub completed_now: u64,
    /// Cumulative records delivered (committed by the sink).
    pub delivered: u64,
    /// Cumulative records filtered out by a stage.
    pub filtered: u64,
    /// Cumulative records dead-lettered.
    pub dead_lettered: u64,
    /// Records of the source admitted and not completed yet (what a
    /// per-source unacked limit counts: not `admitted_through −
    /// acked_through`, which also counts completed records above a gap).
    pub outstanding: u64,
    /// Completed ranges above `acked_through`, as many as there are
    /// (read them with [`BufferManager::ack_state`]); 0 in the common case
    /// of completions in order, so reporting progress allocates nothing.
    pub ranges: usize,
}

/// Sequence numbers `first` to `last` of one source, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// First sequence number of the range.
    pub first: u64,
    /// Last sequence number of the range (at least `first`).
    pub last: u64,
}

/// One consistent reading of a source's completion, from
/// [`BufferManager::ack_state`]: what a selective ack tells the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    /// Every record of the source up to this sequence number is completed.
    pub acked_through: u64,
    /// Completed ranges above `acked_through` (and above the `after` asked
    /// for), ascending, disjoint, not adjacent to each other nor to
    /// `acked_through + 1`; at most the `max` asked for, the lowest first.
    pub ranges: Vec<SeqRange>,
    /// Completed ranges above `acked_through` in all (listed or not).
    pub ranges_total: usize,
    /// Records of the source admitted and not completed.
    pub outstanding: u64,
    /// Cumulative records delivered (committed by the sink).
    pub delivered: u64,
    /// Cumulative records filtered out by a stage.
    pub filtered: u64,
    /// Cumulative records dead-lettered.
    pub dead_lettered: u64,
}

/// What a [`complete`](BufferManager::complete) call changed, per source touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// One entry per source with records in the call.
    pub sources: Vec<SourceProgress>,
}

/// Read-only description of a stage.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// Its id.
    pub id: StageId,
    /// The pipeline it belongs to.
    pub pipeline: PipelineId,
    /// Its position in the pipeline, from 0.
    pub index: usize,
    /// Its name.
    pub name: Arc<str>,
    /// The stage after it, if any.
    pub next: Option<StageId>,
}

/// Read-only description of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineInfo {
    /// Its id.
    pub id: PipelineId,
    /// Its name.
    pub name: Arc<str>,
    /// Its stages, in order.
    pub stages: Vec<StageId>,
}

/// Bounds every record and byte between admission and completion, at three
/// levels: global, per stage and per source.
///
/// A record's life: capacity is [`reserve`](Self::reserve)d for it (a credit)
/// or taken at [`admit`](Self::admit); it waits in its stage's queue until a
/// worker takes it with [`next_batch`](Self::next_batch); the worker
/// [`forward`](Self::forward)s it to the next stage, [`retry`](Self::retry)s
/// it after an error, or [`complete`](Self::complete)s it once the sink has
/// committed it. Nothing is ever dropped: every operation hands back what it
/// could not take.
///
/// All operations on a batch take one short lock, so batches of a few hundred
/// records amortise the locking (see `BENCHMARKS.md`).
///
/// ```
/// use sluice_buffer::{BufferManager, Limits, Credit};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let buffer = BufferManager::<Vec<u8>>::builder(Limits::default())
///     .pipeline("orders", ["parse", "store"])
///     .build()
///     .unwrap();
/// let orders = buffer.pipeline_by_name("orders").unwrap().clone();
/// let source = buffer.register_source("shop-1", orders.id).unwrap();
///
/// // Reserve credits, then admit within them: never rejected.
/// let credit = buffer.reserve(source, Credit::new(2, 1024)).unwrap();
/// assert_eq!(credit.records, 2);
/// let admission = buffer.admit(source, 1, vec![b"a".to_vec(), b"b".to_vec()]).unwrap();
/// assert_eq!(admission.admitted, 2);
///
/// // Stage 0 takes them, hands them to stage 1, which completes them.
/// let batch = buffer.next_batch(orders.stages[0], 256).await.unwrap();
/// buffer.forward(batch, orders.stages[1]).await.unwrap();
/// let batch = buffer.next_batch(orders.stages[1], 256).await.unwrap();
/// let done = buffer.complete(batch);
/// assert_eq!(done.sources[0].acked_through, 2);
/// # });
/// ```
pub struct BufferManager<T> {
    /// All counts and queues. INVARIANTS, each kept by doing every change of
    /// an operation inside one critical section of this lock (never a check
    /// in one section and the change in another):
    ///
    /// 1. *Limits*: for every level (global, each stage, each source),
    ///    `used.records <= limit.records` and `used.bytes <= limit.bytes`,
    ///    reservations included. Only `reserve`, `admit` and `forward` raise
    ///    a level, and each checks the free room of every level it raises in
    ///    the same critical section in which it raises it.
    /// 2. *Conservation*: `global.used == Σ sources.used == Σ stages.used`;
    ///    for each source `used == reserved + in_engine` and
    ///    `admitted == in_engine + delivered + filtered + dead_lettered` (in records);
    ///    for each stage `used == reserved + queued + in_flight`.
    /// 3. *No loss*: a record leaves the manager's counts only through
    ///    `complete`/`complete_dead_letters`, which take it by value; every
    ///    other operation either keeps it counted or hands it back (an
    ///    `admit` error hands back every record; after `shutdown`,
    ///    `try_batch` still hands out what is queued).
    /// 4. *No lost wake-up*: a task waits on a level's wait list (a
    ///    source's, a stage's, the global one; a stage's ready list) only
    ///    if it registered in the critical section in which that level
    ///    refused it, and every change that frees room at a level (or makes
    ///    records ready in a stage) takes that list in its critical section.
    ///    So no producer (nor `forward`, which waits on its target stage's
    ///    list) sleeps on a level that has the room its refused record
    ///    needs, and no consumer sleeps on a stage with ready records.
    ///
    /// 5. *Acks*: a source's `acks.through` and every range of
    ///    `acks.pending` hold only sequence numbers of records completed by
    ///    `complete*` (each record is completed once, by value, so a range
    ///    never overlaps another or the frontier); the ranges are disjoint,
    ///    ascending, not adjacent to each other nor to `through + 1`
    ///    (`AckFrontier::complete` merges them in the same section), and
    ///    `through` only grows. Acks are read only here, under the lock, so
    ///    a source is never told a record is completed before it was.
    ///
    /// [`audit`](Self::audit) checks 1, 2, 4 and the shape of 5; the tests in
    /// `tests/` drive it (`tests/acks.rs` checks 5 against a model).
    ///
    /// LOCK ORDER (see `crate::sync`): a leaf. It may be taken while the
    /// controller's lock is held (the controller calls into the manager),
    /// and nothing is locked while it is held; wake-ups are sent after it is
    /// released.
    state: Mutex<State<T>>,
    limits: Limits,
    retry: RetryPolicy,
    stages: Vec<StageInfo>,
    pipelines: Vec<PipelineInfo>,
    /// Notified whenever capacity is released anywhere (complete, release of
    /// a reservation) and at shutdown; `drain` and credit granters wait on it.
    freed: Notify,
}

impl<T> std::fmt::Debug for BufferManager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferManager")
            .field("limits", &self.limits)
            .field("retry", &self.retry)
            .field("pipelines", &self.pipelines)
            .finish_non_exhaustive()
    }
}

impl<T> BufferManager<T> {
    /// The limits this manager enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// All pipelines, in the order they were added.
    pub fn pipelines(&self) -> &[PipelineInfo] {
        &self.pipelines
    }

    /// A pipeline by name.
    pub fn pipeline_by_name(&self, name: &str) -> Option<&PipelineInfo> {
        self.pipelines.iter().find(|p| &*p.name == name)
    }

    /// A pipeline by id.
    pub fn pipeline(&self, id: PipelineId) -> Option<&PipelineInfo> {
        self.pipelines.get(id.index())
    }

    /// A stage by id.
    pub fn stage(&self, id: StageId) -> Option<&StageInfo> {
        self.stages.get(id.index())
    }

    /// All stages of all pipelines.
    pub fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    /// Registers a source feeding `pipeline`, or returns the id it already has.
    ///
    /// A source keeps its id, sequence position and counts for the life of
    /// the manager, so a source that reconnects under the same name carries
    /// on where it left off (see [`admitted_through`](Self::admitted_through)).
    pub fn register_source(
        &self,
        name: &str,
        pipeline: PipelineId,
    ) -> Result<SourceId, BufferError> {
        let info = self
            .pipeline(pipeline)
            .ok_or(BufferError::UnknownPipeline(pipeline))?;
        let entry = info.stages[0];
        let mut st = self.state.lock();
        if let Some(&id) = st.names.get(name) {
            let registered = st.sources[id.index()].pipeline;
            if registered != pipeline {
                return Err(BufferError::PipelineMismatch {
                    name: name.to_owned(),
                    registered,
                    requested: pipeline,
                });
            }
            return Ok(id);
        }
        let id = SourceId(st.sources.len() as u32);
        let name: Arc<str> = name.into();
        st.sources.push(SourceAccount {
            name: name.clone(),
            pipeline,
            entry,
            usage: Usage::default(),
            reserved: Credit::ZERO,
            started: false,
            admitted_through: 0,
            acks: AckFrontier::default(),
            admitted: 0,
            delivered: 0,
            filtered: 0,
            dead_lettered: 0,
            refused: 0,
            retried: 0,
            waiters: Default::default(),
        });
        st.names.insert(name, id);
        Ok(id)
    }

    /// The id of a registered source name.
    pub fn source_id(&self, name: &str) -> Option<SourceId> {
        self.state.lock().names.get(name).copied()
    }

    /// The name `source` was registered under (the one place it is stored).
    pub fn source_name(&self, source: SourceId) -> Option<Arc<str>> {
        let st = self.state.lock();
        st.sources.get(source.index()).map(|s| s.name.clone())
    }

    /// The highest sequence number of `source` admitted so far (0 if none).
    pub fn admitted_through(&self, source: SourceId) -> Result<u64, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(s.admitted_through)
    }

    /// The cumulative ack position of `source` (0 if nothing completed).
    pub fn acked_through(&self, source: SourceId) -> Result<u64, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(s.acks.through)
    }

    /// Records admitted and not yet completed, over all sources.
    pub fn in_engine(&self) -> u64 {
        let st = self.state.lock();
        st.global.used.records - st.global_reserved.records
    }

    /// Waits until every admitted record is completed (reservations do not
    /// count). Combine with a timeout for a bounded graceful shutdown.
    pub async fn drain(&self) {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_engine() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A future that completes when capacity is released somewhere (a
    /// completion, a released reservation) or the manager shuts down.
    ///
    /// It registers at once, when this method is called, not when it is
    /// first polled: take it *before* the attempt that found no room, then
    /// await it, and no release in between is missed.
    ///
    /// ```
    /// # use sluice_buffer::{BufferManager, Limits, Credit};
    /// # async fn f(buffer: &BufferManager<Vec<u8>>, source: sluice_buffer::SourceId) {
    /// loop {
    ///     let freed = buffer.capacity_freed();
    ///     let credit = buffer.reserve(source, Credit::new(100, 100_000)).unwrap();
    ///     if !credit.is_zero() {
    ///         break;
    ///     }
    ///     freed.await;
    /// }
    /// # }
    /// ```
    ///
    /// (The producer handles do not need it: [`Producer::send`](crate::Producer::send)
    /// waits on the limit that refused it.)
    pub fn capacity_freed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.freed.notified()
    }

    /// Stops the manager: `admit` and `reserve` fail (handing the records
    /// back), `next_batch` returns `None`, `forward` returns its unmoved
    /// records to their queue, and every waiter is woken.
    ///
    /// Nothing held becomes unreachable: records still queued stay counted
    /// (and unacked), and [`try_batch`](Self::try_batch) keeps handing them
    /// out (retried ones without their backoff) to be completed or
    /// reported; a [`Consumer`](crate::Consumer) drains them before it
    /// ends. Records in flight are completed or retried as usual.
    pub fn shutdown(&self) {
        let mut wakeups = Wakeups::default();
        {
            let mut st = self.state.lock();
            st.shutdown = true;
            st.wake_everyone(&mut wakeups);
        }
        wakeups.wake();
        self.freed.notify_waiters();
    }

    /// Counts a new producer handle of `pipeline` (`PipelineState::senders`);
    /// refused once the pipeline is closed.
    pub(crate) fn open_sender(&self, pipeline: PipelineId) -> Result<(), BufferError> {
        let mut st = self.state.lock();
        let p = st
            .pipelines
            .get_mut(pipeline.index())
            .ok_or(BufferError::UnknownPipeline(pipeline))?;
        if p.closed {
            return Err(BufferError::Closed);
        }
        p.senders += 1;
        Ok(())
    }

    /// Counts a copy of a live producer handle of `pipeline` (a clone: the
    /// pipeline cannot be closed while the original lives).
    pub(crate) fn clone_sender(&self, pipeline: PipelineId) {
        let mut st = self.state.lock();
        if let Some(p) = st.pipelines.get_mut(pipeline.index()) {
            p.senders += 1;
        }
    }

    /// Uncounts a producer handle of `pipeline`; the last one closes it and
    /// wakes its consumers, to drain and end.
    pub(crate) fn close_sender(&self, pipeline: PipelineId) {
        let mut wakeups = Wakeups::default();
        let mut st = self.state.lock();
        let Some(p) = st.pipelines.get_mut(pipeline.index()) else {
            return;
        };
        p.senders = p.senders.saturating_sub(1);
        if p.senders == 0 && !p.closed {
            p.closed = true;
            for s in &self.pipelines[pipeline.index()].stages {
                st.stages[s.index()].ready_waiters.wake_all(&mut wakeups);
            }
        }
        drop(st);
        wakeups.wake();
    }

    /// Takes `id` off `level`'s wait list (a waiting future dropped).
    pub(crate) fn forget_waiter(&self, level: crate::error::Level, id: WaiterId) {
        self.state.lock().waiters(level).remove(id);
    }

    /// Whether `pipeline` was closed: every producer handle of it is gone.
    pub fn is_closed(&self, pipeline: PipelineId) -> bool {
        let st = self.state.lock();
        st.pipelines.get(pipeline.index()).is_some_and(|p| p.closed)
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.state.lock().shutdown
    }
}
