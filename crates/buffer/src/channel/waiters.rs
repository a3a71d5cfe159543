//! Who waits for what: the wake-up lists kept under the manager's lock.
//!
//! Why lists under the lock, not a `tokio::sync::Notify` per level: a task
//! that finds a level full registers its waker *in the same critical
//! section* in which the level refused it, and a task that frees room at a
//! level takes that level's wakers in the critical section in which it frees
//! it. A release therefore either happened before the refusal (and was seen
//! by it) or takes the waker (and wakes it): no lost wake-up, with no
//! "register before you try" protocol for the caller to get right. And each
//! list belongs to one level (a source, a stage, the global level, or a
//! stage's ready records), so a release of source A's capacity wakes only
//! the producers A's limit refused: before, one `Notify` for all releases
//! woke every waiting producer (up to 4,600 waits per 2 M records, issue 16).
//!
//! Nothing is woken under the lock: the wakers taken are collected in a
//! [`Wakeups`] and woken after the lock is released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

use crate::manager::Credit;

/// Identifies one waiting handle (a producer's send, a consumer's receive),
/// so that a re-poll replaces its registration instead of adding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaiterId(u64);

impl WaiterId {
    /// A fresh id, unique for the life of the process.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        WaiterId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One registration: whom to wake, and what it waits for.
#[derive(Debug)]
struct Waiter {
    id: WaiterId,
    waker: Waker,
    /// The room the waiter waits for at this level (zero for a consumer):
    /// it is woken once the level has it, and `audit` checks that no
    /// waiter sleeps on a level that has it, which is what "no lost
    /// wake-up" means here.
    need: Credit,
}

/// The tasks waiting on one level. Usually empty or one entry (one producer
/// per source), so a `Vec` scanned by id is the right structure; an empty
/// list costs one length check on the release path.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    waiters: Vec<Waiter>,
}

impl WaitList {
    /// Registers (or refreshes) `id`'s waker, needing `need` at this level.
    pub(crate) fn register(&mut self, id: WaiterId, waker: &Waker, need: Credit) {
        match self.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => {
                if !w.waker.will_wake(waker) {
                    w.waker = waker.clone();
                }
                w.need = need;
            }
            None => self.waiters.push(Waiter {
                id,
                waker: waker.clone(),
                need,
            }),
        }
    }

    /// Removes `id`'s registration, if any (a future dropped while waiting).
    pub(crate) fn remove(&mut self, id: WaiterId) {
        self.waiters.retain(|w| w.id != id);
    }

    /// Moves every waiter of this level to `out`, to be woken after the lock.
    #[inline]
    pub(crate) fn wake_all(&mut self, out: &mut Wakeups) {
        for w in self.waiters.drain(..) {
            out.push(w.waker);
        }
    }

    /// Moves the waiters whose need fits in `free` to `out`; the others
    /// keep waiting (the level still lacks their room).
    #[inline]
    pub(crate) fn wake_fitting(&mut self, free: Credit, out: &mut Wakeups) {
        let mut i = 0;
        while i < self.waiters.len() {
            let need = self.waiters[i].need;
            if need.records <= free.records && need.bytes <= free.bytes {
                out.push(self.waiters.swap_remove(i).waker);
            } else {
                i += 1;
            }
        }
    }

    /// Whether nobody waits here.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// What each waiter needs (for `audit`).
    pub(crate) fn needs(&self) -> impl Iterator<Item = Credit> + '_ {
        self.waiters.iter().map(|w| w.need)
    }

    /// How many wait here.
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }
}

/// Wakers taken under the lock, woken when this is dropped or
/// [`wake`](Self::wake)d: after the lock guard, which is declared after it
/// or dropped first.
///
/// Why the inline slots: most releases wake nobody or one task (a
/// producer, a consumer), and a `Vec` would allocate under the lock for
/// that one; the first two are kept inline, more spill to a `Vec`.
#[derive(Debug, Default)]
#[must_use = "wakers collected must be woken"]
pub(crate) struct Wakeups {
    inline: [Option<Waker>; 2],
    more: Vec<Waker>,
}

impl Wakeups {
    #[inline]
    fn push(&mut self, waker: Waker) {
        match self.inline.iter_mut().find(|w| w.is_none()) {
            Some(slot) => *slot = Some(waker),
            None => self.more.push(waker),
        }
    }

    /// Wakes every task collected.
    pub(crate) fn wake(self) {
        drop(self);
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        for w in self.inline.iter_mut().filter_map(Option::take) {
            w.wake();
        }
        for w in self.more.drain(..) {
            w.wake();
        }
    }
}
