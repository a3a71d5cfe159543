//! The producer side: [`Producers`] (a pipeline's handle factory) and
//! [`Producer`] (one source), with the [`Send`] future that waits for room.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::error::{SendError, SendFailure, TrySendError};
use super::waiters::WaiterId;
use crate::error::{BufferError, Level};
use crate::manager::{Admission, BufferManager, Numbering, Route, Wait};
use crate::pending::Pending;
use crate::record::{PipelineId, SourceId};

/// Makes [`Producer`]s for one pipeline: one per source, by name.
///
/// It counts as a producer for closing: the pipeline closes (its consumers
/// drain what is queued and then see the end) once every `Producers` and
/// every [`Producer`] of it is dropped or [closed](Producer::close), like
/// the senders of a channel. Cloning is cheap.
pub struct Producers<T> {
    manager: Arc<BufferManager<T>>,
    pipeline: PipelineId,
}

impl<T> BufferManager<T> {
    /// A producer factory for `pipeline`, counted for closing (see
    /// [`Producers`]). Fails for an unknown or already closed pipeline.
    pub fn producers(self: &Arc<Self>, pipeline: PipelineId) -> Result<Producers<T>, BufferError> {
        self.open_sender(pipeline)?;
        Ok(Producers {
            manager: self.clone(),
            pipeline,
        })
    }
}

impl<T> Producers<T> {
    /// A producer for the source `name` (registered on first use; a name
    /// used before carries on after the last sequence number it was
    /// admitted with). Fails if `name` was registered for another pipeline
    /// or the pipeline is closed.
    pub fn producer(&self, name: &str) -> Result<Producer<T>, BufferError> {
        let source = self.manager.register_source(name, self.pipeline)?;
        let route = self.manager.route(source)?;
        let admitted = self.manager.admitted_through(source)?;
        self.manager.open_sender(self.pipeline)?;
        Ok(Producer {
            manager: self.manager.clone(),
            route,
            next_seq: admitted.saturating_add(1),
            id: WaiterId::next(),
        })
    }

    /// The pipeline its producers feed.
    pub fn pipeline(&self) -> PipelineId {
        self.pipeline
    }

    /// The buffer, for everything the handles do not cover.
    pub fn manager(&self) -> &Arc<BufferManager<T>> {
        &self.manager
    }
}

impl<T> Clone for Producers<T> {
    fn clone(&self) -> Self {
        self.manager.clone_sender(self.pipeline);
        Self {
            manager: self.manager.clone(),
            pipeline: self.pipeline,
        }
    }
}

impl<T> Drop for Producers<T> {
    fn drop(&mut self) {
        self.manager.close_sender(self.pipeline);
    }
}

impl<T> std::fmt::Debug for Producers<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// Sends records of one source into the buffer, waiting for room.
///
/// It numbers the records itself (1, 2, … for a new source), so a record
/// is never taken for a resend and dropped; a producer that resends after
/// a reconnect numbers them explicitly with [`send_at`](Self::send_at).
/// Every error hands the records back.
pub struct Producer<T> {
    manager: Arc<BufferManager<T>>,
    route: Route,
    /// The sequence number its next record gets, as far as it knows (see
    /// `Numbering::Next`).
    next_seq: u64,
    id: WaiterId,
}

