//! What the manager's lock protects: the counts of every level and the
//! queues. The invariants over these are stated at the lock
//! (`BufferManager::state`, in `mod.rs`) and checked by `audit.rs`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::{BatchSize, Credit, SeqRange};
use crate::channel::waiters::{WaitList, Wakeups};
use crate::error::Level;
use crate::limits::{Limit, Limits};
use crate::queue::{RecordQueue, Taken};
use crate::record::{BufferedRecord, PipelineId, SourceId, StageId};

/// A level's count and its high-water mark.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Usage {
    pub(super) used: Credit,
    pub(super) peak: Credit,
}

impl Usage {
    #[inline]
    pub(super) fn add(&mut self, a: Credit) {
        self.used.add(a);
        self.peak.records = self.peak.records.max(self.used.records);
        self.peak.bytes = self.peak.bytes.max(self.used.bytes);
    }
    #[inline]
    pub(super) fn sub(&mut self, a: Credit) {
        self.used.sub(a);
    }
    #[inline]
    pub(super) fn free(&self, limit: Limit) -> Credit {
        Credit::new(
            limit.records.saturating_sub(self.used.records),
            limit.bytes.saturating_sub(self.used.bytes),
        )
    }
}

/// A retried record waiting for its backoff, ordered by due time, then by
/// the order it was retried in.
pub(super) struct Delayed<T> {
    pub(super) at: Instant,
    pub(super) order: u64,
    pub(super) record: BufferedRecord<T>,
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

/// One stage's level and queues.
pub(super) struct StageState<T> {
    pub(super) usage: Usage,
    /// Part of `usage` that is reservations of sources entering here.
    pub(super) reserved: Credit,
    /// Records waiting (in `ready` or `delayed`).
    pub(super) queued: Credit,
    pub(super) ready: RecordQueue<T>,
    /// Retried records waiting for their backoff, earliest first.
    pub(super) delayed: BinaryHeap<Reverse<Delayed<T>>>,
    /// Producers this stage's limit refused. Woken (and emptied) by every
    /// fall of `usage`: a completion, a released reservation, a forward out.
    pub(super) space_waiters: WaitList,
    /// Consumers that found nothing ready. Woken (and emptied) by every push
    /// into `ready` or `delayed`, a close and a shutdown; so a consumer waits
    /// here only while `ready` is empty.
    pub(super) ready_waiters: WaitList,
}

impl<T> Default for StageState<T> {
    fn default() -> Self {
        Self {
            usage: Usage::default(),
            reserved: Credit::ZERO,
            queued: Credit::ZERO,
            ready: RecordQueue::default(),
            delayed: BinaryHeap::new(),
            space_waiters: WaitList::default(),
            ready_waiters: WaitList::default(),
        }
    }
}

/// Cumulative acknowledgement: the highest `through` such that every
/// sequence number up to it is completed, plus completed ranges above it.
///
/// Kept maximal: `pending` holds disjoint ranges, none adjacent to another
/// nor to `through + 1` (such a range is merged at once), so its length is
/// the number of completed runs above the frontier and a reading of the
/// lowest ranges is the sources' selective ack as it is.
#[derive(Debug, Default)]
pub(super) struct AckFrontier {
    pub(super) through: u64,
    /// Completed, disjoint, non-adjacent ranges `start..=end` above `through + 1`.
    pub(super) pending: BTreeMap<u64, u64>,
}

impl AckFrontier {
    /// Records `start..=end` (none of it completed before) as completed.
    pub(super) fn complete(&mut self, start: u64, end: u64) {
        if start <= self.through.saturating_add(1) {
            self.through = self.through.max(end);
            while let Some(e) = self.pending.first_entry() {
                if *e.key() > self.through.saturating_add(1) {
                    break;
                }
                self.through = self.through.max(*e.get());
                e.remove();
            }
            return;
        }
        // Merge with the range just below and the one just above, so that
        // completing a batch record by record does not leave one entry per
        // run behind.
        let mut start = start;
        let mut end = end;
        if let Some((&s, &e)) = self.pending.range(..start).next_back()
            && e.checked_add(1) == Some(start)
        {
            self.pending.remove(&s);
            start = s;
        }
        if let Some(next) = end.checked_add(1)
            && let Some(e) = self.pending.remove(&next)
        {
            end = e;
        }
        self.pending.insert(start, end);
    }

