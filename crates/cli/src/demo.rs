//! `sluice demo`: backpressure you can watch, with no configuration.
//!
//! Starts an engine in this process (loopback, random port) with a
//! deliberately slow file sink (the `delay` test knob) and small buffer
//! limits, then runs three sources of different speeds through the
//! [`SourceClient`]: `fast` sends as fast as its credits allow, `steady` at
//! about 1 500 records/s, `trickle` at about 150 records/s. Every signal is
//! printed as it arrives (which source is slowed, paused or resumed, and why)
//! above one progress bar per source. At the end the engine is shut down and a
//! table per source is built from the sink's own output files: every
//! `(source_id, seq)` pair is counted, proving that each record was delivered
//! exactly once.
//!
//! The sink writes under `./sluice-data/demo` (emptied first) unless another
//! directory is given.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_config::{Limit, PipelineSpec, Settings, SinkSpec, StageSpec, TransformSpec};
use sluice_proto::v1::{SignalKind, SignalReason};

use sluice_client::{ClientError, ClientEvent, ClientOptions, SourceClient, Summary};
use sluice_engine::{EngineError, EngineHandle};

/// One demo source.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSource {
    /// Source id.
    pub name: &'static str,
    /// Records to send.
    pub records: u64,
    /// Records per second; `None` sends as fast as credits allow.
    pub rate: Option<u32>,
}

/// The sources of the demo: one fast, one steady, one slow.
pub fn default_sources() -> Vec<DemoSource> {
    vec![
        DemoSource {
            name: "fast",
            records: 25_000,
            rate: None,
        },
        DemoSource {
            name: "steady",
            records: 12_000,
            rate: Some(1_500),
        },
        DemoSource {
            name: "trickle",
            records: 1_500,
            rate: Some(150),
        },
    ]
}

/// What `sluice demo` is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoArgs {
    /// Directory of the sink's output (emptied first).
    pub dir: PathBuf,
    /// The sources.
    pub sources: Vec<DemoSource>,
    /// The sink's pause before each batch.
    pub sink_delay: Duration,
    /// Show progress bars when standard error is a terminal.
    pub progress: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./sluice-data/demo"),
            sources: default_sources(),
            sink_delay: Duration::from_millis(40),
            progress: true,
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The output directory cannot be prepared or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The engine failed to start or stop.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// A source could not connect.
    #[error("source: {0}")]
    Client(#[from] ClientError),
}

/// One row of the final table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// Source id.
    pub name: String,
    /// The client's summary.
    pub summary: Summary,
    /// Records of this source found in the sink files.
    pub in_sink: u64,
    /// Distinct sequence numbers found.
    pub unique: u64,
    /// Records found more than once (extra copies).
    pub duplicates: u64,
    /// Sequence numbers sent but not found.
    pub missing: u64,
}

impl SourceRow {
    /// Whether every record sent was delivered exactly once.
    pub fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.missing == 0 && self.unique == self.summary.submitted
    }
}

/// The outcome of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// One row per source.
    pub rows: Vec<SourceRow>,
    /// Wall time of the sending phase.
    pub elapsed: Duration,
}

impl DemoReport {
    /// Whether every source's records were all delivered exactly once.
    pub fn exactly_once(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.exactly_once() && r.summary.is_complete())
    }
}

/// The engine settings of the demo: a slow file sink under `dir` and small
/// limits, so that backpressure shows within seconds.
pub fn demo_settings(dir: &Path, sink_delay: Duration) -> Settings {
    let mut s = Settings::default();
    s.server.listen = ([127, 0, 0, 1], 0).into();
    s.server.shutdown_timeout = Duration::from_secs(10);
    s.metrics.enabled = false;
    s.memory.enabled = false;
    s.buffer.global = Limit::new(6_000, 64 << 20);
    s.buffer.per_stage = Limit::new(4_000, 16 << 20);
    s.buffer.per_source = Limit::new(1_500, 32 << 20);
    let mut p = PipelineSpec {
        name: "demo".into(),
        stages: vec![StageSpec {
            name: "tag".into(),
            transform: TransformSpec::Set {
                field: "demo".into(),
                value: serde_json::Value::Bool(true),
            },
        }],
        ..PipelineSpec::default()
    };
    p.sink = SinkSpec::File {
        dir: dir.join("sink"),
        prefix: "records".into(),
        rotate_bytes: 64 << 20,
        fsync: false,
        group_commit_batches: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
        delay: sink_delay,
        fail_rate: 0.0,
    };
    p.dead_letter = SinkSpec::File {
        dir: dir.join("dead-letters"),
        prefix: "dead-letters".into(),
        rotate_bytes: 64 << 20,
        fsync: false,
        group_commit_batches: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
        delay: Duration::ZERO,
        fail_rate: 0.0,
    };
    p.batch.max_records = 200;
    p.batch.linger = Duration::from_millis(10);
    s.pipelines = vec![p];
    s
}

