//! The message gate: how much of a stream the engine reads before the
//! capacity for it is counted.
//!
//! Why: tonic's decoder keeps each stream's message whole before the
//! session sees it, up to `server.max_message_bytes`, outside the buffer
//! manager. Sixteen connections that each sent `Open` and the start of a
//! 16 MiB batch made the engine hold 8.5 × its 32 MiB byte budget
//! (BENCHMARKS.md, "Adversarial memory"). The gate reads each message's
//! gRPC length prefix before any of its body is passed on, and:
//!
//! - a message of at most [`SMALL_MESSAGE`] bytes is read at once (`Open`,
//!   `Backlog`, `Release`, small batches);
//! - a message above `server.max_message_bytes` is passed to tonic, which
//!   refuses it at its prefix (`OUT_OF_RANGE`, naming the limit) before
//!   buffering any of it;
//! - a message the stream's credit covers is read at once: its length fits
//!   in the capacity the buffer holds reserved for the source
//!   ([`BufferManager::reserved`]), with [`FRAMING_PER_RECORD`] bytes of
//!   framing per reserved record, less the covered messages read and not yet
//!   handled. Its memory is a reservation the byte budget already counts;
//! - any other message first takes its length from the engine-wide pool of
//!   `server.uncovered_message_bytes`, in arrival order (a fair semaphore),
//!   and the stream is not read further until it has: HTTP/2 flow control
//!   then stops the client. One larger than the whole pool ends the stream
//!   `OUT_OF_RANGE` (`Opened.max_record_bytes` says which records always fit). Once it has its room it must arrive whole within
//!   `server.message_timeout`, or the stream ends `DEADLINE_EXCEEDED`, so a
//!   client that sends the start of a message and never its end holds the
//!   pool for that long at most.
//!
//! What a message took is held until the session has handled it (its
//! records admitted, which turns the reservation into a charge, or
//! rejected): the decoder moves it to the message being handled
//! ([`StreamGate::decoding`]) and the session lets it go
//! ([`StreamGate::handled`]). Nothing is refused that was accepted before
//! except a message larger than the pool that its credit does not cover:
//! with the default pool (`Settings::uncovered_message_bytes`) that is only
//! possible with a byte budget below 8 × `server.max_message_bytes`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use parking_lot::Mutex;
use sluice_buffer::{BufferManager, SourceId};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::{Body, StdError};

use crate::record::EngineRecord;

/// Messages up to this many bytes are read without a check (control
/// messages; a batch this small costs less than its stream's HTTP/2 window).
pub(crate) const SMALL_MESSAGE: u64 = 16 * 1024;

/// Framing bytes allowed per reserved record when a message is checked
/// against its stream's credit: a record's size (`Record`'s definition)
/// counts its key, payload and attributes, and the wire adds tags and
/// lengths (about 8 bytes for a record with a key, a payload and an event
/// time). A message with more framing than this is not lost: it goes
/// through the pool.
pub(crate) const FRAMING_PER_RECORD: u64 = 32;

/// Framing allowed per message: the `SourceMessage` and `Batch` tags and
/// lengths, `first_seq` and `batch_id`.
const FRAMING_PER_MESSAGE: u64 = 64;

/// Framing kept free when a record must fit in the pool alone: its message's
/// tags and lengths and a few attributes' (`largest_record`).
const RECORD_SLACK: u64 = 1024;

/// The engine-wide pool of bytes for messages their stream's credit does
/// not cover (`server.uncovered_message_bytes`), and how long a message
/// holding part of it may take to arrive (`server.message_timeout`).
#[derive(Debug)]
pub(crate) struct MessagePool {
    /// One permit per byte. Invariant: the permits taken are the sum of the
    /// [`Took::Pooled`] permits held by streams (read and not yet handled):
    /// a permit is returned only by dropping its `OwnedSemaphorePermit`.
    room: Arc<Semaphore>,
    capacity: u64,
    timeout: Duration,
    /// `server.max_message_bytes`: a larger message is tonic's to refuse
    /// (at its prefix, before buffering anything), with its own status.
    max_message: u64,
}

