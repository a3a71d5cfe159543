//! Granting credit to one stream (a [`SourceHandle`](super::SourceHandle))
//! and accounting for what it used or gives back. Grants are computed and
//! reserved in one critical section of the controller's lock (invariant 3).

use tokio::time::Instant;

use super::controller::{BackpressureController, Inner};
use super::fair::{min_credit, sub_sat, wants};
use super::state::SourceState;
use crate::manager::Credit;
use crate::metrics as m;
use crate::record::SourceId;

impl<T> BackpressureController<T> {
    pub(super) fn grant_session(&self, session: u64) -> Credit {
        let (granted, any) = {
            let mut inner = self.inner.lock();
            if inner.shut_down {
                return Credit::ZERO;
            }
            let Some(s) = inner.leases.get_mut(&session) else {
                return Credit::ZERO;
            };
            s.last_ask = Instant::now();
            let source = s.source;
            // Derive what is unused from the manager where possible: the
            // source's reservation bounds what any of its sessions holds.
            let reserved = self.manager.reserved(source).unwrap_or(Credit::ZERO);
            let outstanding = min_credit(s.outstanding, reserved);
            let state = inner
                .entries
                .get(source.index())
                .and_then(|e| e.as_ref())
                .map_or(SourceState::Paused, |e| e.state);
            if state != SourceState::Paused && !wants(self.window(state), outstanding) {
                // Not yet half used: nothing to do, and no evaluation needed.
                // (A paused source always re-evaluates: it may resume.)
                if let Some(s) = inner.leases.get_mut(&session) {
                    s.outstanding = outstanding;
                }
                return Credit::ZERO;
            }
            let any = !self.evaluate_locked(&mut inner).is_empty();
            let granted = self.grant_locked(&mut inner, session, source, outstanding);
            (granted, any)
        };
        if any {
            self.credit.notify_waiters();
        }
        granted
    }

    fn grant_locked(
        &self,
        inner: &mut Inner,
        session: u64,
        source: SourceId,
        outstanding: Credit,
    ) -> Credit {
        let state_of = |inner: &Inner, src: SourceId| {
            inner
                .entries
                .get(src.index())
                .and_then(|e| e.as_ref())
                .map_or(SourceState::Paused, |e| e.state)
        };
        if inner.shut_down || self.memory_pressure().is_some() {
            return Credit::ZERO;
        }
        let window = self.window(state_of(inner, source));
        if !wants(window, outstanding) {
            return Credit::ZERO;
        }
        let own = sub_sat(window, outstanding);
        let mut want = self.fair_grant(inner, session, source, own);
        // A reservation needs both records and bytes: a session that needs
        // only one (e.g. it sends zero-byte records, so its byte credit is
        // never used) gets one unit of the other with it.
        if own.records == 0 && want.bytes > 0 {
            want.records = 1;
        }
        if own.bytes == 0 && want.records > 0 {
            want.bytes = 1;
        }
        let Ok(available) = self.manager.available(source) else {
            return Credit::ZERO;
        };
        let want = min_credit(want, available);
        if want.is_zero() {
            return Credit::ZERO;
        }
        let granted = self.manager.reserve(source, want).unwrap_or(Credit::ZERO);
        if let Some(s) = inner.leases.get_mut(&session) {
            s.outstanding = Credit::new(
                outstanding.records + granted.records,
                outstanding.bytes + granted.bytes,
            );
        }
        if !granted.is_zero()
            && let Some(Some(e)) = inner.entries.get(source.index())
        {
            m::credits_granted(&e.name, granted);
        }
        granted
    }

    pub(super) fn on_admitted(&self, session: u64, used: Credit) {
        if let Some(s) = self.inner.lock().leases.get_mut(&session) {
            s.outstanding = sub_sat(s.outstanding, used);
        }
    }

    pub(super) fn outstanding(&self, session: u64) -> Credit {
        self.inner
            .lock()
            .leases
            .get(&session)
            .map_or(Credit::ZERO, |s| s.outstanding)
    }

    pub(super) fn close_session(&self, session: u64) -> Credit {
        let released = {
            let mut inner = self.inner.lock();
            let Some(s) = inner.leases.remove(&session) else {
                return Credit::ZERO;
            };
            if s.outstanding.records == 0 && s.outstanding.bytes == 0 {
                Credit::ZERO
            } else {
                self.manager
                    .release(s.source, s.outstanding)
                    .unwrap_or(Credit::ZERO)
            }
        };
        self.credit.notify_waiters();
        released
    }
}