impl<T> Producer<T> {
    /// Sends `records`, waiting while a limit is full; resolves to the
    /// sequence number of the last record once all are admitted.
    ///
    /// What fits is admitted at once; the tail waits on the limit that
    /// refused it (this source's, its stage's or the global one), woken only
    /// when room frees up there, and is admitted in order as room allows.
    /// It fails, handing back every record not admitted, when the buffer
    /// shuts down or a record is larger than a byte limit. Dropping the
    /// future drops the records not yet admitted (those admitted stay), as
    /// with tokio's `send`; nothing else is lost or left registered.
    pub fn send(&mut self, records: impl Into<Pending<T>>) -> Send<'_, T> {
        Send {
            records: Some(records.into()),
            at: None,
            waiting: None,
            producer: self,
        }
    }

    /// [`send`](Self::send) with explicit sequence numbers from `first_seq`,
    /// for a producer that resends after a restart: leading records at or
    /// below the admitted sequence number are resends and dropped as
    /// duplicates; a gap or `first_seq` 0 fails with every record back.
    pub fn send_at(&mut self, first_seq: u64, records: impl Into<Pending<T>>) -> Send<'_, T> {
        Send {
            records: Some(records.into()),
            at: Some(first_seq),
            waiting: None,
            producer: self,
        }
    }

    /// Admits what fits now, without waiting; returns the last sequence
    /// number when everything was admitted. A full limit hands back the
    /// tail in [`TrySendError::Full`] (the head was admitted).
    pub fn try_send(&mut self, records: impl Into<Pending<T>>) -> Result<u64, TrySendError<T>> {
        self.try_admit(None, records.into())
    }

    /// [`try_send`](Self::try_send) with explicit sequence numbers, as
    /// [`send_at`](Self::send_at).
    pub fn try_send_at(
        &mut self,
        first_seq: u64,
        records: impl Into<Pending<T>>,
    ) -> Result<u64, TrySendError<T>> {
        self.try_admit(Some(first_seq), records.into())
    }

    fn try_admit(&mut self, at: Option<u64>, records: Pending<T>) -> Result<u64, TrySendError<T>> {
        let first_seq = at.unwrap_or(self.next_seq);
        let (admission, _) = self
            .admit(at, records, None)
            .map_err(|e| TrySendError::Failed(e.at(first_seq)))?;
        match admission.rejected {
            None => Ok(admission.admitted_through),
            Some(r) if r.reason.is_transient() => Err(TrySendError::Full(r)),
            Some(r) => Err(TrySendError::Failed(SendError {
                failure: SendFailure::Refused(r.reason),
                first_seq: r.first_seq,
                records: r.records,
            })),
        }
    }

    /// One attempt, numbered as asked; keeps `next_seq` where the buffer is.
    fn admit(
        &mut self,
        at: Option<u64>,
        records: Pending<T>,
        wait: Option<Wait<'_>>,
    ) -> Result<(Admission<T>, Option<Level>), crate::AdmitError<T>> {
        let numbering = match at {
            Some(first) => Numbering::At(first),
            None => Numbering::Next {
                guess: self.next_seq,
            },
        };
        let out = self
            .manager
            .admit_with(self.route, numbering, records, wait)?;
        self.next_seq = out.0.admitted_through.saturating_add(1);
        Ok(out)
    }

    /// The source this producer sends for.
    pub fn source(&self) -> SourceId {
        self.route.source
    }

    /// The highest sequence number of the source admitted so far.
    pub fn admitted_through(&self) -> u64 {
        self.next_seq - 1
    }

    /// Every record of the source up to this sequence number is completed.
    pub fn acked_through(&self) -> u64 {
        self.manager.acked_through(self.route.source).unwrap_or(0)
    }

    /// The buffer, for everything the handle does not cover.
    pub fn manager(&self) -> &Arc<BufferManager<T>> {
        &self.manager
    }

    /// Drops the producer; the last producer handle of a pipeline closes it
    /// (its consumers drain what is queued, then see the end).
    pub fn close(self) {}
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.manager.close_sender(self.route.pipeline);
    }
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("source", &self.route.source)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl<T> crate::AdmitError<T> {
    /// As a [`SendError`] of records numbered from `first_seq`.
    fn at(self, first_seq: u64) -> SendError<T> {
        SendError {
            failure: SendFailure::Buffer(self.error),
            first_seq,
            records: self.records,
        }
    }
}

/// The future of [`Producer::send`] and [`Producer::send_at`].
#[must_use = "futures do nothing unless polled"]
pub struct Send<'a, T> {
    producer: &'a mut Producer<T>,
    /// The records not admitted yet (`None` once resolved).
    records: Option<Pending<T>>,
    /// The explicit sequence number of the first of them, if numbered so.
    at: Option<u64>,
    /// The level whose wait list holds this future's waker.
    waiting: Option<Level>,
}

impl<T> Unpin for Send<'_, T> {}

impl<T> Future for Send<'_, T> {
    type Output = Result<u64, SendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(records) = this.records.take() else {
            // Polled again after it resolved.
            return Poll::Ready(Ok(this.producer.admitted_through()));
        };
        // A send spends the task's cooperative budget, as a tokio
        // channel's does (see `Take`'s poll).
        let coop = match tokio::task::coop::poll_proceed(cx) {
            Poll::Ready(coop) => coop,
            Poll::Pending => {
                this.records = Some(records);
                return Poll::Pending;
            }
        };
        let first_seq = this.at.unwrap_or(this.producer.next_seq);
        let wait = Wait {
            id: this.producer.id,
            waker: cx.waker(),
            previous: this.waiting.take(),
        };
        let (admission, waiting) = match this.producer.admit(this.at, records, Some(wait)) {
            Ok(out) => out,
            Err(e) => return Poll::Ready(Err(e.at(first_seq))),
        };
        if admission.admitted > 0 {
            coop.made_progress();
        }
        match admission.rejected {
            None => Poll::Ready(Ok(admission.admitted_through)),
            Some(r) if !r.reason.is_transient() => Poll::Ready(Err(SendError {
                failure: SendFailure::Refused(r.reason),
                first_seq: r.first_seq,
                records: r.records,
            })),
            Some(r) => {
                // Registered at the level that refused the tail: wait.
                if this.at.is_some() {
                    this.at = Some(r.first_seq);
                }
                this.records = Some(r.records);
                this.waiting = waiting;
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Send<'_, T> {
    fn drop(&mut self) {
        if let Some(level) = self.waiting {
            self.producer.manager.forget_waiter(level, self.producer.id);
        }
    }
}
