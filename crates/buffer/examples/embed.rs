//! Embedding sluice-buffer: two producers with different limits feed one
//! slow consumer. Each producer prints when it is held back and by which
//! limit; the run ends with counts that prove nothing was lost.
//!
//! Run: `cargo run -p sluice-buffer --example embed`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_buffer::{BufferManager, Limit, Limits};

const PER_PRODUCER: u64 = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Tight limits so that being held back is visible: the whole buffer holds
    // 3,000 records, and each source at most 2,000 (of 64 bytes at most).
    let records = |n: u64| Limit::new(n, n * 64);
    let limits = Limits {
        global: records(3_000),
        per_stage: records(3_000),
        per_source: records(2_000),
    };
    let buffer = Arc::new(
        BufferManager::<Vec<u8>>::builder(limits)
            .pipeline("events", ["sink"])
            .build()?,
    );
    let events = buffer
        .pipeline_by_name("events")
        .ok_or("no pipeline")?
        .clone();
    let start = Instant::now();

    // A fast producer sending 64-byte records, and a slower one sending 32-byte records.
    let mut producers = Vec::new();
    for (name, size, pause) in [
        ("fast", 64usize, Duration::ZERO),
        ("slow", 32, Duration::from_micros(200)),
    ] {
        let buffer = buffer.clone();
        let source = buffer.register_source(name, events.id)?;
        producers.push(tokio::spawn(async move {
            let mut seq = 1u64;
            let mut held_back = 0u32;
            while seq <= PER_PRODUCER {
                let n = (PER_PRODUCER - seq + 1).min(250) as usize;
                let mut batch: Vec<Vec<u8>> = vec![vec![b'x'; size]; n];
                loop {
                    // Register for "capacity freed" *before* trying, so no release is missed.
                    let freed = buffer.capacity_freed();
                    let out = buffer.admit(source, seq, batch).expect("admit");
                    seq += out.admitted as u64;
                    let Some(rejected) = out.rejected else { break };
                    held_back += 1;
                    if held_back % 20 == 1 {
                        println!(
                            "{:>6.2}s  {name:<4} held back at seq {}: {}",
                            start.elapsed().as_secs_f64(),
                            rejected.first_seq,
                            rejected.reason
                        );
                    }
                    batch = rejected.payloads; // nothing is dropped: resend the same records
                    freed.await;
                }
                tokio::time::sleep(pause).await;
            }
            held_back
        }));
    }

    // One slow consumer: 100 records every millisecond at most.
    let consumer = {
        let buffer = buffer.clone();
        let stage = events.stages[0];
        tokio::spawn(async move {
            let mut consumed = 0u64;
            while let Some(batch) = buffer.next_batch(stage, 100).await {
                consumed += batch.len() as u64;
                tokio::time::sleep(Duration::from_millis(1)).await;
                buffer.complete(batch);
            }
            consumed
        })
    };

    let mut holds = Vec::new();
    for p in producers {
        holds.push(p.await?);
    }
    buffer.drain().await;
    buffer.shutdown();
    let consumed = consumer.await?;

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
