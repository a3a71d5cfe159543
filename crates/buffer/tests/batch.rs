//! What a `Consumer` receives (`Batch`): a producer's `Vec` as it was sent
//! (same allocation, no record rewritten), each record's bookkeeping, a
//! batch taken apart to complete and retry in parts, and the handles
//! sharing tokio's cooperative budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_buffer::{Batch, BufferManager, Limits, Pending, RetryPolicy};

/// The `Vec` a producer sends is the `Vec` its consumer receives when it
/// takes it whole: the same allocation, numbered by its first record.
/// (Before, every record was rewritten as a `BufferedRecord` into a new
/// allocation on the way.)
#[test]
fn a_vec_sent_is_received_as_it_is_and_completed_as_one_run() {
    let (producers, consumer) = sluice_buffer::channel::<String>(Limits::records(100)).unwrap();
    let mut p = producers.producer("p").unwrap();
    p.try_send(vec!["zero".to_string()]).unwrap();
    let one = consumer.try_recv().unwrap();
    consumer.complete(one);
    let sent: Vec<String> = (1..=3).map(|i| format!("record {i}")).collect();
    let first_payload = sent.as_ptr();
    assert_eq!(p.try_send(sent).unwrap(), 4);

    let batch = consumer.try_recv().unwrap();
    assert!(std::ptr::eq(
        batch.payloads().next().unwrap(),
        first_payload
    ));
    let seen: Vec<_> = batch
        .iter()
        .map(|r| (r.seq(), r.size(), r.source(), r.retry_count()))
        .collect();
    assert_eq!(
        seen,
        [
            (2, 8, p.source(), 0),
            (3, 8, p.source(), 0),
            (4, 8, p.source(), 0)
        ]
    );
    assert_eq!((batch.len(), batch.bytes()), (3, 24));
    let done = consumer.complete(batch);
    assert_eq!(done.sources.len(), 1);
    assert_eq!(
        (done.sources[0].acked_through, done.sources[0].completed_now),
        (4, 3)
    );
    let buffer = consumer.manager();
    buffer.audit().unwrap();
    assert_eq!(buffer.snapshot().global.records, 0);
}

/// A batch larger than the consumer's batch size is handed out in pieces,
/// in order, each numbered and charged right; a built `Pending` and a
/// `Vec` arrive alike.
#[test]
fn pieces_and_both_layouts_keep_their_numbers_and_charges() {
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(Limits::records(100)).unwrap();
    let consumer = consumer.with_batch_size(4);
    let mut p = producers.producer("p").unwrap();
    p.try_send((1..=10u8).map(|i| vec![0; i as usize]).collect::<Vec<_>>())
        .unwrap();
    let built: Pending<Vec<u8>> = (11..=12u8).map(|i| vec![0; i as usize]).collect();
    p.try_send(built).unwrap();
    let mut seen = Vec::new();
    while let Ok(batch) = consumer.try_recv() {
        assert!(batch.len() <= 4);
        assert_eq!(batch.bytes(), batch.iter().map(|r| r.size()).sum::<u64>());
        seen.extend(batch.iter().map(|r| (r.seq(), r.size())));
        consumer.complete(batch);
    }
    let want: Vec<(u64, u64)> = (1..=12).map(|i| (i, i)).collect();
    assert_eq!(seen, want);
    let buffer = consumer.manager();
    buffer.audit().unwrap();
    assert_eq!(buffer.acked_through(p.source()).unwrap(), 12);
}

/// Taken apart, a batch's records are completed and retried separately;
/// a retried record comes back laid out, with its retry count.
#[tokio::test]
async fn a_batch_taken_apart_is_completed_and_retried_in_parts() {
    let (producers, consumer) = BufferManager::<String>::builder(Limits::records(10))
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        })
        .channel::<String>()
        .unwrap();
    let mut p = producers.producer("p").unwrap();
    p.try_send(vec!["a".to_string(), "bad".to_string(), "c".to_string()])
        .unwrap();
    let mut records = consumer.try_recv().unwrap().into_records();
    let bad = records.remove(1);
    let done = consumer.complete(records);
    // Record 2 is still out: acks stop at 1.
    assert_eq!(done.sources[0].acked_through, 1);
    assert!(consumer.retry(vec![bad], "boom").is_empty());
    let again = consumer.recv().await.unwrap();
    let seen: Vec<_> = again
        .iter()
        .map(|r| {
            (
                r.seq(),
                r.payload.clone(),
                r.retry_count(),
                r.last_error().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(seen, [(2, "bad".to_string(), 1, Some("boom".to_string()))]);
    let done = consumer.complete(again);
    assert_eq!(done.sources[0].acked_through, 3);
    consumer.manager().audit().unwrap();
    // Completing an empty batch does nothing.
    assert!(consumer.complete(Batch::default()).sources.is_empty());
}

/// A consumer that always finds records ready still lets the other tasks
/// of its thread run, as a tokio channel's receiver does: `recv` and
/// `send` spend tokio's cooperative budget. (Before, such a loop kept its
/// thread until it ran out of records.)
#[tokio::test(flavor = "current_thread")]
async fn a_consumer_that_always_finds_records_lets_other_tasks_run() {
    let (producers, consumer) = sluice_buffer::channel::<String>(Limits::records(1_000)).unwrap();
    let mut p = producers.producer("p").unwrap();
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut rounds_before_it_ran = None;
    for round in 0..1_000u64 {
        p.send(vec![round.to_string()]).await.unwrap();
        let batch = consumer.recv().await.unwrap();
        consumer.complete(batch);
        if other_ran.load(Ordering::SeqCst) {
            rounds_before_it_ran = Some(round);
            break;
        }
    }
    // Tokio's budget is 128 operations a turn.
    assert!(
        rounds_before_it_ran.is_some_and(|r| r < 200),
        "the other task ran after {rounds_before_it_ran:?} rounds"
    );
}
