//! `sluice bench`: end-to-end throughput and ack latency over loopback gRPC.
//!
//! The load generator is a lean source ([`lean`]) on the generated tonic
//! client, one HTTP/2 connection per source (one connection is serialised by
//! a mutex in h2). It obeys credits exactly: it sends a batch only when its
//! record and byte credits cover it, so a compliant run has zero rejects.
//!
//! Two targets:
//!
//! - `sluice`: an engine started in-process (null sink by default, or a file
//!   sink, optionally slowed down), or the same engine in a child process
//!   of its own ([`child`], `--engine-process`: the memory figures are then
//!   the engine's alone), or an engine at `--addr`;
//! - `raw` ([`raw`]): a bare `sluice.v1.Ingest` server that only counts
//!   records, acks each batch at once and grants unlimited credit: the
//!   transport's ceiling on this machine;
//! - `copy` ([`postgres`], with `--sink postgres`): the same rows
//!   `COPY`-loaded into the same kind of table with tokio-postgres alone:
//!   the database's ceiling.
//!
//! With `--sink nats` the engine writes into NATS JetStream, and
//! `--baseline nats` ([`nats`](mod@nats)) publishes the same messages with
//! async-nats directly: JetStream's ceiling for one publisher.
//!
//! Ack latency is the time from the send of a record's batch to the `Ack`
//! that covers it, per record, in an HDR histogram. `lost` is
//! `sent − delivered − filtered − dead-lettered` at the end and must be 0.

pub mod child;
pub mod flood;
pub mod idle;
mod in_process;
pub mod lean;
pub mod nats;
pub mod postgres;
pub mod raw;
mod rss;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use sluice_config::{Limit, Settings};

/// Which sink the in-process engine writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchSink {
    /// Discard records (commit at once).
    Null,
    /// Newline-delimited JSON files in a temporary directory (fsync on
    /// commit with `--fsync`).
    File,
    /// Rows of a PostgreSQL table (envelope mode, exactly once): a
    /// throwaway server the bench starts (durable with `--fsync`), or the
    /// one at `--pg-url`.
    Postgres,
    /// NATS JetStream (`--nats-url`, or a `nats-server` started for the run).
    Nats,
}

/// How the postgres sink inserts its batches (`staging` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PgStaging {
    /// `COPY` into the table; through the staging table only a batch that
    /// meets a row already there or a bad record (the default).
    Fallback,
    /// Every batch through the staging table and `ON CONFLICT DO NOTHING`.
    Always,
}

impl From<PgStaging> for sluice_config::Staging {
    fn from(s: PgStaging) -> Self {
        match s {
            PgStaging::Fallback => Self::Fallback,
            PgStaging::Always => Self::Always,
        }
    }
}

/// What the records' payloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchPayload {
    /// `x` repeated (not JSON: the JSON sinks write it as a string).
    Bytes,
    /// A JSON object, `{"id":N,"pad":"xx…"}` (N: the source's index),
    /// padded to `--record-bytes` (the JSON sinks embed it as JSON).
    Json,
}

/// The baseline run before the sluice run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// A bare tonic `Ingest` server that counts and acks: the transport's ceiling.
    Raw,
    /// The same sluice run without failures (`--fail-rate 0`, the same
    /// stages): what failing records cost. Compared by the rate records
    /// complete while the sources send (`completed_per_s_while_sending`),
    /// since a failing record's retries outlast the sending by design.
    NoFailures,
    /// With `--sink postgres`: the same rows `COPY`-loaded with
    /// tokio-postgres alone, `--sink-batch` rows per transaction: the
    /// database's ceiling.
    Copy,
    /// The same messages as `--sink nats` writes, published with async-nats
    /// directly (PubAcks awaited): JetStream's ceiling.
    Nats,
}

