//! End-to-end tests for sluice.
//!
//! The tests in this crate start a real engine (the `sluice-engine` library, on
//! a loopback address) and talk to it over gRPC with the generated clients of
//! `sluice-proto`, the way a source in any language would: they open ingest
//! streams, obey credits and signals, and check acks, rejects, dead letters and
//! what the sinks received. Helpers shared by those tests live in this library;
//! the tests themselves are under `tests/`.
//!
//! Unit tests of one crate belong in that crate, not here.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sluice_proto as proto;

use sluice_config::{PipelineSpec, Settings, SinkSpec};
use sluice_engine::{EngineBuilder, EngineHandle};

/// Settings for a test engine: port 0 on loopback, metrics off, memory gate
/// off, credit window 1,024 records, one `default` pipeline whose file sink and dead-letter sink write under
/// `dir` (`dir/sink`, `dir/dead`), short shutdown timeout.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    s.server.shutdown_timeout = Duration::from_secs(10);
    s.metrics.enabled = false;
    s.memory.enabled = false;
    // Small credit windows, so that flow control (refills, NO_CREDIT,
    // signals) happens within the few thousand records a test sends.
    s.buffer.credit_window_records = 1024;
    let mut p = PipelineSpec {
        sink: file_sink(&dir.join("sink"), Duration::ZERO, 0.0),
        dead_letter: file_sink(&dir.join("dead"), Duration::ZERO, 0.0),
        ..PipelineSpec::default()
    };
    p.batch.linger = Duration::from_millis(5);
    s.pipelines = vec![p];
    s
}

/// A file sink spec writing `records-<n>.jsonl` under `dir`, without fsync.
pub fn file_sink(dir: &Path, delay: Duration, fail_rate: f64) -> SinkSpec {
    SinkSpec::File {
        dir: dir.to_path_buf(),
        prefix: "records".into(),
        rotate_bytes: 64 * 1024 * 1024,
        fsync: false,
        delay,
        fail_rate,
    }
}

/// Starts an engine from `settings` with `configure` applied to the builder.
pub async fn start_engine(
    settings: Settings,
    configure: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> EngineHandle {
    configure(EngineBuilder::new(settings))
        .start()
        .await
        .expect("engine starts")
}

/// The `http://` address of a running engine.
pub fn url(engine: &EngineHandle) -> String {
    format!("http://{}", engine.local_addr())
}

/// Every JSON object in the `.jsonl` files under `dir`.
pub fn read_jsonl(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("sink file readable");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).expect("sink line is JSON"));
        }
    }
    out
}

/// Count of each `(source_id, seq)` among the records in `dir`.
pub fn delivered_keys(dir: &Path) -> HashMap<(String, u64), u32> {
    let mut out = HashMap::new();
    for v in read_jsonl(dir) {
        let source = v["source_id"].as_str().unwrap_or_default().to_owned();
        let seq = v["seq"].as_u64().unwrap_or(0);
        *out.entry((source, seq)).or_insert(0) += 1;
    }
    out
}

/// Asserts that `source` delivered exactly seqs `1..=n`, each once.
pub fn assert_exactly_once(keys: &HashMap<(String, u64), u32>, source: &str, n: u64) {
    let mut seqs: Vec<(u64, u32)> = keys
        .iter()
        .filter(|((s, _), _)| s == source)
        .map(|((_, q), c)| (*q, *c))
        .collect();
    seqs.sort_unstable();
    let dupes: Vec<_> = seqs.iter().filter(|(_, c)| *c != 1).take(10).collect();
    assert!(dupes.is_empty(), "{source}: duplicates {dupes:?}");
    let got: Vec<u64> = seqs.iter().map(|(q, _)| *q).collect();
    if got != (1..=n).collect::<Vec<_>>() {
        let missing: Vec<u64> = (1..=n)
            .filter(|q| got.binary_search(q).is_err())
            .take(10)
            .collect();
        panic!(
            "{source}: {} records delivered, want {n}; first missing {missing:?}",
            got.len()
        );
    }
}

/// A JSON payload `{"n": i, "pad": "..."}` of about `size` bytes.
pub fn payload(i: u64, size: usize) -> bytes::Bytes {
    let base = format!("{{\"n\":{i},\"pad\":\"\"}}");
    let pad = size.saturating_sub(base.len());
    bytes::Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(pad)))
}

/// The environment variable that turns a missing external program (a
/// server or tool a test needs: PostgreSQL, nats-server, nginx, promtool)
/// into a failure instead of a skip. `.ci/run` sets it, so CI never skips.
pub const REQUIRE_EXTERNAL: &str = "SLUICE_REQUIRE_EXTERNAL";

/// The path of the external program `name` (searched on `PATH`), or `None`
/// after a loud `SKIPPED` line when it is missing, so the README's test
/// command passes on a fresh machine. Panics instead when
/// [`REQUIRE_EXTERNAL`] is set.
pub fn external_program(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_EXTERNAL).is_none(),
            "{test}: `{name}` is not installed and {REQUIRE_EXTERNAL} is set"
        );
        eprintln!(
            "SKIPPED {test}: `{name}` is not installed (set {REQUIRE_EXTERNAL}=1 to fail instead)"
        );
    }
    found
}