/// Runs the demo: engine, three sources, live output, final table.
pub async fn run(args: DemoArgs) -> Result<DemoReport, DemoError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { path, source }
    };
    if args.dir.exists() {
        for sub in ["sink", "dead-letters"] {
            let d = args.dir.join(sub);
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(io(&d))?;
            }
        }
    }
    std::fs::create_dir_all(&args.dir).map_err(io(&args.dir))?;
    let settings = demo_settings(&args.dir, args.sink_delay);
    let engine: EngineHandle = sluice_engine::EngineBuilder::new(settings).start().await?;
    let addr = format!("http://{}", engine.local_addr());

    let multi = MultiProgress::new();
    let visible = args.progress && std::io::stderr().is_terminal();
    multi.set_draw_target(if visible {
        ProgressDrawTarget::stderr_with_hz(10)
    } else {
        ProgressDrawTarget::hidden()
    });
    let say = {
        let multi = multi.clone();
        Arc::new(move |line: String| {
            if multi.is_hidden() {
                println!("{line}");
            } else {
                let _ = multi.println(line);
            }
        })
    };
    say(format!(
        "sluice demo: engine on {addr}; sink writes to {} with a {:?} pause per batch; \
         limits: global 6000, stage 4000, source 1500 records",
        args.dir.join("sink").display(),
        args.sink_delay
    ));
    let width = args.sources.iter().map(|s| s.name.len()).max().unwrap_or(4);
    let style = ProgressStyle::with_template(&format!(
        "{{prefix:>{width}}} {{bar:30}} {{pos:>6}}/{{len:6}} acked  {{msg}}"
    ))
    .ok();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for src in args.sources.clone() {
        let opts = ClientOptions {
            max_unacked: 5_000,
            max_batch_records: 200,
            ..ClientOptions::default()
        };
        let (client, mut events) = SourceClient::connect(&addr, src.name, "demo", opts).await?;
        let bar = multi.add(ProgressBar::new(src.records));
        if let Some(style) = &style {
            bar.set_style(style.clone());
        }
        bar.set_prefix(src.name);
        // Live signal lines.
        let printer = {
            let say = say.clone();
            let name = format!("{:>width$}", src.name);
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    if let Some(line) = describe_event(&e) {
                        say(format!(
                            "[{:>5.1}s] {name}  {line}",
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
            })
        };
        let ticker = crate::progress::follow(bar.clone(), client.progress(), |p| {
            format!(
                "{:<9} sent {:>6}  slow-downs {} pauses {} resumes {}",
                p.state.to_string(),
                p.sent,
                p.slow_downs,
                p.pauses,
                p.resumes
            )
        });
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            for i in 1..=src.records {
                if let Some(rate) = src.rate {
                    let due = t0 + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
                    tokio::time::sleep_until(due.into()).await;
                }
                let payload = format!(r#"{{"source":"{}","n":{i}}}"#, src.name);
                if client.send_payload(payload).await.is_err() {
                    break;
                }
            }
            let summary = client.finish().await;
            ticker.abort();
            bar.set_position(summary.acked);
            bar.finish();
            let _ = printer.await;
            (src.name.to_owned(), summary)
        }));
    }
    let mut summaries = Vec::new();
    for t in tasks {
        match t.await {
            Ok(s) => summaries.push(s),
            Err(e) => tracing::error!(error = %e, "a demo source task failed"),
        }
    }
    let elapsed = started.elapsed();
    let _ = multi.clear();
    say(format!(
        "all sources finished in {:.1}s; shutting the engine down",
        elapsed.as_secs_f64()
    ));
    engine.shutdown().await?;

    let counts = count_sink(&args.dir.join("sink"))?;
    let rows = summaries
        .into_iter()
        .map(|(name, summary)| {
            let seqs = counts.get(&name);
            let (mut in_sink, mut unique, mut duplicates) = (0, 0, 0);
            let mut missing = summary.submitted;
            if let Some(seqs) = seqs {
                for (&seq, &n) in seqs {
                    in_sink += n;
                    unique += 1;
                    duplicates += n - 1;
                    if seq >= 1 && seq <= summary.submitted {
                        missing -= 1;
                    }
                }
            }
            SourceRow {
                name,
                summary,
                in_sink,
                unique,
                duplicates,
                missing,
            }
        })
        .collect();
    let report = DemoReport { rows, elapsed };
    println!("{}", format_table(&report));
    Ok(report)
}

