//! Capacity in: credits ([`reserve`](BufferManager::reserve),
//! [`release`](BufferManager::release)) and [`admit`](BufferManager::admit).
//! These are the only operations, with `forward`, that raise a level, and
//! each checks the free room of every level it raises in the critical
//! section in which it raises it (invariant 1).

use std::task::Waker;
use std::time::Instant;

use super::state::{SourceAccount, State};
use super::{Admission, BufferManager, Credit, Rejected};
use crate::channel::waiters::{WaiterId, Wakeups};
use crate::error::{AdmitError, BufferError, Level, RejectReason, Unit};
use crate::limits::Limit;
use crate::pending::{Laid, Pending, PendingRecord};
use crate::record::{PipelineId, SourceId, StageId};

/// Where a source's records enter: fixed at registration, so a handle keeps
/// it and admits without looking it up (one lock per batch, not two).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) source: SourceId,
    pub(crate) entry: StageId,
    pub(crate) pipeline: PipelineId,
}

/// A task that waits for room if a limit refuses part of a batch: it is
/// registered at the level that refused, in the critical section that
/// refused it (and taken off the level it waited on before, if any).
pub(crate) struct Wait<'a> {
    pub(crate) id: WaiterId,
    pub(crate) waker: &'a Waker,
    /// The level this task was registered at by its previous attempt.
    pub(crate) previous: Option<Level>,
}

/// How `admit_with` numbers a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Numbering {
    /// From this sequence number, as the caller says (a resend's leading
    /// records at or below `admitted_through` are duplicates).
    At(u64),
    /// Right after the source's last admitted record, decided under the
    /// lock: never a duplicate, never a gap. `guess` (where the handle last
    /// saw it) numbers the records before the lock; they are numbered again
    /// under it only if another handle of the source admitted meanwhile.
    Next {
        /// The expected first sequence number.
        guess: u64,
    },
}

/// Sequence numbers start at 1, and `n` records from `first` must not pass
/// `u64::MAX`.
fn check_numbering(first: u64, n: usize) -> Result<(), BufferError> {
    if first == 0 {
        return Err(BufferError::ZeroSequence);
    }
    if n > 0 && first.checked_add(n as u64 - 1).is_none() {
        return Err(BufferError::SequenceOverflow { first, count: n });
    }
    Ok(())
}

