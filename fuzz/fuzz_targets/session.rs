//! Fuzzes the ingest session state machine of a live engine.
//!
//! One engine (null sinks, small limits) runs on 127.0.0.1:0 in a
//! once-initialised tokio runtime for the whole fuzzing process. Each input is
//! turned into a sequence of frames sent on one `Ingest.Stream`:
//!
//! - prost-decoded `SourceMessage`s taken straight from the input bytes
//!   (bytes that do not decode are skipped, or, in raw mode, sent as they are
//!   as a gRPC frame),
//! - structured `Open`s (valid, empty, too long, unknown pipeline) and
//!   `Batch`es (contiguous, `first_seq` 0, duplicates, gaps, near
//!   `u64::MAX`; records from empty to past the message limit, huge attribute
//!   maps, batches past `max_batch_records`),
//! - empty `SourceMessage`s and, in raw mode, arbitrary gRPC frames.
//!
//! The first byte chooses the mode: the generated tonic client, or a raw
//! codec that sends arbitrary bytes as gRPC frames; half-close or cancel the
//! stream at the end; start with a valid `Open` or not.
//!
//! Checked for every input (a failed check panics, libFuzzer reports it):
//! - the stream ends within `STREAM_TIMEOUT` with OK or a clear gRPC status
//!   (a hang is a crash); `Opened` comes first and once, acks never go back;
//! - no engine thread panics (libfuzzer-sys' panic hook aborts the process);
//! - the engine keeps serving: the gRPC server task is running and a
//!   well-behaved source opens and gets `Opened` (every input) and has one
//!   record acked (every `DELIVERY_EVERY`th input).
//!
//! The engine keeps per-source state across inputs (as a real engine does
//! across streams), so a crash may depend on earlier inputs; the input libFuzzer
//! saves is the last one.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sluice_config::{PipelineSpec, Settings, SinkSpec};
use sluice_engine::{EngineBuilder, EngineHandle};
use sluice_proto::v1::ingest_client::IngestClient;
use sluice_proto::v1::{
    Batch, EngineMessage, Open, Opened, Record, SourceMessage, engine_message, source_message,
};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// `server.max_message_bytes` of the engine.
const MAX_MESSAGE: usize = 32 * 1024;
/// `Opened.max_batch_records` of the engine.
const MAX_BATCH: u32 = 16;
/// Every stream must end within this (after the source half-closes).
const STREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// The liveness check must finish within this.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The liveness check also has a record delivered every this many inputs.
const DELIVERY_EVERY: u64 = 16;
/// Most frames taken from one input.
const MAX_FRAMES: usize = 48;
/// Source ids most frames use, so that inputs share per-source state.
const SOURCES: [&str; 4] = ["fz-a", "fz-b", "fz-c", "fz-d"];
/// The source id of the liveness check (never used by fuzzed frames).
const HEALTH_SOURCE: &str = "fz-health";
/// The gRPC path of `Ingest.Stream`.
const STREAM_PATH: &str = "/sluice.v1.Ingest/Stream";

// ---------------------------------------------------------------------------
// The engine, once per process
// ---------------------------------------------------------------------------

struct Fuzz {
    rt: tokio::runtime::Runtime,
    engine: Mutex<EngineHandle>,
    /// Connection for the fuzzed streams.
    fuzz_channel: Channel,
    /// Separate connection for the liveness check.
    health_channel: Channel,
    inputs: AtomicU64,
}

static FUZZ: OnceLock<Fuzz> = OnceLock::new();

fn null_sink() -> SinkSpec {
    SinkSpec::Null {
        delay: Duration::ZERO,
        fail_rate: 0.0,
    }
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().expect("an address");
    s.server.max_message_bytes = MAX_MESSAGE;
    s.server.shutdown_timeout = Duration::from_secs(2);
    s.metrics.enabled = false;
    s.memory.enabled = false;
    // Small limits: credit refills, NO_CREDIT, the large-record exception
    // (records over half the 16 KiB byte window) and RECORD_TOO_LARGE
    // (records over the 24 KiB per-source limit that still fit in a message)
    // are all reachable with a few records.
    s.buffer.credit_window_records = 16;
    s.buffer.per_source.records = 128;
    s.buffer.per_source.bytes = 24 * 1024;
    s.buffer.per_stage.records = 512;
    s.buffer.per_stage.bytes = 256 * 1024;
    s.buffer.global.records = 1024;
    s.buffer.global.bytes = 512 * 1024;
    let mut p = PipelineSpec {
        sink: null_sink(),
        dead_letter: null_sink(),
        ..PipelineSpec::default()
    };
    p.batch.linger = Duration::from_millis(2);
    s.pipelines = vec![p];
    s
}

