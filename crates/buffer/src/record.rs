//! Records as the buffer holds them, and the identifiers that address them.

use std::sync::Arc;
use std::time::Instant;

/// Identifies a source registered with a [`BufferManager`](crate::BufferManager).
///
/// Ids are small dense integers handed out by
/// [`register_source`](crate::BufferManager::register_source); the name a
/// source was registered under is kept by the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub(crate) u32);

/// Identifies one stage of one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub(crate) u32);

/// Identifies a pipeline: an ordered list of stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineId(pub(crate) u32);

macro_rules! id_index {
    ($($t:ident),*) => {$(
        impl $t {
            /// The dense index of this id (0, 1, 2, …), handy for per-id tables.
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}
id_index!(SourceId, StageId, PipelineId);

/// How many bytes a payload counts for against the byte limits.
///
/// Implemented for the common owned byte containers; implement it for your
/// own payload type to embed the buffer. The size is taken once, at
/// admission, and stays the record's charge until it is completed.
pub trait ByteSize {
    /// The number of bytes this value is charged for.
    fn byte_size(&self) -> usize;
}

impl ByteSize for Vec<u8> {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for String {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for Box<[u8]> {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for Arc<[u8]> {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for &'static str {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
#[cfg(feature = "bytes")]
impl ByteSize for bytes::Bytes {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for &'static [u8] {
    fn byte_size(&self) -> usize {
        self.len()
    }
}
impl ByteSize for () {
    fn byte_size(&self) -> usize {
        0
    }
}
impl<T: ByteSize> ByteSize for Box<T> {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}
impl<T: ByteSize> ByteSize for Arc<T> {
    fn byte_size(&self) -> usize {
        (**self).byte_size()
    }
}

/// Retry bookkeeping, boxed because most records never fail: it keeps the
/// common record small.
#[derive(Debug, Clone)]
pub(crate) struct RetryState {
    pub(crate) count: u32,
    pub(crate) last_error: Arc<str>,
    pub(crate) not_before: Instant,
}

/// A record inside the buffer, with everything the buffer knows about it.
///
/// The payload is yours to read and replace (a transform rewrites it); the
/// bookkeeping fields are read-only, because the manager's counts depend on
/// them. The byte charge (`size`) was fixed at admission.
#[derive(Debug)]
pub struct BufferedRecord<T> {
    /// The record's data.
    pub payload: T,
    pub(crate) seq: u64,
    pub(crate) source: SourceId,
    pub(crate) pipeline: PipelineId,
    pub(crate) stage: StageId,
    pub(crate) size: u32,
    pub(crate) buffered_at: Instant,
    pub(crate) retry: Option<Box<RetryState>>,
}

/// The read-only accessors of a record's bookkeeping, shared by
/// [`BufferedRecord`] and [`RecordRef`](crate::RecordRef) (fields `seq`,
/// `source`, `pipeline`, `stage`, `size: u32`, `buffered_at` and a `retry`
/// that derefs to `Option<&RetryState>`), so that both read alike.
macro_rules! record_accessors {
    () => {
        /// The source's sequence number of this record.
        pub fn seq(&self) -> u64 {
            self.seq
        }
        /// The source that sent it.
        pub fn source(&self) -> SourceId {
            self.source
        }
        /// The pipeline it travels through.
        pub fn pipeline(&self) -> PipelineId {
            self.pipeline
        }
        /// The stage whose queue it counts against (it was taken from).
        pub fn stage(&self) -> StageId {
            self.stage
        }
        /// The bytes it is charged for at every level.
        pub fn size(&self) -> u64 {
            u64::from(self.size)
        }
        /// When it was admitted.
        pub fn buffered_at(&self) -> Instant {
            self.buffered_at
        }
        /// How many times it has been returned with an error (0 for a fresh record).
        pub fn retry_count(&self) -> u32 {
            self.retry.as_deref().map_or(0, |r| r.count)
        }
        /// The error of its last failure, if any.
        pub fn last_error(&self) -> Option<&str> {
            self.retry.as_deref().map(|r| &*r.last_error)
        }
        /// It is not handed out again before this time (set by a retry's backoff).
        pub fn not_before(&self) -> Option<Instant> {
            self.retry.as_deref().map(|r| r.not_before)
        }
    };
}
pub(crate) use record_accessors;

impl<T> BufferedRecord<T> {
    record_accessors!();
}

/// A record that failed more than `max_retries` times.
///
/// It still counts against every limit: route it to a dead-letter sink, then
/// hand it to [`complete_dead_letters`](crate::BufferManager::complete_dead_letters),
/// which releases the capacity and counts it as dead-lettered (and acks it).
#[derive(Debug)]
pub struct DeadLetter<T> {
    /// The record, payload as it was at the failing stage.
    pub record: BufferedRecord<T>,
    /// The error of the final failure.
    pub error: Arc<str>,
}

impl<T> DeadLetter<T> {
    /// The stage where it failed for the last time.
    pub fn stage(&self) -> StageId {
        self.record.stage
    }
    /// How many retries it had before it was given up (equals `max_retries`).
    pub fn retries(&self) -> u32 {
        self.record.retry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bookkeeping a buffered record carries besides its payload; the
    /// figure in BENCHMARKS.md. Growing it is a decision, not an accident.
    #[test]
    fn bookkeeping_per_record_is_48_bytes() {
        assert_eq!(std::mem::size_of::<BufferedRecord<()>>(), 48);
    }
}
