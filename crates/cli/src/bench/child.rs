//! `sluice bench --engine-process`: the engine in a child process of its
//! own, so that the memory a run reports is the engine's alone (an
//! in-process engine shares its RSS with the load generator).
//!
//! The bench writes the [`Settings`] it would run in-process to
//! `engine.toml` in a temporary directory and runs its own executable as
//! `sluice serve -c engine.toml`, with:
//!
//! - `server.listen = 127.0.0.1:0`: the child logs (in JSON) the address
//!   it bound, `"sluice engine listening"` with `local_addr`, which the
//!   bench reads from its standard error (no port is picked and dropped);
//! - the Prometheus endpoint off, as in-process (so the two differ only by
//!   the process), or with `--engine-metrics` on a free loopback port, from
//!   which the bench reads `sluice_record_memory_bytes` once per second
//!   (the engine publishes it once per second: a lower bound of the peak).
//!   The exporter keeps every ack-latency sample (8 bytes per acked
//!   record: `record_many` records the value once per record) until a
//!   scrape or its upkeep (every 5 s) drains them, so with metrics on the
//!   RSS grows with the acked rate between scrapes (BENCHMARKS.md,
//!   "Adversarial memory");
//! - the environment without `SLUICE_CONFIG`, `SLUICE__…` overrides and
//!   `RUST_LOG`, so the child runs exactly the bench's settings.
//!
//! The bench then samples the child's VmRSS every 100 ms and reads its
//! VmHWM (the exact peak) when the load is over, before it stops the child
//! with SIGTERM (graceful; killed if still running after
//! [`STOP_TIMEOUT`]) and removes the directory.
//!
//! Modes whose knobs the configuration cannot express are refused with
//! [`ChildError::Unsupported`] naming the flag: `--window` with records
//! above 512 bytes (its byte window, `--record-bytes × 2` per record, is
//! not `buffer.credit_window_records`' 1 KiB per record; up to 512 bytes the
//! record window binds in both, so it is written as that setting).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_config::{LogFormat, LogSettings, Settings, SinkSpec, ValidationErrors};

use super::rss::{Proc, RssSampler};
use super::{BenchArgs, BenchSink, RunReport, nats::BenchNats, postgres};

/// Longest wait for the child to log its address and accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest wait for the child to exit after SIGTERM before it is killed
/// (its `server.shutdown_timeout` is 5 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The last lines of the child's log kept for error messages.
const LOG_TAIL: usize = 20;

/// The message the engine logs once it accepts connections.
const LISTENING: &str = "sluice engine listening";

