//! What the stream refuses: a subject no stream captures is the record's
//! fault (dead letter, the rest of its batch delivered); a full stream
//! (`max_msgs` with `discard: new`) is the sink's (stall with
//! backpressure, no dead letter) until room is made.

use async_nats::jetstream::stream;
use sluice_proto::v1::Record;

use super::*;

/// The nats sink of `settings`, to change.
fn nats_spec(settings: &mut Settings) -> &mut NatsSinkSpec {
    match &mut settings.pipelines[0].sink {
        SinkSpec::Nats(spec) => spec,
        other => panic!("not a nats sink: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_bound_to_no_stream_is_dead_lettered_and_its_batch_delivered() {
    let Some(nats) = NatsServer::launch("nats::unbound", None) else {
        return;
    };
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = nats_settings(dir.path(), &nats);
        // The subject comes from the key; the stream captures one key's.
        let spec = nats_spec(&mut s);
        spec.subject = "sluice.{key}".into();
        spec.create_stream.as_mut().unwrap().subjects = vec!["sluice.bound".into()];
        // One batch: the stray record and its neighbours.
        s.pipelines[0].batch.linger = Duration::from_millis(200);
        let engine = start_engine(s, |b| b).await;
        let (c, _events) = events_client(&engine, "keys").await;
        for i in 1..=21 {
            let key = if i == 11 { "stray" } else { "bound" };
            let record = Record {
                key: key.as_bytes().to_vec().into(),
                payload: payload(i, 60).to_vec().into(),
                ..Record::default()
            };
            c.send(record).await.unwrap();
        }
        let summary = c.finish().await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!((summary.delivered, summary.dead_lettered), (20, 1));
        let dead = read_jsonl(&dir.path().join("dead"));
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["seq"], 11);
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.contains("sluice.stray is not bound to any stream"),
            "{error}"
        );
        let messages = nats.messages(STREAM).await;
        let expected = (1..=21).filter(|i| *i != 11).map(|i| format!("keys:{i}"));
        assert_ids_exactly_once(&messages, expected);
        assert!(messages.iter().all(|m| m.subject == "sluice.bound"));
        engine.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_stalls_the_sink_until_room_is_made() {
    let Some(nats) = NatsServer::launch("nats::full", None) else {
        return;
    };
    within(async {
        const ROOM: u64 = 1_000;
        const N: u64 = 3_000;
        // The operator's stream (the sink creates none): full at ROOM
        // messages, and then it refuses new ones.
        let mut config = stream::Config {
            name: STREAM.into(),
            subjects: vec!["sluice.>".into()],
            max_messages: ROOM as i64,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let js = nats.jetstream().await;
        js.create_stream(config.clone())
            .await
            .expect("stream created");
        let dir = tempfile::tempdir().unwrap();
        let mut s = nats_settings(dir.path(), &nats);
        nats_spec(&mut s).create_stream = None;
        let engine = start_engine(s, |b| b).await;
        let (c, events) = events_client_at(&url(&engine), "full", patient()).await;
        let c = Arc::new(c);
        let sending = tokio::spawn(send_range(c.clone(), 1..=N));
        paused_by_the_sink(&events).await;
        // Stalled: nothing more is acked, nothing is dead-lettered, the
        // stream holds what fitted.
        let progress = c.progress();
        let before = progress.borrow().acked;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            progress.borrow().acked,
            before,
            "acks while the stream is full"
        );
        assert!(before <= ROOM, "{before} acked, room for {ROOM}");
        assert!(read_jsonl(&dir.path().join("dead")).is_empty());
        let mut full = js.get_stream(STREAM).await.unwrap();
        assert_eq!(full.info().await.unwrap().state.messages, ROOM);
        // Room is made: the sink resumes by itself.
        config.max_messages = -1;
        js.update_stream(&config).await.expect("stream updated");
        sending.await.unwrap();
        let summary = finish(c).await;
        assert_recovered_from_a_stall(&nats, dir.path(), &events, &summary, "full", N).await;
        engine.shutdown().await.unwrap();
    })
    .await;
}
