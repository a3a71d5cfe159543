//! Granting credit to one stream (a [`SourceHandle`](super::SourceHandle))
//! and accounting for what it used, announced or gives back; revoking
//! leased floating credit. Grants are computed and reserved in one critical
//! section of the controller's lock (invariant 3).

use tokio::time::Instant;

use super::controller::{BackpressureController, CreditMode, Inner, PendingRevoke};
use super::fair::{max_credit, min_credit, sub_sat, wants};
use super::state::SourceState;
use crate::manager::Credit;
use crate::metrics as m;
use crate::record::SourceId;

/// What a session waiting for flow control is told ([`SourceHandle::wait_flow`](super::SourceHandle::wait_flow)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// More credit, already reserved.
    Credit(Credit),
    /// Floating credit of a [`CreditMode::Leased`] session stayed unused
    /// for the lease: give back up to `credit` with
    /// [`SourceHandle::release`](super::SourceHandle::release)`(id, ..)`.
    /// Nothing more is granted to the session until then, and the credit
    /// stays reserved, so what the session sends meanwhile is covered.
    Revoke {
        /// The revoke's id, to echo in the release.
        id: u64,
        /// The most credit asked back: the session's floating credit.
        credit: Credit,
    },
}

impl<T> BackpressureController<T> {
    pub(super) fn grant_session(&self, session: u64) -> Credit {
        let (granted, any) = {
            let mut inner = self.inner.lock();
            if inner.shut_down {
                return Credit::ZERO;
            }
            let now = Instant::now();
            let Some(s) = inner.leases.get_mut(&session) else {
                return Credit::ZERO;
            };
            if s.revoke.is_some() {
                return Credit::ZERO;
            }
            let source = s.source;
            // Derive what is unused from the manager where possible: the
            // source's reservation bounds what any of its sessions holds.
            let reserved = self.manager.reserved(source).unwrap_or(Credit::ZERO);
            let outstanding = min_credit(s.outstanding, reserved);
            s.outstanding = outstanding;
            let claims = s.claims(now, self.config.credit_lease);
            let state = inner
                .entries
                .get(source.index())
                .and_then(|e| e.as_ref())
                .map_or(SourceState::Paused, |e| e.state);
            let target = self.target(state, claims);
            if state != SourceState::Paused && !wants(target, outstanding) {
                // Not yet half used: nothing to do, and no evaluation needed.
                // (A paused source always re-evaluates: it may resume.)
                return Credit::ZERO;
            }
            let any = !self.evaluate_locked(&mut inner).is_empty();
            let granted = self.grant_locked(&mut inner, session, source, outstanding, now);
            (granted, any)
        };
        if any {
            self.credit.notify_waiters();
            self.changes.notify_waiters();
        }
        granted
    }

    /// Whether the session is *quiet*: in NORMAL, not claiming floating
    /// credit, holding at least half its guaranteed share, with no floating
    /// credit a lease could revoke. Nothing but its own use, backlog or
    /// release (its `wake`), or a change of state (`changes`), can make it
    /// want credit, so its `wait_flow` need not wake at every evaluation.
    pub(super) fn is_quiet(&self, session: u64) -> bool {
        let inner = self.inner.lock();
        let Some(s) = inner.leases.get(&session) else {
            return false;
        };
        let normal = inner
            .entries
            .get(s.source.index())
            .and_then(|e| e.as_ref())
            .is_some_and(|e| e.state == SourceState::Normal);
        let floating = sub_sat(s.outstanding, self.guaranteed);
        normal
            && !inner.shut_down
            && s.revoke.is_none()
            && !s.claims(Instant::now(), self.config.credit_lease)
            && !wants(self.target(SourceState::Normal, false), s.outstanding)
            && (s.mode != CreditMode::Leased || floating.is_zero())
    }