/// `sluice bench`: drive an engine with N sources and report throughput,
/// ack latency, memory, signals, rejects and loss.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Engine to drive; default: start one in-process on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Number of sources, each on its own connection.
    #[arg(long, default_value_t = 4)]
    pub sources: usize,
    /// Payload size of each record in bytes.
    #[arg(long, default_value_t = 100)]
    pub record_bytes: usize,
    /// Payload content: `bytes` (`x` repeated) or `json` (a JSON object of
    /// `--record-bytes` bytes, or `{"id":N,"pad":""}` if that is longer).
    #[arg(long, value_enum, default_value_t = BenchPayload::Bytes)]
    pub payload: BenchPayload,
    /// Records per batch.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// How long to send (e.g. `10s`, `500ms`, `2m`); ignored with `--records`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send this many records in total (split over the sources) instead of
    /// sending for `--duration`.
    #[arg(long)]
    pub records: Option<u64>,
    /// Cap the offered rate at R records/s in total (0 = as fast as credits allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sink of the in-process engine.
    #[arg(long, value_enum, default_value_t = BenchSink::Null)]
    pub sink: BenchSink,
    /// With `--sink nats` / `--baseline nats`: the server; default: start
    /// `nats-server` (from `PATH`) on a free loopback port.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// With `--sink file`: sync the file to disk at every commit. With
    /// `--sink postgres`: the throwaway server keeps its durable defaults
    /// (`fsync`, `synchronous_commit`); without, it runs with `fsync = off`.
    #[arg(long)]
    pub fsync: bool,
    /// With `--sink postgres`: the server to write to (its password in
    /// `PGPASSWORD`) instead of a throwaway one.
    #[arg(long, value_name = "URL")]
    pub pg_url: Option<String>,
    /// With `--sink postgres`: how the sink inserts its batches.
    #[arg(long, value_enum, default_value_t = PgStaging::Fallback)]
    pub pg_staging: PgStaging,
    /// Pause of the sink before each batch (a slow sink), e.g. `100ms`.
    #[arg(long, value_parser = parse_duration)]
    pub sink_delay: Option<Duration>,
    /// Offer F × the slow sink's capacity (needs `--sink-delay`; the sink's
    /// capacity is `--sink-batch` records per `--sink-delay`).
    #[arg(long, value_name = "F")]
    pub flood: Option<f64>,
    /// Records per sink batch of the in-process engine (`batch.max_records`).
    #[arg(long, default_value_t = 1000)]
    pub sink_batch: usize,
    /// Identity transform stages in front of the sink stage of the
    /// in-process engine (default 0: the engine's default pipeline, sources
    /// straight to the sink stage). Each stage adds a worker and a hop.
    #[arg(long, default_value_t = 0)]
    pub stages: usize,
    /// How long the in-process engine's stage workers wait for a batch to
    /// fill (`batch.linger`; engine default `50ms`).
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// Global buffer byte budget of the in-process engine (per-stage and
    /// per-source byte limits are capped to it).
    #[arg(long)]
    pub buffer_bytes: Option<u64>,
    /// Global buffer record limit of the in-process engine (per-stage and
    /// per-source record limits are capped to it).
    #[arg(long)]
    pub buffer_records: Option<u64>,
    /// Credit window of each source in records (engine default 1024); the
    /// byte window is this × `--record-bytes` × 2.
    #[arg(long)]
    pub window: Option<u64>,
    /// Streams that open and never send, held during the sluice run (they
    /// should cost the busy sources nothing: each holds only its guaranteed
    /// share of credit).
    #[arg(long, default_value_t = 0)]
    pub idle_streams: usize,
    /// Fail this fraction of the records (0–1) in a transform stage in
    /// front of the sink of the in-process engine (the `fail` transform:
    /// the same records fail at every attempt, so each is retried
    /// `--max-retries` times and then dead-lettered).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// With `--fail-rate`: the backoff before a failed record's first retry
    /// (`retry.initial_backoff`; doubled per retry, at most 5 s or this).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub fail_backoff: Duration,
    /// With `--fail-rate`: retries before a failed record is dead-lettered
    /// (`retry.max_retries`).
    #[arg(long, default_value_t = 3)]
    pub max_retries: u32,
    /// Adversarial: a `sample` stage in front of the sink of the
    /// in-process engine that keeps 1 record in N (by a hash of its
    /// sequence number) and filters out the rest: each survivor's batch is
    /// otherwise dropped.
    #[arg(long, value_name = "N")]
    pub filter_keep: Option<u64>,
    /// Adversarial: connections held during the sluice run that each open a
    /// stream, declare a batch of `--max-message-bytes` and send all of it
    /// but its last byte as fast as HTTP/2 flow control lets them, and
    /// never read (`bench/flood.rs`): the transport buffers outside the
    /// buffer manager, filled.
    #[arg(long, default_value_t = 0)]
    pub flood_connections: usize,
    /// `server.max_message_bytes` of the in-process engine (default 16 MiB).
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// `server.http2_stream_window` and `server.http2_connection_window`
    /// of the in-process engine (default 1 MiB each).
    #[arg(long)]
    pub http2_window: Option<u32>,
    /// Run the engine in a child process of its own (`sluice serve` on a
    /// generated configuration file) instead of in this process, so that
    /// the RSS figures are the engine's alone, without the load generator
    /// (`bench/child.rs`). Only for what the configuration can express
    /// (`--window` only up to `--record-bytes 512`, as
    /// `buffer.credit_window_records`). Its metrics endpoint is off, as
    /// in-process, so there is no record memory peak (see `--engine-metrics`).
    #[arg(long, conflicts_with = "addr")]
    pub engine_process: bool,
    /// With `--engine-process`: the engine serves its metrics, and the
    /// bench reads the record memory peak from them once per second. The
    /// RSS then includes what the metrics exporter holds (every ack-latency
    /// sample until a scrape drains it).
    #[arg(long, requires = "engine_process")]
    pub engine_metrics: bool,
    /// Run a baseline first and report the sluice/baseline ratio.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// With `--baseline`: run the baseline and sluice alternately this many
    /// times and report the median of the per-round ratios (the machine's
    /// speed drifts between runs; alternating short rounds compares like
    /// with like).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Only run the raw baseline (no sluice run).
    #[arg(long)]
    pub raw_only: bool,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on standard error.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for BenchArgs {
    /// The command line's defaults (`sluice bench` without options), but
    /// quiet: one definition of the defaults, the `#[arg]`s above.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Bench {
            #[command(flatten)]
            args: BenchArgs,
        }
        let mut args = <Bench as clap::Parser>::parse_from(["bench"]).args;
        args.quiet = true;
        args
    }
}

