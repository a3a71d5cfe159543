//! `sluice bench` in-process: a tiny run loses nothing and reports valid JSON.
//! No speed assertions.

use sluice_cli::bench::{Baseline, BenchArgs, BenchPayload, BenchReport, BenchSink, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_loses_nothing_and_reports_json() {
    let args = BenchArgs {
        sources: 2,
        records: Some(4_000),
        batch: 256,
        baseline: Some(Baseline::Raw),
        ..BenchArgs::default()
    };
    let report = run_bench(&args).await.expect("bench runs");
    let json = serde_json::to_string(&report).expect("serializes");
    let parsed: BenchReport = serde_json::from_str(&json).expect("JSON parses");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON parses");
    assert!(value["sluice"]["records_per_s"].is_number());
    for run in [parsed.raw.as_ref(), parsed.sluice.as_ref()] {
        let run = run.expect("both runs present");
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(run.sent, 4_000, "{run:?}");
        assert_eq!(run.lost, 0, "{run:?}");
        assert_eq!(run.acked, 4_000, "{run:?}");
        assert_eq!(run.rejects, 0, "{run:?}");
        assert_eq!(run.latency.count, 4_000, "{run:?}");
    }
    assert!(parsed.ratio.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_of_json_payloads_into_the_fsynced_file_sink_loses_nothing() {
    let args = BenchArgs {
        sources: 2,
        records: Some(2_000),
        batch: 256,
        sink: BenchSink::File,
        fsync: true,
        payload: BenchPayload::Json,
        ..BenchArgs::default()
    };
    let report = run_bench(&args).await.expect("bench runs");
    let run = report.sluice.expect("the sluice run");
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(
        (run.sent, run.acked, run.lost),
        (2_000, 2_000, 0),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_into_nats_and_its_baseline_lose_nothing() {
    if sluice_tests::external_program("cli_bench::nats", "nats-server").is_none() {
        return;
    }
    let args = BenchArgs {
        sources: 2,
        records: Some(2_000),
        batch: 256,
        sink: BenchSink::Nats,
        baseline: Some(Baseline::Nats),
        payload: BenchPayload::Json,
        ..BenchArgs::default()
    };
    let report = run_bench(&args).await.expect("bench runs");
    for run in [report.raw.as_ref(), report.sluice.as_ref()] {
        let run = run.expect("both runs present");
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(
            (run.sent, run.acked, run.lost),
            (2_000, 2_000, 0),
            "{run:?}"
        );
    }
    assert_eq!(report.raw.as_ref().map(|r| r.target.as_str()), Some("nats"));
    assert!(report.ratio.is_some());
}
