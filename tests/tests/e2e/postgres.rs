//! The postgres sink against a real PostgreSQL, started by each test
//! (`sluice_tests::Postgres`; skipped loudly where PostgreSQL is not
//! installed): envelope and columns modes; the engine SIGKILLed mid-stream
//! and restarted while its source resends (each `(source_id, seq)` in the
//! table exactly once, none missing); the database stopped mid-stream and
//! started again (the sources paused and resumed with reason SINK, nothing
//! lost or dead-lettered); bad records dead-lettered with the database's
//! message while the rest of their batch is written; wrong settings named
//! at start-up, an unreachable database named in the stall.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::{ClientOptions, SourceClient};
use sluice_config::{
    ColumnType, PostgresMode, PostgresSinkSpec, PostgresTls, Settings, SinkSpec, Staging,
};
use sluice_engine::EngineBuilder;
use sluice_engine::record::EngineRecord;
use sluice_engine::sink::{PostgresSink, Sink, SinkRecord, Written};
use sluice_proto::v1::{Record, SignalKind, SignalReason};
use sluice_tests::*;

/// Settings of a test engine under `dir` whose sink is `spec`, with sink
/// batches of 200 records and quick retries (1, 5–50 ms).
fn pg_settings(dir: &Path, spec: PostgresSinkSpec) -> Settings {
    let mut s = test_settings(dir);
    s.pipelines[0].sink = SinkSpec::Postgres(Box::new(spec));
    s.pipelines[0].batch.max_records = 200;
    s.retry.max_retries = 1;
    s.retry.initial_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(50);
    s
}

/// Blocking work (starting or stopping the server) inside an async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_mode_writes_each_record_once_with_its_envelope() {
    let Some(pg) = blocking(|| Postgres::start("postgres::envelope_mode")) else {
        return;
    };
    within(async {
        const N: u64 = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(pg_settings(dir.path(), pg.sink("events")), |b| b).await;
        let (client, _events) = events_client(&engine, "env-src").await;
        for i in 1..N {
            // Every other payload is not JSON: it goes to `payload_bytes`.
            if i.is_multiple_of(2) {
                client.send_payload(payload(i, 60)).await.unwrap();
            } else {
                client.send_payload(format!("plain {i}")).await.unwrap();
            }
        }
        let record = Record {
            key: b"k-1".to_vec().into(),
            payload: br#"{"last": true}"#.to_vec().into(),
            attributes: [("region".to_owned(), "eu".to_owned())].into(),
            event_time_ms: 1_764_583_200_000,
        };
        client.send(record).await.unwrap();
        let summary = client.finish().await;
        assert_all_delivered(&summary, N);
        engine.shutdown().await.unwrap();

        assert_exactly_once(&pg.keys("events").await, "env-src", N);
        let c = pg.client().await;
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE payload IS NOT NULL AND payload_bytes IS NULL), \
                        count(*) FILTER (WHERE payload_bytes IS NOT NULL AND payload IS NULL), \
                        count(*) FILTER (WHERE ingested_at IS NOT NULL) FROM events",
                &[],
            )
            .await
            .unwrap();
        let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(counts, (N as i64 / 2, N as i64 / 2, N as i64));
        let row = c
            .query_one(
                "SELECT (a.payload->>'n')::bigint, convert_from(b.payload_bytes, 'UTF8') \
                 FROM events a, events b WHERE a.seq = 10 AND b.seq = 11",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, String>(1)),
            (10, "plain 11".to_owned())
        );
        let row = c
            .query_one(
                "SELECT key, payload->>'last', attributes->>'region', \
                        extract(epoch FROM event_time)::bigint FROM events WHERE seq = $1",
                &[&(N as i64)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, Vec<u8>>(0), b"k-1");
        assert_eq!(row.get::<_, String>(1), "true");
        assert_eq!(row.get::<_, String>(2), "eu");
        assert_eq!(row.get::<_, i64>(3), 1_764_583_200);
    })
    .await;
}

