//! Records that reached their end: [`complete`](BufferManager::complete)
//! and its variants release their capacity at every level and advance the
//! cumulative acks. The only way a record leaves the counts (invariant 3).

use super::{BufferManager, Completion, Credit, SourceProgress};
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
        let mut wakeups = Wakeups::default();
        // Allocated before the lock: nothing allocates inside it.
        let mut sources = Vec::with_capacity(touched.len());
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            let mut total = Credit::ZERO;
            for run in &runs {
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
            for run in &runs {
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
            sources.extend(touched.iter().map(|&(source, n)| {
                let s = &st.sources[source.index()];
                SourceProgress {
                    source,
                    acked_through: s.acks.through,
                    completed_now: n,
                    delivered: s.delivered,
                    filtered: s.filtered,
                    dead_lettered: s.dead_lettered,
                    outstanding: s.outstanding(),
                    ranges: s.acks.pending.len(),
                }
            }));
        }
        wakeups.wake();
        for s in &stages_freed {
            self.signals[s.index()].space.notify_waiters();
        }
        self.freed.notify_waiters();
        Completion { sources }
    }
}
