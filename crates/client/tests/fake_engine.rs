//! The source client against a small fake engine written here: small credits,
//! rejects, signals, lagging acks and one dropped connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use sluice_client::{
    ClientError, ClientEvent, ClientOptions, ReconnectPolicy, SourceClient, record_size,
};
use sluice_proto::v1::ingest_server::{Ingest, IngestServer};
use sluice_proto::v1::{
    Ack, Credit, EngineMessage, Opened, Record, Reject, RejectReason, SeqRange, Signal, SignalKind,
    SignalReason, SourceMessage, engine_message, source_message,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// How the fake engine behaves.
#[derive(Clone, Default)]
struct Behavior {
    /// Record credit window (bytes window is 200 per record).
    window: u64,
    /// Reject the second half of every n-th batch (0: never).
    reject_every: u64,
    /// End the first stream with UNAVAILABLE once this many records are admitted.
    drop_after: Option<u64>,
    /// Never ack.
    never_ack: bool,
    /// Reject the record with this payload as too large.
    too_large: Option<Vec<u8>>,
    /// Pipelines that exist (empty: all).
    pipelines: Vec<String>,
    /// The engine counts this many bytes less credit than `Opened` grants
    /// (a ledger that drifted from the source's).
    byte_drift: u64,
    /// Answer this many `Open`s with UNAVAILABLE, as a draining engine does.
    unavailable_opens: u32,
    /// `(seq, until)`: the record `seq` stays uncompleted (a record in its
    /// retry backoff) until `until` records are admitted; the acks stop
    /// before it and list what is admitted above it as a completed range.
    hold_back: Option<(u64, u64)>,
}

#[derive(Default)]
struct State {
    admitted: HashMap<String, u64>,
    acked: HashMap<String, u64>,
    /// Every admitted (source, seq, payload).
    received: Vec<(String, u64, Vec<u8>)>,
    violations: Vec<String>,
    connections: u32,
    dropped: bool,
    /// The engine's count of each source's credit (records, bytes), after
    /// the last batch.
    credit: HashMap<String, (u64, u64)>,
    /// `Open`s answered with UNAVAILABLE.
    refused_opens: u32,
}

#[derive(Clone)]
struct Fake {
    b: Behavior,
    state: Arc<Mutex<State>>,
}

type Out = mpsc::UnboundedSender<Result<EngineMessage, Status>>;

fn msg(body: engine_message::Body) -> Result<EngineMessage, Status> {
    Ok(EngineMessage { body: Some(body) })
}

/// Sends `reject` with the engine's count of the stream's credit: `credit`
/// (records, bytes) less the grants counted but not sent yet (`unsent`). The
/// lock on `unsent` is held while the reject is sent, so the count matches
/// the messages ahead of it.
fn send_reject(tx: &Out, unsent: &Mutex<(u64, u64)>, credit: (u64, u64), mut reject: Reject) {
    let unsent = unsent.lock().unwrap();
    reject.credit = Some(Credit {
        records: credit.0 - unsent.0,
        bytes: credit.1 - unsent.1,
    });
    let _ = tx.send(msg(engine_message::Body::Reject(reject)));
}

#[tonic::async_trait]
impl Ingest for Fake {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<EngineMessage, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<Streaming<SourceMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(SourceMessage {
            body: Some(source_message::Body::Open(open)),
        }) = first
        else {
            return Err(Status::invalid_argument("first message must be Open"));
        };
        if !self.b.pipelines.is_empty() && !self.b.pipelines.contains(&open.pipeline) {
            return Err(Status::not_found(format!(
                "pipeline {:?} does not exist",
                open.pipeline
            )));
        }
        {
            let mut st = self.state.lock().unwrap();
            if st.refused_opens < self.b.unavailable_opens {
                st.refused_opens += 1;
                return Err(Status::unavailable("the engine is shutting down"));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let fake = self.clone();
        tokio::spawn(async move { fake.serve(open.source_id, inbound, tx).await });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

impl Fake {
    async fn serve(self, source: String, mut inbound: Streaming<SourceMessage>, tx: Out) {
        let window = self.b.window;
        let byte_window = window * 200;
        let (admitted0, acked0) = {
            let mut st = self.state.lock().unwrap();
            st.connections += 1;
            (
                st.admitted.get(&source).copied().unwrap_or(0),
                st.acked.get(&source).copied().unwrap_or(0),
            )
        };
        let _ = tx.send(msg(engine_message::Body::Opened(Opened {
            admitted_through_seq: admitted0,
            acked_through_seq: acked0,
            credit: Some(Credit {
                records: window,
                bytes: byte_window,
            }),
            max_batch_records: 8,
            max_message_bytes: 4 << 20,
            ..Opened::default()
        })));
        // Acks lag one tick behind admission.
        let ack_task = if self.b.never_ack {
            None
        } else {
            let (state, source, tx) = (self.state.clone(), source.clone(), tx.clone());
            let hold_back = self.b.hold_back;
            Some(tokio::spawn(async move {
                let mut seen = admitted0;
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let now = {
                        let mut st = state.lock().unwrap();
                        let acked = st.acked.entry(source.clone()).or_default();
                        if seen > *acked {
                            *acked = seen;
                        }
                        let through = *acked;
                        let now = st.admitted.get(&source).copied().unwrap_or(0);
                        (through, now)
                    };
                    let ack = match hold_back {
                        Some((held, until)) if now.1 < until && now.0 >= held => Ack {
                            through_seq: held - 1,
                            delivered: now.0 - 1,
                            completed: (now.0 > held)
                                .then_some(SeqRange {
                                    first: held + 1,
                                    last: now.0,
                                })
                                .into_iter()
                                .collect(),
                            ..Ack::default()
                        },
                        _ => Ack {
                            through_seq: now.0,
                            delivered: now.0,
                            ..Ack::default()
                        },
                    };
                    if tx.send(msg(engine_message::Body::Ack(ack))).is_err() {
                        return;
                    }
                    seen = now.1;
                }
            }))
        };
        let (mut credit_r, mut credit_b) = (window, byte_window - self.b.byte_drift);
        // A grant counted in the ledger and not yet sent (held back while
        // paused): `Reject.credit` reports only what the client was sent.
        // The lock is held while a grant or a reject is sent, so the count in
        // a reject matches the messages ahead of it.
        let unsent = Arc::new(Mutex::new((0u64, 0u64)));
        let mut batches = 0u64;
        let mut paused = false;
        while let Ok(Some(m)) = inbound.message().await {
            let Some(source_message::Body::Batch(batch)) = m.body else {
                let _ = tx.send(Err(Status::invalid_argument("second Open")));
                return;
            };
            batches += 1;
            let admitted = self
                .state
                .lock()
                .unwrap()
                .admitted
                .get(&source)
                .copied()
                .unwrap_or(0);
            if batch.first_seq > admitted + 1 {
                let gap = Reject {
                    first_seq: batch.first_seq,
                    count: batch.records.len() as u64,
                    reason: RejectReason::SequenceGap as i32,
                    message: format!("expected {}", admitted + 1),
                    retry_after_ms: 0,
                    admitted_through_seq: admitted,
                    credit: None,
                };
                send_reject(&tx, &unsent, (credit_r, credit_b), gap);
                continue;
            }
            let cut = if self.b.reject_every > 0 && batches.is_multiple_of(self.b.reject_every) {
                batch.records.len() / 2
            } else {
                usize::MAX
            };
            let mut adm = admitted;
            for (i, r) in batch.records.iter().enumerate() {
                let seq = batch.first_seq + i as u64;
                if seq <= adm {
                    continue;
                }
                let size = record_size(r);
                let too_large = self.b.too_large.as_deref() == Some(r.payload.as_ref());
                let over = credit_r == 0 || credit_b < size;
                if over {
                    self.state.lock().unwrap().violations.push(format!(
                        "seq {seq}: credit {credit_r} records / {credit_b} bytes, size {size}"
                    ));
                }
                if i >= cut || over || too_large {
                    let reason = if too_large {
                        RejectReason::RecordTooLarge
                    } else if over {
                        RejectReason::NoCredit
                    } else {
                        RejectReason::StageLimit
                    };
                    let reject = Reject {
                        first_seq: seq,
                        count: batch.records.len() as u64 - i as u64,
                        reason: reason as i32,
                        message: "fake".into(),
                        retry_after_ms: 5,
                        admitted_through_seq: adm,
                        credit: None,
                    };
                    send_reject(&tx, &unsent, (credit_r, credit_b), reject);
                    break;
                }
                credit_r -= 1;
                credit_b -= size;
                adm = seq;
                let mut st = self.state.lock().unwrap();
                st.admitted.insert(source.clone(), seq);
                st.received.push((source.clone(), seq, r.payload.to_vec()));
            }
            // Signals on a schedule.
            let signal = |kind: SignalKind, retry| {
                msg(engine_message::Body::Signal(Signal {
                    kind: kind as i32,
                    reason: SignalReason::Stage as i32,
                    utilization: 0.9,
                    retry_after_ms: retry,
                    stage: "s0".into(),
                    sink: String::new(),
                    ..Signal::default()
                }))
            };
            match batches {
                3 => {
                    let _ = tx.send(signal(SignalKind::SlowDown, 2));
                }
                10 => {
                    paused = true;
                    let _ = tx.send(signal(SignalKind::Pause, 0));
                    // The source sends nothing while paused: resume on a timer.
                    let (tx, resume) = (tx.clone(), signal(SignalKind::Resume, 0));
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        let _ = tx.send(resume);
                    });
                }
                11 => paused = false,
                _ => {}
            }
            // Refill when half used (records or bytes); nothing new while
            // paused, except when the source has nothing left (so it cannot
            // stall forever).
            let half_used = credit_r <= window / 2 || credit_b <= byte_window / 2;
            if half_used && (!paused || credit_r == 0 || credit_b == 0) {
                let grant = Credit {
                    records: window - credit_r,
                    bytes: byte_window - credit_b,
                };
                credit_r = window;
                credit_b = byte_window;
                if paused {
                    // The client keeps sending nothing until RESUME or Credit;
                    // delay the grant a little so the pause is real.
                    {
                        let mut u = unsent.lock().unwrap();
                        *u = (u.0 + grant.records, u.1 + grant.bytes);
                    }
                    let (tx, unsent) = (tx.clone(), unsent.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        let mut u = unsent.lock().unwrap();
                        let _ = tx.send(msg(engine_message::Body::Credit(grant)));
                        *u = (u.0 - grant.records, u.1 - grant.bytes);
                    });
                } else {
                    let _ = tx.send(msg(engine_message::Body::Credit(grant)));
                }
            }
            self.state
                .lock()
                .unwrap()
                .credit
                .insert(source.clone(), (credit_r, credit_b));
            if let Some(n) = self.b.drop_after {
                let mut st = self.state.lock().unwrap();
                if !st.dropped && st.admitted.get(&source).copied().unwrap_or(0) >= n {
                    st.dropped = true;
                    drop(st);
                    let _ = tx.send(Err(Status::unavailable("fake connection drop")));
                    if let Some(t) = ack_task {
                        t.abort();
                    }
                    return;
                }
            }
        }
        // Half-closed: ack everything, then end OK.
        if !self.b.never_ack {
            for _ in 0..500 {
                let (acked, admitted) = {
                    let st = self.state.lock().unwrap();
                    (
                        st.acked.get(&source).copied().unwrap_or(0),
                        st.admitted.get(&source).copied().unwrap_or(0),
                    )
                };
                if acked >= admitted {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(t) = ack_task {
            tokio::time::sleep(Duration::from_millis(15)).await;
            t.abort();
        }
    }
}

async fn start(b: Behavior) -> (String, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State::default()));
    let addr = start_on(b, SocketAddr::from(([127, 0, 0, 1], 0)), state.clone()).await;
    (format!("http://{addr}"), state)
}

/// Starts a fake engine listening on `addr` with `state`; the address it
/// listens on.
async fn start_on(b: Behavior, addr: SocketAddr, state: Arc<Mutex<State>>) -> SocketAddr {
    let fake = Fake { b, state };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// An address on 127.0.0.1 nobody listens on (now).
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

fn options() -> ClientOptions {
    ClientOptions {
        max_unacked: 64,
        max_batch_records: 16,
        linger: Duration::from_millis(1),
        reconnect: ReconnectPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        },
        ..ClientOptions::default()
    }
}

/// Connects a client for `source_id` with [`options`] and runs `body` with
/// it, all within `within`; what `body` returned, and all the events the
/// client reported until it ended.
async fn run_collecting<T>(
    addr: &str,
    source_id: &str,
    within: Duration,
    body: impl AsyncFnOnce(SourceClient) -> Result<T, ClientError>,
) -> (T, Vec<ClientEvent>) {
    let run = async {
        let (client, mut events) = SourceClient::connect(addr, source_id, "", options()).await?;
        let collector: JoinHandle<Vec<ClientEvent>> = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(e) = events.recv().await {
                seen.push(e);
            }
            seen
        });
        let out = body(client).await?;
        Ok::<_, ClientError>((out, collector.await.unwrap()))
    };
    tokio::time::timeout(within, run)
        .await
        .expect("client finished in time")
        .expect("client ran")
}

