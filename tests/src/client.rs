//! The Rust source client in the tests: its options, a client whose
//! events are collected, sending and finishing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{ClientEvent, ClientOptions, ReconnectPolicy, SourceClient, Summary};
use sluice_engine::EngineHandle;
use sluice_proto::v1::{SignalKind, SignalReason};

use crate::raw::payload;
use crate::settings::url;

/// Client options that reconnect up to `max_attempts` times in a row,
/// waiting `initial_backoff` first and doubling up to `max_backoff`; the
/// rest are the defaults (tests change what else they need with
/// `ClientOptions { .., ..reconnecting(..) }`).
pub fn reconnecting(
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
) -> ClientOptions {
    ClientOptions {
        reconnect: ReconnectPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
        },
        ..ClientOptions::default()
    }
}

/// Sends `n` records of about `size` bytes from `source` and finishes.
pub async fn send_all(
    addr: &str,
    source: &str,
    n: u64,
    size: usize,
    opts: ClientOptions,
) -> (Summary, Vec<ClientEvent>) {
    let (client, mut events) = SourceClient::connect(addr, source, "", opts)
        .await
        .expect("client connects");
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = events.recv().await {
            all.push(e);
        }
        all
    });
    for i in 1..=n {
        client.send_payload(payload(i, size)).await.expect("send");
    }
    let summary = client.finish().await;
    (summary, collector.await.expect("collector"))
}

/// The (reason, utilization) of every signal of `kind` among `events`.
pub fn signal_readings(events: &[ClientEvent], kind: SignalKind) -> Vec<(SignalReason, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Signal(s) if s.kind == kind as i32 => Some((
                SignalReason::try_from(s.reason).unwrap_or(SignalReason::Unspecified),
                s.utilization,
            )),
            _ => None,
        })
        .collect()
}

/// The events a client reported, collected as they come.
pub type Events = Arc<Mutex<Vec<ClientEvent>>>;

/// A client of `source` on `engine` (default options) whose events are
/// collected into the returned list, for [`signals`].
pub async fn events_client(engine: &EngineHandle, source: &str) -> (SourceClient, Events) {
    events_client_at(&url(engine), source, ClientOptions::default()).await
}

/// A client of `source` at `addr` (an engine, a load balancer in front of
/// engines) with `options`, whose events are collected into the returned
/// list, for [`signals`].
pub async fn events_client_at(
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
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    });
    (client, events)
}

/// The signals of `kind` among `events`: (reason, stage, sink).
pub fn signals(
    events: &Mutex<Vec<ClientEvent>>,
    kind: SignalKind,
) -> Vec<(SignalReason, String, String)> {
    events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
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

/// Sends the records `payload(i, 60)` for `i` in `range` from `client`, in a
/// task (a paused client waits for credit); the future ends when all are
/// handed to the client.
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

/// Finishes the client behind `client`, its only handle.
pub async fn finish(client: Arc<SourceClient>) -> Summary {
    Arc::into_inner(client)
        .expect("the only handle")
        .finish()
        .await
}

/// Every one of the `n` records was acked and delivered, none dead-lettered.
#[track_caller]
pub fn assert_all_delivered(summary: &Summary, n: u64) {
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(
        (summary.acked, summary.delivered, summary.dead_lettered),
        (n, n, 0),
        "{summary:?}"
    );
}
