//! The admission and credit policy of a stream: the one place that decides
//! how much of a batch its credit covers, when a stream may be granted more
//! credit, and the `server.max_unacked_per_session` backstop.
//!
//! The buffer enforces the limits themselves (atomically, under its lock);
//! this policy decides what a stream hands to the buffer: only what the
//! stream's credit covers (records beyond it are rejected `NO_CREDIT`,
//! uncharged), with the one exception for a record no byte credit can ever
//! cover (below).

use sluice_buffer::{ByteSize, Credit, Pending, SourceHandle, SourceId, SourceState};

use super::context::IngestContext;
use crate::record::EngineRecord;

/// Records of `source` admitted and not yet acked.
pub(crate) fn unacked(ctx: &IngestContext, source: SourceId) -> u64 {
    let admitted = ctx.runtime.buffer.admitted_through(source).unwrap_or(0);
    admitted.saturating_sub(ctx.runtime.hub.progress(source).through_seq)
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

/// How much of a batch the stream's credit covers (see [`credit_plan`]).
pub(crate) struct CreditPlan {
    /// Leading records already admitted before (a resend); free.
    pub(crate) dupes: usize,
    /// Records handed to the buffer (the duplicates included); the rest is
    /// rejected without credit.
    pub(crate) keep: usize,
    /// The credit the stream held before the batch.
    pub(crate) credit: Credit,
}

/// The credit this stream holds and has not used: the session's ledger,
/// bounded by what the buffer holds reserved for the source (the
/// authority; the two agree while one stream feeds the source).
pub(crate) fn outstanding(
    ctx: &IngestContext,
    source: SourceId,
    handle: &SourceHandle<EngineRecord>,
) -> Credit {
    let reserved = ctx.runtime.buffer.reserved(source).unwrap_or(Credit::ZERO);
    let own = handle.outstanding();
    Credit::new(
        own.records.min(reserved.records),
        own.bytes.min(reserved.bytes),
    )
}

/// How far the stream's credit covers `records` (numbered from `first`).
///
/// Leading records at or below the admitted sequence number are a resend
/// and free. Then each record takes one record credit and its size in
/// byte credits; the first one the credit does not cover ends the part
/// handed to the buffer, with two exceptions, both for a record that no
/// byte credit can ever cover, so that it is not refused forever:
///
/// - a record larger than a byte limit goes to the buffer, which rejects
///   it (and the rest) as `RECORD_TOO_LARGE`;
/// - a record larger than half the byte window (refills come only once
///   half a window is used, so its byte credit may never arrive), first
///   in its batch, is admitted alone on one record credit and all the
///   byte credit the stream holds, the rest of its size taken from free
///   capacity (within every limit, or rejected with the limit that was
///   hit).
pub(crate) fn credit_plan(
    ctx: &IngestContext,
    source: SourceId,
    handle: &SourceHandle<EngineRecord>,
    first: u64,
    records: &Pending<EngineRecord>,
) -> CreditPlan {
    let buffer = &ctx.runtime.buffer;
    let admitted = buffer.admitted_through(source).unwrap_or(0);
    let dupes = admitted.saturating_sub(first - 1).min(records.len() as u64) as usize;
    let credit = outstanding(ctx, source, handle);
    let limits = buffer.limits();
    let max_record = limits
        .global
        .bytes
        .min(limits.per_stage.bytes)
        .min(limits.per_source.bytes);
    let window_bytes = ctx.runtime.controller.window(SourceState::Normal).bytes;
    let mut keep = records.len();
    if dupes == 0
        && records.len() as u64 <= credit.records
        && records.bytes() <= credit.bytes
        && records.largest() <= max_record
        && records.largest() < u64::from(u32::MAX)
    {
        // The common case, from the batch's totals: all of it is covered.
        return CreditPlan {
            dupes,
            keep,
            credit,
        };
    }
    let mut left = credit;
    for (i, r) in records.payloads().enumerate().skip(dupes) {
        let size = r.byte_size() as u64;
        if size > max_record {
            keep = i + 1;
            break;
        }
        if left.records >= 1 && left.bytes >= size {
            left.records -= 1;
            left.bytes -= size;
            continue;
        }
        keep = if i == dupes && left.records >= 1 && size > window_bytes / 2 {
            i + 1
        } else {
            i
        };
        break;
    }
    CreditPlan {
        dupes,
        keep,
        credit,
    }
}