/// Columns mode into a table of the test's own with a CHECK constraint:
/// values that do not convert are refused before anything is sent (naming
/// the column and the value), rows the database refuses are found in their
/// batch (the database's message); both are dead-lettered and the rest of
/// every batch is written, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_mode_dead_letters_bad_records_and_writes_the_rest() {
    let Some(pg) = blocking(|| Postgres::start("postgres::columns_mode")) else {
        return;
    };
    within(async {
        const N: u64 = 1_500;
        let refused_by_db = |i: u64| i.is_multiple_of(50);
        let not_a_number = |i: u64| i.is_multiple_of(77) && !refused_by_db(i);
        pg.execute(
            "CREATE TABLE orders (source_id text NOT NULL, seq bigint NOT NULL, id bigint, \
             status text, total double precision CHECK (total >= 0), at timestamptz, doc jsonb, \
             UNIQUE (source_id, seq))",
        )
        .await;
        let mut spec = pg.sink("orders");
        spec.create_table = false;
        spec.mode = PostgresMode::Columns;
        for (name, ty) in [
            ("id", ColumnType::Bigint),
            ("status", ColumnType::Text),
            ("total", ColumnType::DoublePrecision),
            ("at", ColumnType::Timestamptz),
            ("doc", ColumnType::Jsonb),
        ] {
            spec.columns.insert(name.into(), ty);
        }
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(pg_settings(dir.path(), spec), |b| b).await;
        let (client, _events) = events_client(&engine, "cols-src").await;
        for i in 1..=N {
            let total = if refused_by_db(i) {
                "-1".to_owned()
            } else if not_a_number(i) {
                "\"abc\"".to_owned()
            } else {
                format!("{i}.5")
            };
            let body = format!(
                r#"{{"id":{i},"status":"paid","total":{total},"at":"2026-12-01T10:00:00+01:00","doc":{{"i":{i}}},"other":1}}"#
            );
            client.send_payload(body).await.unwrap();
        }
        let summary = client.finish().await;
        let bad = (1..=N)
            .filter(|&i| refused_by_db(i) || not_a_number(i))
            .count() as u64;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(
            (summary.delivered, summary.dead_lettered),
            (N - bad, bad),
            "{summary:?}"
        );
        engine.shutdown().await.unwrap();

        let dead = read_jsonl(&dir.path().join("dead"));
        assert_eq!(dead.len() as u64, bad);
        for d in &dead {
            let seq = d["seq"].as_u64().unwrap();
            let error = d["error"].as_str().unwrap();
            if refused_by_db(seq) {
                assert!(
                    error.starts_with(
                        "postgres: new row for relation \"orders\" violates check constraint \"orders_total_check\""
                    ) && error.ends_with("(SQLSTATE 23514)"),
                    "{error}"
                );
            } else {
                assert!(not_a_number(seq), "{d}");
                assert_eq!(error, r#"column "total": "abc" is not a double precision"#);
            }
        }
        let keys = pg.keys("orders").await;
        let want: Vec<u64> = (1..=N)
            .filter(|&i| !refused_by_db(i) && !not_a_number(i))
            .collect();
        assert_eq!(seqs_of(&keys, "cols-src"), want, "the rest, each once");
        let row = pg
            .client()
            .await
            .query_one(
                "SELECT id, status, total, extract(epoch FROM at)::bigint, doc->>'i' FROM orders WHERE seq = 7",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 7);
        assert_eq!(row.get::<_, String>(1), "paid");
        assert_eq!(row.get::<_, f64>(2), 7.5);
        assert_eq!(row.get::<_, i64>(3), 1_796_115_600);
        assert_eq!(row.get::<_, String>(4), "7");
    })
    .await;
}

/// The engine process of [`engine_killed_mid_stream_leaves_each_record_once`]
/// (it runs only in the child process that test starts).
#[test]
fn engine_child() {
    serve_if_engine_child();
}

