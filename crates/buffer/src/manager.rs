//! The [`BufferManager`]: bounded queues per stage, with limits per level.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::pending::{Entry, Laid, Pending};
use crate::queue::RecordQueue;
use crate::sync::Mutex;
use tokio::sync::Notify;

use crate::error::{BufferError, BuildError, Level, RejectReason, Unit};
use crate::limits::{Limit, Limits, RetryPolicy};
use crate::record::{
    BufferedRecord, ByteSize, DeadLetter, PipelineId, RetryState, SourceId, StageId,
};
use crate::snapshot::{LevelSnapshot, Pressure, Snapshot, SourceSnapshot, StageSnapshot};

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

    fn add(&mut self, other: Credit) {
        self.records += other.records;
        self.bytes += other.bytes;
    }

    fn sub(&mut self, other: Credit) {
        debug_assert!(self.records >= other.records && self.bytes >= other.bytes);
        self.records -= other.records;
        self.bytes -= other.bytes;
    }

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
    /// Their bytes, as charged (the sum of their [`ByteSize`]s).
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
    /// The payloads, in order.
    pub payloads: Vec<T>,
    /// The limit that stopped the first of them.
    pub reason: RejectReason,
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
    /// Cumulative records delivered (committed or filtered).
    pub delivered: u64,
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

/// Builds a [`BufferManager`] with its pipelines, which are fixed for its life.
#[derive(Debug)]
pub struct BufferManagerBuilder {
    limits: Limits,
    retry: RetryPolicy,
    pipelines: Vec<(String, Vec<String>)>,
}

impl BufferManagerBuilder {
    /// Sets how failed records are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Adds a pipeline with the given stage names, in order.
    pub fn pipeline<S: Into<String>>(
        mut self,
        name: impl Into<String>,
        stages: impl IntoIterator<Item = S>,
    ) -> Self {
        self.pipelines
            .push((name.into(), stages.into_iter().map(Into::into).collect()));
        self
    }

    /// Checks the limits and pipelines and builds the manager.
    pub fn build<T>(self) -> Result<BufferManager<T>, BuildError> {
        let l = &self.limits;
        for (name, limit) in [
            ("global", l.global),
            ("per-stage", l.per_stage),
            ("per-source", l.per_source),
        ] {
            if limit.is_zero() {
                return Err(BuildError::ZeroLimit(name));
            }
        }
        if !l.per_stage.fits_within(&l.global) {
            return Err(BuildError::AboveGlobal("per-stage"));
        }
        if !l.per_source.fits_within(&l.global) {
            return Err(BuildError::AboveGlobal("per-source"));
        }
        let mut pipelines = Vec::new();
        let mut stages: Vec<StageInfo> = Vec::new();
        for (p, (name, stage_names)) in self.pipelines.into_iter().enumerate() {
            if pipelines.iter().any(|x: &PipelineInfo| *x.name == *name) {
                return Err(BuildError::DuplicatePipeline(name));
            }
            if stage_names.is_empty() {
                return Err(BuildError::EmptyPipeline(name));
            }
            let pid = PipelineId(p as u32);
            let first = stages.len();
            let n = stage_names.len();
            let ids: Vec<StageId> = (first..first + n).map(|i| StageId(i as u32)).collect();
            for (index, stage_name) in stage_names.into_iter().enumerate() {
                stages.push(StageInfo {
                    id: ids[index],
                    pipeline: pid,
                    index,
                    name: stage_name.into(),
                    next: ids.get(index + 1).copied(),
                });
            }
            pipelines.push(PipelineInfo {
                id: pid,
                name: name.into(),
                stages: ids,
            });
        }
        let state = State {
            global: Usage::default(),
            global_reserved: Credit::ZERO,
            stages: stages.iter().map(|_| StageState::default()).collect(),
            sources: Vec::new(),
            names: HashMap::new(),
            shutdown: false,
            delay_order: 0,
        };
        Ok(BufferManager {
            signals: stages.iter().map(|_| StageSignals::default()).collect(),
            stages,
            pipelines,
            limits: self.limits,
            retry: self.retry,
            freed: Notify::new(),
            state: Mutex::new(state),
        })
    }
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
    ///    `admitted == in_engine + delivered + dead_lettered` (in records);
    ///    for each stage `used == reserved + queued + in_flight`.
    /// 3. *No loss*: a record leaves the manager's counts only through
    ///    `complete`/`complete_dead_letters`, which take it by value; every
    ///    other operation either keeps it counted or hands it back.
    ///
    /// [`audit`](Self::audit) checks 1 and 2; the tests in `tests/` drive it.
    state: Mutex<State<T>>,
    limits: Limits,
    retry: RetryPolicy,
    stages: Vec<StageInfo>,
    pipelines: Vec<PipelineInfo>,
    /// Per-stage wake-ups. Protocol (no lost wake-up): a waiter *enables* its
    /// `Notified` before it inspects the state under the lock, and a changer
    /// calls `notify_waiters` after it changed the state; so a change either
    /// happened before the inspection (and is seen) or after the enable (and
    /// wakes the waiter).
    signals: Vec<StageSignals>,
    /// Notified whenever capacity is released anywhere (complete, release of
    /// a reservation) and at shutdown; `drain` and credit granters wait on it.
    freed: Notify,
}