fn fuzz() -> &'static Fuzz {
    FUZZ.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-fuzz")
            .enable_all()
            .build()
            .expect("a runtime");
        let (engine, fuzz_channel, health_channel) = rt.block_on(async {
            let engine = EngineBuilder::new(settings())
                .max_batch_records(MAX_BATCH)
                .start()
                .await
                .expect("the engine starts");
            let url = format!("http://{}", engine.local_addr());
            let channel = || async {
                Channel::from_shared(url.clone())
                    .expect("a valid address")
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .expect("connects to the engine")
            };
            let fuzz_channel = channel().await;
            let health_channel = channel().await;
            (engine, fuzz_channel, health_channel)
        });
        Fuzz {
            rt,
            engine: Mutex::new(engine),
            fuzz_channel,
            health_channel,
            inputs: AtomicU64::new(0),
        }
    })
}

// ---------------------------------------------------------------------------
// From bytes to frames
// ---------------------------------------------------------------------------

/// Reads the input front to back; past the end everything is zero/empty.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn b(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn u64(&mut self) -> u64 {
        let mut buf = [0u8; 8];
        let b = self.take(8);
        buf[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(buf)
    }
}

/// Where a batch starts, resolved when it is sent (relative to what the
/// engine said it admitted and to the batches sent before on the stream).
#[derive(Debug, Clone, Copy)]
enum Seq {
    /// Right after the previous batch (or `admitted_through_seq + 1`).
    Next,
    Zero,
    /// Before `Next` (duplicates).
    Back(u64),
    /// After `Next` (a gap).
    Gap(u64),
    /// `u64::MAX - k`.
    NearMax(u64),
    Abs(u64),
}

#[derive(Debug)]
enum Frame {
    /// A message; `raw` are the bytes it was decoded from, if any (sent as
    /// they are in raw mode).
    Msg {
        m: SourceMessage,
        raw: Option<Bytes>,
    },
    Batch {
        seq: Seq,
        records: Vec<Record>,
    },
    /// Bytes that are not a `SourceMessage` (raw mode only).
    Garbage(Bytes),
}

#[derive(Debug)]
struct Plan {
    /// Raw codec (arbitrary frames) instead of the generated client.
    raw: bool,
    /// Cancel the stream instead of half-closing it.
    abort: bool,
    frames: Vec<Frame>,
}

fn source_id(inp: &mut Input) -> String {
    let b = inp.b();
    match b % 16 {
        0..=11 => SOURCES[(b / 16 % 4) as usize].to_owned(),
        12 => String::new(),
        13 => "x".repeat(257),
        14 => "s".repeat(256),
        _ => {
            let n = (inp.b() % 24) as usize;
            let s = String::from_utf8_lossy(inp.take(n)).into_owned();
            // Keep the number of distinct sources small (the engine keeps
            // per-source state for its life) and away from the health check.
            format!("fz-{}", s.chars().take(2).collect::<String>())
        }
    }
}

fn pipeline(inp: &mut Input) -> String {
    match inp.b() % 8 {
        0..=4 => String::new(),
        5 => "default".to_owned(),
        6 => "nope".to_owned(),
        _ => "p".repeat(257),
    }
}

fn open(source_id: String, pipeline: String) -> SourceMessage {
    SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id,
            pipeline,
        })),
    }
}

fn seq(inp: &mut Input) -> Seq {
    let b = inp.b();
    match b % 8 {
        0..=2 => Seq::Next,
        3 => Seq::Zero,
        4 => Seq::Back(u64::from(b / 8 % 4)),
        5 => Seq::Gap(1 + u64::from(b / 8 % 4)),
        6 => Seq::NearMax(u64::from(b / 8 % 8)),
        _ => Seq::Abs(inp.u64()),
    }
}

