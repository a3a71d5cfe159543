//! Security: bearer tokens per source (inline or from a file), TLS and
//! mutual TLS, the non-loopback warning and the per-connection limits. A real engine on 127.0.0.1 (port 0); every test is
//! bounded by a tokio timeout.

use std::time::Duration;

use sluice_client::{ClientOptions, SourceClient, Summary};
use sluice_config::{Limit, Settings, TlsSettings, TokenSpec};
use sluice_proto::v1::admin_client::AdminClient;
use sluice_proto::v1::{RejectReason, SourceMessage, StatsRequest, engine_message};
use sluice_tests::*;

use tonic::Code;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(30);

fn token(t: &str, sources: &[&str]) -> TokenSpec {
    TokenSpec::inline(t, sources)
}

fn auth_settings(dir: &std::path::Path) -> Settings {
    let mut s = test_settings(dir);
    s.server.auth.tokens = vec![
        token("tok-a", &["a"]),
        token("tok-web", &["web-*"]),
        token("tok-all", &["*"]),
    ];
    s
}

/// Opens a raw stream for `source` on `channel` with an optional bearer token.
async fn raw_open(
    channel: Channel,
    source: &str,
    token: Option<&str>,
) -> Result<Raw, tonic::Status> {
    raw_on(channel, open_msg(source, ""), token).await
}

/// Opens `source` and returns the status the engine ends it with, if any
/// (`Ok(())` when `Opened` came).
async fn try_open(addr: &str, source: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut raw = raw_open(channel(addr).await, source, token).await?;
    raw.opened().await.map(|_| ())
}

async fn send_n(addr: &str, source: &str, n: u64, opts: ClientOptions) -> Summary {
    let (client, _events) = SourceClient::connect(addr, source, "", opts)
        .await
        .expect("client connects");
    for i in 1..=n {
        client.send_payload(payload(i, 64)).await.expect("send");
    }
    client.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unknown_token_is_unauthenticated() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(auth_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let none = try_open(&addr, "a", None).await.unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
        let bad = try_open(&addr, "a", Some("tok-wrong")).await.unwrap_err();
        assert_eq!(bad.code(), Code::Unauthenticated, "{bad:?}");
        assert!(!bad.message().contains("tok-wrong"), "{bad:?}");
        // A prefix of a valid token is not valid.
        let short = try_open(&addr, "a", Some("tok-")).await.unwrap_err();
        assert_eq!(short.code(), Code::Unauthenticated, "{short:?}");
        // Admin.Stats needs a token too.
        let mut admin = AdminClient::new(channel(&addr).await);
        let err = admin.stats(StatsRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let mut req = tonic::Request::new(StatsRequest::default());
        req.metadata_mut()
            .insert("authorization", "Bearer tok-a".parse().unwrap());
        admin.stats(req).await.expect("stats with a token");
        // The Rust client surfaces the refusal without retrying forever.
        let opts = ClientOptions {
            token: Some("nope".into()),
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        let Err(err) = SourceClient::connect(&addr, "a", "", opts).await else {
            panic!("a client with an unknown token must be refused");
        };
        assert!(err.to_string().contains("Unauthenticated"), "{err}");
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_only_its_sources() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(auth_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let denied = try_open(&addr, "b", Some("tok-a")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("\"b\""), "{denied:?}");
        assert!(!denied.message().contains("tok-a"), "{denied:?}");
        try_open(&addr, "a", Some("tok-a"))
            .await
            .expect("own source");
        try_open(&addr, "web-7", Some("tok-web"))
            .await
            .expect("prefix");
        let denied = try_open(&addr, "web", Some("tok-web")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        try_open(&addr, "anything", Some("tok-all"))
            .await
            .expect("*");
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_token_delivers_and_acks() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(auth_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        let opts = ClientOptions {
            token: Some("tok-a".into()),
            ..ClientOptions::default()
        };
        let summary = send_n(&addr, "a", 300, opts).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 300);
        engine.shutdown().await.unwrap();
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "a", 300);
    })
    .await
    .expect("in time");
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_trusting_the_ca_is_acked_and_plaintext_fails() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let mut s = auth_settings(dir.path());
        s.server.tls = Some(TlsSettings::new(cert_path, key_path));
        let engine = start_engine(s, |b| b).await;
        let port = engine.local_addr().port();
        let https = format!("https://127.0.0.1:{port}");
        let opts = ClientOptions {
            token: Some("tok-a".into()),
            ca_pem: Some(cert.clone().into_bytes()),
            ..ClientOptions::default()
        };
        let summary = send_n(&https, "a", 200, opts).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 200);

        // Plaintext against the TLS port: no Opened.
        let plain = tokio::time::timeout(Duration::from_secs(5), async {
            let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut raw = raw_open(ch, "a", Some("tok-a"))
                .await
                .map_err(|e| e.to_string())?;
            raw.opened().await.map_err(|e| e.to_string())
        })
        .await;
        assert!(!matches!(plain, Ok(Ok(_))), "a plaintext client must fail");

        // A client that does not trust the CA fails too.
        let other = self_signed().0;
        let opts = ClientOptions {
            token: Some("tok-a".into()),
            ca_pem: Some(other.into_bytes()),
            connect_timeout: Duration::from_secs(3),
            reconnect: sluice_client::ReconnectPolicy {
                max_attempts: 0,
                ..Default::default()
            },
            ..ClientOptions::default()
        };
        assert!(
            SourceClient::connect(&https, "a", "", opts.clone())
                .await
                .is_err()
        );
        // A TLS handshake failure is permanent: not retried, even with
        // attempts left (the first retry would wait 10 s).
        let patient = ClientOptions {
            reconnect: sluice_client::ReconnectPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_secs(10),
                max_backoff: Duration::from_secs(10),
            },
            ..opts
        };
        let err = tokio::time::timeout(
            Duration::from_secs(8),
            SourceClient::connect(&https, "a", "", patient),
        )
        .await
        .expect("an untrusted certificate is not retried")
        .unwrap_err();
        assert!(!err.to_string().contains("gave up"), "{err}");
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tls_file_is_a_start_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, cert).unwrap();
    let mut s = test_settings(dir.path());
    s.server.tls = Some(TlsSettings::new(
        cert_path,
        dir.path().join("missing-key.pem"),
    ));
    let err = sluice_engine::EngineBuilder::new(s)
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls.key"), "{err}");
    assert!(err.contains("missing-key.pem"), "{err}");
}

