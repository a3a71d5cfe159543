//! Credit-based flow control over a [`BufferManager`](crate::BufferManager):
//! the [`BackpressureController`] hands out credits (reservations) fairly
//! and drives a per-source hysteresis state machine that tells sources to
//! slow down, pause and resume. The rules are documented on
//! [`BackpressureController`].
//!
//! The parts, each private, re-exported here:
//!
//! - `signal.rs`: what a source is told ([`SignalKind`], [`SignalReason`],
//!   [`BackpressureSignal`]) and how it listens ([`SignalReceiver`]).
//! - `state.rs`: the pure hysteresis state machine (`step`) over
//!   [`SourceState`], and the published [`SourceStatus`].
//! - `fair.rs`: the max-min fair share of the global capacity among
//!   backlogged sources, and the refill-at-half rule.
//! - `controller.rs`: the [`BackpressureController`] with its lock (the
//!   invariants are stated there), its [`ControllerConfig`] and
//!   [`ControllerError`]; evaluation, shutdown and the background task.
//! - `grant.rs`: granting credit to a stream, accounting for its use, its
//!   announced backlog and what it gives back; revoking leased credit
//!   ([`FlowEvent`]).
//! - `handle.rs`: [`SourceHandle`], one stream's view of the controller.

mod controller;
mod fair;
mod grant;
mod handle;
mod signal;
mod state;

pub use controller::{
    BackpressureController, ControllerConfig, ControllerError, CreditMode, DEFAULT_CREDIT_LEASE,
    DEFAULT_EXPECTED_RECORD_BYTES, DEFAULT_GUARANTEED_RECORDS, DEFAULT_WINDOW_RECORDS,
};
pub use grant::FlowEvent;
pub use handle::{Coverage, SourceHandle};
pub use signal::{BackpressureSignal, SignalKind, SignalReason, SignalReceiver};
pub use state::{SourceState, SourceStatus};