#[derive(Default)]
struct StageSignals {
    /// Records became ready (admit, forward into, retry into), or shutdown.
    ready: Notify,
    /// The stage's usage fell (forward out of, complete), or shutdown.
    space: Notify,
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

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    used: Credit,
    peak: Credit,
}

impl Usage {
    fn add(&mut self, a: Credit) {
        self.used.add(a);
        self.peak.records = self.peak.records.max(self.used.records);
        self.peak.bytes = self.peak.bytes.max(self.used.bytes);
    }
    fn sub(&mut self, a: Credit) {
        self.used.sub(a);
    }
    fn free(&self, limit: Limit) -> Credit {
        Credit::new(
            limit.records.saturating_sub(self.used.records),
            limit.bytes.saturating_sub(self.used.bytes),
        )
    }
}

struct Delayed<T> {
    at: Instant,
    order: u64,
    record: BufferedRecord<T>,
}
impl<T> PartialEq for Delayed<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl<T> Eq for Delayed<T> {}
impl<T> PartialOrd for Delayed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Delayed<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

struct StageState<T> {
    usage: Usage,
    /// Part of `usage` that is reservations of sources entering here.
    reserved: Credit,
    /// Records waiting (in `ready` or `delayed`).
    queued: Credit,
    ready: RecordQueue<T>,
    /// Retried records waiting for their backoff, earliest first.
    delayed: BinaryHeap<Reverse<Delayed<T>>>,
}

impl<T> Default for StageState<T> {
    fn default() -> Self {
        Self {
            usage: Usage::default(),
            reserved: Credit::ZERO,
            queued: Credit::ZERO,
            ready: RecordQueue::default(),
            delayed: BinaryHeap::new(),
        }
    }
}

/// Cumulative acknowledgement: the highest `through` such that every
/// sequence number up to it is completed, plus completed ranges above it.
#[derive(Debug, Default)]
struct AckFrontier {
    through: u64,
    /// Completed, disjoint ranges `start..=end` above `through + 1`.
    pending: BTreeMap<u64, u64>,
}

impl AckFrontier {
    fn complete(&mut self, start: u64, end: u64) {
        if start <= self.through.saturating_add(1) {
            self.through = self.through.max(end);
            while let Some(e) = self.pending.first_entry() {
                if *e.key() > self.through.saturating_add(1) {
                    break;
                }
                self.through = self.through.max(*e.get());
                e.remove();
            }
        } else {
            self.pending.insert(start, end);
        }
    }
}

struct SourceState {
    name: Arc<str>,
    pipeline: PipelineId,
    entry: StageId,
    usage: Usage,
    reserved: Credit,
    /// Whether any record was ever admitted (fixes the sequence base).
    started: bool,
    admitted_through: u64,
    acks: AckFrontier,
    admitted: u64,
    delivered: u64,
    dead_lettered: u64,
    rejected: u64,
    retried: u64,
}

struct State<T> {
    global: Usage,
    global_reserved: Credit,
    stages: Vec<StageState<T>>,
    sources: Vec<SourceState>,
    names: HashMap<Arc<str>, SourceId>,
    shutdown: bool,
    delay_order: u64,
}

impl<T> State<T> {
    /// Takes up to `max` ready records of `stage`, first moving retried
    /// records whose backoff has passed. `Err` carries the earliest time a
    /// delayed record becomes due, if any.
    fn take(
        &mut self,
        stage: usize,
        max: BatchSize,
    ) -> Result<Vec<BufferedRecord<T>>, Option<Instant>> {
        let st = &mut self.stages[stage];
        if !st.delayed.is_empty() {
            let now = Instant::now();
            while st.delayed.peek().is_some_and(|d| d.0.at <= now) {
                if let Some(Reverse(d)) = st.delayed.pop() {
                    st.ready.push_back(d.record);
                }
            }
        }
        if st.ready.is_empty() || max.records == 0 {
            return Err(st.delayed.peek().map(|d| d.0.at));
        }
        let (batch, bytes) = st.ready.take_batch(max.records, max.bytes);
        st.queued.sub(Credit::new(batch.len() as u64, bytes));
        Ok(batch)
    }
}

