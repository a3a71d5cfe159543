//! Options of the Rust source client in the tests.

use std::time::Duration;

use sluice_client::{ClientEvent, ClientOptions, ReconnectPolicy, SourceClient, Summary};
use sluice_proto::v1::{SignalKind, SignalReason};

use crate::payload;

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
pub fn signals(events: &[ClientEvent], kind: SignalKind) -> Vec<(SignalReason, f64)> {
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
