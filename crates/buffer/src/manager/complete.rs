//! Records that reached their end: [`complete`](BufferManager::complete)
//! and its variants release their capacity at every level and advance the
//! cumulative acks. The only way a record leaves the counts (invariant 3).

use super::{BufferManager, Completion, Credit, SourceProgress};
use crate::channel::Batch;
use crate::channel::waiters::Wakeups;
use crate::record::{BufferedRecord, DeadLetter, SourceId, StageId};

/// How a completed record ended: each is counted apart, so "delivered"
/// means committed by the sink and nothing else.
#[derive(Debug, Clone, Copy)]
enum End {
    Delivered,
    Filtered,
    DeadLettered,
}

impl<T> BufferManager<T> {
    /// Completes records that reached their end (committed by a sink):
    /// releases their capacity at every level, counts them as delivered,
    /// and reports per source the new cumulative ack position.
    pub fn complete(&self, records: Vec<BufferedRecord<T>>) -> Completion {
        self.finish(records.iter(), End::Delivered)
    }

    /// Completes records a stage dropped on purpose (a filter): like
    /// [`complete`](Self::complete), but counted as filtered, not delivered.
    pub fn complete_filtered(&self, records: Vec<BufferedRecord<T>>) -> Completion {
        self.finish(records.iter(), End::Filtered)
    }

    /// [`complete`](Self::complete) for a batch kept as several parts (as
    /// successive [`next_batch`](Self::next_batch) calls handed them out),
    /// in one step: one lock and one [`Completion`] for all of them.
    pub fn complete_parts(&self, parts: Vec<Vec<BufferedRecord<T>>>) -> Completion {
        self.finish(parts.iter().flatten(), End::Delivered)
    }

    /// Completes dead letters once they are written to the dead-letter sink:
    /// like [`complete`](Self::complete), but counted as dead-lettered.
    pub fn complete_dead_letters(&self, dead: Vec<DeadLetter<T>>) -> Completion {
        self.finish(dead.iter().map(|d| &d.record), End::DeadLettered)
    }

    fn finish<'a>(
        &self,
        records: impl Iterator<Item = &'a BufferedRecord<T>>,
        end: End,
    ) -> Completion
    where
        T: 'a,
    {
        // Outside the lock: coalesce the records into runs of one source
        // and stage with contiguous sequence numbers (a batch is usually a
        // few such runs), so the critical section works per run, not per
        // record.
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
        self.finish_runs(&runs, end)
    }

    /// Completes a batch as [`Consumer::complete`](crate::Consumer::complete)
    /// does: a batch taken as its producer sent it is one run, known from
    /// its bookkeeping without reading a record.
    pub(crate) fn complete_batch(&self, batch: Batch<T>) -> Completion {
        match batch.into_run() {
            Ok(run) => self.finish_runs(std::slice::from_ref(&run), End::Delivered),
            Err(records) => self.complete(records),
        }
    }

    /// Releases `runs` (the critical section of every completion).
    fn finish_runs(&self, runs: &[Run], end: End) -> Completion {
        // A run is the first of its source in `runs` when no
        // earlier one has it; a batch holds a few sources, so this is
        // cheaper than collecting them (and allocates nothing).
        let first_of_source = |i: usize| runs[..i].iter().all(|r| r.source != runs[i].source);
        let distinct_sources = (0..runs.len()).filter(|&i| first_of_source(i)).count();
        let mut wakeups = Wakeups::default();
        // Allocated before the lock: nothing allocates inside it.
        let mut sources = Vec::with_capacity(distinct_sources);
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            let mut total = Credit::ZERO;
            for run in runs {
                total.add(run.used);
                st.stages[run.stage.index()].usage.sub(run.used);
                let s = &mut st.sources[run.source.index()];
                s.usage.sub(run.used);
                match end {
                    End::Delivered => s.delivered += run.used.records,
                    End::Filtered => s.filtered += run.used.records,
                    End::DeadLettered => s.dead_lettered += run.used.records,
                }
                s.acks.complete(run.start, run.end);
            }
            st.global.sub(total);
            // Once every level is down: wake who now has the room.
            for run in runs {
                st.freed(&self.limits, run.source, run.stage, &mut wakeups);
                let pipeline = self.stages[run.stage.index()].pipeline;
                if st.pipelines[pipeline.index()].closed {
                    // The end of a closed pipeline's consumers depends on
                    // what earlier stages hold: let them look again.
                    for s in &self.pipelines[pipeline.index()].stages {
                        st.stages[s.index()].ready_waiters.wake_all(&mut wakeups);
                    }
                }
            }
            for (i, run) in runs.iter().enumerate() {
                if !first_of_source(i) {
                    continue;
                }
                let completed_now = runs[i..]
                    .iter()
                    .filter(|r| r.source == run.source)
                    .map(|r| r.used.records)
                    .sum();
                let s = &st.sources[run.source.index()];
                sources.push(SourceProgress {
                    source: run.source,
                    acked_through: s.acks.through,
                    completed_now,
                    delivered: s.delivered,
                    filtered: s.filtered,
                    dead_lettered: s.dead_lettered,
                    outstanding: s.outstanding(),
                    ranges: s.acks.pending.len(),
                });
            }
        }
        wakeups.wake();
        self.freed.notify_waiters();
        Completion { sources }
    }
}

/// Completed records of one source and stage with contiguous sequence
/// numbers `start..=end`, and what they held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) source: SourceId,
    pub(crate) stage: StageId,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) used: Credit,
}
