//! Scale-out on loopback with real servers: three engines (child
//! processes) behind a real nginx (`grpc_pass`), writing into one
//! nats-server with JetStream; the sources connect only to nginx. A
//! rolling restart under them: one engine SIGKILLed mid-stream and
//! restarted, then a second one SIGTERMed (health `NOT_SERVING`, drain,
//! exit) and restarted. Every record is in the stream exactly once, every
//! record is acked, no source sees a reject.
//!
//! The sources send until the test says stop (not a fixed count), so both
//! restarts hit streams that are sending, however fast the machine is;
//! each source's count is what its client was handed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_client::ClientEvent;
use tokio::task::JoinHandle;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::*;

/// A source's client, its events and its sender (which returns how many
/// records it handed to the client).
type Sender = (Arc<SourceClient>, Events, JoinHandle<u64>);

/// Connects a client per source to `addr`; each sends `payload(i, 60)`
/// for `i = 1, 2, …` until `stop` is set.
async fn send_until_stopped(addr: &str, sources: &[&str], stop: &Arc<AtomicBool>) -> Vec<Sender> {
    let mut out = Vec::new();
    for source in sources {
        let (c, events) = events_client_at(addr, source, patient()).await;
        let c = Arc::new(c);
        let (client, stop) = (c.clone(), stop.clone());
        let sending = tokio::spawn(async move {
            let mut n = 0;
            // Why Relaxed: the flag orders nothing else; a sender that
            // sees it late sends a few more records, which are counted.
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                client.send_payload(payload(n, 60)).await.expect("send");
            }
            n
        });
        out.push((c, events, sending));
    }
    out
}

/// Records acked so far by all `senders`.
fn acked_by(senders: &[Sender]) -> u64 {
    (senders.iter())
        .map(|(c, ..)| c.progress().borrow().acked)
        .sum()
}

/// Waits until `senders` acked `more` records past what they had acked.
async fn until_acked_more(what: &str, senders: &[Sender], more: u64) {
    let target = acked_by(senders) + more;
    wait_for(what, Duration::from_secs(30), || {
        acked_by(senders) >= target
    })
    .await;
}