    /// The session's own wake-up (see `is_quiet`).
    pub(super) fn session_wake(&self, session: u64) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.inner
            .lock()
            .leases
            .get(&session)
            .map(|s| s.wake.clone())
    }

    /// The most unused credit a session in `state` is topped up to: its
    /// window when it claims floating credit, else its guaranteed share
    /// (nothing while paused).
    fn target(&self, state: SourceState, claims: bool) -> Credit {
        let window = self.window(state);
        if claims {
            window
        } else {
            min_credit(window, self.guaranteed)
        }
    }

    fn grant_locked(
        &self,
        inner: &mut Inner,
        session: u64,
        source: SourceId,
        outstanding: Credit,
        now: Instant,
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
        let Some(lease) = inner.leases.get(&session) else {
            return Credit::ZERO;
        };
        let claims = lease.claims(now, self.config.credit_lease);
        let target = self.target(state_of(inner, source), claims);
        if !wants(target, outstanding) {
            return Credit::ZERO;
        }
        let mut own = sub_sat(target, outstanding);
        if claims && lease.mode == CreditMode::Leased {
            // At most what the session announced (beyond its guaranteed share).
            let announced = max_credit(lease.backlog, self.guaranteed);
            own = min_credit(own, sub_sat(announced, outstanding));
        }
        let mut want = if claims {
            self.fair_grant(inner, session, source, own, now)
        } else {
            own
        };
        // A reservation needs both records and bytes: a session that needs
        // only one (e.g. it sends zero-byte records, so its byte credit is
        // never used) gets one unit of the other with it.
        if own.records == 0 && want.bytes > 0 {
            want.records = 1;
        }
        if own.bytes == 0 && want.records > 0 {
            want.bytes = 1;
        }
        // Paced: only room below the high watermark is granted, so a source
        // that stays within its credit never crosses it (no SLOW_DOWN).
        let Ok(available) = self
            .manager
            .available_below(source, self.config.watermarks.high)
        else {
            return Credit::ZERO;
        };
        let want = min_credit(want, available);
        if want.is_zero() || want.records == 0 || want.bytes == 0 {
            return Credit::ZERO;
        }
        let granted = self.manager.reserve(source, want).unwrap_or(Credit::ZERO);
        if let Some(s) = inner.leases.get_mut(&session) {
            s.outstanding = Credit::new(
                outstanding.records + granted.records,
                outstanding.bytes + granted.bytes,
            );
            if !granted.is_zero() {
                s.last_granted = now;
            }
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
            s.backlog = sub_sat(s.backlog, used);
            if !used.is_zero() {
                s.last_used = Some(Instant::now());
                s.wake.notify_waiters();
            }
        }
    }

    pub(super) fn announce_backlog(&self, session: u64, backlog: Credit) {
        if let Some(s) = self.inner.lock().leases.get_mut(&session) {
            s.backlog = backlog;
            s.wake.notify_waiters();
        }
    }

    /// Takes back up to `credit` of the session's unused credit: the answer
    /// to revoke `id` (which ends it), or a release of the session's own (id
    /// 0). Returns what was released.
    pub(super) fn release_session(&self, session: u64, id: u64, credit: Credit) -> Credit {
        let released = {
            let mut inner = self.inner.lock();
            let Some(s) = inner.leases.get_mut(&session) else {
                return Credit::ZERO;
            };
            if id != 0 && s.revoke.is_some_and(|r| r.id == id) {
                s.revoke = None;
            }
            s.wake.notify_waiters();
            let amount = min_credit(credit, s.outstanding);
            s.outstanding = sub_sat(s.outstanding, amount);
            let source = s.source;
            if amount.is_zero() {
                Credit::ZERO
            } else {
                self.manager.release(source, amount).unwrap_or(Credit::ZERO)
            }
        };
        self.credit.notify_waiters();
        released
    }

    /// Starts a revoke for every leased session whose floating credit
    /// (credit above its guaranteed share) stayed unused for the lease.
    /// Returns whether it started any.
    pub(super) fn expire_leases_locked(&self, inner: &mut Inner, now: Instant) -> bool {
        let lease = self.config.credit_lease;
        let guaranteed = self.guaranteed;
        let mut any = false;
        let Inner {
            leases,
            next_revoke,
            ..
        } = inner;
        for s in leases.values_mut() {
            if s.mode != CreditMode::Leased || s.revoke.is_some() {
                continue;
            }
            let since = s
                .last_used
                .map_or(s.last_granted, |u| u.max(s.last_granted));
            if now.saturating_duration_since(since) < lease {
                continue;
            }
            let floating = sub_sat(s.outstanding, guaranteed);
            if floating.records == 0 && floating.bytes == 0 {
                continue;
            }
            *next_revoke += 1;
            // Credit unused for a whole lease says the announced backlog is
            // stale: the session claims again when it announces again.
            s.backlog = Credit::ZERO;
            s.revoke = Some(PendingRevoke {
                id: *next_revoke,
                credit: floating,
                told: false,
            });
            any = true;
        }
        any
    }

    /// The session's revoke if it was not told yet (and marks it told).
    pub(super) fn take_revoke(&self, session: u64) -> Option<FlowEvent> {
        let mut inner = self.inner.lock();
        let r = inner.leases.get_mut(&session)?.revoke.as_mut()?;
        if r.told {
            return None;
        }
        r.told = true;
        Some(FlowEvent::Revoke {
            id: r.id,
            credit: r.credit,
        })
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