impl<T> BufferManager<T> {
    /// Starts building a manager with these limits.
    pub fn builder(limits: Limits) -> BufferManagerBuilder {
        BufferManagerBuilder {
            limits,
            retry: RetryPolicy::default(),
            pipelines: Vec::new(),
        }
    }

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
        st.sources.push(SourceState {
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
            dead_lettered: 0,
            rejected: 0,
            retried: 0,
        });
        st.names.insert(name, id);
        Ok(id)
    }

    /// The id of a registered source name.
    pub fn source_id(&self, name: &str) -> Option<SourceId> {
        self.state.lock().names.get(name).copied()
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

    /// What [`reserve`](Self::reserve) could grant `source` right now: the
    /// smallest free room of the global level, its entry stage and itself.
    pub fn available(&self, source: SourceId) -> Result<Credit, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(self.free_for(&st, s))
    }

    /// Free room of the global level alone.
    pub fn global_available(&self) -> Credit {
        self.state.lock().global.free(self.limits.global)
    }

    fn free_for(&self, st: &State<T>, s: &SourceState) -> Credit {
        st.global
            .free(self.limits.global)
            .min(st.stages[s.entry.index()].usage.free(self.limits.per_stage))
            .min(s.usage.free(self.limits.per_source))
    }

    /// Reserves up to `want` for `source` at the global level, its entry
    /// stage and itself, in one atomic step, and returns what was granted
    /// (possibly [`Credit::ZERO`]). A grant never carries records without
    /// bytes or the other way round.
    ///
    /// Reserved capacity counts as used at every level until records
    /// consume it in [`admit`](Self::admit) or it is
    /// [`release`](Self::release)d.
    pub fn reserve(&self, source: SourceId, want: Credit) -> Result<Credit, BufferError> {
        let mut st = self.state.lock();
        if st.shutdown {
            return Err(BufferError::Closed);
        }
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        let grant = self.free_for(&st, s).min(want);
        if grant.is_zero() {
            return Ok(Credit::ZERO);
        }
        let entry = s.entry.index();
        let st = &mut *st;
        st.global.add(grant);
        st.global_reserved.add(grant);
        let stage = &mut st.stages[entry];
        stage.usage.add(grant);
        stage.reserved.add(grant);
        let s = &mut st.sources[source.index()];
        s.usage.add(grant);
        s.reserved.add(grant);
        Ok(grant)
    }

    /// The capacity currently reserved for `source`.
    pub fn reserved(&self, source: SourceId) -> Result<Credit, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(s.reserved)
    }

    /// Gives back up to `amount` of `source`'s reservation (e.g. when it
    /// disconnects, pass its whole reservation) and returns what was released.
    pub fn release(&self, source: SourceId, amount: Credit) -> Result<Credit, BufferError> {
        let entry;
        let released;
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            let s = st
                .sources
                .get_mut(source.index())
                .ok_or(BufferError::UnknownSource(source))?;
            released = s.reserved.min(amount);
            if released == Credit::ZERO {
                return Ok(released);
            }
            entry = s.entry;
            s.reserved.sub(released);
            s.usage.sub(released);
            let stage = &mut st.stages[entry.index()];
            stage.reserved.sub(released);
            stage.usage.sub(released);
            st.global.sub(released);
            st.global_reserved.sub(released);
        }
        self.signals[entry.index()].space.notify_waiters();
        self.freed.notify_waiters();
        Ok(released)
    }

    /// Admits `payloads`, numbered `first_seq, first_seq + 1, …`, into the
    /// source's pipeline's first stage.
    ///
    /// Each record is paid for from the source's reservation first, then from
    /// free capacity of every level; the first record that does not fit and
    /// everything after it come back in [`Admission::rejected`] with the
    /// limit that was hit (so admitted sequence numbers stay contiguous).
    /// Leading records already admitted before (a resend) are counted as
    /// duplicates and dropped. A batch that would leave a gap is refused whole.
    ///
    /// `payloads` is a `Vec<T>` or a [`Pending`] batch built in the queues'
    /// record layout, which is admitted in place (no copy of its records).
    pub fn admit(
        &self,
        source: SourceId,
        first_seq: u64,
        payloads: impl Into<Pending<T>>,
    ) -> Result<Admission<T>, BufferError>
    where
        T: ByteSize,
    {
        if first_seq == 0 {
            return Err(BufferError::ZeroSequence);
        }
        let pending = payloads.into();
        let n = pending.len();
        if n > 0 && first_seq.checked_add(n as u64 - 1).is_none() {
            return Err(BufferError::SequenceOverflow {
                first: first_seq,
                count: n,
            });
        }
        // The source's route never changes after registration.
        let (entry, pipeline) = {
            let st = self.state.lock();
            let s = st
                .sources
                .get(source.index())
                .ok_or(BufferError::UnknownSource(source))?;
            (s.entry, s.pipeline)
        };
        // Lay the records out (or fill in their bookkeeping) outside the
        // critical section, so that the lock is held only to decide what
        // fits and to queue them: sessions admit while stage workers take
        // and complete.
        let Laid {
            records: mut chunk,
            bytes: batch_bytes,
            largest,
        } = pending.lay_out(&Entry {
            first_seq,
            source,
            pipeline,
            stage: entry,
            now: Instant::now(),
        });
        let mut guard = self.state.lock();
        if guard.shutdown {
            return Err(BufferError::Closed);
        }
        let st = &mut *guard;
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        // In u128: after a batch that ended at u64::MAX, the next expected
        // number is u64::MAX + 1 (only duplicates can still come).
        let expected: u128 = if s.started {
            u128::from(s.admitted_through) + 1
        } else {
            u128::from(first_seq)
        };
        if u128::from(first_seq) > expected {
            return Err(BufferError::SequenceGap {
                source_id: source,
                // A gap is only possible below u64::MAX + 1.
                expected: expected as u64,
                got: first_seq,
            });
        }
        let skip = (expected - u128::from(first_seq)).min(n as u128) as usize;
        let stage_usage = st.stages[entry.index()].usage;

        // Work out, in this critical section, how long a prefix fits.
        let mut res_left = s.reserved;
        let free = st
            .global
            .free(self.limits.global)
            .min(stage_usage.free(self.limits.per_stage))
            .min(s.usage.free(self.limits.per_source));
        let mut new = Credit::ZERO; // capacity taken beyond the reservation
        let mut consumed = Credit::ZERO; // reservation used
        let mut fit = skip;
        let mut reason = None;
        let max_size = self
            .limits
            .global
            .bytes
            .min(self.limits.per_stage.bytes)
            .min(self.limits.per_source.bytes);
        if skip == 0
            && largest <= max_size
            && largest < u64::from(u32::MAX)
            && res_left.records >= n as u64
            && res_left.bytes >= batch_bytes
        {
            // The common case, decided at once from the batch's totals:
            // nothing resent, no record too large, and the reservation
            // covers the whole batch (a source sending within its credit).
            // The same outcome as the loop below, which would take every
            // record from the reservation.
            consumed = Credit::new(n as u64, batch_bytes);
            fit = n;
        }
        for r in &chunk[fit..] {
            let mut size = u64::from(r.size);
            if size == u64::from(u32::MAX) {
                size = r.payload.byte_size() as u64;
            }
            if size > max_size || size >= u64::from(u32::MAX) {
                reason = Some(self.too_large(size, entry, source));
                break;
            }
            let from_res_rec = u64::from(res_left.records > 0);
            let from_res_bytes = res_left.bytes.min(size);
            let need = Credit::new(1 - from_res_rec, size - from_res_bytes);
            if new.records + need.records > free.records || new.bytes + need.bytes > free.bytes {
                let unit = if new.records + need.records > free.records {
                    Unit::Records
                } else {
                    Unit::Bytes
                };
                reason = Some(self.limit_hit(st, source, entry, unit, new));
                break;
            }
            res_left.sub(Credit::new(from_res_rec, from_res_bytes));
            consumed.add(Credit::new(from_res_rec, from_res_bytes));
            new.add(need);
            fit += 1;
        }

        let admitted = fit - skip;
        // Rare (a limit hit, a resend): these split off copies of the tail.
        let rejected_records = chunk.split_off(fit);
        let duplicates = if skip > 0 {
            let admitted_records = chunk.split_off(skip);
            std::mem::replace(&mut chunk, admitted_records)
        } else {
            Vec::new()
        };
        let admitted_bytes = new.bytes + consumed.bytes;
        if admitted > 0 {
            st.global.add(new);
            st.global_reserved.sub(consumed);
            let stage = &mut st.stages[entry.index()];
            stage.usage.add(new);
            stage.reserved.sub(consumed);
            let s = &mut st.sources[source.index()];
            s.usage.add(new);
            s.reserved.sub(consumed);
            if !s.started {
                s.started = true;
                s.acks.through = first_seq - 1;
            }
            // fit ≥ 1 here, and first_seq + n - 1 was checked not to overflow.
            s.admitted_through = first_seq + (fit as u64 - 1);
            s.admitted += admitted as u64;
            stage.ready.push_chunk(chunk, admitted_bytes);
            stage
                .queued
                .add(Credit::new(admitted as u64, admitted_bytes));
        }
        let s = &mut st.sources[source.index()];
        s.rejected += rejected_records.len() as u64;
        let admitted_through = s.admitted_through;
        drop(guard);
        drop(duplicates);
        let rejected = reason.map(|reason| Rejected {
            first_seq: first_seq + fit as u64,
            payloads: rejected_records.into_iter().map(|r| r.payload).collect(),
            reason,
        });
        if admitted > 0 {
            self.signals[entry.index()].ready.notify_waiters();
        }
        Ok(Admission {
            admitted,
            admitted_bytes,
            duplicates: skip,
            admitted_through,
            rejected,
        })
    }

    fn too_large(&self, size: u64, entry: StageId, source: SourceId) -> RejectReason {
        let l = &self.limits;
        let (level, limit) = if size > l.per_source.bytes {
            (Level::Source(source), l.per_source.bytes)
        } else if size > l.per_stage.bytes {
            (Level::Stage(entry), l.per_stage.bytes)
        } else if size > l.global.bytes {
            (Level::Global, l.global.bytes)
        } else {
            (Level::Source(source), u64::from(u32::MAX))
        };
        RejectReason::TooLarge { level, size, limit }
    }

    /// The level that blocks one more record after `new` was taken.
    fn limit_hit(
        &self,
        st: &State<T>,
        source: SourceId,
        entry: StageId,
        unit: Unit,
        new: Credit,
    ) -> RejectReason {
        let pick = |c: Credit| match unit {
            Unit::Records => c.records,
            Unit::Bytes => c.bytes,
        };
        let pick_l = |l: Limit| match unit {
            Unit::Records => l.records,
            Unit::Bytes => l.bytes,
        };
        let levels = [
            (
                Level::Source(source),
                st.sources[source.index()].usage.used,
                self.limits.per_source,
            ),
            (
                Level::Stage(entry),
                st.stages[entry.index()].usage.used,
                self.limits.per_stage,
            ),
            (Level::Global, st.global.used, self.limits.global),
        ];
        let (level, used, limit) = levels
            .into_iter()
            .min_by_key(|(_, used, limit)| pick_l(*limit).saturating_sub(pick(*used)))
            .unwrap_or(levels[2]);
        RejectReason::Limit {
            level,
            unit,
            limit: pick_l(limit),
            used: pick(used) + pick(new),
        }
    }

    /// Waits until records of `stage` are ready, then takes up to `max`.
    ///
    /// Records enter a stage a batch at a time (an admitted or forwarded
    /// batch) and are taken the same way: a large queued batch (more than 64
    /// records) is handed out as it is, small ones are merged while they fit
    /// in `max`, and a queued batch is split only when it comes first and
    /// alone exceeds `max`. So the result can hold fewer than `max` records
    /// while more are ready ([`try_batch`](Self::try_batch) gets them); it
    /// always holds at least one record, whatever its size. This way large
    /// batches of records are never copied from batch to batch.
    ///
    /// Returns `None` once the manager is shut down. Retried records are
    /// handed out only after their backoff; while only such records wait,
    /// this sleeps until the earliest is due. Cancel-safe: if the future is
    /// dropped, nothing was taken.
    pub async fn next_batch(
        &self,
        stage: StageId,
        max: impl Into<BatchSize>,
    ) -> Option<Vec<BufferedRecord<T>>> {
        let max = max.into();
        let signals = self.signals.get(stage.index())?;
        loop {
            let notified = signals.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let due = {
                let mut st = self.state.lock();
                if st.shutdown {
                    return None;
                }
                match st.take(stage.index(), max) {
                    Ok(batch) => return Some(batch),
                    Err(due) => due,
                }
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Takes up to `max` ready records of `stage` without waiting, like
    /// [`next_batch`](Self::next_batch) (empty when none is ready or the
    /// manager is shut down).
    pub fn try_batch(&self, stage: StageId, max: impl Into<BatchSize>) -> Vec<BufferedRecord<T>> {
        let mut st = self.state.lock();
        if st.shutdown || stage.index() >= st.stages.len() {
            return Vec::new();
        }
        st.take(stage.index(), max.into()).unwrap_or_default()
    }

    /// Moves records to `next` (a stage of their pipeline), waiting while it
    /// is full. Global and source counts do not change; each record stops
    /// counting against its current stage as it starts counting against `next`.
    ///
    /// Records move in order, as many as fit at a time. If the manager shuts
    /// down, or the future is dropped, the records not yet moved go back to
    /// their current stage's queue, still counted: nothing is lost.
    pub async fn forward(
        &self,
        records: Vec<BufferedRecord<T>>,
        next: StageId,
    ) -> Result<(), BufferError> {
        let target = self.stage(next).ok_or(BufferError::UnknownStage(next))?;
        if let Some(r) = records.iter().find(|r| r.pipeline != target.pipeline) {
            return Err(BufferError::WrongPipeline {
                stage: next,
                pipeline: r.pipeline,
            });
        }
        let mut pending = PendingForward {
            manager: self,
            records,
        };
        let signals = &self.signals[next.index()];
        loop {
            let notified = signals.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut from: Option<StageId> = None;
            let mut from_many = Vec::new();
            {
                let mut st = self.state.lock();
                if st.shutdown {
                    return Err(BufferError::Closed);
                }
                let st = &mut *st;
                let mut free = st.stages[next.index()].usage.free(self.limits.per_stage);
                let mut moved = Credit::ZERO;
                let mut queued = Credit::ZERO;
                // First account for (and retag) the prefix that fits, then
                // move it in one go: records are moved once, not popped and
                // pushed one by one.
                let mut n = 0;
                for r in pending.records.iter_mut() {
                    let size = u64::from(r.size);
                    if r.stage != next {
                        if free.records == 0 || free.bytes < size {
                            break;
                        }
                        free.sub(Credit::new(1, size));
                        st.stages[r.stage.index()].usage.sub(Credit::new(1, size));
                        match from {
                            None => from = Some(r.stage),
                            Some(f) if f != r.stage && !from_many.contains(&r.stage) => {
                                from_many.push(r.stage)
                            }
                            _ => {}
                        }
                        moved.add(Credit::new(1, size));
                        r.stage = next;
                    }
                    queued.add(Credit::new(1, size));
                    n += 1;
                }
                let dst = &mut st.stages[next.index()];
                dst.queued.add(queued);
                dst.usage.add(moved);
                if n == pending.records.len() {
                    dst.ready
                        .push_chunk(std::mem::take(&mut pending.records), queued.bytes);
                } else {
                    let rest = pending.records.split_off(n);
                    dst.ready
                        .push_chunk(std::mem::replace(&mut pending.records, rest), queued.bytes);
                }
            }
            if from.is_some() || pending.records.is_empty() {
                signals.ready.notify_waiters();
            }
            for s in from.into_iter().chain(from_many) {
                self.signals[s.index()].space.notify_waiters();
            }
            if pending.records.is_empty() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Completes records that reached their end (committed by a sink, or
    /// filtered out): releases their capacity at every level, counts them as
    /// delivered, and reports per source the new cumulative ack position.
    pub fn complete(&self, records: Vec<BufferedRecord<T>>) -> Completion {
        self.finish(records.iter(), false)
    }

    /// [`complete`](Self::complete) for a batch kept as several parts (as
    /// successive [`next_batch`](Self::next_batch) calls handed them out),
    /// in one step: one lock and one [`Completion`] for all of them.
    pub fn complete_parts(&self, parts: Vec<Vec<BufferedRecord<T>>>) -> Completion {
        self.finish(parts.iter().flatten(), false)
    }

    /// Completes dead letters once they are written to the dead-letter sink:
    /// like [`complete`](Self::complete), but counted as dead-lettered.
    pub fn complete_dead_letters(&self, dead: Vec<DeadLetter<T>>) -> Completion {
        self.finish(dead.iter().map(|d| &d.record), true)
    }

    fn finish<'a>(
        &self,
        records: impl Iterator<Item = &'a BufferedRecord<T>>,
        dead: bool,
    ) -> Completion
    where
        T: 'a,
    {
        // Outside the lock: coalesce the records into runs of one source
        // and stage with contiguous sequence numbers (a batch is usually a
        // few such runs), so the critical section works per run, not per
        // record.
        struct Run {
            source: SourceId,
            stage: StageId,
            start: u64,
            end: u64,
            used: Credit,
        }
        let mut runs: Vec<Run> = Vec::new();
        for r in records {
            let size = u64::from(r.size);
            match runs.last_mut() {
                Some(run)
                    if run.source == r.source
                        && run.stage == r.stage
                        && run.end.checked_add(1) == Some(r.seq) =>
                {
                    run.end = r.seq;
                    run.used.add(Credit::new(1, size));
                }
                _ => runs.push(Run {
                    source: r.source,
                    stage: r.stage,
                    start: r.seq,
                    end: r.seq,
                    used: Credit::new(1, size),
                }),
            }
        }
        let mut touched: Vec<(SourceId, u64)> = Vec::new();
        let mut stages_freed: Vec<StageId> = Vec::new();
        for run in &runs {
            if !stages_freed.contains(&run.stage) {
                stages_freed.push(run.stage);
            }
            match touched.iter_mut().find(|(src, _)| *src == run.source) {
                Some((_, n)) => *n += run.used.records,
                None => touched.push((run.source, run.used.records)),
            }
        }
        let sources = {
            let mut st = self.state.lock();
            let st = &mut *st;
            let mut total = Credit::ZERO;
            for run in &runs {
                total.add(run.used);
                st.stages[run.stage.index()].usage.sub(run.used);
                let s = &mut st.sources[run.source.index()];
                s.usage.sub(run.used);
                if dead {
                    s.dead_lettered += run.used.records;
                } else {
                    s.delivered += run.used.records;
                }
                s.acks.complete(run.start, run.end);
            }
            st.global.sub(total);
            touched
                .iter()
                .map(|&(source, n)| {
                    let s = &st.sources[source.index()];
                    SourceProgress {
                        source,
                        acked_through: s.acks.through,
                        completed_now: n,
                        delivered: s.delivered,
                        dead_lettered: s.dead_lettered,
                    }
                })
                .collect()
        };
        for s in &stages_freed {
            self.signals[s.index()].space.notify_waiters();
        }
        self.freed.notify_waiters();
        Completion { sources }
    }

    /// Returns failed records to their stage's queue with `retry_count + 1`,
    /// not to be handed out before the policy's backoff. This never fails and
    /// never drops: the records are already counted. Records that already had
    /// `max_retries` retries come back as [`DeadLetter`]s, still counted, for
    /// the caller to write to a dead-letter sink and then
    /// [`complete_dead_letters`](Self::complete_dead_letters).
    pub fn retry(
        &self,
        records: Vec<BufferedRecord<T>>,
        error: impl Into<Arc<str>>,
    ) -> Vec<DeadLetter<T>> {
        let error = error.into();
        self.retry_each(records.into_iter().map(|r| (r, error.clone())))
    }

    /// Like [`retry`](Self::retry), with an error per record.
    pub fn retry_each(
        &self,
        failed: impl IntoIterator<Item = (BufferedRecord<T>, Arc<str>)>,
    ) -> Vec<DeadLetter<T>> {
        let mut dead = Vec::new();
        let mut woken: Vec<StageId> = Vec::new();
        let now = Instant::now();
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            for (mut r, error) in failed {
                let count = r.retry_count();
                if count >= self.retry.max_retries {
                    match &mut r.retry {
                        Some(state) => state.last_error = error.clone(),
                        None => {
                            r.retry = Some(Box::new(RetryState {
                                count,
                                last_error: error.clone(),
                                not_before: now,
                            }))
                        }
                    }
                    dead.push(DeadLetter { record: r, error });
                    continue;
                }
                let at = now + self.retry.backoff(count + 1);
                match &mut r.retry {
                    Some(state) => {
                        state.count = count + 1;
                        state.last_error = error;
                        state.not_before = at;
                    }
                    None => {
                        r.retry = Some(Box::new(RetryState {
                            count: count + 1,
                            last_error: error,
                            not_before: at,
                        }))
                    }
                }
                st.sources[r.source.index()].retried += 1;
                let stage = r.stage;
                let st_stage = &mut st.stages[stage.index()];
                st_stage.queued.add(Credit::new(1, u64::from(r.size)));
                st.delay_order += 1;
                st_stage.delayed.push(Reverse(Delayed {
                    at,
                    order: st.delay_order,
                    record: r,
                }));
                if !woken.contains(&stage) {
                    woken.push(stage);
                }
            }
        }
        for s in woken {
            self.signals[s.index()].ready.notify_waiters();
        }
        dead
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
    pub fn capacity_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Stops the manager: `admit` and `reserve` fail, `next_batch` returns
    /// `None`, `forward` returns its unmoved records to their queue, and every
    /// waiter is woken. Records still held stay counted (and unacked).
    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        for s in &self.signals {
            s.ready.notify_waiters();
            s.space.notify_waiters();
        }
        self.freed.notify_waiters();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.state.lock().shutdown
    }

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
        let load = |used: Credit, reserved: Credit| {
            Credit::new(used.records - reserved.records, used.bytes - reserved.bytes)
        };
        let global = util(load(st.global.used, st.global_reserved), self.limits.global);
        let stage_utils: Vec<f64> = st
            .stages
            .iter()
            .map(|s| util(load(s.usage.used, s.reserved), self.limits.per_stage))
            .collect();
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
                    dead_lettered: s.dead_lettered,
                    rejected: s.rejected,
                    retried: s.retried,
                })
                .collect(),
            shut_down: st.shutdown,
        }
    }

    /// Checks invariants 1 (limits) and 2 (conservation) in one consistent
    /// reading and describes every violation. Meant for tests and debugging;
    /// it walks every queue, so do not call it on a hot path.
    pub fn audit(&self) -> Result<(), String> {
        let st = self.state.lock();
        let mut problems = Vec::new();
        let check_limit = |problems: &mut Vec<String>, what: String, used: Credit, limit: Limit| {
            if used.records > limit.records || used.bytes > limit.bytes {
                problems.push(format!("{what}: {used:?} exceeds {limit:?}"));
            }
        };
        check_limit(
            &mut problems,
            "global".into(),
            st.global.used,
            self.limits.global,
        );
        check_limit(
            &mut problems,
            "global peak".into(),
            st.global.peak,
            self.limits.global,
        );
        let mut sum_sources = Credit::ZERO;
        let mut sum_reserved = Credit::ZERO;
        for (i, s) in st.sources.iter().enumerate() {
            check_limit(
                &mut problems,
                format!("source {i}"),
                s.usage.used,
                self.limits.per_source,
            );
            check_limit(
                &mut problems,
                format!("source {i} peak"),
                s.usage.peak,
                self.limits.per_source,
            );
            sum_sources.add(s.usage.used);
            sum_reserved.add(s.reserved);
            let in_engine = s.usage.used.records - s.reserved.records;
            if s.admitted != in_engine + s.delivered + s.dead_lettered {
                problems.push(format!(
                    "source {i}: admitted {} != in engine {in_engine} + delivered {} + dead-lettered {}",
                    s.admitted, s.delivered, s.dead_lettered
                ));
            }
        }
        let mut sum_stages = Credit::ZERO;
        for (i, s) in st.stages.iter().enumerate() {
            check_limit(
                &mut problems,
                format!("stage {i}"),
                s.usage.used,
                self.limits.per_stage,
            );
            check_limit(
                &mut problems,
                format!("stage {i} peak"),
                s.usage.peak,
                self.limits.per_stage,
            );
            sum_stages.add(s.usage.used);
            let q_records = (s.ready.len() + s.delayed.len()) as u64;
            // Summed record by record, not from the queue's chunk totals,
            // which are checked against the same sum here.
            let ready_bytes: u64 = s.ready.iter().map(|r| u64::from(r.size)).sum();
            if s.ready.bytes() != ready_bytes {
                problems.push(format!(
                    "stage {i}: queue chunk totals {} bytes != records {ready_bytes} bytes",
                    s.ready.bytes()
                ));
            }
            let q_bytes: u64 = ready_bytes
                + s.delayed
                    .iter()
                    .map(|d| u64::from(d.0.record.size))
                    .sum::<u64>();
            if s.queued != Credit::new(q_records, q_bytes) {
                problems.push(format!("stage {i}: queued count {:?} != queue contents {q_records} records, {q_bytes} bytes", s.queued));
            }
            let held = s.reserved.records + s.queued.records;
            if held > s.usage.used.records {
                problems.push(format!(
                    "stage {i}: reserved + queued {held} > used {}",
                    s.usage.used.records
                ));
            }
        }
        if sum_sources != st.global.used {
            problems.push(format!(
                "sum of sources {sum_sources:?} != global {:?}",
                st.global.used
            ));
        }
        if sum_stages != st.global.used {
            problems.push(format!(
                "sum of stages {sum_stages:?} != global {:?}",
                st.global.used
            ));
        }
        if sum_reserved != st.global_reserved {
            problems.push(format!(
                "sum of reservations {sum_reserved:?} != global reserved {:?}",
                st.global_reserved
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn util(used: Credit, limit: Limit) -> f64 {
    let r = used.records as f64 / limit.records.max(1) as f64;
    let b = used.bytes as f64 / limit.bytes.max(1) as f64;
    r.max(b)
}

/// Records of a `forward` not yet moved; put back on drop so that a
/// cancelled or shut-down forward loses nothing.
struct PendingForward<'a, T> {
    manager: &'a BufferManager<T>,
    records: Vec<BufferedRecord<T>>,
}

impl<T> Drop for PendingForward<'_, T> {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let mut woken: Vec<StageId> = Vec::new();
        {
            let mut st = self.manager.state.lock();
            for r in self.records.drain(..) {
                let stage = &mut st.stages[r.stage.index()];
                stage.queued.add(Credit::new(1, u64::from(r.size)));
                if !woken.contains(&r.stage) {
                    woken.push(r.stage);
                }
                stage.ready.push_back(r);
            }
        }
        for s in woken {
            self.manager.signals[s.index()].ready.notify_waiters();
        }
    }
}