/// Parses `10s`, `250ms`, `2m`, `1.5s` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "us" => n / 1e6,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Ack latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Records measured.
    pub count: u64,
}

impl Latency {
    /// The percentiles of `hist` (microseconds).
    pub(crate) fn of(hist: &Histogram<u64>) -> Self {
        Self {
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            count: hist.len(),
        }
    }
}

/// Signals received by all sources, by kind.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Signals {
    /// SLOW_DOWN.
    pub slow_down: u64,
    /// PAUSE.
    pub pause: u64,
    /// RESUME.
    pub resume: u64,
}

/// The outcome of one run (one target).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunReport {
    /// `raw`, `baseline` (the run without failures) or `sluice`.
    pub target: String,
    /// Sources (connections).
    pub sources: usize,
    /// Payload bytes per record.
    pub record_bytes: usize,
    /// Records per batch.
    pub batch: usize,
    /// Transform stages in front of the sink stage (`--stages`, plus the
    /// `fail` stage with `--fail-rate`; 0 for the raw baseline).
    pub stages: usize,
    /// Offered rate cap in records/s (0 = none).
    pub rate_cap: f64,
    /// Seconds from the first send to the last ack.
    pub elapsed_s: f64,
    /// Records sent (highest sequence number sent, over all sources).
    pub sent: u64,
    /// Records completed as acked (`Ack.through_seq`, summed).
    pub acked: u64,
    /// Records committed by the sink (`Ack.delivered`, summed).
    pub delivered: u64,
    /// Records written to the dead-letter sink.
    pub dead_lettered: u64,
    /// Records filtered out by transforms.
    pub filtered: u64,
    /// `sent − delivered − filtered − dead_lettered`; must be 0.
    pub lost: i64,
    /// `Reject` messages received.
    pub rejects: u64,
    /// Records named in those rejects.
    pub rejected_records: u64,
    /// Signals received.
    pub signals: Signals,
    /// Acked records per second.
    pub records_per_s: f64,
    /// Records the engine completed (delivered, dead-lettered or filtered)
    /// by the time the sources stopped sending, per second of sending: the
    /// pipeline's rate under load, without the drain after it.
    pub completed_per_s_while_sending: f64,
    /// `--fail-rate` of the run (0 for a baseline).
    pub fail_rate: f64,
    /// Acked payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Ack latency.
    pub latency: Latency,
    /// Peak RSS during the run (bytes): of this process when the target
    /// runs in it (VmRSS sampled every 100 ms; it includes the load
    /// generator), or of the engine's child process with
    /// `--engine-process` (its VmHWM at the end of the load: the exact peak).
    pub peak_rss_bytes: Option<u64>,
    /// With `--engine-process`: the pid of the engine's child process, the
    /// process the RSS figures are of; `None`: they are of this process.
    #[serde(default)]
    pub engine_pid: Option<u32>,
    /// Buffer byte budget of the in-process engine (global bytes limit).
    pub buffer_bytes: Option<u64>,
    /// VmRSS once the engine is up, before any load (bytes): of this
    /// process, or of the engine's child process with `--engine-process`.
    pub idle_rss_bytes: Option<u64>,
    /// Peak of the engine's record memory (`sluice_record_memory_bytes`:
    /// message copies records still reference), sampled every 100 ms
    /// in-process; with `--engine-process --engine-metrics` scraped from
    /// the child's metrics once per second (what the engine publishes: a
    /// lower bound), else `None`.
    pub peak_record_memory_bytes: Option<u64>,
    /// Bytes the `--flood-connections` streams got into the engine.
    pub flood_bytes: Option<u64>,
    /// Sources whose stream failed (error text).
    pub errors: Vec<String>,
}

