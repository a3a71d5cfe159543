//! The memory gate and the flow-control signals, end to end.
//!
//! Two sources send records as fast as their credits allow into a pipeline
//! whose sink drains steadily. A scripted memory probe (a [`ManualProbe`],
//! so the run is deterministic) climbs past the gate's activate threshold
//! (85 %), hovers between the thresholds, and falls below the resume
//! threshold (75 %). Watch the gate close, every source get PAUSE (reason
//! memory) and no credit, the gate stay closed between the thresholds, and
//! RESUME once it opens again.
//!
//! ```text
//! cargo run -p sluice-buffer --example memory_gate
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_buffer::{
    BackpressureController, BufferManager, ControllerConfig, Limits, ManualProbe, MemoryGateConfig,
    MemoryMonitor, SignalKind,
};

const GIB: u64 = 1 << 30;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let t = move || start.elapsed().as_secs_f64();

    // The buffer: one pipeline, two stages, generous limits so that only
    // the memory gate causes backpressure in this demonstration.
    let buffer = Arc::new(
        BufferManager::<Vec<u8>>::builder(Limits::default())
            .pipeline("telemetry", ["parse", "sink"])
            .build()?,
    );
    let pipeline = buffer
        .pipeline_by_name("telemetry")
        .ok_or("no pipeline")?
        .clone();

    // The memory gate, fed by a scripted probe: 1 GiB limit, 40 % used.
    let probe = ManualProbe::new(GIB * 40 / 100, GIB);
    let gate_config = MemoryGateConfig {
        refresh_ms: 50,
        ..MemoryGateConfig::default()
    };
    let monitor = MemoryMonitor::spawn(gate_config, probe.clone())?;

    // Flow control over the buffer, watching the gate.
    let flow = BackpressureController::new(
        buffer.clone(),
        ControllerConfig::default().with_window_records(256, 64),
        Some(monitor.subscribe()),
    )?;
    let controller_task = flow.spawn();

    // Print every gate flip, with the records admitted so far.
    let admitted_total = Arc::new(AtomicU64::new(0));
    let mut gate = monitor.subscribe();
    let gate_printer = {
        let admitted_total = admitted_total.clone();
        tokio::spawn(async move {
            let mut at_close = 0;
            while gate.changed().await.is_ok() {
                let s = gate.borrow_and_update().clone();
                let total = admitted_total.load(Ordering::Relaxed);
                if s.closed {
                    at_close = total;
                    println!(
                        "{:5.2}s  memory gate CLOSED at {:.0} % of the limit",
                        t(),
                        s.percent
                    );
                } else {
                    println!(
                        "{:5.2}s  memory gate open at {:.0} % of the limit; {} records were admitted \
                         while it was closed (credit granted before it closed)",
                        t(),
                        s.percent,
                        total - at_close
                    );
                }
            }
        })
    };

    // Two sources: send within credits, print their signals.
    let stop = Arc::new(AtomicBool::new(false));
    let mut sources = Vec::new();
    for name in ["sensor-a", "sensor-b"] {
        let id = buffer.register_source(name, pipeline.id)?;
        let handle = flow.open_source(id)?;
        let mut signals = handle.subscribe();
        tokio::spawn(async move {
            while let Some(status) = signals.changed().await {
                if let Some(s) = status.signal {
                    let retry = if s.kind == SignalKind::Resume {
                        String::new()
                    } else {
                        format!(", retry after {} ms", s.retry_after.as_millis())
                    };
                    println!(
                        "{:5.2}s    {name}: {} (reason {}, utilization {:.2}{retry})",
                        t(),
                        s.kind.label().to_uppercase(),
                        s.reason,
                        s.utilization
                    );
                }
            }
        });
        let stop = stop.clone();
        let admitted = Arc::new(AtomicU64::new(0));
        let counted = admitted.clone();
        let total = admitted_total.clone();
        let task = tokio::spawn(async move {
            let (mut records, mut bytes, mut seq) = (0u64, 0u64, 1u64);
            while !stop.load(Ordering::Relaxed) {
                if records == 0 || bytes < 64 {
                    match tokio::time::timeout(Duration::from_millis(20), handle.wait_credit())
                        .await
                    {
                        Ok(Some(c)) => {
                            records += c.records;
                            bytes += c.bytes;
                        }
                        Ok(None) => break,
                        Err(_) => continue, // still no credit: check `stop` and wait again
                    }
                }
                let n = records.min(bytes / 64).min(64);
                let batch: Vec<Vec<u8>> = (0..n).map(|i| vec![(i % 251) as u8; 64]).collect();
                let admission = handle
                    .admit(seq, batch)
                    .map_err(|e| format!("{name}: {e}"))?;
                if let Some(r) = admission.rejected {
                    return Err(format!("{name}: rejected within credits: {}", r.reason));
                }
                seq += n;
                records -= n;
                bytes -= n * 64;
                counted.fetch_add(n, Ordering::Relaxed);
                total.fetch_add(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            handle.close();
            Ok::<_, String>(())
        });
        sources.push((name, admitted, task));
    }

    // Stage workers: parse forwards to sink, sink commits.
    let parse = {
        let buffer = buffer.clone();
        let (from, to) = (pipeline.stages[0], pipeline.stages[1]);
        tokio::spawn(async move {
            while let Some(batch) = buffer.next_batch(from, 256).await {
                if buffer.forward(batch, to).await.is_err() {
                    break;
                }
            }
        })
    };
    let sink = {
        let buffer = buffer.clone();
        let stage = pipeline.stages[1];
        tokio::spawn(async move {
            while let Some(batch) = buffer.next_batch(stage, 256).await {
                buffer.complete(batch);
            }
        })
    };

    // The memory script: (time from start, percent used).
    let script = [
        (0.3, 60),
        (0.6, 80),
        (0.9, 86),
        (1.2, 92),
        (1.5, 80),
        (1.8, 78),
        (2.1, 74),
        (2.4, 50),
    ];
    println!(
        "{:5.2}s  memory at 40 %, gate closes at 85 %, opens again at 75 %",
        t()
    );
    for (at, percent) in script {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        println!("{:5.2}s  memory use now {percent} %", t());
        probe.set_used(GIB * percent / 100);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Wind down: stop the sources, drain, shut down.
    stop.store(true, Ordering::Relaxed);
    for (name, admitted, task) in sources {
        task.await??;
        println!(
            "{name}: {} records admitted, none rejected",
            admitted.load(Ordering::Relaxed)
        );
    }
    tokio::time::timeout(Duration::from_secs(2), buffer.drain()).await?;
    flow.shutdown();
    buffer.shutdown();
    controller_task.await?;
    parse.await?;
    sink.await?;
    drop(monitor);
    gate_printer.abort();
    buffer.audit()?;
    Ok(())
}
