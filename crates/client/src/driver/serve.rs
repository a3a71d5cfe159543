//! The loop that serves one open stream until it ends: it takes in records,
//! sends what the [plan](super::send::Plan) allows, handles the engine's
//! messages, and half-closes once everything is acked.

use std::time::Instant;

use sluice_proto::v1::SourceMessage;
use tokio::sync::mpsc;
use tracing::debug;

use super::conn::Conn;
use super::send::Plan;
use super::{ConnEnd, Driver, classify};

impl Driver {
    /// Serves one open stream until it ends.
    pub(super) async fn serve(&mut self, conn: &mut Conn) -> ConnEnd {
        loop {
            self.absorb_input();
            let now = Instant::now();
            if self.input_closed && self.pending.is_empty() && conn.closing_since.is_none() {
                conn.tx = None;
                conn.closing_since = Some(now);
                debug!(source_id = %self.source_id, "everything acked; half-closed");
            }
            let plan = self.plan(conn, now);
            self.publish(Some(conn));
            let mut wake = conn.closing_since.map(|t| t + self.opts.close_timeout);
            let mut send = None;
            match plan {
                Plan::Send(n) => send = Some(n),
                Plan::WaitUntil(t) => wake = Some(wake.map_or(t, |w| w.min(t))),
                Plan::Idle => {}
                Plan::NoCredit => {}
                Plan::Fatal(e) => return ConnEnd::Fatal(e),
                Plan::Reopen(seq) => {
                    return ConnEnd::Retry(format!(
                        "the engine has not admitted records before seq {seq}, which an earlier \
                         engine completed; reopening at seq {seq}"
                    ));
                }
            }
            self.announce_backlog(conn, matches!(plan, Plan::NoCredit));
            let ready = send.is_some() || !conn.outbox.is_empty();
            let tx = if ready { conn.tx.clone() } else { None };
            tokio::select! {
                msg = conn.inbound.message() => match msg {
                    Ok(Some(m)) => self.handle(conn, m),
                    Ok(None) if self.input_closed && self.pending.is_empty() => return ConnEnd::Done,
                    Ok(None) => return ConnEnd::Retry("engine ended the stream".into()),
                    Err(_) if self.input_closed && self.pending.is_empty() => return ConnEnd::Done,
                    Err(status) => return classify(&status),
                },
                permit = reserve(tx), if ready => match permit {
                    // Control messages first: a `Release` must reach the
                    // engine before batches that no longer count on it.
                    Some(permit) => match conn.outbox.pop_front() {
                        Some(control) => {
                            permit.send(control);
                        }
                        None => {
                            if let Some(n) = send {
                                let msg = self.build(conn, n);
                                permit.send(msg);
                            }
                        }
                    },
                    None => return ConnEnd::Retry("request stream closed".into()),
                },
                record = self.input.recv(), if !self.input_closed => match record {
                    Some(r) => self.push(r),
                    None => self.input_closed = true,
                },
                () = sleep_until(wake), if wake.is_some() => {
                    if conn.closing_since.is_some_and(|t| t.elapsed() >= self.opts.close_timeout) {
                        debug!(source_id = %self.source_id, "engine did not end the stream in time; closing");
                        return ConnEnd::Done;
                    }
                }
            }
        }
    }
}

/// A permit to send on `tx`; never ready when there is no `tx`.
async fn reserve(
    tx: Option<mpsc::Sender<SourceMessage>>,
) -> Option<mpsc::OwnedPermit<SourceMessage>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
