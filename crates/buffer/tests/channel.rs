//! The handles (`Producer`, `Consumer`, `channel`): waiting sends (and
//! forwards) woken by the limit that refused them and by no other, every error handing the
//! records back, channel-like ending, shutdown that leaves nothing
//! unreachable, and records-only / bytes-only limits.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use sluice_buffer::{
    BufferError, BufferManager, Level, Limit, Limits, Pending, RejectReason, RetryPolicy,
    SendFailure, TryRecvError, TrySendError, Unit,
};

/// A waker that counts how often it is woken.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

fn woken(c: &Counter) -> usize {
    c.0.load(Ordering::SeqCst)
}

fn bytes(n: usize) -> Vec<Vec<u8>> {
    vec![vec![1u8; 1]; n]
}

/// The counter: a release of source A's capacity does not wake a
/// producer blocked on source B's limit; a release of B's does, once.
/// (Before, one `Notify` for every release woke every waiting producer.)
#[test]
fn a_release_wakes_only_the_producers_its_limit_refused() {
    let limits = Limits::records(100).per_source(Limit::records(10));
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(limits).unwrap();
    let consumer = consumer.with_batch_size(10);
    let mut a = producers.producer("a").unwrap();
    let mut b = producers.producer("b").unwrap();
    assert_eq!(a.try_send(bytes(10)).unwrap(), 10);
    assert_eq!(b.try_send(bytes(10)).unwrap(), 10);
    let held = consumer.try_recv().unwrap(); // a's 10 (b's come next)
    assert!(held.iter().all(|r| r.source() == a.source()));

    let (a_count, a_waker) = counting();
    let (b_count, b_waker) = counting();
    let mut send_a = pin!(a.send(bytes(5)));
    let mut send_b = pin!(b.send(bytes(5)));
    assert!(
        send_a
            .as_mut()
            .poll(&mut Context::from_waker(&a_waker))
            .is_pending()
    );
    assert!(
        send_b
            .as_mut()
            .poll(&mut Context::from_waker(&b_waker))
            .is_pending()
    );
    consumer.manager().audit().unwrap();

    consumer.complete(held); // frees source a (and global) only
    assert_eq!(woken(&a_count), 1, "a waits on its own limit: woken");
    assert_eq!(woken(&b_count), 0, "b waits on its own limit: not woken");
    assert!(matches!(
        send_a.as_mut().poll(&mut Context::from_waker(&a_waker)),
        Poll::Ready(Ok(15))
    ));

    let held = consumer.try_recv().unwrap(); // b's 10 (and a's 5 after)
    consumer.complete(held);
    assert_eq!(woken(&b_count), 1);
    assert!(matches!(
        send_b.as_mut().poll(&mut Context::from_waker(&b_waker)),
        Poll::Ready(Ok(15))
    ));
    assert_eq!(woken(&a_count), 1, "a was not woken again");
    consumer.manager().audit().unwrap();
}

