//! Waiting for records: the [`Take`] future behind
//! [`next_batch`](BufferManager::next_batch) and
//! [`Consumer::recv`](crate::Consumer::recv), and when a stage has ended.
//!
//! A consumer that finds nothing ready registers its waker in the stage's
//! ready list in the critical section that found nothing (see
//! `channel/waiters.rs`); every push into the stage takes the list. Retried
//! records waiting for their backoff add a timer (a tokio `Sleep`, made
//! only then).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::state::State;
use super::{BatchSize, BufferManager};
use crate::channel::waiters::WaiterId;
use crate::queue::Taken;
use crate::record::StageId;

/// When a stage's consumer sees the end (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// At shutdown, at once (`next_batch`: the engine's workers stop and
    /// what is queued stays counted, for `try_batch` to hand back).
    AtShutdown,
    /// Once nothing more can come and nothing is queued: after a shutdown,
    /// or once the pipeline is closed (every producer handle gone) and no
    /// record of it is held before this stage (a consumer handle).
    WhenDrained,
}

/// Takes up to `max` records of `stage`, waiting until some are ready.
/// Cancel-safe: dropped, it has taken nothing and leaves no registration.
pub(crate) struct Take<'a, T> {
    pub(crate) manager: &'a BufferManager<T>,
    pub(crate) stage: StageId,
    pub(crate) max: BatchSize,
    pub(crate) end: End,
    pub(crate) id: WaiterId,
    /// Whether `id` may be registered in the stage's ready list.
    registered: bool,
    /// The backoff timer of the earliest delayed record, while only such
    /// records wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a, T> Take<'a, T> {
    pub(crate) fn new(
        manager: &'a BufferManager<T>,
        stage: StageId,
        max: BatchSize,
        end: End,
        id: WaiterId,
    ) -> Self {
        Self {
            manager,
            stage,
            // At least one record: a take of none would find nothing ready
            // with records queued, and wait for a push that may not come.
            max: BatchSize {
                records: max.records.max(1),
                ..max
            },
            end,
            id,
            registered: false,
            sleep: None,
        }
    }
}

impl<T> BufferManager<T> {
    /// Whether a consumer of `stage` that found nothing queued has reached
    /// the end, as `end` defines it.
    fn ended(&self, st: &State<T>, stage: StageId, end: End) -> bool {
        if st.shutdown {
            return true;
        }
        if end == End::AtShutdown {
            return false;
        }
        let Some(info) = self.stages.get(stage.index()) else {
            return true;
        };
        if !st.pipelines[info.pipeline.index()].closed {
            return false;
        }
        // Closed: ended once nothing is queued here and no record of the
        // pipeline is held (queued or in flight) in an earlier stage, from
        // which it could still be forwarded here.
        let here = &st.stages[stage.index()];
        here.queued.records == 0
            && self.pipelines[info.pipeline.index()].stages[..info.index]
                .iter()
                .all(|s| {
                    let s = &st.stages[s.index()];
                    s.usage.used.records == s.reserved.records
                })
    }
}

impl<T> Future for Take<'_, T> {
    /// The batch as taken: its bookkeeping is written by the caller, after
    /// the lock ([`Taken::into_records`], [`Taken::into_layout`]).
    type Output = Option<Taken<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let manager = this.manager;
        let stage = this.stage.index();
        // A take spends the task's cooperative budget, as a tokio channel's
        // receive does: a consumer that always finds records ready yields
        // now and then instead of keeping its worker (and the producer it
        // woke, which waits in that worker's unstealable LIFO slot) to
        // itself. Why: without it, worker threads parked and unparked ~10×
        // as often as with a tokio `mpsc` (BENCHMARKS.md).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let due = {
                let mut st = manager.state.lock();
                if stage >= st.stages.len() || (this.end == End::AtShutdown && st.shutdown) {
                    return Poll::Ready(None);
                }
                match st.take(stage, this.max) {
                    Ok(batch) => {
                        if this.registered {
                            st.stages[stage].ready_waiters.remove(this.id);
                            this.registered = false;
                        }
                        drop(st);
                        coop.made_progress();
                        return Poll::Ready(Some(batch));
                    }
                    Err(due) => {
                        if due.is_none() && manager.ended(&st, this.stage, this.end) {
                            return Poll::Ready(None);
                        }
                        st.stages[stage].ready_waiters.register(
                            this.id,
                            cx.waker(),
                            Default::default(),
                        );
                        this.registered = true;
                        due
                    }
                }
            };
            let Some(at) = due else {
                this.sleep = None;
                return Poll::Pending;
            };
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
            if sleep.deadline() != at.into() {
                sleep.as_mut().reset(at.into());
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => this.sleep = None, // due now: take again
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Drop for Take<'_, T> {
    fn drop(&mut self) {
        if self.registered {
            let mut st = self.manager.state.lock();
            if let Some(s) = st.stages.get_mut(self.stage.index()) {
                s.ready_waiters.remove(self.id);
            }
        }
    }
}
