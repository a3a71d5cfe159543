//! The fair share: max-min fair levels of the global capacity among the
//! backlogged sources, the refill-at-half rule, and small credit helpers.

use tokio::time::Instant;

use super::controller::{BackpressureController, Inner};
use super::state::SourceState;
use crate::manager::Credit;
use crate::record::SourceId;

#[inline]
pub(super) fn sub_sat(a: Credit, b: Credit) -> Credit {
    Credit::new(
        a.records.saturating_sub(b.records),
        a.bytes.saturating_sub(b.bytes),
    )
}

#[inline]
pub(super) fn min_credit(a: Credit, b: Credit) -> Credit {
    Credit::new(a.records.min(b.records), a.bytes.min(b.bytes))
}

#[inline]
pub(super) fn max_credit(a: Credit, b: Credit) -> Credit {
    Credit::new(a.records.max(b.records), a.bytes.max(b.bytes))
}

/// Whether a session holding `outstanding` of a `window` has used half of it
/// (in records or in bytes) and so may be refilled.
pub(super) fn wants(window: Credit, outstanding: Credit) -> bool {
    !window.is_zero()
        && (outstanding.records.saturating_mul(2) <= window.records
            || outstanding.bytes.saturating_mul(2) <= window.bytes)
}

/// Max-min fair level of `pool` among backlogged claimants, each with a
/// floor (what it already uses, which cannot be taken back): the smallest
/// level `s` with `Σ max(s, floor) ≥ pool` (rounded up, so that a remainder
/// smaller than the number of claimants still goes to someone).
pub(crate) fn fair_level(pool: u64, floors: &[u64]) -> u64 {
    let fill = |s: u64| -> u128 { floors.iter().map(|&f| u128::from(s.max(f))).sum() };
    let (mut lo, mut hi) = (0u64, pool);
    if floors.is_empty() || fill(hi) < u128::from(pool) {
        return pool; // (no claimant; cannot happen with one or more)
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fill(mid) >= u128::from(pool) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

impl<T> BackpressureController<T> {
    /// Caps `own` (what the session asks for) at its source's max-min fair
    /// share of the global capacity.
    ///
    /// The claimants are the sources with a session that *claims* floating
    /// credit (`StreamLease::claims`: an announced backlog, or credit used
    /// within the lease) and is not paused. The
    /// pool is the free global capacity plus what the claimants already use
    /// (unused credit and records in the engine); it is shared equally, each
    /// claimant's share being at least what it uses now (in use cannot be
    /// taken back). So no backlogged source can run ahead of the others just
    /// because it asks first or more often, and equal usage means equal
    /// throughput through FIFO stages. A grant moves capacity from free to
    /// used without changing the pool, so the level does not depend on the
    /// order in which claimants ask. Sessions that stop claiming drop out
    /// of the claimants, which keeps the policy work-conserving.
    pub(super) fn fair_grant(
        &self,
        inner: &Inner,
        session: u64,
        source: SourceId,
        own: Credit,
        now: Instant,
    ) -> Credit {
        let lease = self.config.credit_lease;
        let mut claimants: Vec<SourceId> = inner
            .leases
            .iter()
            .filter(|&(&id, s)| {
                id == session
                    || (s.claims(now, lease)
                        && inner
                            .entries
                            .get(s.source.index())
                            .and_then(|e| e.as_ref())
                            .is_some_and(|e| e.state != SourceState::Paused))
            })
            .map(|(_, s)| s.source)
            .collect();
        claimants.sort_unstable();
        claimants.dedup();
        if claimants.len() <= 1 {
            // Alone: the source's free room (applied by the caller) is the limit.
            return own;
        }
        // One consistent reading of the usages (O(sources + stages), like
        // the evaluation that precedes every grant).
        let snapshot = self.manager.snapshot();
        let g = &snapshot.global;
        let usage = |src: SourceId| {
            snapshot.sources.get(src.index()).map_or(Credit::ZERO, |s| {
                Credit::new(s.level.records, s.level.bytes)
            })
        };
        let mut pool = Credit::new(
            g.limit.records.saturating_sub(g.records),
            g.limit.bytes.saturating_sub(g.bytes),
        );
        let mut records = Vec::with_capacity(claimants.len());
        let mut bytes = Vec::with_capacity(claimants.len());
        for &src in &claimants {
            let used = usage(src);
            pool = Credit::new(pool.records + used.records, pool.bytes + used.bytes);
            records.push(used.records);
            bytes.push(used.bytes);
        }
        let level = Credit::new(
            fair_level(pool.records, &records),
            fair_level(pool.bytes, &bytes),
        );
        min_credit(own, sub_sat(level, usage(source)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_level_is_max_min_with_floors() {
        assert_eq!(fair_level(100, &[0, 0, 0, 0]), 25);
        assert_eq!(fair_level(90, &[0, 0, 0]), 30);
        assert_eq!(
            fair_level(2, &[0, 0, 0]),
            1,
            "a small remainder still goes to someone"
        );
        assert_eq!(fair_level(0, &[0]), 0);
        // A claimant already using 40 keeps it (the floor); the others share the rest.
        assert_eq!(fair_level(100, &[40, 0, 0]), 30);
        assert_eq!(fair_level(70, &[40, 0]), 30);
        assert_eq!(
            fair_level(100, &[60, 30]),
            40,
            "the one above keeps 60, the other grows to 40"
        );
        assert_eq!(fair_level(100, &[10, 20]), 50);
    }

    #[test]
    fn refill_at_half_window() {
        let w = Credit::new(100, 1000);
        assert!(wants(w, Credit::ZERO));
        assert!(!wants(w, Credit::new(51, 900)));
        assert!(wants(w, Credit::new(50, 900)));
        assert!(wants(w, Credit::new(90, 500)), "half the bytes used");
        assert!(
            !wants(Credit::ZERO, Credit::ZERO),
            "a paused window never wants"
        );
    }
}