impl MessagePool {
    /// A pool of `capacity` bytes (at least 1), a message in it arriving
    /// within `timeout`, for messages of at most `max_message` bytes.
    pub(crate) fn new(capacity: usize, timeout: Duration, max_message: usize) -> Self {
        let capacity = (capacity as u64).clamp(1, u64::from(u32::MAX));
        Self {
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            timeout,
            max_message: max_message as u64,
        }
    }

    /// The largest record a stream can always get read, given the buffer's
    /// `limit` (`Limits::max_record_bytes`) and the stream's byte window:
    /// one up to half the window is sent within byte credit (covered); a
    /// larger one, sent under the large-record rule on less credit than its
    /// size, must fit in the pool with its framing (`Opened.max_record_bytes`).
    pub(crate) fn largest_record(&self, limit: u64, window_bytes: u64) -> u64 {
        limit.min((window_bytes / 2).max(self.capacity.saturating_sub(RECORD_SLACK)))
    }

    /// Bytes of uncovered messages read and not yet handled.
    pub(crate) fn in_use(&self) -> u64 {
        self.capacity - self.room.available_permits() as u64
    }
}

/// What a message larger than [`SMALL_MESSAGE`] took when it was let in.
#[derive(Debug)]
enum Took {
    /// Covered by the stream's credit: this many bytes of it.
    Covered(u64),
    /// Room in the pool.
    Pooled {
        /// Returned to the pool when dropped.
        _room: OwnedSemaphorePermit,
    },
}

/// The source a stream feeds, once it has sent `Open`.
#[derive(Debug)]
struct Opened {
    buffer: Arc<BufferManager<EngineRecord>>,
    source: SourceId,
    name: String,
}

/// One stream's side of the gate, shared by its [`GatedBody`], its decoder
/// and its session (all polled by the session's task, in that order for
/// each message).
#[derive(Debug)]
pub(crate) struct StreamGate {
    pool: Arc<MessagePool>,
    opened: OnceLock<Opened>,
    /// What each message let in and not yet decoded took, in stream order,
    /// and what the message being handled took.
    ///
    /// A covered message enters the ledger (by the body) only after the
    /// check against the reservation, and leaves it (by `handled`) only
    /// after the session admitted its records, which lowered the
    /// reservation first: a check in between errs on the strict side.
    took: Mutex<Ledger>,
    /// The status the gate ended the stream with, for the session to send
    /// as it is.
    failure: OnceLock<Status>,
}

/// What a stream's messages took (see `StreamGate::took`); dropping an
/// entry lets it go.
#[derive(Debug, Default)]
struct Ledger {
    queue: VecDeque<Took>,
    handling: Option<Took>,
}

impl Ledger {
    /// Bytes of covered messages let in and not yet handled (a message or
    /// two: the ledger holds what the decoder has not reached).
    fn covered_in_flight(&self) -> u64 {
        self.queue
            .iter()
            .chain(&self.handling)
            .map(|t| match t {
                Took::Covered(n) => *n,
                Took::Pooled { .. } => 0,
            })
            .sum()
    }
}

/// How a message is let in.
enum Admit {
    /// At once.
    Now,
    /// Once it has this much room in the pool.
    Pool(u32),
}

impl StreamGate {
    /// A gate over `pool` for a stream that has not sent `Open` yet.
    pub(crate) fn new(pool: Arc<MessagePool>) -> Self {
        Self {
            pool,
            opened: OnceLock::new(),
            took: Mutex::new(Ledger::default()),
            failure: OnceLock::new(),
        }
    }

    /// The stream feeds `source` (named `name`): from now on its messages
    /// are checked against the capacity reserved for it.
    pub(crate) fn opened(
        &self,
        buffer: Arc<BufferManager<EngineRecord>>,
        source: SourceId,
        name: &str,
    ) {
        let _ = self.opened.set(Opened {
            buffer,
            source,
            name: name.to_owned(),
        });
    }

