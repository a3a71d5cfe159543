//! Sends N JSON records to a sluice engine as source id `example` and prints
//! the summary.
//!
//! ```sh
//! cargo run --release -p sluice -- serve                           # an engine, in another terminal
//! cargo run -p sluice-client --example send                        # 1000 records to http://127.0.0.1:50051
//! cargo run -p sluice-client --example send -- http://127.0.0.1:50051 100000
//! ```
//!
//! Exits 0 only when every record was acked by the engine, 1 when not, 2
//! when the arguments or the first connection fail.

use std::process::ExitCode;

use sluice_client::{ClientEvent, ClientOptions, SourceClient};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let n: u64 = match args.next().map(|s| s.parse()) {
        None => 1000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: send [ADDR] [N]: N: {e}");
            return ExitCode::from(2);
        }
    };

    // Source id `example` on the engine's default pipeline (""), default options.
    let (client, mut events) =
        match SourceClient::connect(&addr, "example", "", ClientOptions::default()).await {
            Ok(connected) => connected,
            Err(e) => {
                eprintln!("send: {e}");
                return ExitCode::from(2);
            }
        };

    // The events are optional (dropping the receiver is fine); show the
    // ones a user may want to know about.
    let watcher = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::Disconnected { error, retry_in } => {
                    eprintln!("disconnected ({error}); reconnecting in {retry_in:?}");
                }
                ClientEvent::Connected { attempt, .. } if attempt > 0 => {
                    eprintln!("reconnected (attempt {attempt})");
                }
                ClientEvent::RecordTooLarge { seq, .. } => {
                    eprintln!("record {seq} can never be admitted; dropped");
                }
                _ => {}
            }
        }
    });

    for i in 1..=n {
        let record = format!(r#"{{"n":{i},"source":"example"}}"#);
        // Waits while `max_unacked` records are held; fails only when the
        // client stopped (the summary says why).
        if client.send_payload(record.into_bytes()).await.is_err() {
            break;
        }
    }
    let summary = client.finish().await;
    let _ = watcher.await;

    println!(
        "submitted {} sent {} resent {} acked {} delivered {} rejected {} reconnects {} unacked {} in {:.2?}",
        summary.submitted,
        summary.sent,
        summary.resent,
        summary.acked,
        summary.delivered,
        summary.rejected,
        summary.reconnects,
        summary.unacked,
        summary.elapsed,
    );
    if let Some(e) = &summary.error {
        eprintln!("send: {e}");
    }
    if summary.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
