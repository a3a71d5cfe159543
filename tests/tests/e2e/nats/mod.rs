//! The `nats` sink against a real nats-server with JetStream (started by
//! each test on a free port; SKIPPED when `nats-server` is missing, a
//! failure with `SLUICE_REQUIRE_EXTERNAL`); scale-out behind a real nginx
//! in [`cluster`]; TLS and credentials in [`auth`]; what the stream
//! refuses (an unbound subject, a full stream) in [`stream`].
//!
//! What they prove, reading the stream back with a JetStream consumer:
//! every record is in the stream exactly once (one message per
//! `Nats-Msg-Id` = `<source_id>:<seq>`, each expected id there), also
//! across an engine crash and the sources' resends (JetStream's dedup);
//! a nats-server outage stalls the sink (PAUSE/RESUME with reason SINK)
//! and loses nothing, dead-letters nothing; a message over the server's
//! `max_payload` is dead-lettered while the rest of its batch is delivered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_client::{SourceClient, Summary};
use sluice_config::{NatsSinkSpec, NatsStorage, NatsStreamSpec, Settings, SinkSpec};
use sluice_proto::v1::{SignalKind, SignalReason};
use sluice_tests::*;

mod auth;
mod cluster;
mod stream;

const STREAM: &str = "SLUICE";

/// A test engine's settings (under `dir`) whose sink publishes to `nats`
/// as `sluice.{pipeline}.{source_id}`, creating the stream `SLUICE`, with
/// short timeouts (an outage is noticed within a second) and quick retries.
fn nats_settings(dir: &std::path::Path, nats: &NatsServer) -> Settings {
    let mut s = test_settings(dir);
    let mut spec = NatsSinkSpec::new(vec![nats.url()], "sluice.{pipeline}.{source_id}");
    spec.ack_timeout = Duration::from_secs(1);
    spec.connect_timeout = Duration::from_secs(1);
    spec.create_stream = Some(NatsStreamSpec {
        stream: STREAM.into(),
        subjects: vec!["sluice.>".into()],
        storage: NatsStorage::File,
        duplicate_window: Duration::from_secs(120),
    });
    s.pipelines[0].sink = SinkSpec::Nats(Box::new(spec));
    s.pipelines[0].batch.max_records = 200;
    s.retry.max_retries = 1;
    s.retry.initial_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(20);
    s
}

/// Waits (at most 20 s) until the source whose events are `events` is told
/// PAUSE with reason SINK.
async fn paused_by_the_sink(events: &Events) {
    wait_for("PAUSE with reason SINK", Duration::from_secs(20), || {
        signals(events, SignalKind::Pause)
            .iter()
            .any(|(reason, ..)| *reason == SignalReason::Sink)
    })
    .await;
}

/// After a sink stall that ended: every record `1..=n` of `source`
/// delivered and acked (`summary`), the source told RESUME with reason
/// SINK, nothing dead-lettered (under `dir`), each id once in the stream.
async fn assert_recovered_from_a_stall(
    nats: &NatsServer,
    dir: &Path,
    events: &Events,
    summary: &Summary,
    source: &str,
    n: u64,
) {
    assert_all_delivered(summary, n);
    assert!(
        signals(events, SignalKind::Resume)
            .iter()
            .any(|(reason, ..)| *reason == SignalReason::Sink),
        "RESUME with reason SINK"
    );
    assert!(read_jsonl(&dir.join("dead")).is_empty());
    let messages = nats.messages(STREAM).await;
    assert_ids_exactly_once(&messages, ids(&[source], 1..=n));
}

/// The ids `<source>:<seq>` of `seqs` for every source.
fn ids(sources: &[&str], seqs: std::ops::RangeInclusive<u64>) -> Vec<String> {
    (sources.iter())
        .flat_map(|s| seqs.clone().map(move |q| format!("{s}:{q}")))
        .collect()
}

/// Clients that reconnect for a while (an engine is restarted under them).
fn patient() -> sluice_client::ClientOptions {
    reconnecting(200, Duration::from_millis(50), Duration::from_millis(500))
}

/// `settings` listening on `addr`, written as `<dir>/<name>.toml`: the
/// configuration file and the log (`<dir>/<name>.log`) of an engine
/// process ([`start_process`]).
fn engine_files(
    dir: &Path,
    name: &str,
    mut settings: Settings,
    addr: SocketAddr,
) -> (PathBuf, PathBuf) {
    settings.server.listen = addr;
    settings.server.shutdown_timeout = Duration::from_secs(1);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, settings.to_toml_string().unwrap()).unwrap();
    (config, dir.join(format!("{name}.log")))
}

/// Starts (or starts again) the engine process serving `config` on
/// `addr`, logging to `log`; waits until it listens.
fn start_process(config: &Path, log: &Path, addr: SocketAddr) -> EngineProcess {
    let command = || engine_child_command("nats::engine_child", config);
    tokio::task::block_in_place(|| EngineProcess::start(command, addr.port(), log))
}

/// The engine process of the tests that kill engines (it runs only in the
/// child processes they start).
#[test]
fn engine_child() {
    serve_if_engine_child();
}

