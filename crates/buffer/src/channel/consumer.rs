//! The consumer side: [`Consumer`], one stage's records out, with
//! channel-like ending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::batch::Batch;
use super::error::TryRecvError;
use super::waiters::WaiterId;
use crate::error::BufferError;
use crate::manager::{BatchSize, BufferManager, Completion, End, Take};
use crate::record::{DeadLetter, StageId};

/// The batch size a consumer takes by default: 256 records, the batch size
/// the benchmarks (BENCHMARKS.md) amortise one lock per batch over.
pub const DEFAULT_BATCH: usize = 256;

/// Takes one stage's records out of the buffer, and hands them back when
/// they are done ([`complete`](Self::complete)) or failed
/// ([`retry`](Self::retry)).
///
/// A record counts against every limit until it is completed: receiving it
/// does not free room, completing it does (and wakes the producers waiting
/// for that room).
///
/// [`recv`](Self::recv) ends (`None`) like a channel's: once the pipeline is
/// closed (every [`Producers`](crate::Producers) and [`Producer`](crate::Producer)
/// of it dropped) and nothing of it is queued here or held in an earlier
/// stage; or, after [`shutdown`](BufferManager::shutdown), once what is queued
/// here is drained. Clones take from the same stage.
pub struct Consumer<T> {
    manager: Arc<BufferManager<T>>,
    stage: StageId,
    max: BatchSize,
}

impl<T> BufferManager<T> {
    /// A consumer of `stage`, taking batches of [`DEFAULT_BATCH`] records.
    pub fn consumer(self: &Arc<Self>, stage: StageId) -> Result<Consumer<T>, BufferError> {
        self.stage(stage).ok_or(BufferError::UnknownStage(stage))?;
        Ok(Consumer {
            manager: self.clone(),
            stage,
            max: DEFAULT_BATCH.into(),
        })
    }
}

impl<T> Consumer<T> {
    /// This consumer, taking at most `max` records (and bytes) at a time.
    pub fn with_batch_size(mut self, max: impl Into<BatchSize>) -> Self {
        self.max = max.into();
        self
    }

    /// Waits for records and takes a batch of them (at least one, at most
    /// the batch size); `None` at the end (see [`Consumer`]). Cancel-safe:
    /// dropped, it has taken nothing.
    pub fn recv(&self) -> Recv<'_, T> {
        self.recv_max(self.max)
    }

    /// [`recv`](Self::recv) with a batch size for this call.
    pub fn recv_max(&self, max: impl Into<BatchSize>) -> Recv<'_, T> {
        Recv(Take::new(
            &self.manager,
            self.stage,
            max.into(),
            End::WhenDrained,
            WaiterId::next(),
        ))
    }

    /// Takes what is ready now, without waiting.
    pub fn try_recv(&self) -> Result<Batch<T>, TryRecvError> {
        let mut take = std::pin::pin!(self.recv());
        let waker = std::task::Waker::noop();
        match take.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(batch)) => Ok(batch),
            Poll::Ready(None) => Err(TryRecvError::Ended),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// Completes records that are done: frees their room at every level
    /// and advances their sources' acks (see [`BufferManager::complete`]).
    /// A batch as it was received, or records taken apart from one
    /// ([`Batch::into_records`]).
    pub fn complete(&self, batch: impl Into<Batch<T>>) -> Completion {
        self.manager.complete_batch(batch.into())
    }

    /// Returns failed records for another try after the retry policy's
    /// backoff; those out of retries come back as dead letters, still
    /// counted (see [`BufferManager::retry`]).
    pub fn retry(
        &self,
        records: impl Into<Batch<T>>,
        error: impl Into<Arc<str>>,
    ) -> Vec<DeadLetter<T>> {
        self.manager.retry(records.into().into_records(), error)
    }

    /// Completes dead letters once they are written somewhere
    /// (see [`BufferManager::complete_dead_letters`]).
    pub fn complete_dead_letters(&self, dead: Vec<DeadLetter<T>>) -> Completion {
        self.manager.complete_dead_letters(dead)
    }

    /// The stage it takes from.
    pub fn stage(&self) -> StageId {
        self.stage
    }

    /// The buffer, for everything the handle does not cover.
    pub fn manager(&self) -> &Arc<BufferManager<T>> {
        &self.manager
    }
}

impl<T> Clone for Consumer<T> {
    fn clone(&self) -> Self {
        Self {
            manager: self.manager.clone(),
            stage: self.stage,
            max: self.max,
        }
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stage", &self.stage)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// The future of [`Consumer::recv`]: a batch, or `None` at the end.
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a, T>(Take<'a, T>);

impl<T> Future for Recv<'_, T> {
    type Output = Option<Batch<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Take` is `Unpin` (its timer is boxed). The batch's bookkeeping is
        // written (if it must be) here, after the lock.
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(|taken| taken.map(Batch::from_taken))
    }
}
