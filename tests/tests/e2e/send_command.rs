//! `sluice send` against a real engine: a file of JSON lines is streamed and
//! acked, and a line that is not JSON stops the command with its line
//! number after the lines before it were sent, acked and delivered.

use std::path::PathBuf;
use std::time::Duration;

use sluice_cli::send::{SendArgs, SendError, run};
use sluice_client::{ClientOptions, Summary};
use sluice_tests::*;

/// Runs `sluice send` of `input` to the engine at `addr` as `source_id`,
/// without a progress bar, within 20 s; with a small unacked window and
/// batches, so 300 lines take many round trips.
async fn send(addr: &str, source_id: &str, input: PathBuf) -> Result<Summary, SendError> {
    let args = SendArgs {
        addr: addr.to_owned(),
        source_id: source_id.into(),
        input,
        options: ClientOptions {
            max_unacked: 64,
            max_batch_records: 16,
            linger: Duration::from_millis(1),
            ..reconnecting(5, Duration::from_millis(20), Duration::from_millis(200))
        },
        progress: false,
        ..SendArgs::default()
    };
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