/// Connects a client per source to `addr` and sends `1..=n` from each.
async fn start_sending(
    addr: &str,
    sources: &[&str],
    n: u64,
) -> Vec<(Arc<SourceClient>, Events, tokio::task::JoinHandle<()>)> {
    let mut out = Vec::new();
    for source in sources {
        let (c, events) = events_client_at(addr, source, patient()).await;
        let c = Arc::new(c);
        let sending = send_range(c.clone(), 1..=n);
        out.push((c, events, tokio::spawn(sending)));
    }
    out
}

/// Waits for the senders, finishes the clients: their summaries and events.
async fn finish_all(
    clients: Vec<(Arc<SourceClient>, Events, tokio::task::JoinHandle<()>)>,
) -> Vec<(Summary, Events)> {
    let mut out = Vec::new();
    for (c, events, sending) in clients {
        sending.await.expect("sender");
        out.push((finish(c).await, events));
    }
    out
}

/// Records acked so far by all `clients`.
fn acked(clients: &[(Arc<SourceClient>, Events, tokio::task::JoinHandle<()>)]) -> u64 {
    clients
        .iter()
        .map(|(c, ..)| c.progress().borrow().acked)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_in_the_stream_exactly_once() {
    let Some(nats) = NatsServer::launch("nats::every_record", None) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(nats_settings(dir.path(), &nats), |b| b).await;
        const N: u64 = 3_000;
        let sources = ["js-a", "js-b"];
        let clients = start_sending(&url(&engine), &sources, N).await;
        for (summary, _) in finish_all(clients).await {
            assert_all_delivered(&summary, N);
        }
        let messages = nats.messages(STREAM).await;
        assert_eq!(messages.len() as u64, 2 * N);
        assert_ids_exactly_once(&messages, ids(&sources, 1..=N));
        // The message is the record's JSON line, on its subject.
        let m = &messages[0];
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            m.id,
            format!("{}:{}", v["source_id"].as_str().unwrap(), v["seq"])
        );
        assert_eq!(
            m.subject,
            format!("sluice.default.{}", v["source_id"].as_str().unwrap())
        );
        assert!(v["payload"]["n"].is_u64(), "{v}");
        engine.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_stream_leaves_every_record_once() {
    let Some(nats) = NatsServer::launch("nats::engine_killed", None) else {
        return;
    };
    within_secs(90, async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = nats_settings(dir.path(), &nats);
        s.log.filter = "warn".into();
        let addr = free_port();
        let (config, log) = engine_files(dir.path(), "engine", s, addr);
        let mut engine = start_process(&config, &log, addr);
        const N: u64 = 20_000;
        let sources = ["kill-a", "kill-b"];
        let clients = start_sending(&format!("http://{addr}"), &sources, N).await;
        wait_for(
            "records acked before the kill",
            Duration::from_secs(30),
            || acked(&clients) > N / 2,
        )
        .await;
        engine.assert_running(&log);
        engine.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _engine = start_process(&config, &log, addr);
        let mut resent = 0;
        for (summary, _) in finish_all(clients).await {
            assert!(summary.is_complete(), "{summary:?}");
            assert_eq!(summary.acked, N, "{summary:?}");
            resent += summary.resent;
        }
        assert!(resent > 0, "the kill left records to resend");
        let messages = nats.messages(STREAM).await;
        assert_ids_exactly_once(&messages, ids(&sources, 1..=N));
        eprintln!(
            "engine killed: {resent} records resent, {} messages in the stream",
            messages.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_stalls_the_sink_and_loses_nothing() {
    let Some(mut nats) = NatsServer::launch("nats::outage", None) else {
        return;
    };
    within_secs(90, async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(nats_settings(dir.path(), &nats), |b| b).await;
        const N: u64 = 6_000;
        let (c, events) = events_client_at(&url(&engine), "outage", patient()).await;
        let c = Arc::new(c);
        let sending = tokio::spawn(send_range(c.clone(), 1..=N));
        let progress = c.progress();
        wait_for(
            "records acked before the outage",
            Duration::from_secs(20),
            || progress.borrow().acked > 500,
        )
        .await;
        nats.stop();
        paused_by_the_sink(&events).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        nats.start();
        sending.await.unwrap();
        let summary = finish(c).await;
        assert_recovered_from_a_stall(&nats, dir.path(), &events, &summary, "outage", N).await;
        engine.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_payload_is_dead_lettered_and_its_batch_delivered() {
    let Some(nats) = NatsServer::launch("nats::too_large", Some(4096)) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = nats_settings(dir.path(), &nats);
        // One batch: the big record and its neighbours.
        s.pipelines[0].batch.linger = Duration::from_millis(200);
        let engine = start_engine(s, |b| b).await;
        let (c, _events) = events_client(&engine, "big").await;
        for i in 1..=21 {
            let size = if i == 11 { 8_000 } else { 60 };
            c.send_payload(payload(i, size)).await.unwrap();
        }
        let summary = c.finish().await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!((summary.delivered, summary.dead_lettered), (20, 1));
        let dead = read_jsonl(&dir.path().join("dead"));
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["seq"], 11);
        let error = dead[0]["error"].as_str().unwrap();
        assert!(error.contains("max_payload"), "{error}");
        let messages = nats.messages(STREAM).await;
        let expected = (1..=21).filter(|i| *i != 11).map(|i| format!("big:{i}"));
        assert_ids_exactly_once(&messages, expected);
        engine.shutdown().await.unwrap();
    })
    .await;
}