impl<T> BufferManager<T> {
    /// What [`reserve`](Self::reserve) could grant `source` right now: the
    /// smallest free room of the global level, its entry stage and itself.
    pub fn available(&self, source: SourceId) -> Result<Credit, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(self.free_for(&st, s))
    }

    /// What paced credit may reserve for `source`: its free room below
    /// `fraction` (e.g. the high watermark) of each limit it counts against
    /// (global, its entry stage, itself), and nothing while any later stage
    /// of its pipeline is above `fraction` of its limit (records there come
    /// from the entry stage; granting more would only pile them up).
    ///
    /// Why: granting up to the full limits let a fast source fill a level to
    /// 100 % (PAUSE) and then wait for it to drain to the low watermark
    /// (RESUME), 46 signals in 7.5 s of `sluice demo`; credit granted only
    /// below the high watermark keeps a source that stays within its credit
    /// from ever crossing it.
    pub fn available_below(&self, source: SourceId, fraction: f64) -> Result<Credit, BufferError> {
        let scaled = |l: Limit| {
            Limit::new(
                (l.records as f64 * fraction) as u64,
                (l.bytes as f64 * fraction) as u64,
            )
        };
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        let stage_limit = scaled(self.limits.per_stage);
        let downstream_full = self.pipelines[s.pipeline.index()]
            .stages
            .iter()
            .filter(|&&id| id != s.entry)
            .any(|id| {
                let used = st.stages[id.index()].usage.used;
                used.records > stage_limit.records || used.bytes > stage_limit.bytes
            });
        if downstream_full {
            return Ok(Credit::ZERO);
        }
        Ok(st
            .global
            .free(scaled(self.limits.global))
            .min(st.stages[s.entry.index()].usage.free(stage_limit))
            .min(s.usage.free(scaled(self.limits.per_source))))
    }

    /// Moves `source`'s sequence up so that its next record is `through +
    /// 1`, counting everything up to `through` as admitted and completed —
    /// only when the manager holds nothing of the source in flight (every
    /// record it admitted is completed, or it admitted none) and `through`
    /// is above its admitted sequence number. Returns whether it moved.
    ///
    /// For a source whose records up to `through` were completed elsewhere
    /// (another engine behind the same load balancer, or this process before
    /// a restart): it resumes without a sequence gap. Nothing admitted here
    /// is skipped, since nothing is in flight.
    pub fn resume_at(&self, source: SourceId, through: u64) -> Result<bool, BufferError> {
        let mut st = self.state.lock();
        if st.shutdown {
            return Err(BufferError::Closed);
        }
        let s = st
            .sources
            .get_mut(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        let in_flight = s.usage.used.records.saturating_sub(s.reserved.records);
        if in_flight > 0 || through <= s.admitted_through || (!s.started && through == 0) {
            return Ok(false);
        }
        s.started = true;
        s.admitted_through = through;
        s.acks.through = through;
        s.acks.pending.clear();
        Ok(true)
    }

    /// Free room of the global level alone.
    pub fn global_available(&self) -> Credit {
        self.state.lock().global.free(self.limits.global)
    }

    fn free_for(&self, st: &State<T>, s: &SourceAccount) -> Credit {
        st.global
            .free(self.limits.global)
            .min(st.stages[s.entry.index()].usage.free(self.limits.per_stage))
            .min(s.usage.free(self.limits.per_source))
    }

    /// Reserves up to `want` for `source` at the global level, its entry
    /// stage and itself, in one atomic step, and returns what was granted
    /// (possibly [`Credit::ZERO`]). A grant never carries records without
    /// bytes or the other way round.
    ///
    /// Reserved capacity counts as used at every level until records
    /// consume it in [`admit`](Self::admit) or it is
    /// [`release`](Self::release)d.
    pub fn reserve(&self, source: SourceId, want: Credit) -> Result<Credit, BufferError> {
        let mut st = self.state.lock();
        if st.shutdown {
            return Err(BufferError::Closed);
        }
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        let grant = self.free_for(&st, s).min(want);
        if grant.is_zero() {
            return Ok(Credit::ZERO);
        }
        let entry = s.entry.index();
        let st = &mut *st;
        st.global.add(grant);
        st.global_reserved.add(grant);
        let stage = &mut st.stages[entry];
        stage.usage.add(grant);
        stage.reserved.add(grant);
        let s = &mut st.sources[source.index()];
        s.usage.add(grant);
        s.reserved.add(grant);
        Ok(grant)
    }

    /// The capacity currently reserved for `source`.
    pub fn reserved(&self, source: SourceId) -> Result<Credit, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(s.reserved)
    }

    /// Gives back up to `amount` of `source`'s reservation (e.g. when it
    /// disconnects, pass its whole reservation) and returns what was released.
    pub fn release(&self, source: SourceId, amount: Credit) -> Result<Credit, BufferError> {
        let entry;
        let released;
        let mut wakeups = Wakeups::default();
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            let s = st
                .sources
                .get_mut(source.index())
                .ok_or(BufferError::UnknownSource(source))?;
            released = s.reserved.min(amount);
            if released == Credit::ZERO {
                return Ok(released);
            }
            entry = s.entry;
            s.reserved.sub(released);
            s.usage.sub(released);
            let stage = &mut st.stages[entry.index()];
            stage.reserved.sub(released);
            stage.usage.sub(released);
            st.global.sub(released);
            st.global_reserved.sub(released);
            st.freed(&self.limits, source, entry, &mut wakeups);
        }
        wakeups.wake();
        self.freed.notify_waiters();
        Ok(released)
    }

    /// Admits `payloads`, numbered `first_seq, first_seq + 1, …`, into the
    /// source's pipeline's first stage.
    ///
    /// Each record is paid for from the source's reservation first, then from
    /// free capacity of every level; the first record that does not fit and
    /// everything after it come back in [`Admission::rejected`] with the
    /// limit that was hit (so admitted sequence numbers stay contiguous).
    /// Leading records already admitted before (a resend: their sequence
    /// numbers are at or below [`admitted_through`](Self::admitted_through))
    /// are counted as duplicates and dropped: numbering is the caller's
    /// promise that a sequence number names one record. A producer that
    /// does not resend should let the buffer number its records
    /// ([`Producer::send`](crate::Producer::send)), which never drops one.
    ///
    /// On an error nothing is admitted and every record comes back in the
    /// [`AdmitError`]: a batch that would leave a gap, `first_seq` 0, a
    /// numbering past `u64::MAX`, an unknown source, a closed pipeline or a
    /// shut-down manager.
    ///
    /// `payloads` is a `Vec<T>` or a [`Pending`] batch built in the queues'
    /// record layout, which is admitted in place (no copy of its records);
    /// the rejected tail comes back in that layout too.
    pub fn admit(
        &self,
        source: SourceId,
        first_seq: u64,
        payloads: impl Into<Pending<T>>,
    ) -> Result<Admission<T>, AdmitError<T>> {
        let records = payloads.into();
        let route = match self.route(source) {
            Ok(route) => route,
            Err(error) => return Err(AdmitError { error, records }),
        };
        self.admit_with(route, Numbering::At(first_seq), records, None)
            .map(|(admission, _)| admission)
    }

    /// Where `source`'s records enter (fixed at registration).
    pub(crate) fn route(&self, source: SourceId) -> Result<Route, BufferError> {
        let st = self.state.lock();
        let s = st
            .sources
            .get(source.index())
            .ok_or(BufferError::UnknownSource(source))?;
        Ok(Route {
            source,
            entry: s.entry,
            pipeline: s.pipeline,
        })
    }

    /// [`admit`](Self::admit) for a known route, numbered as `numbering`
    /// says; with `wait`, a waiter registered (in the critical section that
    /// refused it) at the level that refused a tail for a full limit, which
    /// is returned with the admission.
    pub(crate) fn admit_with(
        &self,
        route: Route,
        numbering: Numbering,
        records: Pending<T>,
        wait: Option<Wait<'_>>,
    ) -> Result<(Admission<T>, Option<Level>), AdmitError<T>> {
        let Route {
            source,
            entry,
            pipeline,
        } = route;
        let n = records.len();
        let guess = match numbering {
            Numbering::At(first) => first,
            Numbering::Next { guess } => guess,
        };
        if let Err(error) = check_numbering(guess, n) {
            return Err(AdmitError { error, records });
        }
        // Lay the records out (or fill in their bookkeeping) outside the
        // critical section, so that the lock is held only to decide what
        // fits and to queue them: sessions admit while stage workers take
        // and complete.
        let Laid {
            layout: mut chunk,
            bytes: batch_bytes,
            largest,
        } = records.lay_out(PendingRecord {
            first_seq: guess,
            source,
            pipeline,
            stage: entry,
            now: Instant::now(),
        });
        let mut wakeups = Wakeups::default();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(Wait {
            id,
            previous: Some(level),
            ..
        }) = &wait
        {
            st.waiters(*level).remove(*id);
        }
        let refuse = |error, chunk| {
            Err(AdmitError {
                error,
                records: Pending::from_laid(chunk, batch_bytes, largest),
            })
        };
        if st.shutdown || st.pipelines[pipeline.index()].closed {
            return refuse(BufferError::Closed, chunk);
        }
        let s = &st.sources[source.index()];
        // In u128: after a batch that ended at u64::MAX, the next expected
        // number is u64::MAX + 1 (only duplicates can still come).
        let expected: u128 = if s.started {
            u128::from(s.admitted_through) + 1
        } else {
            u128::from(guess)
        };
        let first_seq = match numbering {
            Numbering::At(first) if u128::from(first) > expected => {
                // A gap is only possible below u64::MAX + 1.
                let error = BufferError::SequenceGap {
                    source_id: source,
                    expected: expected as u64,
                    got: first,
                };
                return refuse(error, chunk);
            }
            Numbering::At(first) => first,
            Numbering::Next { .. } if expected == u128::from(guess) => guess,
            Numbering::Next { .. } => {
                // Another handle of the source admitted since the guess:
                // number after it (rare; under the lock, so no record is
                // numbered twice).
                let Some(first) = u64::try_from(expected)
                    .ok()
                    .filter(|&f| check_numbering(f, n).is_ok())
                else {
                    let error = BufferError::SequenceOverflow {
                        first: u64::MAX,
                        count: n,
                    };
                    return refuse(error, chunk);
                };
                chunk.number_from(first);
                first
            }
        };
        let skip = (expected.saturating_sub(u128::from(first_seq))).min(n as u128) as usize;
        let stage_usage = st.stages[entry.index()].usage;

        // Work out, in this critical section, how long a prefix fits.
        let mut res_left = s.reserved;
        let free = st
            .global
            .free(self.limits.global)
            .min(stage_usage.free(self.limits.per_stage))
            .min(s.usage.free(self.limits.per_source));
        let mut new = Credit::ZERO; // capacity taken beyond the reservation
        let mut consumed = Credit::ZERO; // reservation used
        let mut fit = skip;
        let mut reason = None;
        let mut refused_need = Credit::ZERO;
        let max_size = self.limits.max_record_bytes();
        if skip == 0
            && largest <= max_size
            && res_left.records >= n as u64
            && res_left.bytes >= batch_bytes
        {
            // The common case under credit, decided at once from the
            // batch's totals: nothing resent, no record too large, and the
            // reservation covers the whole batch. The same outcome as the
            // loop below, which would take every record from the reservation.
            consumed = Credit::new(n as u64, batch_bytes);
            fit = n;
        } else if skip == 0
            && largest <= max_size
            && res_left == Credit::ZERO
            && free.records >= n as u64
            && free.bytes >= batch_bytes
        {
            // The common case without credit (a producer handle): the
            // whole batch fits in the free room, from its totals.
            new = Credit::new(n as u64, batch_bytes);
            fit = n;
        }
        for size in chunk.sizes_from(fit) {
            let size = u64::from(size);
            if size > max_size || size >= u64::from(u32::MAX) {
                reason = Some(self.too_large(size, entry, source));
                break;
            }
            let from_res_rec = u64::from(res_left.records > 0);
            let from_res_bytes = res_left.bytes.min(size);
            let need = Credit::new(1 - from_res_rec, size - from_res_bytes);
            let over_records = new.records + need.records > free.records;
            if over_records || new.bytes.saturating_add(need.bytes) > free.bytes {
                let unit = if over_records {
                    Unit::Records
                } else {
                    Unit::Bytes
                };
                reason = Some(self.limit_hit(st, source, entry, unit, new));
                refused_need = need;
                break;
            }
            res_left.sub(Credit::new(from_res_rec, from_res_bytes));
            consumed.add(Credit::new(from_res_rec, from_res_bytes));
            new.add(need);
            fit += 1;
        }

        let admitted = fit - skip;
        // Rare (a limit hit, a resend): split the tail off, copying the
        // shorter part, so that a refused batch (a waiting producer's
        // retry) is handed back as it is.
        let head = chunk.split_head(fit);
        let rejected_records = std::mem::replace(&mut chunk, head);
        // The admitted records start after the `skip` duplicates (and are
        // numbered from there).
        let duplicates = (skip > 0).then(|| {
            let admitted_records = chunk.split_off(skip);
            std::mem::replace(&mut chunk, admitted_records)
        });
        let admitted_bytes = new.bytes + consumed.bytes;
        if admitted > 0 {
            st.global.add(new);
            st.global_reserved.sub(consumed);
            let stage = &mut st.stages[entry.index()];
            stage.usage.add(new);
            stage.reserved.sub(consumed);
            stage.ready.push_chunk(chunk, admitted_bytes);
            stage
                .queued
                .add(Credit::new(admitted as u64, admitted_bytes));
            stage.ready_waiters.wake_all(&mut wakeups);
            let s = &mut st.sources[source.index()];
            s.usage.add(new);
            s.reserved.sub(consumed);
            if !s.started {
                s.started = true;
                s.acks.through = first_seq - 1;
            }
            // fit ≥ 1 here, and first_seq + n - 1 was checked not to overflow.
            s.admitted_through = first_seq + (fit as u64 - 1);
            s.admitted += admitted as u64;
        }
        // The refused tail's bytes: known from the totals unless duplicates
        // were dropped (rare).
        let tail_bytes = if skip == 0 {
            batch_bytes - admitted_bytes
        } else {
            rejected_records.sizes().map(u64::from).sum()
        };
        let mut waiting_at = None;
        if let (Some(RejectReason::Limit { level, .. }), Some(wait)) = (reason, wait) {
            // Registered where the level refused: a release of it after
            // this point that makes the room it waits for takes the waker
            // (see `channel/waiters.rs`).
            let tail = Credit::new(rejected_records.len() as u64, tail_bytes);
            let need = self.wake_need(level, refused_need, tail, res_left);
            st.waiters(level).register(wait.id, wait.waker, need);
            waiting_at = Some(level);
        }
        let s = &mut st.sources[source.index()];
        s.refused += rejected_records.len() as u64;
        let admitted_through = s.admitted_through;
        drop(guard);
        wakeups.wake();
        drop(duplicates);
        let rejected = reason.map(|reason| Rejected {
            first_seq: first_seq + fit as u64,
            // The batch's largest bounds its tail's (all `admit` needs).
            records: Pending::from_laid(rejected_records, tail_bytes, largest),
            reason,
        });
        let admission = Admission {
            admitted,
            admitted_bytes,
            duplicates: skip,
            admitted_through,
            rejected,
        };
        Ok((admission, waiting_at))
    }

    /// The room a producer refused at `level` waits for there: room for
    /// its whole refused tail (beyond what its reservation still covers),
    /// but no more than half of the level's limit, and at least what the
    /// first refused record needs.
    ///
    /// Why not just the first record: woken as soon as one record fits, a
    /// producer admits a sliver of its batch and waits again, in lockstep
    /// with each completion; its batches break up into ever smaller chunks
    /// that every later step handles one by one. Measured (BENCHMARKS.md,
    /// 1 producer / 1 consumer) that was the largest cost of `send`. Why
    /// the cap at half: a tail larger than the free room can ever be (a
    /// batch above the limit, other sources holding their share) must still
    /// be woken; a consumer that holds more than half of a limit
    /// uncompleted while it waits for more would still stall its producers.
    pub(super) fn wake_need(
        &self,
        level: Level,
        first: Credit,
        tail: Credit,
        reserved: Credit,
    ) -> Credit {
        let limit = match level {
            Level::Global => self.limits.global,
            Level::Stage(_) => self.limits.per_stage,
            Level::Source(_) => self.limits.per_source,
        };
        let beyond = Credit::new(
            tail.records.saturating_sub(reserved.records),
            tail.bytes.saturating_sub(reserved.bytes),
        );
        Credit::new(
            beyond.records.min(limit.records / 2).max(first.records),
            beyond.bytes.min(limit.bytes / 2).max(first.bytes),
        )
    }

    fn too_large(&self, size: u64, entry: StageId, source: SourceId) -> RejectReason {
        let l = &self.limits;
        let (level, limit) = if size > l.per_source.bytes {
            (Level::Source(source), l.per_source.bytes)
        } else if size > l.per_stage.bytes {
            (Level::Stage(entry), l.per_stage.bytes)
        } else if size > l.global.bytes {
            (Level::Global, l.global.bytes)
        } else {
            (Level::Source(source), u64::from(u32::MAX))
        };
        RejectReason::TooLarge { level, size, limit }
    }

    /// The level that blocks one more record after `new` was taken.
    fn limit_hit(
        &self,
        st: &State<T>,
        source: SourceId,
        entry: StageId,
        unit: Unit,
        new: Credit,
    ) -> RejectReason {
        let pick = |c: Credit| match unit {
            Unit::Records => c.records,
            Unit::Bytes => c.bytes,
        };
        let pick_l = |l: Limit| match unit {
            Unit::Records => l.records,
            Unit::Bytes => l.bytes,
        };
        let levels = [
            (
                Level::Source(source),
                st.sources[source.index()].usage.used,
                self.limits.per_source,
            ),
            (
                Level::Stage(entry),
                st.stages[entry.index()].usage.used,
                self.limits.per_stage,
            ),
            (Level::Global, st.global.used, self.limits.global),
        ];
        let (level, used, limit) = levels
            .into_iter()
            .min_by_key(|(_, used, limit)| pick_l(*limit).saturating_sub(pick(*used)))
            .unwrap_or(levels[2]);
        RejectReason::Limit {
            level,
            unit,
            limit: pick_l(limit),
            used: pick(used) + pick(new),
        }
    }
}
