//! The message gate (`crates/engine/src/ingest/gate.rs`): what a stream may
//! make the engine read beyond the capacity reserved for it, and
//! `server.max_connections`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_client::ClientOptions;
use sluice_proto::v1::{RejectReason, engine_message};
use sluice_tests::*;
use tokio::task::JoinHandle;

/// The pool the tests configure (`server.uncovered_message_bytes`).
const POOL: usize = 64 * 1024;

/// A gRPC frame: not compressed, `len` bytes follow.
fn prefix(len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// A raw HTTP/2 `Ingest.Stream` that sent `Open` for `source`, then the
/// prefix of a message of `declared` bytes and `sent` bytes of it, and
/// holds it unfinished (what no gRPC client can send).
struct Partial {
    conn: JoinHandle<()>,
    response: h2::client::ResponseFuture,
    _stream: h2::SendStream<Bytes>,
}

impl Partial {
    async fn open(addr: SocketAddr, source: &str, declared: u32, sent: usize) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let request = sluice_cli::bench::flood::ingest_stream_request(addr).expect("a request");
        let (response, mut stream) = client.send_request(request, false).expect("sent");
        let open = raw::open_msg(source, "").encode_to_vec();
        let mut data = prefix(open.len() as u32).to_vec();
        data.extend_from_slice(&open);
        data.extend_from_slice(&prefix(declared));
        data.resize(data.len() + sent, 0);
        // Within the default 64 KiB windows of a new stream.
        stream
            .send_data(Bytes::from(data), false)
            .expect("data sent");
        Self {
            conn,
            response,
            _stream: stream,
        }
    }

    /// The stream's gRPC status code and message, reading (and releasing
    /// the flow control of) what the engine sent before.
    async fn status(self) -> (i32, String) {
        let response = self.response.await.expect("a response");
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let trailers = if headers.contains_key("grpc-status") {
            headers
        } else {
            while let Some(d) = body.data().await {
                let d = d.expect("data");
                let _ = body.flow_control().release_capacity(d.len());
            }
            body.trailers().await.expect("trailers").expect("a status")
        };
        self.conn.abort();
        let code = trailers["grpc-status"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a code");
        let message = trailers
            .get("grpc-message")
            .map(|m| m.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        (code, message)
    }
}

#[tokio::test]
async fn a_message_beyond_credit_waits_for_the_pool_and_a_stalled_one_is_cut_at_message_timeout() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.server.uncovered_message_bytes = Some(POOL);
        settings.server.message_timeout = Duration::from_secs(2);
        let engine = start_engine(settings, |b| b).await;
        let addr = engine.local_addr();
        // Two half-sent 60 KiB messages and a 64 KiB pool: whichever gets
        // the room first holds it until it is cut, and only then can the
        // other take it, so the two ends are a timeout apart.
        let a = Partial::open(addr, "stall-a", 60 * 1024, 30 * 1024).await;
        let b = Partial::open(addr, "stall-b", 60 * 1024, 30 * 1024).await;
        let started = tokio::time::Instant::now();
        // Each stream's end, timed as it comes.
        let ended = |p: Partial| {
            tokio::spawn(async move {
                let (code, message) = p.status().await;
                (code, message, started.elapsed())
            })
        };
        let (a, b) = (ended(a), ended(b));
        // A source within its credit is read at once, pool or not.
        let (summary, _) =
            send_all(&url(&engine), "good", 2_000, 100, ClientOptions::default()).await;
        assert_all_delivered(&summary, 2_000);
        let mut ends = Vec::new();
        for (source, end) in [("stall-a", a), ("stall-b", b)] {
            let (code, message, at) = end.await.unwrap();
            assert_eq!(code, tonic::Code::DeadlineExceeded as i32, "{message}");
            assert!(
                message.contains("server.message_timeout") && message.contains(source),
                "names the setting and the source: {message}"
            );
            ends.push(at);
        }
        ends.sort();
        // The second one's two seconds started only once the first had
        // let the pool go.
        assert!(
            ends[1] >= ends[0] + Duration::from_secs(1),
            "ends at {ends:?}: the second did not wait for the pool"
        );
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_message_beyond_credit_and_larger_than_the_pool_ends_its_stream_out_of_range() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.server.uncovered_message_bytes = Some(POOL);
        let engine = start_engine(settings, |b| b).await;
        let addr = url(&engine);
        let mut raw = raw::raw_stream(&addr, raw::open_msg("too-big", ""))
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        // The engine states the largest record that always gets read.
        let window = opened.window.unwrap().bytes;
        assert!(
            opened.max_record_bytes <= (POOL as u64).max(window / 2),
            "{opened:?}"
        );
        // Only the guaranteed share so far: 100 KB is beyond the credit
        // and larger than the pool, so it is never read.
        assert!(opened.credit.unwrap().bytes < 100_000, "{opened:?}");
        raw.must_send(raw::batch_msg(1, 100, 1000)).await;
        let status = loop {
            match raw.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("server.uncovered_message_bytes")
                && status.message().contains("\"too-big\""),
            "names the setting and the source: {status:?}"
        );
        drop(raw);

        // Beyond the credit but within the pool: read, and the excess
        // rejected as before (a version-1 source is told so by a Reject).
        let mut raw = raw::raw_stream(&addr, raw::open_msg("over", ""))
            .await
            .unwrap();
        let credit = raw.opened().await.unwrap().credit.unwrap();
        let n = credit.records + 10;
        raw.must_send(raw::batch_msg(1, n, 40 * 1024 / n as usize))
            .await;
        let reject = loop {
            match raw.next().await.expect("no status") {
                Some(engine_message::Body::Reject(r)) => break r,
                Some(_) => continue,
                None => panic!("the stream ended"),
            }
        };
        assert_eq!(reject.reason, RejectReason::NoCredit as i32, "{reject:?}");
        assert!(
            reject.first_seq > 1 && reject.first_seq + reject.count == n + 1,
            "the credit's part admitted, the rest rejected: {reject:?}"
        );
        drop(raw);
        // The engine goes on serving others.
        let (summary, _) = send_all(&addr, "after", 1_000, 100, ClientOptions::default()).await;
        assert_all_delivered(&summary, 1_000);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.server.max_connections = 1;
        let engine = start_engine(settings, |b| b).await;
        let addr = url(&engine);
        let first = raw::raw_stream(&addr, raw::open_msg("first", ""))
            .await
            .unwrap();
        // A second connection is not served while the first is open.
        let second = tokio::spawn({
            let addr = addr.clone();
            async move { send_all(&addr, "second", 100, 100, ClientOptions::default()).await }
        });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!second.is_finished(), "served past server.max_connections");
        // Closing the first connection lets it in.
        drop(first);
        let (summary, _) = second.await.unwrap();
        assert_all_delivered(&summary, 100);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}
