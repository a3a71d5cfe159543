//! Observability end to end: the Prometheus endpoint (scraped over HTTP and
//! parsed) and `Admin.Stats` after records went through a real engine.
//!
//! The Prometheus recorder is global to the process and every engine of the
//! process feeds it, so the test runs alone in a process of its own (a child
//! of the test binary, see `sluice_tests::in_own_process`): the engines of
//! the other tests, running at the same time, would add to its counts.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_client::{ClientOptions, SourceClient};
use sluice_engine::observe;
use sluice_proto::v1::{SourceState, StatsRequest, admin_client::AdminClient};
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample of the text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.expect("response");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `promtool check metrics` (Debian package `prometheus`) accepts the
/// scrape: Prometheus naming conventions (base units, `_total` counters).
fn promtool_accepts(scrape: &str) {
    use std::io::Write as _;
    let Some(promtool) = sluice_tests::external_program("promtool_accepts", "promtool") else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("scrape written");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_and_stats_after_records_went_through() {
    if in_own_process("observe::metrics_and_stats_after_records_went_through") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(metrics_and_stats());
    }
}

async fn metrics_and_stats() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let metrics_addr = free_port();
        let handle = observe::install_prometheus(metrics_addr).expect("exporter installs");
        // Installing again (a second engine in the process) is harmless.
        observe::install_prometheus(free_port()).expect("idempotent");

        let dir = tempfile::tempdir().expect("tempdir");
        let started = std::time::Instant::now();
        let engine = start_engine(test_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let (client, mut events) =
            SourceClient::connect(&addr, "obs-1", "", ClientOptions::default())
                .await
                .expect("client connects");
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        for i in 1..=50 {
            client.send_payload(payload(i, 100)).await.expect("send");
        }
        let summary = client.finish().await;
        drain.await.expect("events");
        assert_eq!(summary.acked, 50, "{summary:?}");

        // The engine publishes every second: wait for a round that saw everything.
        let src = [("source", "obs-1"), ("pipeline", "default")];
        let mut samples = Vec::new();
        let mut text = String::new();
        for _ in 0..50 {
            text = scrape(metrics_addr).await;
            samples = parse(&text);
            let done = find(&samples, "sluice_records_delivered_total", &src)
                .is_some_and(|s| s.value == 50.0)
                && find(
                    &samples,
                    "sluice_stage_idle_seconds_total",
                    &[("stage", "sink")],
                )
                .is_some();
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let get = |name: &str, labels: &[(&str, &str)]| {
            find(&samples, name, labels)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape"))
                .value
        };
        assert_eq!(get("sluice_records_received_total", &src), 50.0);
        assert_eq!(get("sluice_records_delivered_total", &src), 50.0);
        assert_eq!(get("sluice_records_rejected_total", &src), 0.0);
        assert_eq!(get("sluice_records_dead_lettered_total", &src), 0.0);
        assert_eq!(get("sluice_records_retried_total", &src), 0.0);
        assert_eq!(get("sluice_source_acked_through_seq", &src), 50.0);
        assert_eq!(get("sluice_source_admitted_through_seq", &src), 50.0);
        // The one per-source flow-state gauge (0 normal, 1 slowed, 2 paused),
        // from sluice-buffer; the connection is a gauge of its own.
        let state = get("sluice_backpressure_state", &[("source", "obs-1")]);
        assert!((0.0..=2.0).contains(&state), "{state}");
        let connected = get("sluice_source_connected", &src);
        assert!(connected == 0.0 || connected == 1.0, "{connected}");
        get("sluice_source_credits_outstanding_records", &src);
        get("sluice_credits_granted_total", &[("source", "obs-1")]);
        // Buffer gauges per level, from sluice-buffer.
        assert_eq!(get("sluice_buffer_records", &[("level", "global")]), 0.0);
        assert!(get("sluice_buffer_limit_records", &[("level", "global")]) > 0.0);
        get(
            "sluice_buffer_utilization",
            &[("level", "stage"), ("name", "sink")],
        );
        get(
            "sluice_buffer_utilization",
            &[("level", "source"), ("name", "obs-1")],
        );
        // Stage time as base-unit counters (whole seconds): together at
        // most the time the engine has run (one worker per stage).
        let stage = [("pipeline", "default"), ("stage", "sink")];
        let busy = get("sluice_stage_busy_seconds_total", &stage);
        let idle = get("sluice_stage_idle_seconds_total", &stage);
        let bp = get("sluice_stage_backpressured_seconds_total", &stage);
        let uptime = started.elapsed().as_secs_f64();
        assert!(
            busy + idle + bp <= uptime + 1.0,
            "{busy} {idle} {bp} > {uptime}"
        );
        promtool_accepts(&text);
        // No abbreviated-unit names are left (promtool's rule).
        assert!(
            !samples.iter().any(|s| s.name.contains("_ms_")),
            "{:?}",
            samples.iter().find(|s| s.name.contains("_ms_"))
        );
        get("sluice_stage_queued_records", &stage);
        // The ack latency histogram has buckets, a count and a sum.
        let lat = [("pipeline", "default")];
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "sluice_ack_latency_seconds_bucket")
            .collect();
        assert!(buckets.len() > 5, "{buckets:?}");
        // One observation per run of records admitted together, not per
        // record (the exporter holds each observation until it drains them).
        let count = get("sluice_ack_latency_seconds_count", &lat);
        assert!((1.0..=50.0).contains(&count), "{count}");
        assert_eq!(
            get(
                "sluice_ack_latency_seconds_bucket",
                &[("pipeline", "default"), ("le", "+Inf")]
            ),
            count
        );
        assert!(get("sluice_ack_latency_seconds_sum", &lat) > 0.0);
        {
            // One batch is one observation, however many records it holds.
            let mut raw =
                sluice_tests::raw::raw_stream(&addr, sluice_tests::raw::open_msg("obs-batch", ""))
                    .await
                    .expect("raw stream");
            let credit = raw.opened().await.expect("opened").credit.expect("credit");
            let n = credit.records.min(credit.bytes / 200).max(2);
            raw.must_send(sluice_tests::raw::batch_msg(1, n, 100)).await;
            let (_, rejects) = raw.until_ack(n, Duration::from_secs(10)).await;
            assert!(rejects.is_empty(), "{rejects:?}");
            let mut after = count;
            for _ in 0..50 {
                let samples = parse(&scrape(metrics_addr).await);
                after = find(&samples, "sluice_ack_latency_seconds_count", &lat)
                    .map_or(count, |s| s.value);
                if after > count {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(after, count + 1.0, "{n} records in one batch");
        }
        // The handle renders the same registry.
        assert!(
            handle
                .render()
                .contains("sluice_ack_latency_seconds_bucket")
        );

        // Admin.Stats: the same recent-interval rates and filled-in sources.
        let mut admin = AdminClient::connect(addr.clone()).await.expect("admin");
        let stats = admin
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        let sink = stats
            .stages
            .iter()
            .find(|s| s.name == "sink")
            .expect("sink stage");
        let sum = sink.busy_ms_per_s + sink.idle_ms_per_s + sink.backpressured_ms_per_s;
        assert!((sum - 1000.0).abs() < 1.0, "{sink:?}");
        let s = stats
            .sources
            .iter()
            .find(|s| s.source_id == "obs-1")
            .expect("source");
        assert_eq!(s.pipeline, "default");
        assert_eq!(s.acked_through_seq, 50);
        assert_eq!(s.admitted_through_seq, 50);
        assert_eq!(s.received, 50);
        assert_eq!(s.delivered, 50);
        assert_eq!(s.state, SourceState::Closed as i32);
        assert_eq!(s.credits_outstanding_records, 0);

        engine.shutdown().await.expect("shutdown");
    })
    .await
    .expect("test finishes in time");
}