fn record(inp: &mut Input) -> Record {
    let key_len = (inp.b() % 16) as usize;
    let key = Bytes::copy_from_slice(inp.take(key_len));
    let b = inp.b();
    let payload = match b % 16 {
        0..=9 => {
            let n = inp.b() as usize;
            Bytes::copy_from_slice(inp.take(n))
        }
        10 => Bytes::new(),
        11 => Bytes::from(vec![b'p'; 6 * 1024]),
        // Over half the byte window.
        12 => Bytes::from(vec![b'p'; 10 * 1024]),
        13 => Bytes::from(vec![b'p'; 20 * 1024]),
        // Over the per-source byte limit, within the message limit.
        14 => Bytes::from(vec![b'p'; 28 * 1024]),
        // Over the message limit.
        _ => Bytes::from(vec![b'p'; MAX_MESSAGE + 100]),
    };
    let attributes = match inp.b() % 8 {
        0..=5 => Default::default(),
        6 => (0..1 + inp.b() % 3)
            .map(|i| {
                let n = (inp.b() % 16) as usize;
                (
                    format!("a{i}"),
                    String::from_utf8_lossy(inp.take(n)).into_owned(),
                )
            })
            .collect(),
        _ => (0..200)
            .map(|i| (format!("a{i}"), "v".repeat(10)))
            .collect(),
    };
    Record {
        key,
        payload,
        attributes,
        event_time_ms: inp.u64() as i64,
    }
}

fn plan(data: &[u8]) -> Plan {
    let mut inp = Input { data };
    let flags = inp.b();
    let raw = flags & 0x01 != 0;
    let abort = flags & 0x0e == 0x0e;
    let mut frames = Vec::new();
    // Mostly a valid start, so that the later frames reach the session.
    if flags & 0x30 != 0x30 {
        let s = SOURCES[(flags >> 6) as usize].to_owned();
        frames.push(Frame::Msg {
            m: open(s, String::new()),
            raw: None,
        });
    }
    while frames.len() < MAX_FRAMES {
        let Some(op) = inp.byte() else { break };
        let frame = match op % 8 {
            0 => {
                let n = inp.b() as usize;
                let bytes = Bytes::copy_from_slice(inp.take(n));
                match SourceMessage::decode(bytes.clone()) {
                    Ok(m) => Frame::Msg {
                        m,
                        raw: Some(bytes),
                    },
                    Err(_) => Frame::Garbage(bytes),
                }
            }
            1 => {
                let s = source_id(&mut inp);
                let p = pipeline(&mut inp);
                Frame::Msg {
                    m: open(s, p),
                    raw: None,
                }
            }
            2..=4 => {
                let seq = seq(&mut inp);
                let n = inp.b() % 5;
                let records = (0..n).map(|_| record(&mut inp)).collect();
                Frame::Batch { seq, records }
            }
            5 => Frame::Msg {
                m: SourceMessage { body: None },
                raw: None,
            },
            6 => {
                let n = inp.b() as usize;
                Frame::Garbage(Bytes::copy_from_slice(inp.take(n)))
            }
            _ => {
                // Around `max_batch_records`.
                let seq = seq(&mut inp);
                let n = MAX_BATCH as usize - 2 + (inp.b() % 7) as usize;
                let records = (0..n)
                    .map(|i| Record {
                        payload: Bytes::from(format!("{{\"n\":{i}}}")),
                        ..Record::default()
                    })
                    .collect();
                Frame::Batch { seq, records }
            }
        };
        frames.push(frame);
    }
    Plan { raw, abort, frames }
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

/// Sends raw bytes as gRPC messages and decodes `EngineMessage`s.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct EngineDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = EngineMessage;
    type Encoder = RawEncoder;
    type Decoder = EngineDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> EngineDecoder {
        EngineDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EngineDecoder {
    type Item = EngineMessage;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<EngineMessage>, tonic::Status> {
        EngineMessage::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("client: {e}")))
    }
}

/// The sending half of a stream: generated client or raw codec.
enum Tx {
    Gen(mpsc::Sender<SourceMessage>),
    Raw(mpsc::Sender<Bytes>),
}

/// Resolves batch sequence numbers.
struct Seqs {
    next: u64,
}

impl Seqs {
    fn resolve(&mut self, seq: Seq, n: usize) -> u64 {
        let first = match seq {
            Seq::Next => self.next,
            Seq::Zero => 0,
            Seq::Back(k) => self.next.saturating_sub(k),
            Seq::Gap(k) => self.next.saturating_add(k),
            Seq::NearMax(k) => u64::MAX - k,
            Seq::Abs(v) => v,
        };
        if matches!(seq, Seq::Next) {
            self.next = self.next.saturating_add(n as u64);
        }
        first
    }
}

