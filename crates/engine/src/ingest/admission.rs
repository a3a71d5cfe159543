//! The engine's part of the admission policy: when a stream may be granted
//! more credit, and the `server.max_unacked_per_session` backstop.
//!
//! How much of a batch a stream's credit covers is the buffer's rule
//! ([`SourceHandle::cover`](sluice_buffer::SourceHandle::cover)): the
//! session asks it one question and hands the buffer only what is covered
//! (the rest is rejected `NO_CREDIT`, uncharged). The buffer enforces the
//! limits themselves, atomically under its lock.

use sluice_buffer::{SourceId, SourceState};

use super::context::IngestContext;

/// Records of `source` admitted and not yet completed: what
/// `server.max_unacked_per_session` counts. Not `admitted_through −
/// acked_through`: with selective acks a source forgets completed records
/// above a gap (one record waiting out its retry backoff), so counting them
/// would stall it behind that one record.
pub(crate) fn unacked(ctx: &IngestContext, source: SourceId) -> u64 {
    ctx.runtime.buffer.outstanding(source).unwrap_or(0)
}

/// Whether a session of `source` may be granted credit under
/// `server.max_unacked_per_session`: only while its unacked records plus a
/// full credit window (the most credit a grant tops it up to; capped at the
/// limit at start-up) fit, so that a source sending within its credit never
/// exceeds the limit.
pub(crate) fn may_take_credit(ctx: &IngestContext, source: SourceId) -> bool {
    let window = ctx.runtime.controller.window(SourceState::Normal).records;
    unacked(ctx, source).saturating_add(window) <= ctx.server.max_unacked_per_session
}

/// Room left under `server.max_unacked_per_session` for `source`: the cap
/// and how many more new records may be admitted. A backstop: credit is
/// granted within it ([`may_take_credit`]), so only a source sending beyond
/// its credit reaches it.
pub(crate) fn unacked_room(ctx: &IngestContext, source: SourceId) -> (u64, u64) {
    let cap = ctx.server.max_unacked_per_session;
    (cap, cap.saturating_sub(unacked(ctx, source)))
}
