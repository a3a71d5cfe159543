//! `sluice send` against a real engine: a file of JSON lines is streamed and
//! acked, and a line that is not JSON stops the command with its line
//! number after the lines before it were sent, acked and delivered.

use std::path::PathBuf;
use std::time::Duration;

use sluice_cli::send::{SendArgs, SendError, run};
use sluice_client::{ClientOptions, Summary};
use sluice_engine::EngineHandle;
use sluice_tests::*;

/// Runs `sluice send` of `input` to the engine at `addr` as `source_id`,
/// without a progress bar, within 20 s; with a small unacked window and
/// batches, so 300 lines take many round trips.
async fn send(addr: &str, source_id: &str, input: PathBuf) -> Result<Summary, SendError> {
    let reconnect = reconnecting(5, Duration::from_millis(20), Duration::from_millis(200));
    let args = send_args(addr, source_id, input, reconnect);
    tokio::time::timeout(Duration::from_secs(20), run(args))
        .await
        .expect("send ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_streams_json_lines_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    // A credit window smaller than the input: the command must follow credits.
    settings.buffer.credit_window_records = 50;
    let engine = start_engine(settings, |b| b).await;
    let addr = url(&engine);

    let good = dir.path().join("good.jsonl");
    let mut text = String::new();
    for i in 1..=300 {
        text.push_str(&format!("{{\"n\":{i}}}\n"));
        if i % 100 == 0 {
            text.push_str("   \n\n");
        }
    }
    std::fs::write(&good, text).unwrap();
    let summary = send(&addr, "file-a", good).await.unwrap();
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.acked, 300);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"n\":1}\n\n{\"n\":2}\n{not json\n{\"n\":3}\n").unwrap();
    let err = send(&addr, "file-b", bad).await.unwrap_err();
    match err {
        SendError::InvalidJson {
            line,
            sent,
            summary,
            ..
        } => {
            assert_eq!(line, 4);
            assert_eq!(sent, 2);
            assert_eq!(summary.acked, 2);
        }
        other => panic!("unexpected {other}"),
    }

    // The sink writes before it acks: what was acked is in its files.
    let keys = delivered_keys(&dir.path().join("sink"));
    assert_eq!(seqs_of(&keys, "file-b"), vec![1, 2]);
    assert_exactly_once(&keys, "file-a", 300);
    let payloads: Vec<serde_json::Value> = read_jsonl(&dir.path().join("sink"))
        .into_iter()
        .filter(|v| v["source_id"] == "file-b")
        .map(|v| v["payload"].clone())
        .collect();
    assert_eq!(
        payloads,
        [serde_json::json!({"n": 1}), serde_json::json!({"n": 2})]
    );
    tokio::time::timeout(Duration::from_secs(10), engine.shutdown())
        .await
        .expect("shutdown in time")
        .expect("clean shutdown");
}

/// `sluice send` of `n` JSON lines from a file under `dir` as `source_id`,
/// with a patient reconnect policy (100 attempts, 50 ms doubling to 250 ms:
/// about 25 s of trying).
fn patient_send(addr: &str, dir: &std::path::Path, source_id: &str, n: u64) -> SendArgs {
    let input = dir.join(format!("{source_id}.jsonl"));
    let text: String = (1..=n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let reconnect = reconnecting(100, Duration::from_millis(50), Duration::from_millis(250));
    send_args(addr, source_id, input, reconnect)
}

/// A test engine under `dir` listening on `at`.
async fn engine_at(dir: &std::path::Path, at: std::net::SocketAddr) -> EngineHandle {
    let mut settings = test_settings(dir);
    settings.server.listen = at;
    start_engine(settings, |b| b).await
}

/// `sluice send` arguments for `input`, without a progress bar, with a small
/// unacked window and batches (many round trips), reconnecting as
/// `reconnect` says.
fn send_args(addr: &str, source_id: &str, input: PathBuf, reconnect: ClientOptions) -> SendArgs {
    SendArgs {
        addr: addr.to_owned(),
        source_id: source_id.into(),
        input,
        options: ClientOptions {
            max_unacked: 64,
            max_batch_records: 16,
            linger: Duration::from_millis(1),
            ..reconnect
        },
        progress: false,
        ..SendArgs::default()
    }
}

/// Whether the engine at `addr` answers `Open` with UNAVAILABLE "the engine
/// is shutting down".
async fn refuses_as_draining(addr: &str) -> bool {
    let draining = |s: &tonic::Status| {
        s.code() == tonic::Code::Unavailable && s.message().contains("shutting down")
    };
    match raw_stream(addr, open_msg("probe", "")).await {
        Err(s) => draining(&s),
        Ok(mut raw) => matches!(raw.next().await, Err(s) if draining(&s)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_waits_for_an_engine_that_is_not_listening_yet() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let at = free_port();
        let addr = format!("http://{at}");
        let sending = tokio::spawn(run(patient_send(&addr, dir.path(), "late", 200)));
        // Not needed for correctness: the first attempts find nobody.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let engine = engine_at(dir.path(), at).await;
        let summary = sending.await.unwrap().expect("send reaches the engine");
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 200);
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "late", 200);
        engine.shutdown().await.expect("clean shutdown");
    })
    .await
    .expect("in time");
}

/// The measured failure of issue 18: a `sluice send` whose first connection
/// reached a draining engine exited with "cannot connect …: Unavailable: the
/// engine is shutting down". It now tries again, and reaches the engine that
/// takes over the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_tries_again_after_a_draining_engine() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let old_dir = tempfile::tempdir().unwrap();
        let new_dir = tempfile::tempdir().unwrap();
        let at = free_port();
        let addr = format!("http://{at}");
        // The old engine: its sink takes 3 s a batch, so its drain is slow.
        let mut settings = test_settings(old_dir.path());
        settings.server.listen = at;
        settings.pipelines[0].sink =
            file_sink(&old_dir.path().join("sink"), Duration::from_secs(3), 0.0);
        let old = start_engine(settings, |b| b).await;
        let filler_opts = reconnecting(0, Duration::from_millis(50), Duration::from_millis(50));
        let (filler, _events) =
            sluice_client::SourceClient::connect(&addr, "filler", "", filler_opts)
                .await
                .expect("filler connects");
        for i in 0..20u64 {
            filler
                .send_payload(format!("{{\"f\":{i}}}").into_bytes())
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while filler.snapshot().sent < 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "filler sent in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopping = tokio::spawn(old.shutdown());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !refuses_as_draining(&addr).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old engine drains"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // `sluice send` starts while the old engine refuses new streams.
        let sending = tokio::spawn(run(patient_send(&addr, new_dir.path(), "after-drain", 150)));
        stopping.await.unwrap().expect("old engine stops");
        drop(filler);
        assert!(
            !sending.is_finished(),
            "send must not give up on a draining engine"
        );
        let new = engine_at(new_dir.path(), at).await;
        let summary = sending.await.unwrap().expect("send reaches the new engine");
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 150);
        assert_exactly_once(
            &delivered_keys(&new_dir.path().join("sink")),
            "after-drain",
            150,
        );
        new.shutdown().await.expect("clean shutdown");
    })
    .await
    .expect("in time");
}
