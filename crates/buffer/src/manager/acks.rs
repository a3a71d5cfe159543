//! What a source may forget: one consistent reading of its cumulative ack
//! frontier, the completed ranges above it (selective acks) and the records
//! still outstanding (invariant 5 at the lock).

use super::{AckState, BufferManager};
use crate::error::BufferError;
use crate::record::SourceId;

impl<T> BufferManager<T> {
    /// `source`'s completion in one reading: its frontier, at most `max`
    /// completed ranges above `max(frontier, after)` (lowest first, the
    /// first one clipped to start above it), how many ranges there are in
    /// all, its outstanding records and its cumulative counts.
    ///
    /// `after` lets a reader page: pass the last sequence number of the
    /// ranges it already reported (0 for all). The ranges it gets are only
    /// ever records that were completed; a range may later grow or merge
    /// into the frontier, never shrink.
    ///
    /// ```
    /// use sluice_buffer::{BufferManager, Limits, SeqRange};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let buffer = BufferManager::<Vec<u8>>::builder(Limits::default())
    ///     .pipeline("p", ["sink"])
    ///     .build()
    ///     .unwrap();
    /// let p = buffer.pipeline_by_name("p").unwrap().clone();
    /// let source = buffer.register_source("s", p.id).unwrap();
    /// let _ = buffer.admit(source, 1, vec![vec![1u8]; 5]).unwrap();
    /// let mut batch = buffer.next_batch(p.stages[0], 5).await.unwrap();
    /// let first = batch.remove(0); // seq 1 is still in the works
    /// let third = batch.remove(1); // and so is seq 3
    /// buffer.complete(batch); // 2, 4 and 5 are done
    /// let acks = buffer.ack_state(source, 0, 64).unwrap();
    /// assert_eq!(acks.acked_through, 0);
    /// assert_eq!(acks.ranges, [SeqRange { first: 2, last: 2 }, SeqRange { first: 4, last: 5 }]);
    /// assert_eq!(acks.outstanding, 2);
    /// buffer.complete(vec![first]);
    /// let acks = buffer.ack_state(source, 0, 64).unwrap();
    /// assert_eq!((acks.acked_through, acks.ranges.len()), (2, 1));
    /// # drop(third);
    /// # });
    /// ```
    pub fn ack_state(
        &self,
        source: SourceId,
        after: u64,
        max: usize,
    ) -> Result<AckState, BufferError> {
        let mut ranges = Vec::new();
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        if !s.acks.pending.is_empty() {
            s.acks.ranges_above(after, max, &mut ranges);
        }
        Ok(AckState {
            acked_through: s.acks.through,
            ranges,
            ranges_total: s.acks.pending.len(),
            outstanding: s.outstanding(),
            delivered: s.delivered,
            filtered: s.filtered,
            dead_lettered: s.dead_lettered,
        })
    }

    /// Records of `source` admitted and not completed yet: what a
    /// per-source unacked limit counts (a completed record above a gap in
    /// the frontier is not outstanding).
    pub fn outstanding(&self, source: SourceId) -> Result<u64, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(s.outstanding())
    }
}
