//! `sluice bench --engine-process`: the binary runs a short bench against
//! an engine in a child process of its own (itself, as `sluice serve`), and
//! the report's memory figures are that child's.
//!
//! It lives here rather than with the in-process bench tests
//! (`tests/tests/e2e/cli_bench.rs`) because it needs the `sluice` binary:
//! the bench runs its own executable as the engine. No speed assertions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_cli::bench::BenchReport;

/// One second of failing records (retried once after 100 ms, then
/// dead-lettered) against the child, with its metrics on: nothing lost, the
/// RSS is the child's (its pid, not the bench's), the record memory peak
/// comes from its metrics, and the child and its directory are gone when
/// the bench has exited.
#[test]
fn the_bench_measures_the_engine_process() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--engine-process",
            "--engine-metrics",
            "--json",
            "--quiet",
            "--duration",
            "1s",
            "--sources",
            "1",
            "--record-bytes",
            "100",
            "--batch",
            "256",
            "--fail-rate",
            "0.01",
            "--fail-backoff",
            "100ms",
            "--max-retries",
            "1",
            "--buffer-bytes",
            "33554432",
        ])
        // The run's directory (configuration, files) goes here.
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary runs");
    let bench_pid = bench.id();
    // Bounded: a hung bench is killed and the test fails.
    let deadline = started + Duration::from_secs(60);
    while bench.try_wait().expect("waits").is_none() {
        if Instant::now() > deadline {
            let _ = bench.kill();
            let _ = bench.wait();
            panic!("sluice bench --engine-process still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = bench.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let report: BenchReport = serde_json::from_str(&stdout).expect("a JSON report");
    let run = report.sluice.expect("the sluice run");
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!((run.lost, run.rejects), (0, 0), "{run:?}");
    assert!(run.sent > 0 && run.acked == run.sent, "{run:?}");
    // The stage's failures went through the retry settings of the file.
    assert!(run.dead_lettered > 0, "{run:?}");
    let pid = run.engine_pid.expect("the engine's pid");
    assert_ne!(pid, bench_pid, "the engine ran in its own process");
    let (peak, idle) = (
        run.peak_rss_bytes.expect("a peak RSS"),
        run.idle_rss_bytes.expect("an idle RSS"),
    );
    assert!(idle > 0 && peak >= idle, "{run:?}");
    assert_eq!(run.buffer_bytes, Some(33_554_432));
    // `--engine-metrics`: read from the child's Prometheus endpoint.
    assert!(run.peak_record_memory_bytes.is_some(), "{run:?}");
    // The bench stopped and reaped its engine, and removed its directory.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the engine process {pid} is still there"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("the directory")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("sluice-bench-engine-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