impl RunReport {
    /// A run of `target` with `args` at `rate`, nothing counted yet.
    pub(crate) fn empty(target: &str, args: &BenchArgs, rate: f64) -> Self {
        Self {
            target: target.to_owned(),
            sources: args.sources,
            record_bytes: args.record_bytes,
            batch: args.batch,
            // Sluice runs have the stages, and the `fail` stage of
            // `--fail-rate` (the no-failures baseline has it too, failing
            // nothing); the other baselines (raw, copy, nats) have none.
            stages: if matches!(target, "sluice" | "baseline") {
                args.stages
                    + usize::from(args.fail_rate > 0.0)
                    + usize::from(args.filter_keep.is_some())
            } else {
                0
            },
            rate_cap: rate,
            elapsed_s: 0.0,
            sent: 0,
            acked: 0,
            delivered: 0,
            dead_lettered: 0,
            filtered: 0,
            lost: 0,
            rejects: 0,
            rejected_records: 0,
            signals: Signals::default(),
            records_per_s: 0.0,
            completed_per_s_while_sending: 0.0,
            fail_rate: 0.0,
            mb_per_s: 0.0,
            latency: Latency::default(),
            peak_rss_bytes: None,
            engine_pid: None,
            buffer_bytes: None,
            idle_rss_bytes: None,
            peak_record_memory_bytes: None,
            flood_bytes: None,
            errors: Vec::new(),
        }
    }
}

/// Everything `sluice bench` measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BenchReport {
    /// The baseline run, when asked for: the raw transport, `copy`, or
    /// with `--baseline no-failures` the same sluice run without failures
    /// (its `target` says which; the field keeps its name for readers of
    /// earlier reports).
    pub raw: Option<RunReport>,
    /// The sluice run (absent with `--raw-only`).
    pub sluice: Option<RunReport>,
    /// sluice ÷ baseline (records/s against the raw transport; completed
    /// records/s while sending against no failures); with `--rounds`, the median of
    /// the rounds' ratios (and `raw`/`sluice` are that round's runs).
    pub ratio: Option<f64>,
    /// Every round of a `--rounds` comparison, in order.
    pub rounds: Vec<Round>,
}

/// One baseline-then-sluice round of a comparison.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Round {
    /// The baseline's figure (see [`BenchReport::ratio`]): records/s of the
    /// raw transport or `copy`, or the run without failures.
    pub raw_records_per_s: f64,
    /// The sluice run's figure.
    pub sluice_records_per_s: f64,
    /// sluice ÷ raw.
    pub ratio: f64,
    /// Records lost in either run (must be 0).
    pub lost: i64,
}

