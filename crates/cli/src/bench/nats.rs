//! `sluice bench --sink nats`: the engine's NATS JetStream sink, and its
//! baseline (`--baseline nats`): the same messages (each record's JSON
//! line, header `Nats-Msg-Id: <source_id>:<seq>`) published with async-nats
//! directly, at most the same number awaiting their PubAck, every PubAck
//! awaited. The ratio is what the engine costs on top of JetStream.
//!
//! The server is `--nats-url`, or else a `nats-server` (from `PATH`)
//! started for the run on a free loopback port with its store in a
//! temporary directory, killed at the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sluice_config::{NatsSinkSpec, NatsStorage, NatsStreamSpec};
use sluice_engine::record::EngineRecord;
use sluice_engine::sink::{SinkRecord, write_json_line};

use super::{BenchArgs, Latency, RunReport, new_histogram, payload, run_id};

/// The stream both runs publish to, and its subjects.
const STREAM: &str = "SLUICE_BENCH";
const SUBJECTS: &str = "sluice-bench.>";
/// Messages awaiting their PubAck, in both runs (the sink's default).
const MAX_IN_FLIGHT: usize = 1024;

/// The NATS server of a run (see the [module docs](self)).
pub struct BenchNats {
    /// Its URL.
    pub url: String,
    local: Option<(Child, tempfile::TempDir)>,
}

impl BenchNats {
    /// `url`, or a `nats-server` started now.
    pub async fn start(url: Option<&str>) -> Result<Self, String> {
        let nats = match url {
            Some(url) => Self {
                url: url.to_owned(),
                local: None,
            },
            None => Self::spawn()?,
        };
        // The server may take a moment to listen: connect with retries.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match nats.stream().await {
                Ok(()) => return Ok(nats),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn spawn() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nats-server (give --nats-url): {e}"))?;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            local: Some((child, dir)),
        })
    }

    /// Creates the bench stream (file storage, 2 min duplicate window).
    async fn stream(&self) -> Result<(), String> {
        let js = self.jetstream().await?;
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("nats stream {STREAM}: {e}"))?;
        Ok(())
    }

    async fn jetstream(&self) -> Result<jetstream::Context, String> {
        let client = async_nats::connect(&self.url)
            .await
            .map_err(|e| format!("nats {}: {e}", self.url))?;
        Ok(jetstream::ContextBuilder::new()
            .max_ack_inflight(MAX_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client))
    }

    /// The engine's sink settings for this server.
    pub fn sink_spec(&self) -> NatsSinkSpec {
        let mut spec = NatsSinkSpec::new(vec![self.url.clone()], "sluice-bench.{source_id}");
        spec.max_in_flight = MAX_IN_FLIGHT;
        spec.create_stream = Some(NatsStreamSpec {
            stream: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            storage: NatsStorage::File,
            duplicate_window: Duration::from_secs(120),
        });
        spec
    }

    /// The baseline run: `args.sources` sources' records, `args.batch` of
    /// one source after the other's, published by one task on one
    /// connection (as the engine's sink does), each PubAck awaited.
    pub async fn baseline(&self, args: &BenchArgs) -> Result<RunReport, String> {
        let js = self.jetstream().await?;
        let n = args.sources;
        let run = run_id();
        let sources: Vec<String> = (0..n).map(|i| format!("bench-nats-{run}-{i}")).collect();
        let payloads: Vec<EngineRecord> = (0..n)
            .map(|i| EngineRecord::from_payload(payload(args.payload, args.record_bytes, i)))
            .collect();
        let totals: Vec<Option<u64>> = (0..n as u64)
            .map(|i| {
                args.records
                    .map(|t| t / n as u64 + u64::from(i < t % n as u64))
            })
            .collect();
        let mut report = RunReport::empty("nats", args, args.rate);
        let mut hist = new_histogram();
        let mut seqs = vec![0u64; n];
        let mut acks = FuturesUnordered::new();
        let start = Instant::now();
        let deadline = args.records.is_none().then(|| start + args.duration);
        let mut settle = |done: (Instant, Result<_, _>), report: &mut RunReport| match done {
            (sent_at, Ok(_)) => {
                let _ = hist.record(sent_at.elapsed().as_micros().max(1) as u64);
                report.acked += 1;
            }
            (_, Err(e)) => report.errors.push(format!("PubAck: {e}")),
        };
        'outer: loop {
            let mut progressed = false;
            for i in 0..n {
                for _ in 0..args.batch {
                    if totals[i].is_some_and(|t| seqs[i] >= t)
                        || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    seqs[i] += 1;
                    progressed = true;
                    let record = SinkRecord {
                        source: &sources[i],
                        seq: seqs[i],
                        record: &payloads[i],
                        dead_letter: None,
                    };
                    let mut line = Vec::with_capacity(96 + args.record_bytes);
                    write_json_line(&mut line, &record);
                    line.pop();
                    let mut headers = HeaderMap::new();
                    headers.insert(NATS_MESSAGE_ID, format!("{}:{}", sources[i], seqs[i]));
                    while acks.len() >= MAX_IN_FLIGHT {
                        if let Some(done) = acks.next().await {
                            settle(done, &mut report);
                        }
                    }
                    let subject = format!("sluice-bench.{}", sources[i]);
                    let publish = PublishMessage::build()
                        .payload(line.into())
                        .headers(headers);
                    let sent_at = Instant::now();
                    match js.send_publish(subject, publish).await {
                        Ok(ack) => acks.push(async move { (sent_at, ack.await) }),
                        Err(e) => {
                            report.errors.push(format!("publish: {e}"));
                            break 'outer;
                        }
                    }
                    report.sent += 1;
                }
            }
            if !progressed {
                break;
            }
        }
        while let Some(done) = acks.next().await {
            settle(done, &mut report);
        }
        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
        report.delivered = report.acked;
        report.lost = report.sent as i64 - report.acked as i64;
        report.elapsed_s = elapsed;
        report.records_per_s = report.acked as f64 / elapsed;
        report.mb_per_s = report.acked as f64 * args.record_bytes as f64 / elapsed / 1e6;
        report.latency = Latency::of(&hist);
        Ok(report)
    }
}

impl Drop for BenchNats {
    fn drop(&mut self) {
        if let Some((child, _dir)) = &mut self.local {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