/// Writes `text` to `dir/name` and returns the path.
fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Server TLS settings with a certificate for 127.0.0.1 from `server_ca`,
/// requiring client certificates from `client_ca_pem`.
fn mtls_settings(dir: &std::path::Path, server_ca: &TestCa, client_ca_pem: &str) -> TlsSettings {
    let (cert, key) = server_ca.leaf(&["127.0.0.1", "localhost"], false);
    let mut tls = TlsSettings::new(
        write_file(dir, "server-cert.pem", &cert),
        write_file(dir, "server-key.pem", &key),
    );
    tls.client_ca = Some(write_file(dir, "clients-ca.pem", client_ca_pem));
    tls
}

/// Options for a client that fails fast: no reconnects, a short connect timeout.
fn fail_fast(opts: ClientOptions) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(3),
        reconnect: sluice_client::ReconnectPolicy {
            max_attempts: 0,
            ..Default::default()
        },
        ..opts
    }
}

/// Connects `source` with `opts`; the error, if connecting fails (bounded).
async fn connect_error(addr: &str, source: &str, opts: ClientOptions) -> Option<String> {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        SourceClient::connect(addr, source, "", fail_fast(opts)),
    )
    .await
    .expect("connecting ends in time");
    r.err().map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = TestCa::new("sluice test server CA");
        let client_ca = TestCa::new("sluice test client CA");
        let mut s = test_settings(dir.path());
        s.server.tls = Some(mtls_settings(dir.path(), &server_ca, &client_ca.pem));
        let engine = start_engine(s, |b| b).await;
        let https = format!("https://127.0.0.1:{}", engine.local_addr().port());
        let trusting = || ClientOptions {
            ca_pem: Some(server_ca.pem.clone().into_bytes()),
            ..ClientOptions::default()
        };

        // A client certificate signed by the client CA: connects and streams.
        let (cert, key) = client_ca.leaf(&["client-a"], true);
        let summary = send_n(
            &https,
            "a",
            200,
            trusting().with_identity(cert.clone(), key.clone()),
        )
        .await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 200);

        // No client certificate: refused.
        let err = connect_error(&https, "b", trusting()).await;
        assert!(err.is_some(), "a client without a certificate must fail");
        // A certificate from another CA (here the server's): refused.
        let (other_cert, other_key) = server_ca.leaf(&["client-x"], true);
        let err = connect_error(&https, "c", trusting().with_identity(other_cert, other_key)).await;
        assert!(
            err.is_some(),
            "a client certificate from another CA must fail"
        );

        // The engine keeps serving the good client.
        let summary = send_n(&https, "d", 100, trusting().with_identity(cert, key)).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 100);
        engine.shutdown().await.unwrap();
        let sink = dir.path().join("sink");
        assert_exactly_once(&delivered_keys(&sink), "a", 200);
        assert_exactly_once(&delivered_keys(&sink), "d", 100);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_client_ca_is_a_start_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sluice test CA");
    let mut tls = mtls_settings(dir.path(), &ca, &ca.pem);
    tls.client_ca = Some(dir.path().join("missing-clients-ca.pem"));
    let mut s = test_settings(dir.path());
    s.server.tls = Some(tls);
    let err = tokio::time::timeout(LIMIT, sluice_engine::EngineBuilder::new(s).start())
        .await
        .expect("in time")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls.client_ca"), "{err}");
    assert!(err.contains("missing-clients-ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_file_authenticates_its_sources() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let token_path = write_file(dir.path(), "orders.token", "tok-from-file\n");
        let mut s = test_settings(dir.path());
        s.server.auth.tokens = vec![TokenSpec::from_file(&token_path, &["orders"])];
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        try_open(&addr, "orders", Some("tok-from-file"))
            .await
            .expect("the file's token, newline trimmed");
        let bad = try_open(&addr, "orders", Some("tok-from-fil"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::Unauthenticated, "{bad:?}");
        let denied = try_open(&addr, "other", Some("tok-from-file"))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[test]
fn non_loopback_without_tls_or_tokens_is_warned() {
    use sluice_engine::auth::exposure_warning;
    let local = "127.0.0.1:50051".parse().unwrap();
    let v6local = "[::1]:50051".parse().unwrap();
    let any = "0.0.0.0:50051".parse().unwrap();
    assert_eq!(exposure_warning(local, false, false), None);
    assert_eq!(exposure_warning(v6local, false, false), None);
    assert_eq!(exposure_warning(any, true, true), None);
    let both = exposure_warning(any, false, false).unwrap();
    assert!(both.contains("TLS") && both.contains("tokens"), "{both}");
    let no_tls = exposure_warning(any, false, true).unwrap();
    assert!(
        no_tls.contains("TLS") && !no_tls.contains("tokens"),
        "{no_tls}"
    );
    let no_auth = exposure_warning(any, true, false).unwrap();
    assert!(
        !no_auth.contains("TLS") && no_auth.contains("tokens"),
        "{no_auth}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_connection_are_limited() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.server.max_sessions_per_connection = 2;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let ch = channel(&addr).await;
        let mut s1 = raw_open(ch.clone(), "s1", None).await.unwrap();
        s1.opened().await.unwrap();
        let mut s2 = raw_open(ch.clone(), "s2", None).await.unwrap();
        s2.opened().await.unwrap();
        // The third stream on the same connection waits for a slot.
        let ch3 = ch.clone();
        let third = tokio::spawn(async move {
            let mut s3 = raw_open(ch3, "s3", None).await?;
            s3.opened().await?;
            Ok::<_, tonic::Status>(s3)
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!third.is_finished(), "a third stream must wait");
        // Another connection is not affected.
        let mut other = raw_open(channel(&addr).await, "s4", None).await.unwrap();
        other.opened().await.unwrap();
        // Ending one stream frees a slot.
        s1.tx = None;
        while s1.next().await.unwrap().is_some() {}
        let s3 = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("the third stream opens once a slot is free")
            .unwrap();
        s3.expect("third stream opened");
        drop(s2);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_records_per_session_are_bounded() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.server.max_unacked_per_session = 50;
        s.buffer.per_source = Limit::new(10_000, 64 << 20);
        // A slow sink: nothing is acked for a while.
        s.pipelines[0].sink = file_sink(&dir.path().join("sink"), Duration::from_secs(2), 0.0);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_open(channel(&addr).await, "greedy", None)
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        let credit = opened.credit.unwrap_or_default().records;
        assert!(credit <= 50, "credit {credit} beyond the unacked limit");
        // Ignore the credit: 300 records at once.
        let tx = raw.tx.clone().unwrap();
        tx.send(batch_msg(1, 300, 64)).await.unwrap();
        let mut rejected = 0;
        let mut extra_credit = 0;
        loop {
            match raw.next().await.unwrap() {
                Some(engine_message::Body::Reject(r)) => {
                    let reason = RejectReason::try_from(r.reason).unwrap();
                    assert!(
                        matches!(reason, RejectReason::NoCredit | RejectReason::SourceLimit),
                        "{r:?}"
                    );
                    rejected += r.count;
                    break;
                }
                Some(engine_message::Body::Credit(c)) => extra_credit += c.records,
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        let admitted = 300 - rejected;
        assert!(admitted <= 50, "admitted {admitted} > 50 unacked");
        assert!(
            admitted + extra_credit <= 50,
            "no credit while the limit is reached (admitted {admitted}, credit {extra_credit})"
        );
        drop(raw);
        drop(tx);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliant_source_is_never_rejected_under_the_unacked_limit() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.server.max_unacked_per_session = 40;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let summary = send_n(&addr, "steady", 2_000, ClientOptions::default()).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.rejected, 0, "{summary:?}");
        assert_eq!(summary.acked, 2_000);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

/// Starts an `Ingest.Stream` on `channel` that never sends a message (the
/// request stays open: its sender is returned) and returns the engine's
/// answer to it.
async fn silent_stream(
    channel: Channel,
) -> (
    tokio::sync::mpsc::Sender<SourceMessage>,
    Result<tonic::Streaming<sluice_proto::v1::EngineMessage>, tonic::Status>,
) {
    let mut client = sluice_proto::v1::ingest_client::IngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<SourceMessage>(1);
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let answer = client.stream(request).await.map(|r| r.into_inner());
    (tx, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_open_ends_deadline_exceeded_after_open_timeout() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.server.open_timeout = Duration::from_millis(300);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let ch = channel(&addr).await;

        // A stream that sends nothing (and keeps its request open) is ended.
        let (held, answer) =
            tokio::time::timeout(Duration::from_secs(10), silent_stream(ch.clone()))
                .await
                .expect("the engine ends a stream without Open, not waiting forever");
        let status = match answer {
            Err(status) => status,
            Ok(mut inbound) => inbound
                .message()
                .await
                .expect_err("a stream without Open must end with an error"),
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            status
                .message()
                .contains("no Open within server.open_timeout (300ms)"),
            "{status:?}"
        );

        // The timeout bounds only the wait for Open: a stream that opens and
        // then idles longer than it is not ended.
        let mut idle = raw_open(ch.clone(), "idle", None).await.unwrap();
        idle.opened().await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        idle.send(batch_msg(1, 5, 64)).await;
        idle.tx = None;
        let mut acked = 0;
        while let Some(m) = idle.next().await.expect("the idle stream ends OK") {
            if let engine_message::Body::Ack(a) = m {
                acked = a.through_seq;
            }
        }
        assert_eq!(acked, 5, "every record of the idle stream acked");
        // The silent client kept its request open all along.
        drop(held);

        // A normal source on the same engine still works.
        let summary = send_n(&addr, "after", 200, ClientOptions::default()).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.acked, 200);
        engine.shutdown().await.unwrap();
        let keys = delivered_keys(&dir.path().join("sink"));
        assert_exactly_once(&keys, "after", 200);
        assert_exactly_once(&keys, "idle", 5);
    })
    .await
    .expect("in time");
}
