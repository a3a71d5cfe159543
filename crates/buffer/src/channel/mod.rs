//! The handles: the buffer used like a channel.
//!
//! A [`Producer`] per source sends batches and waits for room; a
//! [`Consumer`] per stage receives them and completes them. [`channel`] makes
//! a buffer of one pipeline with one stage and returns its handles, in one
//! expression:
//!
//! ```
//! use sluice_buffer::Limits;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (producers, consumer) = sluice_buffer::channel::<String>(Limits::records(10_000))?;
//! let mut app = producers.producer("app")?;
//! drop(producers); // the pipeline closes when every producer handle is gone
//! tokio::spawn(async move {
//!     app.send(vec!["hello".to_string(), "world".to_string()]).await?;
//!     Ok::<_, sluice_buffer::SendError<String>>(())
//! });
//! let mut seen = Vec::new();
//! while let Some(batch) = consumer.recv().await {
//!     seen.extend(batch.iter().map(|r| r.payload.clone()));
//!     consumer.complete(batch); // frees the room, wakes a waiting producer
//! }
//! assert_eq!(seen, ["hello", "world"]);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! Parts, one concept each:
//!
//! - `producer.rs`: [`Producers`] (a pipeline's factory of producers) and
//!   [`Producer`] with its [`Send`] future.
//! - `consumer.rs`: [`Consumer`] and its [`Recv`] future.
//! - `batch.rs`: [`Batch`], what a consumer takes: a producer's `Vec` as
//!   it was sent when taken whole, else laid-out records; [`RecordRef`].
//! - `waiters.rs`: the wait lists under the manager's lock, one per level,
//!   that make the wake-ups exact (no lost one, no herd).
//! - `error.rs`: [`SendError`], [`TrySendError`], [`TryRecvError`]: every
//!   failed send hands its records back.

mod batch;
mod consumer;
mod error;
mod producer;
pub(crate) mod waiters;

pub use batch::{Batch, BatchIter, RecordRef};
pub use consumer::{Consumer, DEFAULT_BATCH, Recv};
pub use error::{SendError, SendFailure, TryRecvError, TrySendError};
pub use producer::{Producer, Producers, Send};

use std::sync::Arc;

use crate::error::BuildError;
use crate::limits::Limits;
use crate::manager::{BufferManager, BufferManagerBuilder};

/// A buffer of one pipeline with one stage, within `limits`, and its
/// handles: a factory of producers (one per source) and the stage's
/// consumer. `BufferManager::builder(limits).channel()` with every default.
pub fn channel<T>(limits: Limits) -> Result<(Producers<T>, Consumer<T>), BuildError> {
    BufferManager::<T>::builder(limits).channel()
}

impl BufferManagerBuilder {
    /// Builds a buffer of one pipeline with one stage and returns its
    /// handles (see [`channel`]). Without a [`pipeline`](Self::pipeline) it
    /// has one named `default` with one stage named `sink`; with more than
    /// one pipeline or stage, use [`build`](Self::build) and
    /// [`BufferManager::producers`] / [`BufferManager::consumer`].
    pub fn channel<T>(self) -> Result<(Producers<T>, Consumer<T>), BuildError> {
        let manager = Arc::new(self.build_single::<T>()?);
        let pipeline = &manager.pipelines()[0];
        let (id, stage) = (pipeline.id, pipeline.stages[0]);
        // Neither can fail on a pipeline and stage just built.
        let producers = manager.producers(id).map_err(|_| BuildError::NotAChannel)?;
        let consumer = manager
            .consumer(stage)
            .map_err(|_| BuildError::NotAChannel)?;
        Ok((producers, consumer))
    }
}
