//! The engine of a sluice run in this process, next to the load generator:
//! built from the bench's settings with the sink of `--sink` (slowed by
//! `--sink-delay`) and a null dead-letter sink. Its memory figures are this
//! process's (they include the load generator; `--engine-process`,
//! [`child`](super::child), measures the engine alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_buffer::{ControllerConfig, Credit};
use sluice_config::Settings;
use sluice_engine::EngineBuilder;
use sluice_engine::sink::{FileSink, NatsSink, NullSink, PostgresSink, Sink, with_knobs};

use super::{BenchArgs, BenchSink, RunReport, nats, postgres, rss};

/// A sluice run of `load` against an engine in this process running
/// `settings` (its sink per `args`): the memory figures are this process's.
pub(crate) async fn run(
    args: &BenchArgs,
    settings: Settings,
    db: Option<&postgres::BenchDb>,
    nats: Option<&nats::BenchNats>,
    load: super::Load<'_>,
) -> Result<RunReport, String> {
    let mut tmp_dir = None;
    let sink: Arc<dyn Sink> = match args.sink {
        BenchSink::Null => Arc::new(NullSink),
        BenchSink::File => {
            let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
            let s = FileSink::open(&dir, "bench", 64 * 1024 * 1024, args.fsync)
                .map_err(|e| format!("file sink: {e}"))?;
            tmp_dir = Some(dir);
            Arc::new(s)
        }
        BenchSink::Postgres => {
            let db = db.ok_or("--sink postgres: no database")?;
            let spec = db.spec(postgres::SLUICE_TABLE, args.pg_staging.into());
            Arc::new(
                PostgresSink::connect(&spec)
                    .await
                    .map_err(|e| format!("postgres sink: {e}"))?,
            )
        }
        BenchSink::Nats => {
            let nats = nats.ok_or("--sink nats: no NATS server")?;
            Arc::new(NatsSink::new(&nats.sink_spec(), "default").map_err(|e| e.to_string())?)
        }
    };
    let sink = with_knobs(sink, args.sink_delay.unwrap_or_default(), 0.0);
    let mut builder = EngineBuilder::new(settings)
        .sink("default", sink)
        .dead_letter_sink("default", Arc::new(NullSink));
    if let Some(w) = args.window {
        let w = w.max(1);
        builder = builder.controller_config(ControllerConfig {
            window: Credit::new(w, w * (args.record_bytes as u64).max(1) * 2),
            ..ControllerConfig::default()
        });
    }
    let engine = builder.start().await.map_err(|e| format!("engine: {e}"))?;
    // The engine's idle RSS, before any load (the sampler's thread and
    // the load generator's connections come after it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_rss = rss::Proc::This.rss();
    let rss = rss::RssSampler::start(rss::Proc::This);
    let record_memory = {
        let memory = engine.record_memory().clone();
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    peak.fetch_max(memory.held_bytes(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        (peak, task)
    };
    let loaded = super::load(load, engine.local_addr(), args, rss::Proc::This).await;
    let peak = rss.stop();
    record_memory.1.abort();
    let peak_record_memory = record_memory.0.load(Ordering::Relaxed);
    if let Err(e) = engine.shutdown().await {
        eprintln!("sluice bench: engine shutdown: {e}");
    }
    if let Some(dir) = tmp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (result, flood_bytes) = loaded?;
    let mut report = result?;
    report.peak_rss_bytes = Some(peak);
    report.idle_rss_bytes = idle_rss;
    report.peak_record_memory_bytes = Some(peak_record_memory);
    report.flood_bytes = flood_bytes;
    Ok(report)
}