/// `sluice bench` entry point: runs and prints; exit code 1 when records were
/// lost or a source failed.
pub fn run(args: BenchArgs) -> ExitCode {
    let rt = match crate::runtime::runtime("sluice bench", ExitCode::from(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match rt.block_on(run_bench(&args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice bench: {e}");
            return ExitCode::from(2);
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("sluice bench: {e}"),
        }
    } else {
        print!("{}", render_table(&report));
    }
    let bad = [&report.raw, &report.sluice]
        .into_iter()
        .flatten()
        .any(|r| r.lost != 0 || !r.errors.is_empty())
        || report.rounds.iter().any(|r| r.lost != 0);
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the benchmark described by `args` (baseline first when asked for).
pub async fn run_bench(args: &BenchArgs) -> Result<BenchReport, String> {
    if args.sources == 0 || args.batch == 0 {
        return Err("--sources and --batch must be at least 1".into());
    }
    let copy = args.baseline == Some(Baseline::Copy);
    if copy && (args.sink != BenchSink::Postgres || args.raw_only || args.addr.is_some()) {
        return Err("--baseline copy needs --sink postgres (and an in-process engine)".into());
    }
    let db = if args.sink == BenchSink::Postgres && args.addr.is_none() {
        Some(postgres::BenchDb::open(args).await?)
    } else {
        None
    };
    let compare = args.baseline.is_some() && !args.raw_only;
    let nats = if args.sink == BenchSink::Nats || args.baseline == Some(Baseline::Nats) {
        Some(nats::BenchNats::start(args.nats_url.as_deref()).await?)
    } else {
        None
    };
    let rounds = if compare { args.rounds.max(1) } else { 1 };
    let mut runs: Vec<(Option<RunReport>, Option<RunReport>, Option<f64>)> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 && !args.quiet {
            eprintln!("[round {round}/{rounds}]");
        }
        let raw = match (args.baseline, &db, &nats) {
            (Some(Baseline::Copy), Some(db), _) => Some(postgres::run_copy(args, db).await?),
            (Some(Baseline::NoFailures), ..) => {
                Some(run_sluice(args, db.as_ref(), nats.as_ref(), "baseline", 0.0).await?)
            }
            (Some(Baseline::Nats), _, Some(nats)) => Some(nats.baseline(args).await?),
            (Some(_), ..) => Some(run_raw(args).await?),
            (None, ..) if args.raw_only => Some(run_raw(args).await?),
            (None, ..) => None,
        };
        let sluice = if args.raw_only {
            None
        } else {
            Some(run_sluice(args, db.as_ref(), nats.as_ref(), "sluice", args.fail_rate).await?)
        };
        let ratio = match (&raw, &sluice) {
            (Some(r), Some(s)) if measure(args, r) > 0.0 => {
                Some(measure(args, s) / measure(args, r))
            }
            _ => None,
        };
        runs.push((raw, sluice, ratio));
    }
    let summary: Vec<Round> = if rounds > 1 {
        runs.iter()
            .filter_map(|(r, s, ratio)| {
                let (r, s) = (r.as_ref()?, s.as_ref()?);
                Some(Round {
                    raw_records_per_s: measure(args, r),
                    sluice_records_per_s: measure(args, s),
                    ratio: (*ratio)?,
                    lost: r.lost + s.lost,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    // The round with the median ratio stands for the comparison.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| runs[i].2.unwrap_or(0.0);
        key(a).total_cmp(&key(b))
    });
    let median = order[order.len() / 2];
    let (raw, sluice, ratio) = runs.swap_remove(median);
    Ok(BenchReport {
        raw,
        sluice,
        ratio,
        rounds: summary,
    })
}

/// The figure a comparison divides: acked records/s against the raw
/// transport; against the run without failures, records completed per
/// second while sending (a failing record's last retries come after it).
fn measure(args: &BenchArgs, r: &RunReport) -> f64 {
    match args.baseline {
        Some(Baseline::NoFailures) => r.completed_per_s_while_sending,
        _ => r.records_per_s,
    }
}

async fn run_raw(args: &BenchArgs) -> Result<RunReport, String> {
    let server = raw::RawServer::start()
        .await
        .map_err(|e| format!("raw server: {e}"))?;
    let addr = server.local_addr();
    let rss = rss::RssSampler::start(rss::Proc::This);
    let result = drive("raw", addr, args, args.rate, rss::Proc::This).await;
    let peak = rss.stop();
    server.stop().await;
    let mut report = result?;
    report.peak_rss_bytes = Some(peak);
    Ok(report)
}

/// A sluice run labelled `target`, failing `fail_rate` of the records
/// (into `db`'s table with `--sink postgres`, `nats`' stream with `--sink nats`).
async fn run_sluice(
    args: &BenchArgs,
    db: Option<&postgres::BenchDb>,
    nats: Option<&nats::BenchNats>,
    target: &str,
    fail_rate: f64,
) -> Result<RunReport, String> {
    let rate = match (args.flood, args.sink_delay) {
        (Some(f), Some(d)) if !d.is_zero() => f * args.sink_batch as f64 / d.as_secs_f64(),
        (Some(_), _) => return Err("--flood needs a non-zero --sink-delay".into()),
        _ => args.rate,
    };
    if let Some(addr) = &args.addr {
        let addr: SocketAddr = addr
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("--addr {addr}: {e}"))?;
        return drive(target, addr, args, rate, rss::Proc::This).await;
    }
    let mut settings = Settings::default();
    settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.server.shutdown_timeout = Duration::from_secs(5);
    settings.metrics.enabled = false;
    if let Some(m) = args.max_message_bytes {
        settings.server.max_message_bytes = m;
    }
    if let Some(w) = args.http2_window {
        settings.server.http2_stream_window = w;
        settings.server.http2_connection_window = w;
    }
    if let Some(b) = args.buffer_bytes {
        settings.buffer.global.bytes = b;
        cap(&mut settings.buffer.per_stage, None, Some(b));
        cap(&mut settings.buffer.per_source, None, Some(b));
    }
    if let Some(r) = args.buffer_records {
        settings.buffer.global.records = r;
        cap(&mut settings.buffer.per_stage, Some(r), None);
        cap(&mut settings.buffer.per_source, Some(r), None);
    }
    let failing = args.fail_rate > 0.0;
    if failing {
        settings.retry = sluice_config::RetryPolicy {
            max_retries: args.max_retries,
            initial_backoff: args.fail_backoff,
            max_backoff: args.fail_backoff.max(Duration::from_secs(5)),
        };
    }
    if let Some(p) = settings.pipelines.first_mut() {
        p.batch.max_records = args.sink_batch.max(1);
        p.stages = (1..=args.stages)
            .map(|i| sluice_config::StageSpec {
                name: format!("identity-{i}"),
                transform: sluice_config::TransformSpec::Identity,
            })
            .collect();
        if let Some(n) = args.filter_keep {
            p.stages.push(sluice_config::StageSpec {
                name: "sample".into(),
                transform: sluice_config::TransformSpec::Sample {
                    keep: 1.0 / n.max(1) as f64,
                },
            });
        }
        // The baseline of a failing run has the same stage, failing nothing.
        if failing {
            p.stages.push(sluice_config::StageSpec {
                name: "fail".into(),
                transform: sluice_config::TransformSpec::Fail { rate: fail_rate },
            });
        }
        if let Some(l) = args.linger {
            p.batch.linger = l;
        }
    }
    let budget = settings.buffer.global.bytes;
    // A flood stream declares the largest message the engine reads beyond
    // a stream's credit (`server.uncovered_message_bytes`): a larger one
    // ends its stream at once, so that is the most a hostile stream holds.
    let flood_message = u32::try_from(
        settings
            .uncovered_message_bytes()
            .min(settings.server.max_message_bytes),
    )
    .unwrap_or(u32::MAX);
    if let Some(db) = db {
        db.empty(postgres::SLUICE_TABLE).await?;
    }
    let load = Load {
        target,
        rate,
        flood_message,
    };
    let mut report = if args.engine_process {
        child::run(args, settings, db, nats, load).await?
    } else {
        in_process::run(args, settings, db, nats, load).await?
    };
    report.buffer_bytes = Some(budget);
    report.fail_rate = fail_rate;
    if let Some(db) = db {
        // Exactly once: every acked record is in the table, once.
        let rows = db.count(postgres::SLUICE_TABLE).await?;
        if rows != report.delivered {
            report.errors.push(format!(
                "{} records delivered, {rows} rows in the table",
                report.delivered
            ));
        }
    }
    Ok(report)
}

/// What a sluice run's load is, besides `args`: its label, its offered
/// rate, and the message size its flood streams declare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load<'a> {
    /// `sluice` or `baseline`.
    pub(crate) target: &'a str,
    /// The offered rate cap (records/s, 0 = none).
    pub(crate) rate: f64,
    /// The batch size each `--flood-connections` stream declares.
    pub(crate) flood_message: u32,
}

/// Runs `load` against the engine at `addr`: the sources of `args`, with
/// its idle streams and flood connections held meanwhile (progress lines
/// show `mem`'s RSS). The sources' report, and the bytes the flood got
/// into the engine.
async fn load(
    load: Load<'_>,
    addr: SocketAddr,
    args: &BenchArgs,
    mem: rss::Proc,
) -> Result<(Result<RunReport, String>, Option<u64>), String> {
    let idle = idle::IdleStreams::open(addr, args.idle_streams).await?;
    let flood = if args.flood_connections > 0 {
        Some(flood::Flood::open(addr, args.flood_connections, load.flood_message).await?)
    } else {
        None
    };
    let result = drive(load.target, addr, args, load.rate, mem).await;
    let flood_bytes = flood.as_ref().map(flood::Flood::sent_bytes);
    drop(idle);
    drop(flood);
    Ok((result, flood_bytes))
}

fn cap(limit: &mut Limit, records: Option<u64>, bytes: Option<u64>) {
    if let Some(r) = records {
        limit.records = limit.records.min(r);
    }
    if let Some(b) = bytes {
        limit.bytes = limit.bytes.min(b);
    }
}

/// Runs the sources against `addr` and gathers their results.
async fn drive(
    target: &str,
    addr: SocketAddr,
    args: &BenchArgs,
    rate: f64,
    mem: rss::Proc,
) -> Result<RunReport, String> {
    let n = args.sources;
    let per_source_records = args.records.map(|total| {
        (0..n as u64)
            .map(|i| total / n as u64 + u64::from(i < total % n as u64))
            .collect::<Vec<_>>()
    });
    let run_id = run_id();
    let counters = Arc::new(lean::Counters::default());
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            lean::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?,
        );
    }
    let start = Instant::now();
    let deadline = args.records.is_none().then(|| start + args.duration);
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        let cfg = lean::SourceConfig {
            source_id: format!("bench-{target}-{run_id}-{i}"),
            payload: payload(args.payload, args.record_bytes, i),
            batch: args.batch,
            records: per_source_records.as_ref().map(|v| v[i]),
            deadline: deadline.map(tokio::time::Instant::from_std),
            rate: if rate > 0.0 { rate / n as f64 } else { 0.0 },
        };
        tasks.push(tokio::spawn(lean::run_source(conn, cfg, counters.clone())));
    }
    let progress = (!args.quiet).then(|| {
        let counters = counters.clone();
        let target = target.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last_sent, mut last_acked) = (0, 0);
            loop {
                tick.tick().await;
                let sent = counters.sent.load(Ordering::Relaxed);
                let acked = counters.acked.load(Ordering::Relaxed);
                eprintln!(
                    "[{target} {:>5.1}s] sent {sent:>11} ({:>9}/s)  acked {acked:>11} ({:>9}/s)  rss {:>6} MiB",
                    start.elapsed().as_secs_f64(),
                    sent - last_sent,
                    acked - last_acked,
                    mem.rss().unwrap_or(0) >> 20,
                );
                (last_sent, last_acked) = (sent, acked);
            }
        })
    });
    let mut hist = new_histogram();
    let mut report = RunReport::empty(target, args, rate);
    let mut last_ack_at = start;
    let (mut done_sending_at, mut completed_while_sending) = (start, 0u64);
    for t in tasks {
        let r = match t.await {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("source task: {e}"));
                continue;
            }
        };
        let _ = hist.add(&r.hist);
        report.sent += r.sent;
        report.acked += r.acked;
        report.delivered += r.delivered;
        report.dead_lettered += r.dead_lettered;
        report.filtered += r.filtered;
        report.rejects += r.rejects;
        report.rejected_records += r.rejected_records;
        report.signals.slow_down += r.signals.slow_down;
        report.signals.pause += r.signals.pause;
        report.signals.resume += r.signals.resume;
        if let Some(at) = r.last_ack_at {
            last_ack_at = last_ack_at.max(at.into_std());
        }
        if let Some((at, completed)) = r.done_sending {
            done_sending_at = done_sending_at.max(at.into_std());
            completed_while_sending += completed;
        }
        if let Some(e) = r.error {
            report.errors.push(e);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = last_ack_at.duration_since(start).as_secs_f64().max(1e-9);
    report.elapsed_s = elapsed;
    report.lost = report.sent as i64
        - report.delivered as i64
        - report.filtered as i64
        - report.dead_lettered as i64;
    report.records_per_s = report.acked as f64 / elapsed;
    let sending = done_sending_at
        .duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    report.completed_per_s_while_sending = completed_while_sending as f64 / sending;
    report.mb_per_s = report.acked as f64 * args.record_bytes as f64 / elapsed / 1e6;
    report.latency = Latency::of(&hist);
    Ok(report)
}