/// SIGKILL of the engine twice mid-stream, restarted on the same port;
/// the source resends what was not acked: each `(source_id, seq)` is in
/// the table exactly once and none is missing (the at-least-once delivery
/// of the file sink's crash test, made exactly once by the table's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_stream_leaves_each_record_once() {
    let Some(pg) = blocking(|| Postgres::start("postgres::engine_killed")) else {
        return;
    };
    within(async {
        const N: u64 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let mut s = pg_settings(dir.path(), pg.sink("events"));
        s.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        s.server.shutdown_timeout = Duration::from_secs(1);
        s.log.filter = "warn".into();
        let config = dir.path().join("engine.toml");
        std::fs::write(&config, s.to_toml_string().unwrap()).unwrap();
        let log = dir.path().join("engine.log");
        let command = || engine_child_command("postgres::engine_child", &config);
        let mut engine = blocking(|| EngineProcess::start(command, port, &log));

        let opts = ClientOptions {
            max_unacked: 4_000,
            max_batch_records: 200,
            connect_timeout: Duration::from_secs(2),
            ..reconnecting(100, Duration::from_millis(20), Duration::from_millis(200))
        };
        let (client, _events) =
            SourceClient::connect(&format!("http://127.0.0.1:{port}"), "crashy-pg", "", opts)
                .await
                .expect("client connects");
        let progress = client.progress();
        let sender = tokio::spawn(async move {
            for i in 1..=N {
                client.send_payload(payload(i, 60)).await.expect("send");
            }
            client.finish().await
        });
        for k in 1..=2 {
            // Killed while records are in flight (sent, not acked).
            wait_for("records in flight", Duration::from_secs(20), || {
                let p = progress.borrow();
                p.acked_through >= k * N / 3 && p.sent > p.acked_through
            })
            .await;
            engine.assert_running(&log);
            blocking(|| engine.kill());
            eprintln!("kill {k}: {:?}", progress.borrow().clone());
            tokio::time::sleep(Duration::from_millis(200)).await;
            engine = blocking(|| EngineProcess::start(command, port, &log));
        }
        let summary = sender.await.expect("client task");
        assert!(summary.is_complete(), "{summary:?}\n{}", log_tail(&log));
        assert_eq!(summary.acked, N, "{summary:?}");
        assert!(summary.reconnects >= 2, "{summary:?}");
        blocking(|| engine.kill());
        assert_exactly_once(&pg.keys("events").await, "crashy-pg", N);
    })
    .await;
}

/// The database stopped for a few seconds mid-stream: the sink stalls
/// (the sources are paused with reason SINK naming the sink, the stall's
/// error names the setting), no retry is spent, nothing is dead-lettered;
/// started again, everything is written once and the sources resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_stalls_the_sink_and_loses_nothing() {
    let Some(mut pg) = blocking(|| Postgres::start("postgres::outage")) else {
        return;
    };
    within(async {
        const N: u64 = 6_000;
        let dir = tempfile::tempdir().unwrap();
        // Every batch through the staging table here (the other tests take
        // the default path), so that both paths live through an outage.
        let mut spec = pg.sink("events");
        spec.staging = Staging::Always;
        let mut s = pg_settings(dir.path(), spec);
        s.retry.max_backoff = Duration::from_millis(300);
        let engine = start_engine(s, |b| b).await;
        let (c, events) = events_client(&engine, "outage-pg").await;
        let c = Arc::new(c);
        let progress = c.progress();
        let sending = send_range(c.clone(), 1..=N);
        wait_for("a quarter acked", Duration::from_secs(20), || {
            progress.borrow().acked_through >= N / 4
        })
        .await;
        blocking(|| pg.stop());
        wait_for("PAUSE with reason SINK", Duration::from_secs(20), || {
            !signals(&events, SignalKind::Pause).is_empty()
        })
        .await;
        let (reason, stage, sink) = signals(&events, SignalKind::Pause).remove(0);
        assert_eq!((reason, stage.as_str()), (SignalReason::Sink, "sink"));
        assert!(sink.starts_with("postgres events at 127.0.0.1:"), "{sink}");
        let h = pipeline_stats(&engine).sink_health.unwrap();
        assert!(h.stalled, "{h:?}");
        assert!(h.error.starts_with("sink.url: "), "{h:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        blocking(|| pg.start_again());

        sending.await;
        let summary = finish(c).await;
        assert_all_delivered(&summary, N);
        assert!(
            signals(&events, SignalKind::Resume)
                .iter()
                .any(|r| r.0 == SignalReason::Sink && r.2 == sink),
            "RESUME ends the SINK episode"
        );
        assert_eq!(retried(&engine), 0, "the outage spends no retry");
        let h = pipeline_stats(&engine).sink_health.unwrap();
        assert!(
            !h.stalled && h.stalls >= 1 && h.records_refused == 0,
            "{h:?}"
        );
        engine.shutdown().await.unwrap();
        assert!(read_jsonl(&dir.path().join("dead")).is_empty());
        assert_exactly_once(&pg.keys("events").await, "outage-pg", N);
    })
    .await;
}