/// A producer refused by the global limit waits there: a completion of
/// another source's records (which frees global room) wakes it.
#[test]
fn the_global_limit_wakes_its_waiters_on_any_completion() {
    // The stage unbounded, so that the global level alone is full.
    let limits = Limits::records(15)
        .per_source(Limit::records(10))
        .per_stage(Limit::new(Limit::UNBOUNDED, Limit::UNBOUNDED));
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(limits).unwrap();
    let consumer = consumer.with_batch_size(10);
    let mut a = producers.producer("a").unwrap();
    let mut b = producers.producer("b").unwrap();
    a.try_send(bytes(10)).unwrap();
    let TrySendError::Full(rest) = b.try_send(bytes(8)).unwrap_err() else {
        panic!("expected a full global level");
    };
    assert_eq!((rest.first_seq, rest.records.len()), (6, 3));
    assert!(matches!(
        rest.reason,
        RejectReason::Limit {
            level: Level::Global,
            unit: Unit::Records,
            ..
        }
    ));
    let (count, waker) = counting();
    let mut send = pin!(b.send(rest.records));
    assert!(
        send.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let batch = consumer.try_recv().unwrap();
    assert!(batch.iter().all(|r| r.source() == a.source()));
    consumer.complete(batch);
    assert_eq!(woken(&count), 1);
    assert!(matches!(
        send.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Ready(Ok(8))
    ));
}

/// Every error of `admit` hands back every record (gap, seq 0, overflow,
/// unknown source, after shutdown), in the layout handed in.
#[test]
fn admit_errors_hand_every_record_back() {
    let buf = BufferManager::<Vec<u8>>::builder(Limits::default())
        .pipeline("p", ["s"])
        .build()
        .unwrap();
    let p = buf.pipeline_by_name("p").unwrap().id;
    let s = buf.register_source("s", p).unwrap();
    let _ = buf.admit(s, 1, bytes(1)).unwrap();

    let e = buf.admit(s, 3, bytes(4)).unwrap_err();
    assert!(matches!(
        e.error,
        BufferError::SequenceGap {
            expected: 2,
            got: 3,
            ..
        }
    ));
    assert_eq!(e.records.len(), 4);
    let e = buf.admit(s, 0, bytes(2)).unwrap_err();
    assert_eq!(
        (e.error.clone(), e.into_payloads().len()),
        (BufferError::ZeroSequence, 2)
    );
    let e = buf.admit(s, u64::MAX, bytes(2)).unwrap_err();
    assert!(matches!(e.error, BufferError::SequenceOverflow { .. }));
    assert_eq!(e.records.len(), 2);
    let mut built = Pending::with_capacity(3);
    built.extend(bytes(3));
    buf.shutdown();
    let e = buf.admit(s, 2, built).unwrap_err();
    assert_eq!((e.error.clone(), e.records.len()), (BufferError::Closed, 3));
    assert_eq!(e.records.bytes(), 3, "sizes kept: the layout came back");
    let unknown = {
        let other = BufferManager::<Vec<u8>>::builder(Limits::default())
            .pipeline("p", ["s"])
            .build::<Vec<u8>>()
            .unwrap();
        let p = other.pipeline_by_name("p").unwrap().id;
        let _ = other.register_source("x", p).unwrap();
        other.register_source("y", p).unwrap()
    };
    let e = buf.admit(unknown, 1, bytes(2)).unwrap_err();
    assert_eq!(
        (e.error.clone(), e.records.len()),
        (BufferError::UnknownSource(unknown), 2)
    );
    // `?` still works where the records are not needed.
    let as_buffer_error: BufferError = e.into();
    assert!(matches!(as_buffer_error, BufferError::UnknownSource(_)));
    buf.audit().unwrap();
}

/// A producer's errors hand the records back too: after shutdown, a gap of
/// an explicit numbering, a record too large for any limit.
#[tokio::test]
async fn send_errors_hand_every_record_back() {
    let limits = Limits::records(100).per_stage(Limit::new(100, 1_000));
    let (producers, _consumer) = sluice_buffer::channel::<Vec<u8>>(limits).unwrap();
    let mut p = producers.producer("p").unwrap();
    assert_eq!(p.send(bytes(2)).await.unwrap(), 2);

    let e = p.send_at(5, bytes(3)).await.unwrap_err();
    assert!(matches!(
        e.failure,
        SendFailure::Buffer(BufferError::SequenceGap { .. })
    ));
    assert_eq!((e.first_seq, e.records.len()), (5, 3));
    let e = p.send_at(0, bytes(1)).await.unwrap_err();
    assert_eq!(e.failure, SendFailure::Buffer(BufferError::ZeroSequence));

    let mut batch = bytes(2);
    batch.push(vec![0; 2_000]);
    let e = p.send(batch).await.unwrap_err();
    assert!(matches!(
        e.failure,
        SendFailure::Refused(RejectReason::TooLarge { .. })
    ));
    assert_eq!(
        (e.first_seq, e.records.len()),
        (5, 1),
        "the head was admitted"
    );

    p.manager().shutdown();
    let e = p.send(bytes(4)).await.unwrap_err();
    assert_eq!(e.failure, SendFailure::Buffer(BufferError::Closed));
    assert_eq!(e.into_payloads().len(), 4);
}

/// Numbering is the producer's: a `first_seq` reused by another writer of
/// the source does not make new records duplicates.
#[test]
fn a_producer_numbers_after_whatever_was_admitted() {
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(Limits::records(100)).unwrap();
    let mut p = producers.producer("s").unwrap();
    let mut q = producers.producer("s").unwrap(); // a second handle of the source
    assert_eq!(p.try_send(bytes(2)).unwrap(), 2);
    assert_eq!(q.try_send(bytes(3)).unwrap(), 5, "numbered after p's");
    let buf = consumer.manager().clone();
    let out = buf.admit(p.source(), 6, bytes(1)).unwrap();
    assert_eq!(out.admitted, 1);
    // p last saw 2; its records become 7 and 8, not duplicates of 3 and 4.
    assert_eq!(p.try_send(bytes(2)).unwrap(), 8);
    let got = consumer.try_recv().unwrap();
    let mut seqs: Vec<u64> = got.iter().map(|r| r.seq()).collect();
    let rest = consumer.try_recv().unwrap_or_default();
    seqs.extend(rest.iter().map(|r| r.seq()));
    let rest2 = consumer.try_recv().unwrap_or_default();
    seqs.extend(rest2.iter().map(|r| r.seq()));
    let rest3 = consumer.try_recv().unwrap_or_default();
    seqs.extend(rest3.iter().map(|r| r.seq()));
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert_eq!(buf.snapshot().sources[0].admitted, 8, "nothing dropped");
}

/// Channel-like closing: the consumer drains what is queued and then sees
/// the end, once every producer handle (the factory included) is gone.
#[tokio::test]
async fn the_consumer_ends_when_every_producer_is_gone_and_the_queue_is_drained() {
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(Limits::records(10)).unwrap();
    let mut p = producers.producer("p").unwrap();
    p.send(bytes(3)).await.unwrap();
    drop(p);
    let batch = consumer.recv().await.unwrap();
    consumer.complete(batch);
    assert_eq!(
        consumer.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "the factory lives"
    );

    let mut p = producers.producer("p").unwrap();
    let waiting = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.recv().await.map(|b| b.len()) }
    });
    p.send(bytes(2)).await.unwrap();
    drop((p, producers));
    assert_eq!(waiting.await.unwrap(), Some(2));
    let buf = consumer.manager().clone();
    let p = buf.pipelines()[0].id;
    assert!(buf.is_closed(p));
    // The records received by the task are still counted (not completed):
    // nothing is queued, so the end is seen; they are reachable by whoever holds them.
    assert!(consumer.recv().await.is_none());
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Ended);
}