/// A name for this run, unique on this machine: source ids carry it, so
/// runs never share a source (nor a JetStream message id).
pub(crate) fn run_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

/// The payload of source `i`'s records: `record_bytes` bytes (a JSON
/// payload is never shorter than `{"id":N,"pad":""}`).
pub(crate) fn payload(kind: BenchPayload, record_bytes: usize, i: usize) -> bytes::Bytes {
    match kind {
        BenchPayload::Bytes => vec![b'x'; record_bytes].into(),
        BenchPayload::Json => {
            let bare = format!("{{\"id\":{i},\"pad\":\"\"}}");
            let pad = "x".repeat(record_bytes.saturating_sub(bare.len()));
            format!("{{\"id\":{i},\"pad\":\"{pad}\"}}").into()
        }
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits; auto-resize past that.
    let mut h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

/// The report as a plain-text table.
pub fn render_table(report: &BenchReport) -> String {
    use std::fmt::Write;
    let runs: Vec<&RunReport> = [&report.raw, &report.sluice]
        .into_iter()
        .flatten()
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "{:<22}{}", "", cols(&runs, |r| r.target.clone()));
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.1}", b as f64 / 1048576.0))
            .unwrap_or_else(|| "-".into())
    };
    let rows: [Row<'_>; 25] = [
        ("sources × batch", &|r| {
            format!("{} × {}", r.sources, r.batch)
        }),
        ("record bytes", &|r| r.record_bytes.to_string()),
        ("transform stages", &|r| r.stages.to_string()),
        ("rate cap (rec/s)", &|r| {
            if r.rate_cap > 0.0 {
                format!("{:.0}", r.rate_cap)
            } else {
                "none".into()
            }
        }),
        ("elapsed (s)", &|r| format!("{:.2}", r.elapsed_s)),
        ("records/s", &|r| format!("{:.0}", r.records_per_s)),
        ("completed/s sending", &|r| {
            format!("{:.0}", r.completed_per_s_while_sending)
        }),
        ("fail rate", &|r| format!("{}", r.fail_rate)),
        ("MB/s", &|r| format!("{:.1}", r.mb_per_s)),
        ("ack p50 (ms)", &|r| ms(r.latency.p50_us)),
        ("ack p99 (ms)", &|r| ms(r.latency.p99_us)),
        ("ack p999 (ms)", &|r| ms(r.latency.p999_us)),
        ("ack max (ms)", &|r| ms(r.latency.max_us)),
        ("peak RSS (MiB)", &|r| {
            r.peak_rss_bytes
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into())
        }),
        ("RSS of", &|r| match (r.engine_pid, r.peak_rss_bytes) {
            (Some(pid), _) => format!("engine process {pid}"),
            (None, Some(_)) => "this process".into(),
            (None, None) => "-".into(),
        }),
        ("buffer budget (MiB)", &|r| {
            r.buffer_bytes
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into())
        }),
        ("idle RSS (MiB)", &|r| mib(r.idle_rss_bytes)),
        (
            "(peak−idle)/budget",
            &|r| match (r.peak_rss_bytes, r.idle_rss_bytes, r.buffer_bytes) {
                (Some(p), Some(i), Some(b)) if b > 0 => {
                    format!("{:.2}", p.saturating_sub(i) as f64 / b as f64)
                }
                _ => "-".into(),
            },
        ),
        (
            "peak record mem (MiB)",
            &|r| mib(r.peak_record_memory_bytes),
        ),
        ("flood bytes in (MiB)", &|r| mib(r.flood_bytes)),
        ("signals slow/pause/res", &|r| {
            format!(
                "{}/{}/{}",
                r.signals.slow_down, r.signals.pause, r.signals.resume
            )
        }),
        ("signals per minute", &|r| {
            let all = r.signals.slow_down + r.signals.pause + r.signals.resume;
            format!("{:.1}", all as f64 * 60.0 / r.elapsed_s.max(1e-9))
        }),
        ("rejects (records)", &|r| {
            format!("{} ({})", r.rejects, r.rejected_records)
        }),
        ("sent / acked", &|r| format!("{} / {}", r.sent, r.acked)),
        ("lost", &|r| {
            format!(
                "{} (dead-lettered {}, filtered {})",
                r.lost, r.dead_lettered, r.filtered
            )
        }),
    ];
    for (name, f) in rows {
        let _ = writeln!(out, "{name:<22}{}", cols(&runs, |r| f(r)));
    }
    for r in &runs {
        for e in &r.errors {
            let _ = writeln!(out, "error ({}): {e}", r.target);
        }
    }
    // The baseline's name: `raw` (the transport) or `nats` (async-nats).
    let baseline = report.raw.as_ref().map_or("raw", |r| r.target.as_str());
    for (i, r) in report.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "round {}: {baseline} {:.0} records/s, sluice {:.0} records/s, ratio {:.3}",
            i + 1,
            r.raw_records_per_s,
            r.sluice_records_per_s,
            r.ratio
        );
    }
    if let Some(ratio) = report.ratio {
        let which = if report.rounds.is_empty() {
            ""
        } else {
            " (median round, shown above)"
        };
        let _ = writeln!(out, "sluice / {baseline} records/s: {ratio:.3}{which}");
    }
    out
}