/// A wrong password, a missing table, a table without the unique key: the
/// engine does not start, and says which setting is wrong. A database that
/// is down at start-up is not a wrong setting: the engine starts, the sink
/// stalls naming `sink.url`, and writes once the database is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_settings_are_named_and_a_database_down_at_start_up_is_waited_for() {
    let Some(mut pg) = blocking(|| Postgres::start("postgres::wrong_settings")) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let start_error = |spec: PostgresSinkSpec| {
            let s = pg_settings(dir.path(), spec);
            async move {
                match EngineBuilder::new(s).start().await {
                    Ok(_) => panic!("the engine started"),
                    Err(e) => e.to_string(),
                }
            }
        };
        let wrong = dir.path().join("wrong-password");
        std::fs::write(&wrong, "not-the-password\n").unwrap();
        let mut spec = pg.sink("events");
        spec.password_file = Some(wrong);
        let e = start_error(spec).await;
        assert!(
            e.contains("sink.password_file: password authentication failed for user \"sluice\""),
            "{e}"
        );
        let mut spec = pg.sink("missing");
        spec.create_table = false;
        let e = start_error(spec).await;
        assert!(
            e.contains("sink.table: relation \"missing\" does not exist"),
            "{e}"
        );
        pg.execute("CREATE TABLE plain (source_id text, seq bigint)")
            .await;
        let mut spec = pg.sink("plain");
        spec.create_table = false;
        let e = start_error(spec).await;
        assert!(
            e.contains("sink.table: table \"plain\" has no unique constraint on (source_id, seq)"),
            "{e}"
        );

        blocking(|| pg.stop());
        let mut s = pg_settings(dir.path(), pg.sink("later"));
        s.retry.max_backoff = Duration::from_millis(200);
        let engine = start_engine(s, |b| b).await;
        let (c, _events) = events_client(&engine, "early").await;
        let c = Arc::new(c);
        let sending = send_range(c.clone(), 1..=100);
        wait_for("the stall", Duration::from_secs(20), || {
            pipeline_stats(&engine).sink_health.is_some_and(|h| {
                h.stalled && h.error.starts_with("sink.url: cannot reach the database")
            })
        })
        .await;
        blocking(|| pg.start_again());
        sending.await;
        assert_all_delivered(&finish(c).await, 100);
        engine.shutdown().await.unwrap();
        assert_exactly_once(&pg.keys("later").await, "early", 100);
    })
    .await;
}

/// The ```` ```toml ```` block between the two `marker` lines of the README.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find(marker).expect("the opening marker") + marker.len();
    let section = &readme[start..start + readme[start..].find(marker).expect("the closing marker")];
    let body = section.find("```toml").expect("a toml block") + "```toml".len();
    section[body..body + section[body..].find("```").expect("the block's end")].to_owned()
}