impl Tx {
    /// Queues `frame` (never blocks: the channel holds every frame of a plan).
    fn send(&self, frame: &Frame, seqs: &mut Seqs) {
        let (msg, raw) = match frame {
            Frame::Msg { m, raw } => (Some(m.clone()), raw.clone()),
            Frame::Batch { seq, records } => {
                let first_seq = seqs.resolve(*seq, records.len());
                let m = SourceMessage {
                    body: Some(source_message::Body::Batch(Batch {
                        first_seq,
                        records: records.clone(),
                    })),
                };
                (Some(m), None)
            }
            Frame::Garbage(b) => (None, Some(b.clone())),
        };
        match self {
            Tx::Gen(tx) => {
                if let Some(m) = msg {
                    let _ = tx.try_send(m);
                }
            }
            Tx::Raw(tx) => {
                let bytes = raw.unwrap_or_else(|| {
                    Bytes::from(msg.expect("a message or bytes").encode_to_vec())
                });
                let _ = tx.try_send(bytes);
            }
        }
    }
}

/// A status must be a clear refusal, not a crash of the handler.
fn check_status(st: &tonic::Status, plan: &Plan) {
    let ok = match st.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::ResourceExhausted => !st.message().is_empty(),
        // What tonic's prost decoder answers to bytes that are not a
        // SourceMessage (only raw mode sends those).
        Code::Internal => plan.raw && st.message().contains("failed to decode Protobuf message"),
        _ => false,
    };
    assert!(ok, "unexpected status {st:?}\nplan: {}", summary(plan));
}

/// A short description of a plan (for failure messages).
fn summary(plan: &Plan) -> String {
    let frames: Vec<String> = plan
        .frames
        .iter()
        .map(|f| match f {
            Frame::Msg { m, raw } => match &m.body {
                Some(source_message::Body::Open(o)) => format!(
                    "Open({:.40?}, {:.20?}){}",
                    o.source_id,
                    o.pipeline,
                    if raw.is_some() { " decoded" } else { "" }
                ),
                Some(source_message::Body::Batch(b)) => format!(
                    "decoded Batch(first_seq {}, {} records)",
                    b.first_seq,
                    b.records.len()
                ),
                None => "Empty".to_owned(),
            },
            Frame::Batch { seq, records } => format!(
                "Batch({seq:?}, {} records, sizes {:?})",
                records.len(),
                records.iter().map(|r| r.payload.len()).collect::<Vec<_>>()
            ),
            Frame::Garbage(b) => format!("Garbage({} bytes)", b.len()),
        })
        .collect();
    format!(
        "raw {} abort {} frames [{}]",
        plan.raw,
        plan.abort,
        frames.join(", ")
    )
}

fn check_opened(o: &Opened, plan: &Plan) {
    assert_eq!(
        o.max_batch_records,
        MAX_BATCH,
        "{o:?}\nplan: {}",
        summary(plan)
    );
    assert_eq!(
        o.max_message_bytes as usize,
        MAX_MESSAGE,
        "{o:?}\nplan: {}",
        summary(plan)
    );
}

