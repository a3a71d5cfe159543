//! [`SourceHandle`]: one stream of a source, as the controller sees it.

use std::sync::Arc;

use tokio::sync::watch;

use super::controller::BackpressureController;
use super::grant::FlowEvent;
use super::signal::SignalReceiver;
use super::state::{SourceState, SourceStatus};
use crate::error::BufferError;
use crate::manager::{Admission, Credit};
use crate::pending::Pending;
use crate::record::{ByteSize, SourceId};

/// How much of a batch a stream's credit covers ([`SourceHandle::cover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Leading records at or below the source's admitted sequence number:
    /// a resend, admitted before; they cost nothing.
    pub duplicates: usize,
    /// Records to hand to [`SourceHandle::admit`] (the duplicates
    /// included); the rest of the batch is beyond the credit.
    pub covered: usize,
    /// The credit the stream held before the batch ([`SourceHandle::credit`]).
    pub credit: Credit,
}

/// One session of a source with the [`BackpressureController`]: asks for
/// credit, reports what it used, and observes the source's signals.
///
/// Dropping the handle (or [`close`](Self::close)) releases the credit it
/// still holds back to the manager.
pub struct SourceHandle<T> {
    pub(super) controller: Arc<BackpressureController<T>>,
    pub(super) source: SourceId,
    /// The id of this stream's lease (its `StreamLease` in the controller).
    pub(super) session: u64,
    pub(super) rx: watch::Receiver<SourceStatus>,
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
    /// nothing is reserved unless the credit is returned. A
    /// [`CreditMode::Leased`](super::CreditMode::Leased) session uses
    /// [`wait_flow`](Self::wait_flow) instead, which also reports revokes.
    pub async fn wait_credit(&self) -> Option<Credit> {
        loop {
            match self.wait_flow().await? {
                FlowEvent::Credit(c) => return Some(c),
                FlowEvent::Revoke { .. } => continue,
            }
        }
    }

    /// Waits for the next thing flow control has for this session: a
    /// credit ([`grant`](Self::grant) non-zero) or a revoke of its floating
    /// credit (a revoke is reported once; answer it with
    /// [`release`](Self::release)). `None` once the controller is shut
    /// down. Wakes on every background evaluation. Cancel-safe.
    pub async fn wait_flow(&self) -> Option<FlowEvent> {
        // `None`: the session was closed.
        let own = self.controller.session_wake(self.session)?;
        loop {
            // A quiet session (it wants nothing until it sends, announces or
            // the state changes) waits only for what can change that.
            let broadcast = if self.controller.is_quiet(self.session) {
                &self.controller.changes
            } else {
                &self.controller.credit
            };
            let notified = broadcast.notified();
            let mine = own.notified();
            tokio::pin!(notified, mine);
            notified.as_mut().enable();
            mine.as_mut().enable();
            if self.controller.is_shut_down() {
                return None;
            }
            if let Some(revoke) = self.controller.take_revoke(self.session) {
                return Some(revoke);
            }
            let credit = self.grant();
            if !credit.is_zero() {
                return Some(FlowEvent::Credit(credit));
            }
            tokio::select! {
                _ = notified => {}
                _ = mine => {}
            }
        }
    }

    /// Announces the session's backlog: records (and their bytes) it holds
    /// and has not sent. A [`CreditMode::Leased`](super::CreditMode::Leased)
    /// session claims floating credit while it is not zero, at most that
    /// much; what it then uses is taken off it. Each announcement replaces
    /// the last. (No effect on grants of a non-expiring session.)
    pub fn announce_backlog(&self, backlog: Credit) {
        self.controller.announce_backlog(self.session, backlog);
    }

    /// Gives back up to `credit` of the session's unused credit, in answer
    /// to revoke `id` ([`FlowEvent::Revoke`]; this ends it) or on its own
    /// (`id` 0); the reservation is released. Returns what was released.
    pub fn release(&self, id: u64, credit: Credit) -> Credit {
        self.controller.release_session(self.session, id, credit)
    }

    /// Reports credit used: `used.records` records carrying `used.bytes`
    /// bytes were admitted for this session. Call it after
    /// [`BufferManager::admit`](crate::BufferManager::admit) (or use [`admit`](Self::admit), which does).
    pub fn on_admitted(&self, used: Credit) {
        self.controller.on_admitted(self.session, used);
    }

    /// [`BufferManager::admit`](crate::BufferManager::admit) for this source, with the credit it used
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

    /// The credit this stream holds and has not used: its own ledger
    /// ([`outstanding`](Self::outstanding)), bounded by what the manager
    /// holds reserved for the source (the authority; the two agree while
    /// one stream feeds the source).
    pub fn credit(&self) -> Credit {
        let reserved = self
            .controller
            .manager
            .reserved(self.source)
            .unwrap_or(Credit::ZERO);
        let own = self.outstanding();
        Credit::new(
            own.records.min(reserved.records),
            own.bytes.min(reserved.bytes),
        )
    }

    /// How far this stream's [`credit`](Self::credit) covers `records`
    /// (numbered from `first_seq`): the admission rule of the flow-control
    /// contract, in one place.
    ///
    /// Leading records at or below the admitted sequence number are a
    /// resend and free. Then each record takes one record credit and its
    /// size in byte credits; the first one the credit does not cover ends
    /// the covered part, with two exceptions, both for a record that no
    /// byte credit can ever cover, so that it is not refused forever:
    ///
    /// - a record larger than [`Limits::max_record_bytes`](crate::Limits::max_record_bytes)
    ///   is covered (with the rest of the batch up to it), and
    ///   [`admit`](Self::admit) refuses it as `TooLarge`;
    /// - a record larger than half the byte window (refills come only once
    ///   half a window is used, so its byte credit may never arrive), first
    ///   in its batch, is covered alone on one record credit; `admit` takes
    ///   the rest of its size from free capacity (within every limit, or it
    ///   is refused with the limit that was hit).
    ///
    /// A source that follows the contract sends only covered batches, and
    /// a covered batch is never refused for a limit.
    /// ([`BufferManager::admit`](crate::BufferManager::admit) itself, for
    /// embedders without a controller, pays from the reservation first and
    /// then from free capacity.)
    pub fn cover(&self, first_seq: u64, records: &Pending<T>) -> Coverage
    where
        T: ByteSize,
    {
        let manager = &self.controller.manager;
        let admitted = manager.admitted_through(self.source).unwrap_or(0);
        let duplicates = admitted
            .saturating_sub(first_seq.saturating_sub(1))
            .min(records.len() as u64) as usize;
        let credit = self.credit();
        let max_record = manager.limits().max_record_bytes();
        let window_bytes = self.controller.window(SourceState::Normal).bytes;
        let mut covered = records.len();
        if duplicates == 0
            && records.len() as u64 <= credit.records
            && records.bytes() <= credit.bytes
            && records.largest() <= max_record
        {
            // The common case, from the batch's totals: all of it is covered.
            return Coverage {
                duplicates,
                covered,
                credit,
            };
        }
        let mut left = credit;
        for (i, r) in records.payloads().enumerate().skip(duplicates) {
            let size = r.byte_size() as u64;
            if size > max_record {
                covered = i + 1;
                break;
            }
            if left.records >= 1 && left.bytes >= size {
                left.records -= 1;
                left.bytes -= size;
                continue;
            }
            covered = if i == duplicates && left.records >= 1 && size > window_bytes / 2 {
                i + 1
            } else {
                i
            };
            break;
        }
        Coverage {
            duplicates,
            covered,
            credit,
        }
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
