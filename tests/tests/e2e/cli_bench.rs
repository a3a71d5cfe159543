//! `sluice bench` in-process: a tiny run loses nothing and reports valid JSON.
//! No speed assertions.

use sluice_cli::bench::{
    Baseline, BenchArgs, BenchPayload, BenchReport, BenchSink, RunReport, run_bench,
};

/// The baseline's and sluice's runs of `report`: both present, neither with
/// errors.
fn both_runs(report: &BenchReport) -> [&RunReport; 2] {
    let runs = [
        report.raw.as_ref().expect("the baseline run"),
        report.sluice.as_ref().expect("the sluice run"),
    ];
    for r in runs {
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    runs
}

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
    for run in both_runs(&parsed) {
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

/// `--fail-rate` against `--baseline no-failures`: the failing records are
/// dead-lettered after their retries, every record is counted once in the
/// ack latency (by a range or by the frontier), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_with_failing_records_loses_nothing() {
    let args = BenchArgs {
        sources: 1,
        records: Some(4_000),
        batch: 256,
        fail_rate: 0.01,
        fail_backoff: std::time::Duration::from_millis(200),
        max_retries: 1,
        baseline: Some(Baseline::NoFailures),
        ..BenchArgs::default()
    };
    let report = run_bench(&args).await.expect("bench runs");
    let [base, run] = both_runs(&report);
    for r in [base, run] {
        assert_eq!(
            (r.sent, r.acked, r.lost, r.rejects),
            (4_000, 4_000, 0, 0),
            "{r:?}"
        );
        assert_eq!(r.latency.count, 4_000, "{r:?}");
    }
    assert_eq!(base.dead_lettered, 0);
    assert!(run.dead_lettered > 0 && run.dead_lettered < 100, "{run:?}");
}

/// `--sink postgres --baseline copy`: the bench starts its own PostgreSQL;
/// both runs write every row once (the bench checks the tables itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_into_postgres_against_copy_loses_nothing() {
    if !sluice_tests::Postgres::installed("cli_bench::tiny_bench_into_postgres") {
        return;
    }
    let args = BenchArgs {
        sources: 2,
        records: Some(3_000),
        batch: 256,
        sink: BenchSink::Postgres,
        sink_batch: 500,
        payload: BenchPayload::Json,
        baseline: Some(Baseline::Copy),
        ..BenchArgs::default()
    };
    let report = run_bench(&args).await.expect("bench runs");
    for run in both_runs(&report) {
        assert_eq!(
            (run.acked, run.delivered, run.lost),
            (3_000, 3_000, 0),
            "{run:?}"
        );
    }
    assert_eq!(report.raw.unwrap().target, "copy");
    assert!(report.ratio.is_some());
}

/// `--sink nats --baseline nats`: the bench starts its own nats-server;
/// both runs publish every record (the bench checks the stream itself).
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
    for run in both_runs(&report) {
        assert_eq!(
            (run.sent, run.acked, run.lost),
            (2_000, 2_000, 0),
            "{run:?}"
        );
    }
    assert_eq!(report.raw.as_ref().map(|r| r.target.as_str()), Some("nats"));
    assert!(report.ratio.is_some());
}