    /// The decoder is about to decode a message of `len` bytes: what it
    /// took becomes the message being handled (and what the previous one
    /// took, if the session did not let it go, is let go).
    pub(crate) fn decoding(&self, len: u64) {
        if len <= SMALL_MESSAGE {
            return;
        }
        let mut t = self.took.lock();
        t.handling = t.queue.pop_front();
    }

    /// The session has handled the last message it read: what it took is
    /// let go.
    pub(crate) fn handled(&self) {
        self.took.lock().handling = None;
    }

    /// The status the gate ended the stream with, if it did.
    pub(crate) fn failure(&self) -> Option<Status> {
        self.failure.get().cloned()
    }

    fn who(&self) -> String {
        match self.opened.get() {
            Some(o) => format!("source {:?}", o.name),
            None => "a stream that has not sent Open".to_owned(),
        }
    }

    /// Decides how a message of `len` bytes is let in; a covered one is
    /// counted in flight at once.
    fn admit(&self, len: u64) -> Result<Admit, Status> {
        if len <= SMALL_MESSAGE || len > self.pool.max_message {
            return Ok(Admit::Now);
        }
        let reserved = self
            .opened
            .get()
            .and_then(|o| o.buffer.reserved(o.source).ok());
        let mut t = self.took.lock();
        if let Some(r) = reserved {
            let covers = r
                .bytes
                .saturating_add(r.records.saturating_mul(FRAMING_PER_RECORD))
                .saturating_add(FRAMING_PER_MESSAGE);
            if t.covered_in_flight().saturating_add(len) <= covers {
                t.queue.push_back(Took::Covered(len));
                return Ok(Admit::Now);
            }
        }
        drop(t);
        if len > self.pool.capacity {
            // OUT_OF_RANGE, as for a message above `max_message_bytes`: it
            // can never be read, so sources do not retry it.
            let credit = reserved.map_or(0, |r| r.bytes);
            return Err(Status::out_of_range(format!(
                "{}: a message of {len} bytes is more than its credit covers ({credit} bytes \
                 reserved) and more than server.uncovered_message_bytes ({} bytes) allows for \
                 messages beyond credit; send batches within the byte credit",
                self.who(),
                self.pool.capacity
            )));
        }
        // len ≤ capacity ≤ u32::MAX.
        Ok(Admit::Pool(len as u32))
    }

    fn fail(&self, status: Status) -> Status {
        tracing::info!(code = ?status.code(), message = status.message(), "message gate ended a stream");
        let _ = self.failure.set(status.clone());
        status
    }
}

/// Where the reading of the gRPC framing stands.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// In a message's 5-byte prefix: `got` bytes of it so far.
    Prefix { got: usize, prefix: [u8; 5] },
    /// In a message's body: `left` bytes to go.
    Body { left: u64 },
}

const AT_PREFIX: Read = Read::Prefix {
    got: 0,
    prefix: [0; 5],
};

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body passed through the [`StreamGate`]: the data is passed on
/// unchanged, each message's body only once the gate let it in.
pub(crate) struct GatedBody<B> {
    inner: Pin<Box<B>>,
    gate: Arc<StreamGate>,
    /// Data read from `inner` and not passed on yet.
    rest: Bytes,
    read: Read,
    /// Waiting for room in the pool for the message whose prefix was
    /// passed on last.
    waiting: Option<Acquire>,
    /// The pooled message being read must be whole by then.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<B> GatedBody<B> {
    /// `inner` through `gate`.
    pub(crate) fn new(inner: B, gate: Arc<StreamGate>) -> Self {
        Self {
            inner: Box::pin(inner),
            gate,
            rest: Bytes::new(),
            read: AT_PREFIX,
            waiting: None,
            deadline: None,
            done: false,
        }
    }

