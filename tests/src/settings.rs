//! Settings for a test engine, and starting one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use sluice_config::{PipelineSpec, RetryPolicy, Settings, SinkSpec, StageSpec};
use sluice_engine::{EngineBuilder, EngineHandle};

/// Settings for a test engine: port 0 on loopback, metrics off, memory gate
/// off, credit window 1,024 records, one `default` pipeline whose file sink
/// and dead-letter sink write under `dir` (`dir/sink`, `dir/dead`), short
/// shutdown timeout. Tests that need something else change the result.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    s.server.shutdown_timeout = Duration::from_secs(10);
    s.metrics.enabled = false;
    s.memory.enabled = false;
    // Small credit windows, so that flow control (refills, NO_CREDIT,
    // signals) happens within the few thousand records a test sends.
    s.buffer.credit_window_records = 1024;
    let mut p = PipelineSpec {
        sink: file_sink(&dir.join("sink"), Duration::ZERO, 0.0),
        dead_letter: file_sink(&dir.join("dead"), Duration::ZERO, 0.0),
        ..PipelineSpec::default()
    };
    p.batch.linger = Duration::from_millis(5);
    s.pipelines = vec![p];
    s
}

/// [`test_settings`] with `stages` in the `default` pipeline, the engine's
/// default credit window, a 5 s shutdown timeout and one quick retry (the
/// settings of the smoke and health tests).
pub fn staged_settings(dir: &Path, stages: Vec<StageSpec>) -> Settings {
    let mut s = test_settings(dir);
    s.buffer.credit_window_records = Settings::default().buffer.credit_window_records;
    s.server.shutdown_timeout = Duration::from_secs(5);
    s.retry = RetryPolicy {
        max_retries: 1,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    s.pipelines[0].stages = stages;
    s
}

/// A file sink spec writing `records-<n>.jsonl` under `dir`, without fsync.
pub fn file_sink(dir: &Path, delay: Duration, fail_rate: f64) -> SinkSpec {
    SinkSpec::File {
        dir: dir.to_path_buf(),
        prefix: "records".into(),
        rotate_bytes: 64 * 1024 * 1024,
        fsync: false,
        group_commit_batches: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
        delay,
        fail_rate,
    }
}

/// Starts an engine from `settings` with `configure` applied to the builder.
pub async fn start_engine(
    settings: Settings,
    configure: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> EngineHandle {
    configure(EngineBuilder::new(settings))
        .start()
        .await
        .expect("engine starts")
}

/// The `http://` address of a running engine.
pub fn url(engine: &EngineHandle) -> String {
    format!("http://{}", engine.local_addr())
}

/// A free loopback address: bind port 0, note it, release it (for a listener
/// that cannot take port 0, such as the metrics exporter or a restarted
/// engine that must keep its port).
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    l.local_addr().expect("local addr")
}
