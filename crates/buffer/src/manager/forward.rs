//! Records out of a stage: [`next_batch`](BufferManager::next_batch),
//! [`try_batch`](BufferManager::try_batch), and
//! [`forward`](BufferManager::forward) to the next stage (with the guard
//! that puts unmoved records back, so a cancelled forward loses nothing).

use std::task::{Context, Poll};

use super::take::{End, Take};
use super::{BatchSize, BufferManager, Credit};
use crate::channel::waiters::{WaiterId, Wakeups};
use crate::error::{BufferError, Level};
use crate::layout::Layout;
use crate::queue::Taken;
use crate::record::{BufferedRecord, StageId};

impl<T> BufferManager<T> {
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
    /// Returns `None` once the manager is shut down (what is still queued
    /// stays counted: [`try_batch`](Self::try_batch) hands it back; a
    /// [`Consumer`](crate::Consumer) drains it). Retried records are
    /// handed out only after their backoff; while only such records wait,
    /// this sleeps until the earliest is due. Cancel-safe: if the future is
    /// dropped, nothing was taken.
    pub async fn next_batch(
        &self,
        stage: StageId,
        max: impl Into<BatchSize>,
    ) -> Option<Vec<BufferedRecord<T>>> {
        Take::new(self, stage, max.into(), End::AtShutdown, WaiterId::next())
            .await
            .map(Taken::into_records)
    }

    /// Takes up to `max` ready records of `stage` without waiting, like
    /// [`next_batch`](Self::next_batch) (empty when none is ready).
    ///
    /// After [`shutdown`](Self::shutdown) it still hands out what is queued
    /// (retried records too, without their backoff), so that nothing stays
    /// counted and unreachable: call it until it comes back empty, and
    /// complete (or report) what it returns.
    pub fn try_batch(&self, stage: StageId, max: impl Into<BatchSize>) -> Vec<BufferedRecord<T>> {
        let mut st = self.state.lock();
        if stage.index() >= st.stages.len() {
            return Vec::new();
        }
        let taken = st.take(stage.index(), max.into());
        drop(st);
        taken.map(Taken::into_records).unwrap_or_default()
    }

    /// Moves records to `next` (a stage of their pipeline), waiting while it
    /// is full. Global and source counts do not change; each record stops
    /// counting against its current stage as it starts counting against `next`.
    ///
    /// Records move in order, as many as fit at a time. If the manager shuts
    /// down, or the future is dropped, the records not yet moved go back to
    /// their current stage's queue, still counted: nothing is lost.
    ///
    /// `records`: records taken by [`next_batch`](Self::next_batch), or a
    /// [`Batch`](crate::Batch) a [`Consumer`](crate::Consumer) received.
    pub async fn forward(
        &self,
        records: impl Into<Vec<BufferedRecord<T>>>,
        next: StageId,
    ) -> Result<(), BufferError> {
        let records = records.into();
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
            waiting: None,
        };
        // Waits on `next`'s wait list like a producer refused by that
        // stage's limit: registered in the critical section that found no
        // room, taken by the release that makes the room it needs
        // (invariant 4), so only a completion or forward out of `next`
        // wakes it, and no lost wake-up.
        std::future::poll_fn(|cx| pending.attempt(next, cx)).await
    }
}

/// Records of a `forward` not yet moved; put back on drop so that a
/// cancelled or shut-down forward loses nothing.
struct PendingForward<'a, T> {
    manager: &'a BufferManager<T>,
    records: Vec<BufferedRecord<T>>,
    /// The stage whose wait list holds this forward, and its id there.
    waiting: Option<(StageId, WaiterId)>,
}

impl<T> PendingForward<'_, T> {
    /// Moves the prefix of the records that fits into `next` now; while
    /// some remain, registers the task to be woken when `next` has room for
    /// them (for the first of them at least, for at most half the stage's
    /// limit: see `wake_need`).
    fn attempt(&mut self, next: StageId, cx: &mut Context<'_>) -> Poll<Result<(), BufferError>> {
        let manager = self.manager;
        let mut wakeups = Wakeups::default();
        let mut from: Option<StageId> = None;
        let mut from_many = Vec::new();
        {
            let mut st = manager.state.lock();
            let st = &mut *st;
            if let Some((stage, id)) = self.waiting.take() {
                st.stages[stage.index()].space_waiters.remove(id);
            }
            if st.shutdown {
                return Poll::Ready(Err(BufferError::Closed));
            }
            let mut free = st.stages[next.index()].usage.free(manager.limits.per_stage);
            let mut moved = Credit::ZERO;
            let mut queued = Credit::ZERO;
            // First account for (and retag) the prefix that fits, then
            // move it in one go: records are moved once, not popped and
            // pushed one by one.
            let mut n = 0;
            let mut refused = Credit::ZERO;
            for r in self.records.iter_mut() {
                let size = u64::from(r.size);
                if r.stage != next {
                    if free.records == 0 || free.bytes < size {
                        refused = Credit::new(1, size);
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
            if n == self.records.len() {
                dst.ready.push_chunk(
                    Layout::records(std::mem::take(&mut self.records)),
                    queued.bytes,
                );
            } else {
                let rest = self.records.split_off(n);
                dst.ready.push_chunk(
                    Layout::records(std::mem::replace(&mut self.records, rest)),
                    queued.bytes,
                );
            }
            if n > 0 {
                dst.ready_waiters.wake_all(&mut wakeups);
            }
            for &s in from.iter().chain(&from_many) {
                st.space_freed(&manager.limits, s, &mut wakeups);
            }
            if !self.records.is_empty() {
                let tail = Credit::new(
                    self.records.len() as u64,
                    self.records.iter().map(|r| u64::from(r.size)).sum(),
                );
                let need = manager.wake_need(Level::Stage(next), refused, tail, Credit::ZERO);
                let id = WaiterId::next();
                st.stages[next.index()]
                    .space_waiters
                    .register(id, cx.waker(), need);
                self.waiting = Some((next, id));
            }
        }
        wakeups.wake();
        if self.records.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl<T> Drop for PendingForward<'_, T> {
    fn drop(&mut self) {
        if self.records.is_empty() && self.waiting.is_none() {
            return;
        }
        let mut wakeups = Wakeups::default();
        let mut st = self.manager.state.lock();
        if let Some((stage, id)) = self.waiting.take() {
            st.stages[stage.index()].space_waiters.remove(id);
        }
        for r in self.records.drain(..) {
            let stage = &mut st.stages[r.stage.index()];
            stage.queued.add(Credit::new(1, u64::from(r.size)));
            stage.ready_waiters.wake_all(&mut wakeups);
            stage.ready.push_back(r);
        }
        drop(st);
        wakeups.wake();
    }
}
