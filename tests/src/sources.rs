//! Sources in a test: Rust clients whose events are collected, sending a
//! range of records, and what their summaries must say; polling waits.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{ClientEvent, ClientOptions, SourceClient, Summary};
use sluice_proto::v1::{SignalKind, SignalReason};

use crate::raw::payload;

/// The events a client reported, collected as they come.
pub type Events = Arc<Mutex<Vec<ClientEvent>>>;

/// Polls `ready` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of `source` at `addr` (default pipeline) whose events are
/// collected into the returned list.
pub async fn client_with_events(
    addr: &str,
    source: &str,
    options: ClientOptions,
) -> (SourceClient, Events) {
    let (client, mut rx) = SourceClient::connect(addr, source, "", options)
        .await
        .expect("client connects");
    let events = Events::default();
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            sink.lock().expect("events lock").push(e);
        }
    });
    (client, events)
}

/// The signals of `kind` among `events`: (reason, stage, sink).
pub fn signals(events: &Events, kind: SignalKind) -> Vec<(SignalReason, String, String)> {
    events
        .lock()
        .expect("events lock")
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Signal(s) if s.kind == kind as i32 => Some((
                SignalReason::try_from(s.reason).unwrap_or(SignalReason::Unspecified),
                s.stage.clone(),
                s.sink.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Sends `range` from `client`, [`payload`]s of 60 bytes, in a task (a
/// paused client waits for credit); the returned future ends with it.
pub fn send_range(
    client: Arc<SourceClient>,
    range: std::ops::RangeInclusive<u64>,
) -> impl Future<Output = ()> {
    let task = tokio::spawn(async move {
        for i in range {
            client.send_payload(payload(i, 60)).await.expect("send");
        }
    });
    async move { task.await.expect("sender") }
}

/// Finishes the only handle of a client: its summary.
pub async fn finish(client: Arc<SourceClient>) -> Summary {
    Arc::into_inner(client)
        .expect("the only handle")
        .finish()
        .await
}

/// Every one of the `n` records was acked and delivered, none dead-lettered.
pub fn assert_all_delivered(summary: &Summary, n: u64) {
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(
        (summary.acked, summary.delivered, summary.dead_lettered),
        (n, n, 0),
        "{summary:?}"
    );
}

/// Runs a test body within 50 s.
pub async fn within(body: impl Future<Output = ()>) {
    within_secs(50, body).await
}

/// Runs a test body within `secs` seconds.
pub async fn within_secs(secs: u64, body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("test timed out");
}
