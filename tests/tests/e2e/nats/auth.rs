//! The sink's TLS and credentials against a nats-server that demands them:
//! mutual TLS (a `tls` block with `verify`), a token from the environment,
//! a user and password from a file (an `authorization` block); and wrong
//! credentials are a stall (sink-level), not dead letters.

use sluice_config::NatsTls;

use super::*;

/// Writes `text` to `<dir>/<name>`; its path.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends `n` records from `source` to `addr` and checks each is acked,
/// delivered and in the stream once.
async fn delivered_once(nats: &NatsServer, addr: &str, source: &str, n: u64) {
    let (summary, _) = send_all(addr, source, n, 60, patient()).await;
    assert_all_delivered(&summary, n);
    let messages = nats.messages(STREAM).await;
    assert_ids_exactly_once(&messages, ids(&[source], 1..=n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_nats_delivers_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nats test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"], false);
    let (client_cert, client_key) = ca.leaf(&["sluice"], true);
    let ca_file = file(dir.path(), "ca.pem", &ca.pem);
    let cert_file = file(dir.path(), "server.pem", &cert);
    let key_file = file(dir.path(), "server.key", &key);
    let client_cert = file(dir.path(), "client.pem", &client_cert);
    let client_key = file(dir.path(), "client.key", &client_key);
    // TLS for every client, and a client certificate from this CA.
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    );
    let (ca2, cert2, key2) = (ca_file.clone(), client_cert.clone(), client_key.clone());
    let connect = move || {
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(ca2.clone())
            .add_client_certificate(cert2.clone(), key2.clone())
    };
    let Some(nats) = NatsServer::launch_with("nats::tls", &conf, Box::new(connect)) else {
        return;
    };
    within(async {
        let mut s = nats_settings(dir.path(), &nats);
        let SinkSpec::Nats(spec) = &mut s.pipelines[0].sink else {
            unreachable!("nats_settings has a nats sink")
        };
        spec.tls = Some(NatsTls {
            ca: Some(ca_file),
            cert: Some(client_cert),
            key: Some(client_key),
            required: true,
        });
        let engine = start_engine(s, |b| b).await;
        delivered_once(&nats, &url(&engine), "tls", 1_000).await;
        engine.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_environment_authenticates() {
    const TOKEN: &str = "t0ken-for-the-sluice-test";
    let conf = format!("authorization {{\n  token: \"{TOKEN}\"\n}}\n");
    let connect = || async_nats::ConnectOptions::new().token(TOKEN.into());
    let Some(nats) = NatsServer::launch_with("nats::token", &conf, Box::new(connect)) else {
        return;
    };
    within(async {
        // The engine in a child process, so the variable is set in its
        // environment only (not in this process's, shared by every test).
        let dir = tempfile::tempdir().unwrap();
        let mut s = nats_settings(dir.path(), &nats);
        s.log.filter = "warn".into();
        let SinkSpec::Nats(spec) = &mut s.pipelines[0].sink else {
            unreachable!("nats_settings has a nats sink")
        };
        spec.token_env = Some("SLUICE_TEST_NATS_TOKEN".into());
        let addr = free_port();
        let (config, log) = engine_files(dir.path(), "engine", s, addr);
        let command = || {
            let mut c = engine_child_command("nats::engine_child", &config);
            c.env("SLUICE_TEST_NATS_TOKEN", TOKEN);
            c
        };
        let mut engine =
            tokio::task::block_in_place(|| EngineProcess::start(command, addr.port(), &log));
        delivered_once(&nats, &format!("http://{addr}"), "token", 1_000).await;
        engine.assert_running(&log);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_from_a_file_authenticate_and_a_wrong_one_stalls() {
    let conf =
        "authorization {\n  users = [\n    { user: \"sluice\", password: \"pa55-w0rd\" }\n  ]\n}\n";
    let connect =
        || async_nats::ConnectOptions::new().user_and_password("sluice".into(), "pa55-w0rd".into());
    let Some(nats) = NatsServer::launch_with("nats::password", conf, Box::new(connect)) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let with_password = |password: &str| {
            let mut s = nats_settings(dir.path(), &nats);
            s.server.shutdown_timeout = Duration::from_secs(1);
            let SinkSpec::Nats(spec) = &mut s.pipelines[0].sink else {
                unreachable!("nats_settings has a nats sink")
            };
            spec.user = Some("sluice".into());
            spec.password_file = Some(file(dir.path(), "password", password));
            s
        };
        // A wrong password: the sink cannot connect, a sink-level failure:
        // the source is paused (reason SINK), nothing acked or dead-lettered.
        let engine = start_engine(with_password("wrong"), |b| b).await;
        let (c, events) = events_client(&engine, "wrong").await;
        for i in 1..=10 {
            c.send_payload(payload(i, 60)).await.unwrap();
        }
        wait_for("PAUSE with reason SINK", Duration::from_secs(20), || {
            signals(&events, SignalKind::Pause)
                .iter()
                .any(|(reason, ..)| *reason == SignalReason::Sink)
        })
        .await;
        assert_eq!(c.snapshot().acked, 0);
        assert!(read_jsonl(&dir.path().join("dead")).is_empty());
        drop(c);
        engine.shutdown().await.unwrap();
        // The right one, read from the file.
        let engine = start_engine(with_password("pa55-w0rd\n"), |b| b).await;
        delivered_once(&nats, &url(&engine), "password", 1_000).await;
        engine.shutdown().await.unwrap();
    })
    .await;
}