    /// Reads the framing of `rest` up to where it must stop: its end, or
    /// the end of a prefix whose message must wait for room in the pool.
    /// Returns how many bytes of `rest` to pass on.
    fn scan(&mut self) -> Result<usize, Status> {
        let bytes = &self.rest[..];
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.read {
                Read::Body { left } => {
                    let n = (*left).min((bytes.len() - i) as u64);
                    i += n as usize;
                    *left -= n;
                    if *left == 0 {
                        self.read = AT_PREFIX;
                        self.deadline = None;
                    }
                }
                Read::Prefix { got, prefix } => {
                    let n = (5 - *got).min(bytes.len() - i);
                    prefix[*got..*got + n].copy_from_slice(&bytes[i..i + n]);
                    *got += n;
                    i += n;
                    if *got < 5 {
                        continue;
                    }
                    let len = u64::from(u32::from_be_bytes([
                        prefix[1], prefix[2], prefix[3], prefix[4],
                    ]));
                    self.read = if len == 0 {
                        AT_PREFIX
                    } else {
                        Read::Body { left: len }
                    };
                    match self.gate.admit(len)? {
                        Admit::Now => {}
                        Admit::Pool(n) => {
                            let room = self.gate.pool.room.clone();
                            self.waiting = Some(Box::pin(room.acquire_many_owned(n)));
                            return Ok(i);
                        }
                    }
                }
            }
        }
        Ok(i)
    }

    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        self.done = true;
        self.waiting = None;
        self.deadline = None;
        Poll::Ready(Some(Err(Box::new(self.gate.fail(status)))))
    }

    fn late(&self) -> Status {
        Status::deadline_exceeded(format!(
            "{}: a message beyond its credit did not arrive whole within \
             server.message_timeout ({:?}) of being let in",
            self.gate.who(),
            self.gate.pool.timeout
        ))
    }
}

