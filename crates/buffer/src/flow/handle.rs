//! [`SourceHandle`]: one stream of a source, as the controller sees it.

use std::sync::Arc;

use tokio::sync::watch;

use super::controller::BackpressureController;
use super::signal::SignalReceiver;
use super::state::SourceStatus;
use crate::error::BufferError;
use crate::manager::{Admission, Credit};
use crate::record::{ByteSize, SourceId};

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
    /// nothing is reserved unless the credit is returned.
    pub async fn wait_credit(&self) -> Option<Credit> {
        loop {
            let notified = self.controller.credit.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.controller.is_shut_down() {
                return None;
            }
            let credit = self.grant();
            if !credit.is_zero() {
                return Some(credit);
            }
            notified.await;
        }
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