/// `source_id → seq → copies` over every `.jsonl` file under `dir`.
fn count_sink(dir: &Path) -> Result<HashMap<String, HashMap<u64, u64>>, DemoError> {
    let io = |source| DemoError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out: HashMap<String, HashMap<u64, u64>> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| DemoError::Io {
            path: path.clone(),
            source,
        })?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                tracing::warn!(file = %path.display(), "a sink line is not JSON");
                continue;
            };
            let (Some(source), Some(seq)) = (v["source_id"].as_str(), v["seq"].as_u64()) else {
                continue;
            };
            *out.entry(source.to_owned())
                .or_default()
                .entry(seq)
                .or_default() += 1;
        }
    }
    Ok(out)
}

fn describe_event(e: &ClientEvent) -> Option<String> {
    match e {
        ClientEvent::Signal(s) => {
            let kind = match SignalKind::try_from(s.kind).ok()? {
                SignalKind::SlowDown => "SLOW_DOWN",
                SignalKind::Pause => "PAUSE    ",
                SignalKind::Resume => "RESUME   ",
                SignalKind::Unspecified => return None,
            };
            let why = match SignalReason::try_from(s.reason).unwrap_or(SignalReason::Unspecified) {
                SignalReason::Global => "the global buffer".to_owned(),
                SignalReason::Stage => format!("stage {:?}", s.stage),
                SignalReason::Source => "its own buffer".to_owned(),
                SignalReason::Memory => "the memory gate".to_owned(),
                SignalReason::Shutdown => "engine shutdown".to_owned(),
                SignalReason::Sink => format!("the stalled sink {:?}", s.sink),
                SignalReason::Unspecified => "unspecified".to_owned(),
            };
            Some(format!(
                "{kind} because of {why} at {:.0}% utilization",
                s.utilization * 100.0
            ))
        }
        ClientEvent::Reject(r) => Some(format!(
            "REJECT    {} records from seq {}: {}",
            r.count, r.first_seq, r.message
        )),
        ClientEvent::Disconnected { error, .. } => Some(format!("DISCONNECTED {error}")),
        _ => None,
    }
}

/// The final table.
pub fn format_table(report: &DemoReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>7} {:>9} {:>6} {:>7} {:>8}\n",
        "source",
        "sent",
        "acked",
        "in sink",
        "unique",
        "dupes",
        "missing",
        "slowdowns",
        "pauses",
        "resumes",
        "rejected"
    ));
    for r in &report.rows {
        let s = &r.summary;
        out.push_str(&format!(
            "{:<8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>7} {:>9} {:>6} {:>7} {:>8}\n",
            r.name,
            s.sent,
            s.acked,
            r.in_sink,
            r.unique,
            r.duplicates,
            r.missing,
            s.slow_downs,
            s.pauses,
            s.resumes,
            s.rejected
        ));
    }
    if report.exactly_once() {
        out.push_str(
            "\nevery record was delivered exactly once (counted from the sink's own files)",
        );
    } else {
        out.push_str("\nNOT every record was delivered exactly once: see the table");
    }
    out
}

/// Command-line arguments of `sluice demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoCommand {
    /// Directory of the sink's output (its `sink/` and `dead-letters/` are
    /// emptied first).
    #[arg(long, default_value = "./sluice-data/demo")]
    pub dir: PathBuf,
    /// The sink's pause before each batch, in milliseconds.
    #[arg(long, default_value_t = 40)]
    pub sink_delay_ms: u64,
    /// Never show progress bars (signal lines are still printed).
    #[arg(long)]
    pub no_progress: bool,
}

impl DemoCommand {
    /// Runs the demo. Exit code 0 when every record was delivered exactly
    /// once, 1 otherwise, 2 when the demo could not run.
    pub fn run(self) -> std::process::ExitCode {
        use std::process::ExitCode;
        crate::runtime::init_tracing();
        let runtime = match crate::runtime::runtime("sluice demo", ExitCode::from(2)) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        let args = DemoArgs {
            dir: self.dir,
            sink_delay: Duration::from_millis(self.sink_delay_ms),
            progress: !self.no_progress,
            ..DemoArgs::default()
        };
        match runtime.block_on(run(args)) {
            Ok(report) if report.exactly_once() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("sluice demo: {e}");
                ExitCode::from(2)
            }
        }
    }
}