/// Watches the health (service `""`) of the engine at `addr` directly,
/// not through nginx: true once it reported `NOT_SERVING`, then the watch
/// ends (an open watch would hold the engine's server up to its grace).
async fn watch_not_serving(addr: SocketAddr) -> Arc<AtomicBool> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("health channel");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.expect("health status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let seen = Arc::new(AtomicBool::new(false));
    let flag = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(m)) = watch.message().await {
            if m.status == ServingStatus::NotServing as i32 {
                flag.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_behind_nginx_rolling_restart_every_record_once() {
    let Some(nats) = NatsServer::launch("nats::cluster", None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addrs = [free_port(), free_port(), free_port()];
    let Some(nginx) = Nginx::launch("nats::cluster", &addrs) else {
        return;
    };
    within_secs(90, async {
        let mut settings = nats_settings(dir.path(), &nats);
        settings.log.filter = "warn".into();
        let files: Vec<(PathBuf, PathBuf)> = (addrs.iter().enumerate())
            .map(|(i, a)| engine_files(dir.path(), &format!("engine-{i}"), settings.clone(), *a))
            .collect();
        let start = |i: usize| start_process(&files[i].0, &files[i].1, addrs[i]);
        let mut engines: Vec<EngineProcess> = (0..3).map(start).collect();
        let sources = ["rr-1", "rr-2", "rr-3", "rr-4", "rr-5", "rr-6"];
        let stop = Arc::new(AtomicBool::new(false));
        let senders = send_until_stopped(&nginx.url(), &sources, &stop).await;

        // 1. SIGKILL engine 0 mid-stream, restart it.
        until_acked_more("records acked before the kill", &senders, 6_000).await;
        engines[0].assert_running(&files[0].1);
        engines.remove(0).kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        engines.insert(0, start(0));

        // 2. SIGTERM engine 1 mid-stream: NOT_SERVING, drain, exit.
        until_acked_more("records acked after the restart", &senders, 6_000).await;
        let not_serving = watch_not_serving(addrs[1]).await;
        engines[1].terminate();
        wait_for(
            "NOT_SERVING from the draining engine",
            Duration::from_secs(10),
            || not_serving.load(Ordering::SeqCst),
        )
        .await;
        tokio::task::block_in_place(|| engines[1].wait_exit(Duration::from_secs(10), &files[1].1));

        // 3. While it is down, new sources through nginx never notice it:
        // nginx passes their streams to the engines that are up.
        for late in ["late-1", "late-2"] {
            let (summary, events) = send_all(&nginx.url(), late, 500, 60, patient()).await;
            assert_all_delivered(&summary, 500);
            assert_eq!(summary.reconnects, 0, "{late}: {summary:?}");
            let dropped: Vec<_> = (events.iter())
                .filter(|e| matches!(e, ClientEvent::Disconnected { .. }))
                .collect();
            assert!(dropped.is_empty(), "{late} was refused: {dropped:?}");
        }

        // 4. Restart it (the rolling restart is complete), send on a while.
        engines[1] = start(1);
        until_acked_more("records acked after the second restart", &senders, 6_000).await;
        stop.store(true, Ordering::Relaxed);

        let mut sent = HashMap::new();
        let (mut rejects, mut rejected, mut reconnects, mut resent) = (0, 0, 0, 0);
        for ((c, events, sending), source) in senders.into_iter().zip(sources) {
            let n = sending.await.expect("sender");
            let summary = finish(c).await;
            assert!(summary.is_complete(), "{source}: {summary:?}");
            assert_eq!((summary.submitted, summary.acked), (n, n), "{source}");
            rejected += summary.rejected;
            reconnects += summary.reconnects;
            resent += summary.resent;
            rejects += (events.lock().unwrap().iter())
                .filter(|e| matches!(e, ClientEvent::Reject(_)))
                .count();
            sent.insert(source.to_owned(), n);
        }
        for (i, e) in engines.iter_mut().enumerate() {
            e.assert_running(&files[i].1);
        }
        let messages = nats.messages(STREAM).await;
        // By Nats-Msg-Id: each `<source>:<seq>` sent once, nothing else.
        let expected = (sent.iter())
            .flat_map(|(s, n)| (1..=*n).map(move |q| format!("{s}:{q}")))
            .chain(ids(&["late-1", "late-2"], 1..=500));
        assert_ids_exactly_once(&messages, expected);
        // By a count per source (the subject names it).
        let mut per_source = HashMap::<String, u64>::new();
        for m in &messages {
            let source = m.subject.rsplit('.').next().unwrap_or_default();
            *per_source.entry(source.to_owned()).or_default() += 1;
        }
        for (source, n) in &sent {
            assert_eq!(per_source.get(source), Some(n), "messages of {source}");
        }
        eprintln!(
            "rolling restart: {} messages, {reconnects} reconnects, {resent} resent, \
             {rejects} Reject messages ({rejected} records rejected), sent {sent:?}",
            messages.len()
        );
        assert!(resent > 0, "the kill left records to resend");
        assert!(reconnects >= 2, "sources moved off the stopped engines");
        // Ingest protocol v2: a source reconnecting to another engine
        // resends without a reject.
        assert_eq!((rejects, rejected), (0, 0), "rejects seen by the sources");
    })
    .await;
    drop(nginx);
}

/// The nginx example of docs/scaling.md is the configuration the cluster
/// test runs (for its example ports and directory).
#[test]
fn the_scaling_docs_nginx_example_is_the_tested_config() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/scaling.md"))
        .expect("docs/scaling.md");
    let marker = "<!-- nginx-example -->";
    let start = doc.find(marker).expect("the example's marker") + marker.len();
    let end = start + doc[start..].find(marker).expect("closing marker");
    let block = doc[start..end]
        .trim()
        .strip_prefix("```nginx\n")
        .and_then(|b| b.strip_suffix("```"))
        .expect("an nginx block");
    let port = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let expected = nginx_config(
        port(50050),
        &[port(50051), port(50052), port(50053)],
        std::path::Path::new("/var/lib/sluice-lb"),
    );
    assert_eq!(block, expected);
}
