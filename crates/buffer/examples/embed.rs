//! Embedding sluice-buffer through its handles: two producers with
//! different limits feed one slow consumer. `send` waits on the limit that
//! refused it; the run ends, channel-like, when both producers are gone and
//! the queue is drained, with counts that prove nothing was lost.
//!
//! Run: `cargo run -p sluice-buffer --example embed`

use std::time::{Duration, Instant};

use sluice_buffer::{Limit, Limits, TrySendError};

const PER_PRODUCER: u64 = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Tight limits so that being held back is visible: the whole buffer holds
    // 3,000 records, each source at most 2,000, and at most 96 KiB in all.
    let limits = Limits::records(3_000)
        .per_source(Limit::records(2_000))
        .per_stage(Limit::bytes(96 * 1024));
    let (producers, consumer) = sluice_buffer::channel::<Vec<u8>>(limits)?;
    let start = Instant::now();

    // A fast producer sending 64-byte records, and a slower one sending 32-byte records.
    let mut tasks = Vec::new();
    for (name, size, pause) in [
        ("fast", 64usize, Duration::ZERO),
        ("slow", 32, Duration::from_micros(200)),
    ] {
        let mut producer = producers.producer(name)?;
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut held_back = 0u32;
            while sent < PER_PRODUCER {
                let n = (PER_PRODUCER - sent).min(250) as usize;
                let batch: Vec<Vec<u8>> = vec![vec![b'x'; size]; n];
                // try_send admits what fits now and hands back the rest with
                // the limit that refused it; send waits (on that limit only).
                match producer.try_send(batch) {
                    Ok(_) => {}
                    Err(TrySendError::Full(rest)) => {
                        held_back += 1;
                        if held_back % 20 == 1 {
                            println!(
                                "{:>6.2}s  {name:<4} held back at seq {}: {}",
                                start.elapsed().as_secs_f64(),
                                rest.first_seq,
                                rest.reason
                            );
                        }
                        producer.send(rest.records).await?;
                    }
                    Err(TrySendError::Failed(e)) => return Err(e),
                }
                sent = producer.admitted_through();
                tokio::time::sleep(pause).await;
            }
            Ok::<_, sluice_buffer::SendError<Vec<u8>>>(held_back)
        }));
    }
    // The factory is a producer handle too: drop it so the pipeline closes
    // once both producers are done.
    let buffer = producers.manager().clone();
    drop(producers);

    // One slow consumer: 100 records every millisecond at most.
    let consumer = consumer.with_batch_size(100);
    let mut consumed = 0u64;
    while let Some(batch) = consumer.recv().await {
        consumed += batch.len() as u64;
        tokio::time::sleep(Duration::from_millis(1)).await;
        consumer.complete(batch);
    }

    let mut holds = Vec::new();
    for t in tasks {
        holds.push(t.await??);
    }
    let snap = buffer.snapshot();
    println!(
        "\n{:<6} {:>9} {:>9} {:>9} {:>11} {:>10}",
        "source", "admitted", "refused", "acked", "held back", "peak"
    );
    for (s, held) in snap.sources.iter().zip(&holds) {
        println!(
            "{:<6} {:>9} {:>9} {:>9} {:>11} {:>10}",
            s.name, s.admitted, s.refused, s.acked_through, held, s.level.peak_records
        );
    }
    println!(
        "global peak {} of {} records; consumed {consumed} of {} sent",
        snap.global.peak_records,
        limits.global.records,
        2 * PER_PRODUCER
    );
    buffer.audit()?;
    assert_eq!(consumed, 2 * PER_PRODUCER, "every record came out");
    assert!(
        snap.sources
            .iter()
            .all(|s| s.acked_through == PER_PRODUCER && s.in_engine() == 0)
    );
    println!("nothing lost: every record admitted, consumed and acked exactly once");
    Ok(())
}