/// A consumer parked when the last producer goes away is woken to end.
#[tokio::test]
async fn a_parked_consumer_sees_the_close() {
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(Limits::records(10)).unwrap();
    let parked = tokio::spawn(async move { consumer.recv().await.is_none() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(producers);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .unwrap()
            .unwrap()
    );
}

/// Shutdown leaves nothing counted and unreachable: `next_batch` stops,
/// `try_batch` hands back what is queued (retried records too, without
/// their backoff) and a consumer drains it before it ends.
#[tokio::test]
async fn shutdown_hands_back_what_is_queued() {
    let buf = Arc::new(
        BufferManager::<Vec<u8>>::builder(Limits::records(100))
            .retry(RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_secs(3600),
                max_backoff: Duration::from_secs(3600),
            })
            .pipeline("p", ["s"])
            .build()
            .unwrap(),
    );
    let info = buf.pipelines()[0].clone();
    let mut p = buf.producers(info.id).unwrap().producer("p").unwrap();
    p.try_send(bytes(5)).unwrap();
    let some = buf.try_batch(info.stages[0], 2);
    assert!(buf.retry(some, "later").is_empty()); // delayed by an hour
    buf.shutdown();
    assert!(buf.next_batch(info.stages[0], 10).await.is_none());
    let consumer = buf.consumer(info.stages[0]).unwrap();
    let mut drained = 0;
    while let Some(batch) = consumer.recv().await {
        drained += batch.len();
        consumer.complete(batch);
    }
    assert_eq!(drained, 5, "queued and delayed records drained");
    assert_eq!(buf.in_engine(), 0);
    buf.audit().unwrap();
}

/// Records-only and bytes-only limits.
#[test]
fn records_only_and_bytes_only_limits() {
    let (producers, _c) = sluice_buffer::channel::<Vec<u8>>(Limits::records(3)).unwrap();
    let mut p = producers.producer("p").unwrap();
    let big = vec![vec![0u8; 1 << 20]; 4];
    let TrySendError::Full(rest) = p.try_send(big).unwrap_err() else {
        panic!("expected the record limit");
    };
    assert_eq!(rest.records.len(), 1);
    assert!(matches!(
        rest.reason,
        RejectReason::Limit {
            unit: Unit::Records,
            ..
        }
    ));

    let (producers, _c) = sluice_buffer::channel::<Vec<u8>>(Limits::bytes(10)).unwrap();
    let mut p = producers.producer("p").unwrap();
    let TrySendError::Full(rest) = p.try_send(bytes(12)).unwrap_err() else {
        panic!("expected the byte limit");
    };
    assert_eq!(rest.records.len(), 2);
    assert!(matches!(
        rest.reason,
        RejectReason::Limit {
            unit: Unit::Bytes,
            ..
        }
    ));
    p.manager().audit().unwrap();

    // An unbounded lower level fits under a bounded global one; a bounded
    // lower level above it is still refused (it could never bind).
    assert!(
        Limits::records(10)
            .per_source(Limit::bytes(5))
            .validate()
            .is_ok()
    );
    assert!(
        Limits::records(10)
            .per_source(Limit::records(11))
            .validate()
            .is_err()
    );
}

