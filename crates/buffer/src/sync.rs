//! The one place this crate gets its locks from.
//!
//! Normally `parking_lot::Mutex`. Built with `--cfg shuttle` it is shuttle's
//! mutex instead, so that `tests/shuttle.rs` can explore the interleavings of
//! concurrent operations under a randomised scheduler (shuttle, like loom,
//! cannot see through parking_lot). Every lock of the crate is taken through
//! this module; a `parking_lot` (or `std`) lock used directly would be
//! invisible to the model.
//!
//! # Lock order
//!
//! A lock may be taken while holding only the locks listed above it:
//!
//! 1. `BackpressureController::inner` (`flow/controller.rs`): the
//!    controller's per-source state. While holding it the controller calls
//!    into the manager (`pressures`, `snapshot`, `reserve`, `release`,
//!    `available`, `reserved`, `is_shut_down`), i.e. takes lock 2.
//! 2. `BufferManager::state` (`manager/mod.rs`): all counts and queues. A
//!    leaf: nothing else of this crate is locked while it is held, and the
//!    manager never calls the controller.
//! 3. `ManualProbe::state` (`memory/probe.rs`): a test probe's reading. A
//!    leaf, never held together with 1 or 2.
//!
//! tokio's internal locks (of `Notify` and `watch`) are leaves too: the
//! controller sends on its watch channels and reads the memory gate's while
//! holding lock 1, and nothing of this crate is locked inside them.
//! Wake-ups of the manager happen after its lock is released: its
//! `Notify` (`drain`, `capacity_freed`), and the wakers of the
//! wait lists (`channel/waiters.rs`), which are kept under lock 2 and
//! collected there, then woken once it is dropped.

#[cfg(not(shuttle))]
pub(crate) use parking_lot::Mutex;

/// shuttle's mutex with parking_lot's `lock()` signature.
#[cfg(shuttle)]
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

#[cfg(shuttle)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(shuttle::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> shuttle::sync::MutexGuard<'_, T> {
        // A poisoned lock means a panicking test thread: propagate it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}