impl<B> Body for GatedBody<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // Every field is `Unpin` (the inner body is boxed).
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(waiting) = &mut this.waiting {
                // Not reading while waiting: HTTP/2 flow control holds the
                // client at its stream window.
                match ready!(waiting.as_mut().poll(cx)) {
                    Ok(permit) => {
                        this.waiting = None;
                        this.gate
                            .took
                            .lock()
                            .queue
                            .push_back(Took::Pooled { _room: permit });
                        this.deadline = Some(Box::pin(tokio::time::sleep(this.gate.pool.timeout)));
                    }
                    Err(_closed) => {
                        return this.end(Status::unavailable("the engine is shutting down"));
                    }
                }
            }
            if this.deadline.as_ref().is_some_and(|d| d.is_elapsed()) {
                let late = this.late();
                return this.end(late);
            }
            if !this.rest.is_empty() {
                match this.scan() {
                    Ok(n) => {
                        let out = this.rest.split_to(n);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        continue;
                    }
                    Err(status) => return this.end(status),
                }
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    if let Some(d) = &mut this.deadline
                        && d.as_mut().poll(cx).is_ready()
                    {
                        let late = this.late();
                        return this.end(late);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => this.rest = data.copy_to_bytes(data.remaining()),
                    Err(frame) => {
                        return Poll::Ready(Some(Ok(
                            frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                        )));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.rest.is_empty() && self.waiting.is_none() && self.inner.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::{FutureExt, StreamExt};
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// gRPC frames of the given lengths, back to back.
    fn messages(lens: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, len as usize));
        }
        out
    }

    /// `bytes` as a body of DATA frames of `chunk` bytes.
    fn body(
        bytes: &[u8],
        chunk: usize,
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = bytes
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn read_all<B>(mut b: GatedBody<B>) -> Result<Vec<u8>, Status>
    where
        B: Body,
        B::Error: Into<StdError>,
    {
        let mut out = Vec::new();
        while let Some(frame) = b.frame().await {
            let frame = frame.map_err(Status::from_error)?;
            if let Ok(d) = frame.into_data() {
                out.extend_from_slice(&d);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn every_byte_is_passed_on_however_the_frames_split_the_framing() {
        let input = messages(&[10, 20_000, 0, 3, 17_000]);
        for chunk in [1, 2, 3, 4, 5, 6, 7, 4096, 16_384, 1 << 20] {
            let pool = Arc::new(MessagePool::new(
                64 * 1024,
                Duration::from_secs(10),
                1 << 20,
            ));
            let gate = Arc::new(StreamGate::new(pool.clone()));
            let out = read_all(GatedBody::new(body(&input, chunk), gate.clone()))
                .await
                .expect("read");
            assert_eq!(out, input, "chunks of {chunk}");
            // Two messages above SMALL_MESSAGE, no source: both pooled,
            // held until decoded and handled.
            assert_eq!(pool.in_use(), 37_000, "chunks of {chunk}");
            gate.decoding(20_000);
            gate.handled();
            assert_eq!(pool.in_use(), 17_000);
            gate.decoding(17_000);
            // The next decode lets the previous message go too.
            gate.decoding(3);
            gate.handled();
            assert_eq!(pool.in_use(), 0);
        }
    }

    #[tokio::test]
    async fn a_message_waits_for_room_in_the_pool_and_one_larger_than_it_ends_the_stream() {
        let pool = Arc::new(MessagePool::new(
            32 * 1024,
            Duration::from_secs(10),
            1 << 20,
        ));
        let first = Arc::new(StreamGate::new(pool.clone()));
        read_all(GatedBody::new(
            body(&messages(&[20_000]), 4096),
            first.clone(),
        ))
        .await
        .expect("read");
        assert_eq!(pool.in_use(), 20_000);

        // A second stream's 20 KB message: its prefix is passed on, its
        // body not, while the first holds the room.
        let second = Arc::new(StreamGate::new(pool.clone()));
        let input = messages(&[20_000]);
        let mut b = GatedBody::new(body(&input, 1 << 20), second.clone());
        let head = b.frame().await.expect("a frame").expect("data");
        assert_eq!(head.into_data().expect("data").len(), 5, "the prefix only");
        assert!(b.frame().now_or_never().is_none(), "waits for room");
        first.decoding(20_000);
        first.handled();
        let rest = read_all(b).await.expect("read");
        assert_eq!(rest.len(), 20_000);
        assert_eq!(pool.in_use(), 20_000);

        // Larger than the whole pool, no credit: never read.
        let third = Arc::new(StreamGate::new(pool.clone()));
        let status = read_all(GatedBody::new(
            body(&messages(&[40_000]), 4096),
            third.clone(),
        ))
        .await
        .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status.message().contains("server.uncovered_message_bytes"),
            "{status:?}"
        );
        assert_eq!(
            third.failure().map(|s| s.code()),
            Some(tonic::Code::OutOfRange)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pooled_message_that_does_not_arrive_whole_in_time_ends_the_stream() {
        let pool = Arc::new(MessagePool::new(32 * 1024, Duration::from_secs(2), 1 << 20));
        let gate = Arc::new(StreamGate::new(pool.clone()));
        // The prefix and half the body, then nothing.
        let input = messages(&[20_000]);
        let frames = futures::stream::iter(vec![Ok::<_, Infallible>(Frame::data(
            Bytes::copy_from_slice(&input[..10_005]),
        ))])
        .chain(futures::stream::pending());
        let mut b = GatedBody::new(StreamBody::new(frames), gate.clone());
        let mut got = 0;
        let status = loop {
            match b.frame().await.expect("not ended") {
                Ok(f) => got += f.into_data().map_or(0, |d| d.len()),
                Err(e) => break Status::from_error(e),
            }
        };
        assert_eq!(got, 10_005);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("server.message_timeout"),
            "{status:?}"
        );
        // Dropping the stream returns its room.
        drop(b);
        drop(gate);
        assert_eq!(pool.in_use(), 0);
    }
}
