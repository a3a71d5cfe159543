//! The disk's own rate for what the file sink does, without the engine:
//! one thread appends batches of JSON-like lines to a file with `write(2)`
//! and calls `sync_data` every `batches_per_sync` batches, for `seconds`.
//! Prints lines/s and MB/s (BENCHMARKS.md, "JSON payloads into the file sink").
//!
//! ```sh
//! cargo run --release -p sluice-engine --example disk_sync_rate -- DIR [seconds] [line_bytes] [lines_per_batch] [batches_per_sync]
//! ```

use std::io::Write as _;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().map_or("/tmp", String::as_str));
    let num = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let seconds = num(1, 3);
    let line_bytes = num(2, 180).max(2) as usize;
    let lines_per_batch = num(3, 1000).max(1) as usize;
    let batches_per_sync = num(4, 1).max(1);
    let mut line = vec![b'x'; line_bytes - 1];
    line.push(b'\n');
    let batch: Vec<u8> = line.repeat(lines_per_batch);
    let path = dir.join(format!("disk-sync-rate-{}.jsonl", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let (mut batches, mut syncs) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        f.write_all(&batch)?;
        batches += 1;
        if batches.is_multiple_of(batches_per_sync) {
            f.sync_data()?;
            syncs += 1;
        }
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    let lines = batches * lines_per_batch as u64;
    println!(
        "{lines_per_batch} lines of {line_bytes} B per batch, sync every {batches_per_sync} batches: \
         {:.2} M lines/s, {:.0} MB/s, {syncs} syncs in {secs:.2} s",
        lines as f64 / secs / 1e6,
        (lines * line_bytes as u64) as f64 / secs / 1e6,
    );
    Ok(())
}