/// A table row: its name and how to render a run's cell.
type Row<'a> = (&'a str, &'a dyn Fn(&RunReport) -> String);

fn cols(runs: &[&RunReport], f: impl Fn(&RunReport) -> String) -> String {
    runs.iter().map(|r| format!("{:>38}", f(r))).collect()
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `BenchArgs::default()` is the command line's defaults: the workload
    /// the targets in BENCHMARKS.md are stated for.
    #[test]
    fn defaults_are_the_command_lines() {
        let d = BenchArgs::default();
        assert_eq!((d.sources, d.record_bytes, d.batch), (4, 100, 512));
        assert_eq!(d.duration, Duration::from_secs(10));
        assert!(matches!(d.sink, BenchSink::Null) && !d.fsync);
        assert_eq!(d.payload, BenchPayload::Bytes);
        assert_eq!((d.sink_batch, d.stages, d.rounds), (1000, 0, 1));
        assert!(d.quiet && !d.json && d.baseline.is_none() && d.addr.is_none());
    }

    #[test]
    fn a_json_payload_is_a_json_object_of_record_bytes() {
        for (n, i) in [(100, 0), (100, 12), (18, 3), (40, 7)] {
            let p = payload(BenchPayload::Json, n, i);
            assert_eq!(p.len(), n, "{p:?}");
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["id"], i);
        }
        assert_eq!(payload(BenchPayload::Json, 1, 0).len(), 17);
        assert_eq!(&payload(BenchPayload::Bytes, 3, 0)[..], b"xxx");
    }
}