/// The fake engine received exactly seqs 1..=n, in order.
fn assert_received_in_order(state: &Mutex<State>, n: u64) {
    let st = state.lock().unwrap();
    let seqs: Vec<u64> = st.received.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

fn payload(i: u64) -> Vec<u8> {
    format!("{{\"n\":{i}}}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obeys_credits_resends_rejects_reconnects_and_acks_everything_once() {
    const N: u64 = 2_000;
    let (addr, state) = start(Behavior {
        window: 20,
        reject_every: 5,
        drop_after: Some(700),
        ..Behavior::default()
    })
    .await;
    let (summary, events) =
        run_collecting(&addr, "src-a", Duration::from_secs(30), async |client| {
            for i in 1..=N {
                client.send_payload(payload(i)).await?;
            }
            Ok(client.finish().await)
        })
        .await;
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.acked, N);
    assert_eq!(summary.sent, N);
    assert_eq!(summary.reconnects, 1);
    assert!(summary.rejected > 0 && summary.resent > 0, "{summary:?}");
    assert!(summary.slow_downs >= 1 && summary.pauses >= 1 && summary.resumes >= 1);

    let st = state.lock().unwrap();
    assert!(
        st.violations.is_empty(),
        "credit violations: {:?}",
        st.violations
    );
    assert_eq!(st.connections, 2);
    let seqs: Vec<u64> = st.received.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "admitted once, in order");
    for (_, seq, p) in &st.received {
        assert_eq!(p, &payload(*seq), "payload of seq {seq}");
    }
    assert!(events.iter().any(|e| matches!(e, ClientEvent::Reject(_))));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. }))
    );
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Connected { .. }))
            .count()
            == 2
    );
    assert!(events.iter().any(|e| matches!(e, ClientEvent::Signal(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_while_max_unacked_records_are_held() {
    let (addr, _state) = start(Behavior {
        window: 1_000,
        never_ack: true,
        ..Behavior::default()
    })
    .await;
    let opts = ClientOptions {
        max_unacked: 10,
        ..options()
    };
    let (client, _events) = SourceClient::connect(&addr, "src-b", "", opts)
        .await
        .unwrap();
    for i in 1..=10 {
        tokio::time::timeout(Duration::from_secs(5), client.send_payload(payload(i)))
            .await
            .expect("within the window")
            .unwrap();
    }
    let blocked =
        tokio::time::timeout(Duration::from_millis(200), client.send_payload(payload(11))).await;
    assert!(blocked.is_err(), "the 11th send must wait for an ack");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = client.snapshot();
    assert_eq!(p.unacked, 10);
    assert_eq!(p.sent, 10);
}

/// One record stays uncompleted (as in its retry backoff) while the engine
/// completes the rest: the ranges of the acks free the client's window, so
/// a window of 10 sends all 300 records; with cumulative acks only, it
/// would stop at the 12th and never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_ranges_free_the_window_behind_an_uncompleted_record() {
    const N: u64 = 300;
    let (addr, state) = start(Behavior {
        window: 1_000,
        hold_back: Some((3, N)),
        ..Behavior::default()
    })
    .await;
    let opts = ClientOptions {
        max_unacked: 10,
        ..options()
    };
    let (client, mut events) = SourceClient::connect(&addr, "src-ranges", "", opts)
        .await
        .unwrap();
    let send = async {
        for i in 1..=N {
            client.send_payload(payload(i)).await.unwrap();
        }
        client.finish().await
    };
    let summary = tokio::time::timeout(Duration::from_secs(20), send)
        .await
        .expect("the held-back record does not hold the window");
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!((summary.acked, summary.sent, summary.resent), (N, N, 0));
    assert_received_in_order(&state, N);
    let mut ranged = 0;
    while let Ok(e) = events.try_recv() {
        if let ClientEvent::Ack(a) = e
            && !a.completed.is_empty()
        {
            assert_eq!(a.through_seq, 2, "{a:?}");
            ranged += 1;
        }
    }
    assert!(ranged > 0, "acks with completed ranges arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_too_large_is_taken_out_and_the_rest_renumbered() {
    let (addr, state) = start(Behavior {
        window: 50,
        too_large: Some(payload(5)),
        ..Behavior::default()
    })
    .await;
    let (client, mut events) = SourceClient::connect(&addr, "src-c", "", options())
        .await
        .unwrap();
    for i in 1..=20 {
        client.send_payload(payload(i)).await.unwrap();
    }
    let summary = tokio::time::timeout(Duration::from_secs(10), client.finish())
        .await
        .unwrap();
    assert_eq!(summary.too_large, 1);
    assert_eq!(summary.acked, 19);
    assert!(!summary.is_complete(), "a record was not delivered");
    let mut taken = None;
    while let Ok(e) = events.try_recv() {
        if let ClientEvent::RecordTooLarge { seq, record } = e {
            taken = Some((seq, record));
        }
    }
    let (seq, record) = taken.expect("RecordTooLarge event");
    assert_eq!(seq, 5);
    assert_eq!(record.payload.as_ref(), payload(5).as_slice());
    let st = state.lock().unwrap();
    let got: Vec<(u64, Vec<u8>)> = st
        .received
        .iter()
        .map(|(_, s, p)| (*s, p.clone()))
        .collect();
    let want: Vec<(u64, Vec<u8>)> = (1..=19)
        .map(|s| (s, payload(if s < 5 { s } else { s + 1 })))
        .collect();
    assert_eq!(got, want);
}

/// Options with `max_attempts` reconnects, `backoff` first, at most 4 times it.
fn retrying(max_attempts: u32, backoff: Duration) -> ClientOptions {
    ClientOptions {
        reconnect: ReconnectPolicy {
            max_attempts,
            initial_backoff: backoff,
            max_backoff: backoff * 4,
        },
        ..options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pipeline_and_unreachable_engine_are_errors() {
    let (addr, _state) = start(Behavior {
        window: 10,
        pipelines: vec!["orders".into()],
        ..Behavior::default()
    })
    .await;
    // NOT_FOUND is permanent: an error at once, even with a policy whose first
    // retry would wait 10 s.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        SourceClient::connect(&addr, "src-d", "nope", retrying(5, Duration::from_secs(10))),
    )
    .await
    .expect("NOT_FOUND is not retried")
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { code: tonic::Code::NotFound, message } if message.contains("nope")),
        "{err}"
    );
    // A port nobody listens on: tried 1 + 3 times, then the last error with
    // the address and the number of attempts.
    let dead = format!("http://{}", dead_port());
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        SourceClient::connect(&dead, "src-d", "", retrying(3, Duration::from_millis(10))),
    )
    .await
    .expect("gives up in time")
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&dead), "{text}");
    assert!(text.contains("gave up after 4 attempts"), "{text}");
    // max_attempts 0: the first failure, at once.
    let err = SourceClient::connect(&dead, "src-d", "", retrying(0, Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("gave up"), "{err}");
    let err = SourceClient::connect("not a uri", "src-d", "", options())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
    let _ = Record::default();
}

/// Sends `n` records through `client`, finishes it and checks that all were
/// acked; the events it reported.
async fn send_all(
    client: SourceClient,
    mut events: sluice_client::ClientEvents,
    n: u64,
) -> Vec<ClientEvent> {
    for i in 1..=n {
        client.send_payload(payload(i)).await.unwrap();
    }
    let s = tokio::time::timeout(Duration::from_secs(10), client.finish())
        .await
        .expect("finished in time");
    assert!(s.is_complete(), "{s:?}");
    assert_eq!(s.acked, n);
    assert_eq!(s.reconnects, 0, "a first connection is not a reconnect");
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_to_an_engine_not_listening_yet_is_retried() {
    let at = dead_port();
    let state = Arc::new(Mutex::new(State::default()));
    let later = {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            start_on(
                Behavior {
                    window: 16,
                    ..Behavior::default()
                },
                at,
                state,
            )
            .await
        })
    };
    let (client, events) = tokio::time::timeout(
        Duration::from_secs(20),
        SourceClient::connect(
            &format!("http://{at}"),
            "late",
            "",
            retrying(50, Duration::from_millis(20)),
        ),
    )
    .await
    .expect("connected in time")
    .expect("the engine is reached once it listens");
    later.await.unwrap();
    let seen = send_all(client, events, 40).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. })),
        "each failed attempt is an event: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, ClientEvent::Connected { attempt, .. } if *attempt > 0)),
        "{seen:?}"
    );
    assert_received_in_order(&state, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_open_answered_unavailable_is_retried() {
    let (addr, state) = start(Behavior {
        window: 16,
        unavailable_opens: 2,
        ..Behavior::default()
    })
    .await;
    let (client, events) = tokio::time::timeout(
        Duration::from_secs(10),
        SourceClient::connect(&addr, "drained", "", retrying(5, Duration::from_millis(10))),
    )
    .await
    .expect("connected in time")
    .expect("reached after two UNAVAILABLE answers");
    let seen = send_all(client, events, 25).await;
    let failed: Vec<&String> = seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Disconnected { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{seen:?}");
    assert!(failed[0].contains("shutting down"), "{failed:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, ClientEvent::Connected { attempt: 2, .. })),
        "{seen:?}"
    );
    {
        let st = state.lock().unwrap();
        assert_eq!(st.refused_opens, 2);
        assert_eq!(st.received.len(), 25);
    }

    // With no attempts left, UNAVAILABLE is the error, with the engine's message.
    let (addr, _state) = start(Behavior {
        window: 16,
        unavailable_opens: 10,
        ..Behavior::default()
    })
    .await;
    let err = SourceClient::connect(&addr, "drained", "", retrying(2, Duration::from_millis(10)))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("shutting down") && text.contains("gave up after 3 attempts"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_source_continues_after_what_the_engine_admitted() {
    let (addr, state) = start(Behavior {
        window: 50,
        ..Behavior::default()
    })
    .await;
    for round in 0..2u64 {
        let (client, _events) = SourceClient::connect(&addr, "again", "", options())
            .await
            .unwrap();
        for i in 1..=10 {
            client.send_payload(payload(round * 10 + i)).await.unwrap();
        }
        let s = tokio::time::timeout(Duration::from_secs(10), client.finish())
            .await
            .unwrap();
        assert!(s.is_complete(), "{s:?}");
    }
    assert_received_in_order(&state, 20);
}

/// The engine's count of the stream's credit is the authority: after a
/// `NO_CREDIT` reject (here the engine counts 1600 bytes less than it
/// granted in `Opened`), the client takes the count from `Reject.credit`
/// instead of guessing, and ends with exactly the engine's count. (The client
/// used to drop its credit to zero on `NO_CREDIT`, which left it believing
/// less than the engine counted, or more after the refunds of the gap
/// rejects that follow: the two never met again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_no_credit_the_client_takes_the_engines_count() {
    let (addr, state) = start(Behavior {
        window: 20,
        byte_drift: 1_600,
        ..Behavior::default()
    })
    .await;
    const N: u64 = 300;
    let ((p, summary), events) =
        run_collecting(&addr, "src-d", Duration::from_secs(20), async |client| {
            let mut progress = client.progress();
            // Big records first (bytes bind, and run out in the engine before
            // the client expects it), then small ones (records bind).
            for i in 1..=N {
                let size = if i <= 8 { 400 } else { 10 };
                client.send_payload(vec![b'x'; size]).await?;
            }
            while progress.borrow_and_update().acked < N {
                progress.changed().await.map_err(|_| ClientError::Closed)?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let p = client.snapshot();
            Ok((p, client.finish().await))
        })
        .await;
    assert!(summary.is_complete(), "{summary:?}");
    let no_credit = events
        .iter()
        .filter(
            |e| matches!(e, ClientEvent::Reject(r) if r.reason == RejectReason::NoCredit as i32),
        )
        .count();
    assert!(no_credit >= 1, "the drift shows as a NO_CREDIT reject");
    let engine = state.lock().unwrap().credit["src-d"];
    assert_eq!(
        (p.credit_records, p.credit_bytes),
        engine,
        "the client's credit is the engine's count"
    );
}