/// Runs one plan on one stream; panics on a failed check.
async fn run_stream(f: &Fuzz, plan: &Plan) {
    let mut frames = plan.frames.iter();
    let cap = plan.frames.len() + 1;
    let mut seqs = Seqs { next: 1 };
    let (tx, response) = if plan.raw {
        let (tx, rx) = mpsc::channel::<Bytes>(cap);
        let tx = Tx::Raw(tx);
        // Nothing to send: half-close at once (else both sides wait).
        let tx = frames.next().map(|first| {
            tx.send(first, &mut seqs);
            tx
        });
        let mut grpc = tonic::client::Grpc::new(f.fuzz_channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        grpc.ready().await.expect("the fuzz channel is ready");
        let response = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(STREAM_PATH),
                RawCodec,
            )
            .await;
        (tx, response)
    } else {
        let (tx, rx) = mpsc::channel::<SourceMessage>(cap);
        let tx = Tx::Gen(tx);
        // The generated client cannot send garbage: skip it.
        let tx = frames
            .find(|f| !matches!(f, Frame::Garbage(_)))
            .map(|first| {
                tx.send(first, &mut seqs);
                tx
            });
        let mut client = IngestClient::new(f.fuzz_channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let response = client.stream(ReceiverStream::new(rx)).await;
        (tx, response)
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(st) => {
            check_status(&st, plan);
            return;
        }
    };
    // A stream the engine accepted starts with `Opened`.
    let opened = match inbound.message().await {
        Ok(Some(EngineMessage {
            body: Some(engine_message::Body::Opened(o)),
        })) => o,
        other => panic!(
            "the first message of an accepted stream is not Opened: {other:?}\nplan: {}",
            summary(plan)
        ),
    };
    check_opened(&opened, plan);
    seqs.next = opened.admitted_through_seq.saturating_add(1).max(1);
    if let Some(tx) = &tx {
        for frame in frames {
            tx.send(frame, &mut seqs);
        }
    }
    if plan.abort {
        // Read a little, then cancel the stream (drop both halves).
        let _ = tokio::time::timeout(Duration::from_millis(5), inbound.message()).await;
        drop(inbound);
        drop(tx);
        return;
    }
    drop(tx); // half-close
    let mut acked = opened.acked_through_seq;
    loop {
        match inbound.message().await {
            Ok(Some(EngineMessage { body })) => match body {
                Some(engine_message::Body::Opened(o)) => {
                    panic!("a second Opened {o:?}\nplan: {}", summary(plan))
                }
                Some(engine_message::Body::Ack(a)) => {
                    assert!(
                        a.through_seq >= acked,
                        "the ack went back from {acked} to {a:?}\nplan: {}",
                        summary(plan)
                    );
                    acked = a.through_seq;
                }
                Some(engine_message::Body::Reject(r)) => {
                    assert!(
                        r.count >= 1,
                        "an empty reject {r:?}\nplan: {}",
                        summary(plan)
                    );
                }
                Some(_) => {}
                None => panic!("an EngineMessage without body\nplan: {}", summary(plan)),
            },
            Ok(None) => return,
            Err(st) => {
                check_status(&st, plan);
                return;
            }
        }
    }
}

/// A well-behaved source is served: `Opened`, and (with `deliver`) one
/// record acked, then OK.
async fn health(f: &Fuzz, deliver: bool) {
    let mut client = IngestClient::new(f.health_channel.clone());
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(open(HEALTH_SOURCE.to_owned(), String::new()))
        .expect("queued");
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|st| panic!("a well-behaved source was refused: {st:?}"))
        .into_inner();
    let opened = match inbound.message().await {
        Ok(Some(EngineMessage {
            body: Some(engine_message::Body::Opened(o)),
        })) => o,
        other => panic!("a well-behaved source did not get Opened: {other:?}"),
    };
    let mut want = opened.acked_through_seq;
    if deliver {
        let seq = opened.admitted_through_seq + 1;
        tx.try_send(SourceMessage {
            body: Some(source_message::Body::Batch(Batch {
                first_seq: seq,
                records: vec![Record {
                    payload: Bytes::from_static(b"{\"ok\":true}"),
                    ..Record::default()
                }],
            })),
        })
        .expect("queued");
        want = seq;
    }
    drop(tx);
    let mut acked = opened.acked_through_seq;
    loop {
        match inbound.message().await {
            Ok(Some(EngineMessage {
                body: Some(engine_message::Body::Ack(a)),
            })) => acked = acked.max(a.through_seq),
            Ok(Some(EngineMessage {
                body: Some(engine_message::Body::Reject(r)),
            })) => panic!("a well-behaved source was rejected: {r:?}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(st) => panic!("a well-behaved source's stream failed: {st:?}"),
        }
    }
    assert!(
        acked >= want,
        "a well-behaved source ended OK with ack {acked}, want {want}"
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fuzz();
    let n = f.inputs.fetch_add(1, Ordering::Relaxed);
    let plan = plan(data);
    f.rt.block_on(async {
        if tokio::time::timeout(STREAM_TIMEOUT, run_stream(f, &plan))
            .await
            .is_err()
        {
            panic!(
                "the stream did not end within {STREAM_TIMEOUT:?} (a hang)\nplan: {}",
                summary(&plan)
            );
        }
        assert!(
            !f.engine.lock().expect("not poisoned").is_finished(),
            "the engine's server task ended\nplan: {}",
            summary(&plan)
        );
        if tokio::time::timeout(HEALTH_TIMEOUT, health(f, n % DELIVERY_EVERY == 0))
            .await
            .is_err()
        {
            panic!(
                "a well-behaved source was not served within {HEALTH_TIMEOUT:?}\nplan: {}",
                summary(&plan)
            );
        }
    });
});
