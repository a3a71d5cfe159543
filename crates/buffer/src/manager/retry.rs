//! Failed records: back to their stage's queue after a backoff
//! ([`retry`](BufferManager::retry)), or handed out as dead letters once
//! their retries are used up. Nothing changes level here: the records stay
//! counted.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use super::state::Delayed;
use super::{BufferManager, Credit};
use crate::channel::waiters::Wakeups;
use crate::record::{BufferedRecord, DeadLetter, RetryState};

impl<T> BufferManager<T> {
    /// Returns failed records to their stage's queue with `retry_count + 1`,
    /// not to be handed out before the policy's backoff. This never fails and
    /// never drops: the records are already counted. Records that already had
    /// `max_retries` retries come back as [`DeadLetter`]s, still counted, for
    /// the caller to write to a dead-letter sink and then
    /// [`complete_dead_letters`](Self::complete_dead_letters).
    pub fn retry(
        &self,
        records: Vec<BufferedRecord<T>>,
        error: impl Into<Arc<str>>,
    ) -> Vec<DeadLetter<T>> {
        let error = error.into();
        self.retry_each(records.into_iter().map(|r| (r, error.clone())))
    }

    /// Like [`retry`](Self::retry), with an error per record.
    pub fn retry_each(
        &self,
        failed: impl IntoIterator<Item = (BufferedRecord<T>, Arc<str>)>,
    ) -> Vec<DeadLetter<T>> {
        let mut dead = Vec::new();
        let mut wakeups = Wakeups::default();
        let now = Instant::now();
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            for (mut r, error) in failed {
                let count = r.retry_count();
                if count >= self.retry.max_retries {
                    match &mut r.retry {
                        Some(state) => state.last_error = error.clone(),
                        None => {
                            r.retry = Some(Box::new(RetryState {
                                count,
                                last_error: error.clone(),
                                not_before: now,
                            }))
                        }
                    }
                    dead.push(DeadLetter { record: r, error });
                    continue;
                }
                let at = now + self.retry.backoff(count + 1);
                match &mut r.retry {
                    Some(state) => {
                        state.count = count + 1;
                        state.last_error = error;
                        state.not_before = at;
                    }
                    None => {
                        r.retry = Some(Box::new(RetryState {
                            count: count + 1,
                            last_error: error,
                            not_before: at,
                        }))
                    }
                }
                st.sources[r.source.index()].retried += 1;
                let stage = r.stage;
                let st_stage = &mut st.stages[stage.index()];
                st_stage.queued.add(Credit::new(1, u64::from(r.size)));
                st.delay_order += 1;
                st_stage.delayed.push(Reverse(Delayed {
                    at,
                    order: st.delay_order,
                    record: r,
                }));
                st.stages[stage.index()]
                    .ready_waiters
                    .wake_all(&mut wakeups);
            }
        }
        wakeups.wake();
        dead
    }
}