/// A foreign payload type, sized by the caller (no `ByteSize` newtype).
#[tokio::test]
async fn foreign_payloads_are_sized_by_the_caller() {
    #[derive(Debug, PartialEq)]
    struct Foreign(u16);
    let (producers, consumer) = sluice_buffer::channel::<Foreign>(Limits::bytes(100)).unwrap();
    let mut p = producers.producer("p").unwrap();
    let mut batch = Pending::with_capacity(2);
    batch.push_sized(Foreign(1), 40);
    batch.push_sized(Foreign(2), 40);
    p.send(batch).await.unwrap();
    let TrySendError::Full(rest) = p
        .try_send(Pending::from_vec_sized(vec![Foreign(3)], |_| 40))
        .unwrap_err()
    else {
        panic!("expected the byte limit");
    };
    assert_eq!(rest.into_payloads(), [Foreign(3)]);
    let got = consumer.try_recv().unwrap();
    assert_eq!(got.iter().map(|r| r.size()).sum::<u64>(), 80);
}

/// The channel builder refuses what is not one pipeline of one stage.
#[test]
fn a_channel_is_one_pipeline_of_one_stage() {
    let two = BufferManager::<Vec<u8>>::builder(Limits::default()).pipeline("p", ["a", "b"]);
    assert_eq!(
        two.channel::<Vec<u8>>().unwrap_err(),
        sluice_buffer::BuildError::NotAChannel
    );
}

/// `forward` waits on its target stage's limit like a producer: only room
/// made there wakes it (not a completion in another stage), and only once
/// the room suffices for what it waits for. (Before, every completion in
/// the target stage notified a per-stage `Notify`, whatever it freed.)
#[test]
fn a_forward_is_woken_only_by_enough_room_in_its_target_stage() {
    let sized = |sizes: &[usize]| sizes.iter().map(|&n| vec![0u8; n]).collect::<Vec<_>>();
    let buf = BufferManager::<Vec<u8>>::builder(Limits::records(100).per_stage(Limit::new(10, 10)))
        .pipeline("p", ["a", "b"])
        .pipeline("q", ["c"])
        .build()
        .unwrap();
    let p = buf.pipeline_by_name("p").unwrap().clone();
    let q = buf.pipeline_by_name("q").unwrap().clone();
    let (a, b, c) = (p.stages[0], p.stages[1], q.stages[0]);
    let src = buf.register_source("s", p.id).unwrap();
    let other = buf.register_source("o", q.id).unwrap();
    let _ = buf.admit(src, 1, sized(&[5, 4, 1])).unwrap();
    let first = buf.try_batch(a, 3);
    futures_block_on(buf.forward(first, b)).unwrap(); // b's 10 bytes are full
    let _ = buf.admit(src, 4, sized(&[5, 5])).unwrap();
    let _ = buf.admit(other, 1, sized(&[1])).unwrap();
    let second = buf.try_batch(a, 2);

    let (count, waker) = counting();
    let mut cx = Context::from_waker(&waker);
    let mut fwd = pin!(buf.forward(second, b));
    assert!(fwd.as_mut().poll(&mut cx).is_pending());
    buf.audit().unwrap();
    // Room in another pipeline's stage: no wake.
    let in_c = buf.try_batch(c, 1);
    buf.complete(in_c);
    // 1 byte of room in `b`, where the first record waiting needs 5: no wake.
    let mut in_b = buf.try_batch(b, 3);
    let small = in_b.pop().unwrap();
    buf.complete(vec![small]);
    assert_eq!(woken(&count), 0);
    // Room for them: woken once, and both move.
    buf.complete(in_b);
    assert_eq!(woken(&count), 1);
    assert!(fwd.as_mut().poll(&mut cx).is_ready());
    assert_eq!(buf.try_batch(b, 10).len(), 2);
    buf.audit().unwrap();
}

/// Polls a future to its end on this thread.
fn futures_block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let (_, waker) = counting();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