/// The README's PostgreSQL example as written, pointed at a throwaway
/// server by two environment overrides (how a deployment would), loads,
/// validates, creates its table and writes typed rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_loads_and_writes_rows() {
    let Some(pg) = blocking(|| Postgres::start("postgres::the_readme_example")) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, readme_block("<!-- postgres-example -->")).unwrap();
        let env = [
            ("SLUICE__PIPELINES__0__SINK__URL".to_owned(), pg.url()),
            (
                "SLUICE__PIPELINES__0__SINK__PASSWORD_FILE".to_owned(),
                pg.password_file().display().to_string(),
            ),
        ];
        let readme = Settings::load_with_env(Some(&path), env).expect("the README example loads");
        let mut s = test_settings(dir.path());
        s.pipelines = readme.pipelines;
        s.pipelines[0].dead_letter = file_sink(&dir.path().join("dead"), Duration::ZERO, 0.0);
        let engine = start_engine(s, |b| b).await;
        let (c, _events) = SourceClient::connect(&url(&engine), "shop", "orders", ClientOptions::default())
            .await
            .unwrap();
        for i in 1..=10 {
            c.send_payload(format!(
                r#"{{"order_id":{i},"status":"paid","total":{i}.25,"placed_at":"2026-12-01T09:00:00Z","items":[{{"sku":"a"}}]}}"#
            ))
            .await
            .unwrap();
        }
        assert_all_delivered(&c.finish().await, 10);
        engine.shutdown().await.unwrap();
        assert_exactly_once(&pg.keys("public.orders").await, "shop", 10);
        let row = pg
            .client()
            .await
            .query_one(
                "SELECT order_id, status, total, extract(epoch FROM placed_at)::bigint, items->0->>'sku' \
                 FROM public.orders WHERE seq = 3",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 3);
        assert_eq!(row.get::<_, String>(1), "paid");
        assert_eq!(row.get::<_, f64>(2), 3.25);
        assert_eq!(row.get::<_, i64>(3), 1_796_115_600);
        assert_eq!(row.get::<_, String>(4), "a");
    })
    .await;
}

/// A batch written again (its first `COMMIT` went through but the engine
/// never learnt it, or a source resent it) leaves each row once, by either
/// insert path, and a batch that overlaps it writes only its new rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_again_is_in_the_table_once() {
    let Some(pg) = blocking(|| Postgres::start("postgres::a_batch_written_again")) else {
        return;
    };
    within(async {
        let records: Vec<EngineRecord> = (1..=300)
            .map(|i| EngineRecord::from_payload(payload(i, 40)))
            .collect();
        let batch: Vec<SinkRecord<'_>> = (records.iter().zip(1..))
            .map(|(record, seq)| SinkRecord {
                source: "again",
                seq,
                record,
                dead_letter: None,
            })
            .collect();
        for (staging, table) in [(Staging::Fallback, "fallback"), (Staging::Always, "always")] {
            let mut spec = pg.sink(table);
            spec.staging = staging;
            let sink = PostgresSink::connect(&spec).await.expect("sink");
            for part in [&batch[..200], &batch[..200], &batch[100..]] {
                assert_eq!(sink.write(part.into()).await.unwrap(), Written::All);
                sink.commit().await.unwrap();
            }
            assert_exactly_once(&pg.keys(table).await, "again", 300);
        }
    })
    .await;
}

/// TLS to the database (rustls): a server whose certificate the configured
/// CA signed is written to; one signed by another CA stops start-up with a
/// message naming `sink.tls.ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified_against_the_ca() {
    let Some(mut pg) = blocking(|| Postgres::start("postgres::tls")) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("sluice test PostgreSQL CA");
        let (cert, key) = ca.leaf(&["127.0.0.1"], false);
        blocking(|| pg.enable_tls(&cert, &key));
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let mut spec = pg.sink("secure");
        spec.tls = Some(PostgresTls { ca_file });
        let sink = PostgresSink::connect(&spec)
            .await
            .expect("a TLS connection");
        let record = EngineRecord::from_payload(payload(1, 20));
        let batch = [SinkRecord {
            source: "tls",
            seq: 1,
            record: &record,
            dead_letter: None,
        }];
        assert_eq!(sink.write(batch[..].into()).await.unwrap(), Written::All);
        sink.commit().await.unwrap();
        assert_exactly_once(&pg.keys("secure").await, "tls", 1);
        let ssl: bool = pg
            .client()
            .await
            .query_one(
                "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name = 'sluice'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "the sink's sessions use TLS");

        let other = dir.path().join("other-ca.pem");
        std::fs::write(&other, TestCa::new("another CA").pem).unwrap();
        spec.tls = Some(PostgresTls { ca_file: other });
        let e = PostgresSink::connect(&spec).await.unwrap_err().to_string();
        assert!(e.starts_with("sink.tls.ca_file: "), "{e}");
    })
    .await;
}