    /// Appends to `out` the completed ranges above `max(through, after)`,
    /// lowest first, clipped to start after it, at most `max` of them.
    pub(super) fn ranges_above(&self, after: u64, max: usize, out: &mut Vec<SeqRange>) {
        let floor = self.through.max(after);
        let Some(from) = floor.checked_add(1) else {
            return;
        };
        // A range that starts at or below the floor may reach above it.
        let straddling = self
            .pending
            .range(..from)
            .next_back()
            .filter(|&(_, &e)| e >= from)
            .map(|(_, &e)| (from, e));
        let above = self.pending.range(from..).map(|(&s, &e)| (s, e));
        out.extend(
            straddling
                .into_iter()
                .chain(above)
                .take(max)
                .map(|(first, last)| SeqRange { first, last }),
        );
    }
}

/// One registered source's account: its levels, reservation, sequence
/// position, acks and counters. (Not to be confused with the public
/// flow-control state, [`SourceState`](crate::SourceState).)
pub(super) struct SourceAccount {
    pub(super) name: Arc<str>,
    pub(super) pipeline: PipelineId,
    pub(super) entry: StageId,
    pub(super) usage: Usage,
    pub(super) reserved: Credit,
    /// Whether any record was ever admitted (fixes the sequence base).
    pub(super) started: bool,
    pub(super) admitted_through: u64,
    pub(super) acks: AckFrontier,
    pub(super) admitted: u64,
    pub(super) delivered: u64,
    /// Records completed as filtered out by a stage.
    pub(super) filtered: u64,
    pub(super) dead_lettered: u64,
    /// Records `admit` handed back.
    pub(super) refused: u64,
    pub(super) retried: u64,
    /// Producers this source's limit refused. Woken (and emptied) by every
    /// fall of `usage`: a completion of its records, a released reservation.
    pub(super) waiters: WaitList,
}

/// A pipeline's producer handles, for channel-like closing.
#[derive(Debug, Default)]
pub(super) struct PipelineState {
    /// Live [`Producers`](crate::Producers) and [`Producer`](crate::Producer)
    /// handles of the pipeline.
    pub(super) senders: usize,
    /// Set when `senders` fell to zero (never for a pipeline fed only by
    /// `admit`): nothing more is admitted, and consumers end once drained.
    pub(super) closed: bool,
}

impl SourceAccount {
    /// Records admitted and not completed yet (invariant 2: `admitted ==
    /// in_engine + delivered + filtered + dead_lettered`).
    pub(super) fn outstanding(&self) -> u64 {
        self.admitted - self.delivered - self.filtered - self.dead_lettered
    }
}

/// Everything behind the manager's lock.
pub(super) struct State<T> {
    pub(super) global: Usage,
    pub(super) global_reserved: Credit,
    pub(super) stages: Vec<StageState<T>>,
    pub(super) sources: Vec<SourceAccount>,
    pub(super) names: HashMap<Arc<str>, SourceId>,
    pub(super) shutdown: bool,
    pub(super) delay_order: u64,
    /// Producers the global limit refused. Woken (and emptied) by every fall
    /// of `global.used`: a completion, a released reservation.
    pub(super) global_waiters: WaitList,
    pub(super) pipelines: Vec<PipelineState>,
}

impl<T> State<T> {
    /// Takes up to `max` ready records of `stage`, first moving retried
    /// records whose backoff has passed (all of them once the manager is
    /// shut down: nothing is held back for a retry that will not come).
    /// `Err` carries the earliest time a delayed record becomes due, if any.
    /// Write the batch's bookkeeping ([`Taken::into_records`]) after the lock.
    pub(super) fn take(
        &mut self,
        stage: usize,
        max: BatchSize,
    ) -> Result<Taken<T>, Option<Instant>> {
        let shutdown = self.shutdown;
        let st = &mut self.stages[stage];
        if !st.delayed.is_empty() {
            let now = Instant::now();
            while st.delayed.peek().is_some_and(|d| shutdown || d.0.at <= now) {
                if let Some(Reverse(d)) = st.delayed.pop() {
                    st.ready.push_back(d.record);
                }
            }
        }
        if st.ready.is_empty() || max.records == 0 {
            return Err(st.delayed.peek().map(|d| d.0.at));
        }
        let batch = st.ready.take_batch(max.records, max.bytes);
        st.queued.sub(Credit::new(batch.len() as u64, batch.bytes));
        Ok(batch)
    }
}

impl<T> State<T> {
    /// The wait list of a level.
    pub(super) fn waiters(&mut self, level: Level) -> &mut WaitList {
        match level {
            Level::Global => &mut self.global_waiters,
            Level::Stage(s) => &mut self.stages[s.index()].space_waiters,
            Level::Source(s) => &mut self.sources[s.index()].waiters,
        }
    }

    /// Collects the producers waiting on levels that `source`'s records in
    /// `stage` just freed room at (a completion, a released reservation),
    /// those for whom the room now suffices.
    pub(super) fn freed(
        &mut self,
        limits: &Limits,
        source: SourceId,
        stage: StageId,
        out: &mut Wakeups,
    ) {
        let s = &mut self.sources[source.index()];
        s.waiters.wake_fitting(s.usage.free(limits.per_source), out);
        self.space_freed(limits, stage, out);
        let free = self.global.free(limits.global);
        self.global_waiters.wake_fitting(free, out);
    }

    /// Collects the producers waiting on `stage`'s limit for whom the room
    /// it now has suffices.
    pub(super) fn space_freed(&mut self, limits: &Limits, stage: StageId, out: &mut Wakeups) {
        let s = &mut self.stages[stage.index()];
        s.space_waiters
            .wake_fitting(s.usage.free(limits.per_stage), out);
    }

    /// Collects every waiter of every level (shutdown).
    pub(super) fn wake_everyone(&mut self, out: &mut Wakeups) {
        self.global_waiters.wake_all(out);
        for s in &mut self.stages {
            s.space_waiters.wake_all(out);
            s.ready_waiters.wake_all(out);
        }
        for s in &mut self.sources {
            s.waiters.wake_all(out);
        }
    }
}
