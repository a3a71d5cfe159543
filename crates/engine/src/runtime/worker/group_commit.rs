//! The sink stage with group commit, for a sink whose
//! [`group_commit`](Sink::group_commit) is above 1: the next batches are
//! written while a commit runs, and one commit covers them all.
//!
//! Two futures of the stage's one task, joined:
//!
//! - the *producer* collects a batch, takes a slot of the channel (at most
//!   `group_commit` batches wait for a commit: the bound on what is written
//!   and not acked, besides the group being committed), writes it and hands
//!   it over, with no await point between the write's completion and the
//!   hand-over;
//! - the *committer* takes every batch handed over so far (a group), calls
//!   `commit` at once (in the same poll: the commit covers exactly the
//!   group's writes, see [`Sink::group_commit`]), and once it returned `Ok`
//!   completes the group's batches (acks follow the commit that covers them).
//!
//! A failed commit or write starts a *repair*: the batches written before it
//! was noticed get a commit of their own (they may not be lost), then every
//! batch not known to be committed is written again one by one through the
//! stall logic ([`Worker::write_through`]: backoff, sources paused, one WARN
//! and one INFO), and so is every batch the producer hands over meanwhile,
//! which it then does not write: during a repair the committer is the only
//! writer, so each of its commits covers its own batch and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Parts, SinkRole, Worker};
use crate::runtime::timing::add;
use crate::sink::{Sink, SinkBatch, SinkError, SourceNames, Written};

/// A batch on its way from the producer to the committer.
struct Item {
    parts: Parts,
    names: SourceNames,
    state: State,
}

/// What the producer did with a batch.
enum State {
    /// Written; what the sink said of its records.
    Written(Written),
    /// The write failed (sink-level).
    Failed(SinkError),
    /// Not written: a repair was under way.
    Unwritten,
}

/// The batches of a group that must be written again, and the failures
/// met (each a failed attempt in the sink's health).
#[derive(Default)]
struct Failed {
    items: Vec<Item>,
    errors: Vec<SinkError>,
}

impl Failed {
    /// `item` must be written again (its own write's error, if any, is kept).
    fn push(&mut self, mut item: Item) {
        if let State::Failed(e) = std::mem::replace(&mut item.state, State::Unwritten) {
            self.errors.push(e);
        }
        self.items.push(item);
    }
}

impl Worker {
    /// Runs the sink stage with group commit until the buffer shuts down.
    pub(super) async fn group_commit(&self, sink: &Arc<dyn Sink>) {
        let window = sink.group_commit().max(1);
        let (tx, rx) = mpsc::channel::<Item>(window);
        // Set by the committer for the length of a repair (from the drain
        // that follows the failure to the drain that finds nothing); while
        // set, the producer hands its batches over unwritten. Producer and
        // committer are futures of one task, so a check and the write that
        // follows it happen in one poll, with no committer step between them
        // (checked by `group_commit_repairs_a_failed_commit_without_losing_acked_records`).
        let repairing = AtomicBool::new(false);
        tokio::join!(
            self.produce(&**sink, tx, &repairing),
            self.commit_groups(&**sink, rx, &repairing)
        );
    }

    /// Collects, writes and hands over batches until the buffer shuts down
    /// (then drops the channel, which ends the committer once it is empty).
    async fn produce(&self, sink: &dyn Sink, tx: mpsc::Sender<Item>, repairing: &AtomicBool) {
        loop {
            let t = Instant::now();
            let Some(parts) = self.collect().await else {
                break;
            };
            add(&self.times.idle_ns, t);
            let t = Instant::now();
            // Waiting for a slot: the sink's commits are behind.
            let Ok(slot) = tx.reserve().await else {
                break;
            };
            add(&self.times.blocked_ns, t);
            let t = Instant::now();
            let names = self.source_names(parts.iter().flatten().map(|r| r.source()));
            let state = if repairing.load(Ordering::Relaxed) {
                State::Unwritten
            } else {
                match sink.write(SinkBatch::parts(&parts, &names)).await {
                    Ok(written) => State::Written(written),
                    Err(e) => State::Failed(e),
                }
            };
            // No await point between the write's completion and this.
            slot.send(Item {
                parts,
                names,
                state,
            });
            add(&self.times.busy_ns, t);
        }
    }

    /// Commits what the producer hands over, group by group, completes it,
    /// and repairs after a failure (see the module docs).
    async fn commit_groups(
        &self,
        sink: &dyn Sink,
        mut rx: mpsc::Receiver<Item>,
        repairing: &AtomicBool,
    ) {
        while let Some(first) = rx.recv().await {
            let group = drain(&mut rx, vec![first]);
            let mut failed = self.commit_group(sink, group).await;
            if failed.items.is_empty() {
                continue;
            }
            repairing.store(true, Ordering::Relaxed);
            // Written after the failed commit was called, before this poll:
            // a commit of their own, before anything is written again.
            let later = drain(&mut rx, Vec::new());
            if !later.is_empty() {
                let more = self.commit_group(sink, later).await;
                failed.items.extend(more.items);
                failed.errors.extend(more.errors);
            }
            // From here on the producer writes nothing.
            tracing::debug!(pipeline = %self.pipeline.name, batches = failed.items.len(),
                "group commit failed; writing its batches again one by one");
            let mut errors = failed.errors;
            for item in failed.items {
                self.rewrite(sink, item, std::mem::take(&mut errors)).await;
            }
            while let Ok(item) = rx.try_recv() {
                self.rewrite(sink, item, Vec::new()).await;
            }
            repairing.store(false, Ordering::Relaxed);
        }
    }

    /// Commits `group` (if any of it was written) and completes what that
    /// commit covered; returns what must be written again.
    async fn commit_group(&self, sink: &dyn Sink, group: Vec<Item>) -> Failed {
        let any_written = group.iter().any(|i| matches!(i.state, State::Written(_)));
        // Called in the poll that drained the group (no await before it).
        let committed = if any_written {
            sink.commit().await
        } else {
            Ok(())
        };
        let t = Instant::now();
        let mut failed = Failed::default();
        match committed {
            Ok(()) => {
                for item in group {
                    match item.state {
                        State::Written(written) => {
                            self.complete_written(item.parts, written).await;
                        }
                        State::Failed(_) | State::Unwritten => failed.push(item),
                    }
                }
            }
            Err(e) => {
                failed.errors.push(e);
                for item in group {
                    failed.push(item);
                }
            }
        }
        add(&self.times.busy_ns, t);
        failed
    }

    /// Writes one batch again and commits it, through any stall
    /// ([`write_through`](Worker::write_through), `errors` counting as its
    /// first, failed attempts), then completes it.
    async fn rewrite(&self, sink: &dyn Sink, item: Item, errors: Vec<SinkError>) {
        let batch = SinkBatch::parts(&item.parts, &item.names);
        let Some(written) = self
            .write_through(sink, SinkRole::Sink, batch, errors)
            .await
        else {
            return;
        };
        let t = Instant::now();
        self.complete_written(item.parts, written).await;
        add(&self.times.busy_ns, t);
    }
}

/// `group` and whatever else is in `rx` now.
fn drain(rx: &mut mpsc::Receiver<Item>, mut group: Vec<Item>) -> Vec<Item> {
    while let Ok(item) = rx.try_recv() {
        group.push(item);
    }
    group
}
