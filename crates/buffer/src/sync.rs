//! The lock behind the [`BufferManager`](crate::BufferManager)'s state.
//!
//! Normally `parking_lot::Mutex`. Built with `--cfg shuttle` it is shuttle's
//! mutex instead, so that `tests/shuttle.rs` can explore the interleavings of
//! concurrent operations under a randomised scheduler (shuttle, like loom,
//! cannot see through parking_lot).

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
}