/// Why the engine's child process could not be set up, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// A flag whose setting the configuration file cannot express.
    #[error("--engine-process cannot run with {flag}: {why}")]
    Unsupported {
        /// The flag.
        flag: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// The settings written for the child do not validate.
    #[error("--engine-process: the engine's settings are invalid:\n{0}")]
    Invalid(ValidationErrors),
    /// This executable's path is unknown.
    #[error("--engine-process: cannot find this executable to run as the engine: {0}")]
    Exe(std::io::Error),
    /// The temporary directory or the configuration file.
    #[error("--engine-process: cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The settings as TOML.
    #[error("--engine-process: cannot write the engine's settings as TOML: {0}")]
    Toml(String),
    /// No free loopback port for the child's metrics endpoint.
    #[error("--engine-process: no free 127.0.0.1 port for the engine's metrics.listen: {0}")]
    Port(std::io::Error),
    /// The binary did not start.
    #[error("--engine-process: cannot run {exe} serve: {source}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The child exited before it accepted connections.
    #[error("--engine-process: {exe} serve exited ({status}) before it listened; its log:\n{log}")]
    Exited {
        /// The binary.
        exe: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The child did not log its address (or accept a connection on it)
    /// within [`START_TIMEOUT`].
    #[error(
        "--engine-process: {exe} serve did not accept connections on server.listen {addr} within {timeout:?}; its log:\n{log}"
    )]
    NotListening {
        /// The binary.
        exe: PathBuf,
        /// The address it logged, or `unknown` if none.
        addr: String,
        /// The wait.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Writes into `settings` what the child needs beyond what the bench would
/// run in-process: the sink of `args` (with its delay) as a configured
/// sink, a null dead-letter sink, the listen address, JSON logs and the
/// metrics endpoint (off unless `--engine-metrics`). `dir` is the run's temporary directory (the file
/// sink's files go in `dir/sink`).
pub(crate) fn engine_settings(
    args: &BenchArgs,
    mut settings: Settings,
    dir: &Path,
    db: Option<&postgres::BenchDb>,
    nats: Option<&BenchNats>,
) -> Result<Settings, ChildError> {
    if let Some(w) = args.window {
        // In-process the byte window is `w × record_bytes × 2`; the
        // configuration's is `w × 1 KiB`. Up to 512-byte records both are
        // above `w` records' payload, so the record window binds in both
        // and they grant the same credit; above it they would not.
        if (args.record_bytes as u64).saturating_mul(2)
            > sluice_buffer::DEFAULT_EXPECTED_RECORD_BYTES
        {
            return Err(ChildError::Unsupported {
                flag: "--window with --record-bytes above 512",
                why: "its byte window is --record-bytes × 2 per record, which \
                      buffer.credit_window_records (1 KiB per record) cannot express",
            });
        }
        settings.buffer.credit_window_records = w.max(1);
    }
    settings.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    settings.log = LogSettings {
        format: LogFormat::Json,
        filter: "info".into(),
    };
    settings.metrics.enabled = args.engine_metrics;
    if args.engine_metrics {
        settings.metrics.listen = free_port().map_err(ChildError::Port)?;
    }
    let delay = args.sink_delay.unwrap_or_default();
    let sink = match args.sink {
        BenchSink::Null => SinkSpec::Null {
            delay,
            fail_rate: 0.0,
        },
        BenchSink::File => SinkSpec::File {
            dir: dir.join("sink"),
            prefix: "bench".into(),
            rotate_bytes: 64 * 1024 * 1024,
            fsync: args.fsync,
            group_commit_batches: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
            delay,
            fail_rate: 0.0,
        },
        BenchSink::Postgres => {
            let db = db.ok_or(ChildError::Unsupported {
                flag: "--sink postgres",
                why: "no database",
            })?;
            let mut spec = db.spec(postgres::SLUICE_TABLE, args.pg_staging.into());
            spec.delay = delay;
            SinkSpec::Postgres(Box::new(spec))
        }
        BenchSink::Nats => {
            let nats = nats.ok_or(ChildError::Unsupported {
                flag: "--sink nats",
                why: "no NATS server",
            })?;
            let mut spec = nats.sink_spec();
            spec.delay = delay;
            SinkSpec::Nats(Box::new(spec))
        }
    };
    for p in &mut settings.pipelines {
        p.sink = sink.clone();
        p.dead_letter = SinkSpec::Null {
            delay: Duration::ZERO,
            fail_rate: 0.0,
        };
    }
    settings.validate().map_err(ChildError::Invalid)?;
    Ok(settings)
}

/// A sluice run of `load` against an engine in a child process running
/// `settings` with the sink of `args`: the memory figures are the child's
/// (idle VmRSS before the load, VmHWM after it, record memory from its
/// metrics with `--engine-metrics`).
pub(crate) async fn run(
    args: &BenchArgs,
    settings: Settings,
    db: Option<&postgres::BenchDb>,
    nats: Option<&BenchNats>,
    load: super::Load<'_>,
) -> Result<RunReport, String> {
    let dir = EngineChild::temp_dir().map_err(|e| e.to_string())?;
    let settings =
        engine_settings(args, settings, dir.path(), db, nats).map_err(|e| e.to_string())?;
    let engine = EngineChild::start(&settings, dir)
        .await
        .map_err(|e| e.to_string())?;
    let (pid, proc) = (engine.pid(), Proc::Pid(engine.pid()));
    // Its idle RSS: up, before any connection of the load generator.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_rss = proc.rss();
    let rss = RssSampler::start(proc);
    let record_memory = engine.sample_record_memory();
    let loaded = super::load(load, engine.addr(), args, proc).await;
    // The exact peak, read while the child still runs (its shutdown
    // comes after the load and is not measured).
    let hwm = proc.hwm();
    let sampled = rss.stop();
    if let Some((_, _, task)) = &record_memory {
        task.abort();
    }
    let stopped = engine.stop().await;
    let (result, flood_bytes) = loaded?;
    let mut report = result?;
    report.peak_rss_bytes = Some(hwm.unwrap_or(0).max(sampled));
    report.engine_pid = Some(pid);
    report.idle_rss_bytes = idle_rss;
    report.peak_record_memory_bytes = record_memory.and_then(|(peak, seen, _)| {
        seen.load(Ordering::Relaxed)
            .then(|| peak.load(Ordering::Relaxed))
    });
    report.flood_bytes = flood_bytes;
    if let Err(e) = stopped {
        report.errors.push(e);
    }
    Ok(report)
}

/// The peak record memory, whether a scrape succeeded, and the scraping task.
pub(crate) type RecordMemorySampler =
    (Arc<AtomicU64>, Arc<AtomicBool>, tokio::task::JoinHandle<()>);

/// A free loopback port (bound, then released for the child to bind).
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// The engine running in a child process (see the [module docs](self)).
/// Dropped without [`stop`](Self::stop), it kills the child.
pub(crate) struct EngineChild {
    exe: PathBuf,
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    /// The metrics endpoint, when the child serves one.
    metrics: Option<SocketAddr>,
    /// The thread reading the child's log; it ends with the child's
    /// standard error and returns the last lines.
    log: Option<std::thread::JoinHandle<VecDeque<String>>>,
    // Removed when the child is dropped, after the child has exited.
    _dir: tempfile::TempDir,
}

impl EngineChild {
    /// A temporary directory for a run's configuration and files.
    pub(crate) fn temp_dir() -> Result<tempfile::TempDir, ChildError> {
        tempfile::Builder::new()
            .prefix("sluice-bench-engine-")
            .tempdir()
            .map_err(|source| ChildError::Write {
                path: std::env::temp_dir(),
                source,
            })
    }

    /// Writes `settings` to `dir/engine.toml`, runs this executable as
    /// `serve -c` on it, and waits (at most [`START_TIMEOUT`]) until it
    /// logged its address and accepts a TCP connection there.
    pub(crate) async fn start(
        settings: &Settings,
        dir: tempfile::TempDir,
    ) -> Result<Self, ChildError> {
        let exe = std::env::current_exe().map_err(ChildError::Exe)?;
        let config = dir.path().join("engine.toml");
        let toml = settings
            .to_toml_string()
            .map_err(|e| ChildError::Toml(e.to_string()))?;
        std::fs::write(&config, toml).map_err(|source| ChildError::Write {
            path: config.clone(),
            source,
        })?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("-c")
            .arg(&config)
            .env_remove("SLUICE_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE__") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
            exe: exe.clone(),
            source,
        })?;
        let pid = child.id();
        let (addr_tx, mut addr_rx) = tokio::sync::oneshot::channel();
        let log = child
            .stderr
            .take()
            .and_then(|stderr| spawn_log_reader(stderr, addr_tx));
        let mut this = Self {
            exe,
            child: Some(child),
            pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            metrics: settings.metrics.enabled.then_some(settings.metrics.listen),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Ok(addr) = addr_rx.try_recv() {
                break addr;
            }
            this.exited_early()?;
            if Instant::now() >= deadline {
                return Err(this.not_listening("unknown"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        this.addr = addr;
        // The log line comes after the listener is bound; a connection
        // proves it accepts.
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            this.exited_early()?;
            if Instant::now() >= deadline {
                return Err(this.not_listening(&addr.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(this)
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Where the child accepts gRPC.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// With metrics on: samples the child's `sluice_record_memory_bytes`
    /// once per second in a task (aborted by the caller); the peak is in
    /// the counter, the flag says whether a scrape succeeded.
    pub(crate) fn sample_record_memory(&self) -> Option<RecordMemorySampler> {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicBool::new(false));
        let metrics = self.metrics?;
        let task = tokio::spawn({
            let (peak, seen) = (peak.clone(), seen.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Some(v) = scrape_gauge(metrics, RECORD_MEMORY).await {
                        peak.fetch_max(v, Ordering::Relaxed);
                        seen.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        Some((peak, seen, task))
    }

    /// Stops the child: SIGTERM, then at most [`STOP_TIMEOUT`] for its
    /// graceful shutdown, then SIGKILL. An error when it did not exit
    /// cleanly (with the end of its log); the directory is removed either way.
    pub(crate) async fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&mut child);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "engine process {} still running {STOP_TIMEOUT:?} after SIGTERM: killed",
                        self.pid
                    ));
                }
                Err(e) => break Err(format!("engine process {}: {e}", self.pid)),
            }
        };
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => {
                let (pid, log) = (self.pid, self.log_tail());
                Err(format!(
                    "engine process {pid} exited with {s} after SIGTERM; its log:\n{log}"
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// An error if the child has exited already.
    fn exited_early(&mut self) -> Result<(), ChildError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Err(ChildError::Exited {
                    exe: self.exe.clone(),
                    status,
                    log: self.log_tail(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Kills the child that did not come up in time; the error says so.
    fn not_listening(&mut self, addr: &str) -> ChildError {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        ChildError::NotListening {
            exe: self.exe.clone(),
            addr: addr.to_owned(),
            timeout: START_TIMEOUT,
            log: self.log_tail(),
        }
    }

    /// The last lines of the child's log, once it has exited (the reader
    /// thread ends when the child's standard error closes).
    fn log_tail(&mut self) -> String {
        match self.log.take().map(std::thread::JoinHandle::join) {
            Some(Ok(lines)) => lines.into_iter().collect::<Vec<_>>().join("\n"),
            _ => "(not read)".into(),
        }
    }
}

impl Drop for EngineChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to `child` (SIGKILL where there is no `libc`).
fn terminate(child: &mut Child) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) only sends a signal; `pid` is our own child,
        // not yet waited for, so the pid is not reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            return;
        }
    }
    let _ = child.kill();
}

/// Reads the child's log lines on a thread until it closes its standard
/// error (the child's log must be read, or the child blocks on a full
/// pipe): sends the address of its [`LISTENING`] line through `addr`, and
/// returns the last [`LOG_TAIL`] lines.
fn spawn_log_reader(
    stderr: std::process::ChildStderr,
    addr: tokio::sync::oneshot::Sender<SocketAddr>,
) -> Option<std::thread::JoinHandle<VecDeque<String>>> {
    let mut addr = Some(addr);
    std::thread::Builder::new()
        .name("bench-engine-log".into())
        .spawn(move || {
            let mut log = VecDeque::with_capacity(LOG_TAIL);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if addr.is_some()
                    && let Some(a) = listening_addr(&line)
                    && let Some(tx) = addr.take()
                {
                    let _ = tx.send(a);
                }
                if log.len() == LOG_TAIL {
                    log.pop_front();
                }
                log.push_back(line);
            }
            log
        })
        .ok()
}

/// The `local_addr` of the engine's JSON [`LISTENING`] log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != LISTENING {
        return None;
    }
    fields.get("local_addr")?.as_str()?.parse().ok()
}

/// The engine's record memory gauge.
const RECORD_MEMORY: &str = "sluice_record_memory_bytes";

/// The value of the unlabelled gauge `name` on the Prometheus endpoint at
/// `addr` (one HTTP/1.1 GET, bounded to 1 s), if it answers.
async fn scrape_gauge(addr: SocketAddr, name: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = tokio::time::timeout(Duration::from_secs(1), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()??;
    gauge_value(&String::from_utf8_lossy(&body), name)
}

/// The value of the gauge `name` (without labels) in a Prometheus text page.
fn gauge_value(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        let v: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"sluice engine listening","local_addr":"127.0.0.1:40123","pipelines":1},"target":"sluice_engine::server::builder"}"#;
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 40123)))
        );
        let other =
            r#"{"fields":{"message":"serving Prometheus metrics","local_addr":"127.0.0.1:1"}}"#;
        assert_eq!(listening_addr(other), None);
        assert_eq!(listening_addr("sluice engine listening"), None);
    }

    #[test]
    fn a_gauge_is_read_without_its_help_lines_or_longer_names() {
        let page = "# HELP sluice_record_memory_bytes x\n# TYPE sluice_record_memory_bytes gauge\n\
                    sluice_record_memory_bytes_total 9\nsluice_record_memory_bytes 1048576\n";
        assert_eq!(gauge_value(page, RECORD_MEMORY), Some(1_048_576));
        assert_eq!(
            gauge_value("sluice_record_memory_bytes_x 3\n", RECORD_MEMORY),
            None
        );
    }

    /// In a unit test this executable is the test binary, which refuses
    /// `serve -c FILE` as options and exits at once: the error names the
    /// binary and carries its exit status and log.
    #[tokio::test]
    async fn a_child_that_exits_before_it_listens_is_a_clear_error() {
        let dir = EngineChild::temp_dir().unwrap();
        let settings = engine_settings(
            &BenchArgs::default(),
            Settings::default(),
            dir.path(),
            None,
            None,
        )
        .unwrap();
        let e = EngineChild::start(&settings, dir)
            .await
            .err()
            .expect("it exits");
        assert!(matches!(e, ChildError::Exited { .. }), "{e}");
        let exe = std::env::current_exe().unwrap();
        let text = e.to_string();
        assert!(
            text.contains(&exe.display().to_string()) && text.contains("before it listened"),
            "{text}"
        );
    }

    #[test]
    fn the_window_of_large_records_is_refused_by_name() {
        let mut args = BenchArgs {
            window: Some(64),
            record_bytes: 1000,
            ..BenchArgs::default()
        };
        let dir = EngineChild::temp_dir().unwrap();
        let e = engine_settings(&args, Settings::default(), dir.path(), None, None)
            .expect_err("refused");
        assert!(e.to_string().contains("--window"), "{e}");
        // Small records: the record window binds either way.
        args.record_bytes = 16;
        let s = engine_settings(&args, Settings::default(), dir.path(), None, None).unwrap();
        assert_eq!(s.buffer.credit_window_records, 64);
    }

    #[test]
    fn the_engine_settings_read_back_from_their_file() {
        let args = BenchArgs {
            sink: BenchSink::File,
            sink_delay: Some(Duration::from_millis(5)),
            ..BenchArgs::default()
        };
        let dir = EngineChild::temp_dir().unwrap();
        let s = engine_settings(&args, Settings::default(), dir.path(), None, None).unwrap();
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, s.to_toml_string().unwrap()).unwrap();
        let back = Settings::load_with_env(Some(&path), Vec::<(String, String)>::new()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.pipelines[0].sink.delay(), Duration::from_millis(5));
        assert_eq!(back.pipelines[0].dead_letter.kind(), "null");
    }
}
