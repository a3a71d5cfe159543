//! Credit, flow control version 2: the guaranteed share and floating
//! credit (idle streams hold little), leases with revoke and release, an
//! outcome for every batch with a gap told once, resuming without a reject
//! after a restart or on another engine, and paced credit (a compliant
//! source into a slow sink gets no signals: `flow.rs`). Raw generated clients for the
//! exact messages, the Rust client for the whole contract.

use std::time::Duration;

use sluice_client::ClientOptions;
use sluice_config::Settings;
use sluice_proto::v1::engine_message::Body;
use sluice_proto::v1::{BatchOutcome, Credit, RejectReason};
use sluice_tests::*;

/// Reads `raw` until a message `pick` accepts (each within 5 s).
async fn until<T>(raw: &mut Raw, mut pick: impl FnMut(&Body) -> Option<T>) -> T {
    loop {
        let body = raw
            .next_within(Duration::from_secs(5))
            .await
            .expect("no error status")
            .expect("the stream is open");
        if let Some(t) = pick(&body) {
            return t;
        }
    }
}

/// The next batch outcome on `raw`.
async fn outcome(raw: &mut Raw) -> BatchOutcome {
    until(raw, |b| match b {
        Body::Outcome(o) => Some(o.clone()),
        Body::Reject(r) => panic!("a version-2 stream gets outcomes, not rejects: {r:?}"),
        _ => None,
    })
    .await
}

fn credit(c: &Option<Credit>) -> (u64, u64) {
    c.as_ref().map_or((0, 0), |c| (c.records, c.bytes))
}

#[tokio::test]
async fn a_thousand_idle_streams_hold_only_their_guaranteed_share() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.buffer.credit_window_records = Settings::default().buffer.credit_window_records;
        let guaranteed = s.buffer.guaranteed_credit_records;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        // 1,000 streams that open and send nothing, ten channels of 100
        // (HTTP/2 limits concurrent streams per connection).
        let mut idle = Vec::new();
        for c in 0..10 {
            let ch = channel(&addr).await;
            for i in 0..100 {
                let name = format!("idle-{c}-{i}");
                let mut raw = raw_on(ch.clone(), open_msg(&name, ""), None)
                    .await
                    .expect("opens");
                let opened = raw.opened().await.expect("Opened");
                let (records, _) = credit(&opened.credit);
                assert!(
                    records <= guaranteed,
                    "an idle stream holds at most its guaranteed share: {opened:?}"
                );
                assert_eq!(opened.guaranteed.map(|g| g.records), Some(guaranteed));
                idle.push(raw);
            }
        }
        let reserved = engine.buffer().snapshot().global.reserved_records;
        assert!(
            reserved <= 1_000 * guaranteed,
            "idle streams reserve {reserved} records"
        );
        // A busy source of the same pipeline gets its whole window and
        // finishes without a reject.
        let n = 20_000;
        let (summary, _) = send_all(&addr, "busy", n, 100, ClientOptions::default()).await;
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.rejected, 0, "{summary:?}");
        drop(idle);
        engine.shutdown().await.unwrap();
        assert_exactly_once(&delivered_keys(&dir.path().join("sink")), "busy", n);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn unused_floating_credit_is_revoked_and_a_batch_on_the_wire_is_still_admitted() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.buffer.credit_lease = Duration::from_millis(200);
        let guaranteed = s.buffer.guaranteed_credit_records;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_stream(&addr, open_v2("leased", 500, 100, 0))
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        assert_eq!(opened.protocol_version, 2);
        assert_eq!(opened.credit_lease_ms, 200);
        let (records, _) = credit(&opened.credit);
        assert!(
            records > guaranteed && records <= 500,
            "the announced backlog gets floating credit with Opened: {opened:?}"
        );
        // Nothing is sent for longer than the lease: the floating part is
        // asked back.
        let revoke = until(&mut raw, |b| match b {
            Body::Revoke(r) => Some(*r),
            _ => None,
        })
        .await;
        assert_eq!(revoke.records, records - guaranteed, "{revoke:?}");
        // A batch the source sent before it read the revoke is covered: the
        // engine keeps the reservation until the release.
        raw.must_send(batch_v2(1, 1, records, 100)).await;
        let o = outcome(&mut raw).await;
        assert_eq!((o.batch_id, o.admitted, o.reject), (1, records, None));
        // The source had nothing left to give back.
        raw.must_send(release_msg(revoke.revoke_id, 0, 0)).await;
        // Announcing a backlog again brings credit.
        raw.must_send(backlog_msg(100, 100 * 100)).await;
        until(&mut raw, |b| matches!(b, Body::Credit(_)).then_some(())).await;
        let acked = raw.finish().await;
        assert_eq!(acked, records);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_released_revoke_returns_the_capacity() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = test_settings(dir.path());
        s.buffer.credit_lease = Duration::from_millis(100);
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        let mut raw = raw_stream(&addr, open_v2("releasing", 800, 100, 0))
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        let held = credit(&opened.credit);
        let revoke = until(&mut raw, |b| match b {
            Body::Revoke(r) => Some(*r),
            _ => None,
        })
        .await;
        let before = engine.buffer().snapshot().global.reserved_records;
        assert_eq!(before, held.0);
        raw.must_send(release_msg(revoke.revoke_id, revoke.records, revoke.bytes))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = engine.buffer().snapshot().global.reserved_records;
            if now == held.0 - revoke.records {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the release did not return the capacity: {now} records reserved"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(raw);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn every_batch_gets_an_outcome_and_a_gap_is_told_once() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(test_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        // No backlog announced: only the guaranteed share.
        let mut raw = raw_stream(&addr, open_v2("gappy", 0, 100, 0))
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        let (records, _) = credit(&opened.credit);
        // Batch 1 asks for more than its credit; batches 2 and 3 were sent
        // before the source could read the answer.
        raw.must_send(batch_v2(1, 1, records + 10, 100)).await;
        raw.must_send(batch_v2(2, records + 11, 5, 100)).await;
        raw.must_send(batch_v2(3, records + 16, 5, 100)).await;
        let first = outcome(&mut raw).await;
        assert_eq!((first.batch_id, first.admitted), (1, records));
        let r = first.reject.expect("the tail is rejected");
        assert_eq!(r.reason, RejectReason::NoCredit as i32, "{r:?}");
        assert_eq!(r.admitted_through_seq, records);
        assert!(r.message.contains("\"gappy\""), "names the source: {r:?}");
        for id in [2, 3] {
            let o = outcome(&mut raw).await;
            assert_eq!(o.batch_id, id);
            let r = o.reject.expect("after the gap");
            assert_eq!(
                r.reason,
                RejectReason::FollowsReject as i32,
                "told once, then 'follows': {r:?}"
            );
        }
        drop(raw);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_resend_to_a_restarted_engine_far_past_the_unacked_limit_is_not_rejected() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let s = test_settings(dir.path());
        let limit = s.server.max_unacked_per_session;
        let engine = start_engine(s, |b| b).await;
        let addr = url(&engine);
        // A version-1 source that had 3 × the limit acked by the engine
        // before it was killed resends from its first unacked record.
        let first = 3 * limit + 1;
        let mut raw = raw_stream(&addr, open_msg("restarted", "")).await.unwrap();
        let opened = raw.opened().await.unwrap();
        let (records, _) = credit(&opened.credit);
        raw.must_send(batch_msg(first, records, 100)).await;
        let (ack, rejects) = raw
            .until_ack(first + records - 1, Duration::from_secs(5))
            .await;
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(ack.through_seq, first + records - 1);
        drop(raw);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_source_that_moved_to_another_engine_and_back_resumes_without_a_gap() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = start_engine(test_settings(dir.path()), |b| b).await;
        let addr = url(&engine);
        // Records 1..=10 here, acked.
        let mut raw = raw_stream(&addr, open_msg("mover", "")).await.unwrap();
        raw.opened().await.unwrap();
        raw.must_send(batch_msg(1, 10, 100)).await;
        assert_eq!(raw.finish().await, 10);
        // 11..=100 went to another replica and were acked there. Back here,
        // a version-1 stream starts at 101 ...
        let mut raw = raw_stream(&addr, open_msg("mover", "")).await.unwrap();
        assert_eq!(raw.opened().await.unwrap().admitted_through_seq, 10);
        raw.must_send(batch_msg(101, 10, 100)).await;
        let (ack, rejects) = raw.until_ack(110, Duration::from_secs(5)).await;
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(ack.through_seq, 110);
        raw.finish().await;
        // ... and a version-2 one says where it resumes in `Open`.
        let mut raw = raw_stream(&addr, open_v2("mover", 10, 100, 201))
            .await
            .unwrap();
        let opened = raw.opened().await.unwrap();
        assert_eq!(
            (opened.admitted_through_seq, opened.acked_through_seq),
            (200, 200)
        );
        raw.must_send(batch_v2(1, 201, 10, 100)).await;
        let o = outcome(&mut raw).await;
        assert_eq!((o.admitted, o.reject), (10, None));
        assert_eq!(raw.finish().await, 210);
        engine.shutdown().await.unwrap();
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn the_client_reconnecting_to_a_restarted_engine_sees_no_reject() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let at = free_port();
        let settings = || {
            let mut s = test_settings(dir.path());
            s.server.listen = at;
            s
        };
        let engine = start_engine(settings(), |b| b).await;
        let addr = url(&engine);
        let opts = reconnecting(50, Duration::from_millis(20), Duration::from_millis(100));
        let (client, mut events) = sluice_client::SourceClient::connect(&addr, "restart", "", opts)
            .await
            .expect("connects");
        let n = 6_000u64;
        let sender = tokio::spawn(async move {
            for i in 1..=n {
                client.send_payload(payload(i, 100)).await.expect("send");
            }
            client.finish().await
        });
        // Stop the engine mid-stream and start another on the same port.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let acked = |e: &sluice_engine::EngineHandle| {
            e.buffer()
                .source_id("restart")
                .map_or(0, |id| e.acks().progress(id).through_seq)
        };
        while acked(&engine) < n / 3 {
            assert!(tokio::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        engine.shutdown().await.unwrap();
        let engine = start_engine(settings(), |b| b).await;
        let summary = sender.await.unwrap();
        let mut rejects = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let sluice_client::ClientEvent::Reject(r) = e {
                rejects.push(r);
            }
        }
        assert!(summary.is_complete(), "{summary:?}");
        assert_eq!(summary.rejected, 0, "{summary:?} {rejects:?}");
        engine.shutdown().await.unwrap();
        let keys = delivered_keys(&dir.path().join("sink"));
        assert_exactly_once(&keys, "restart", n);
    })
    .await
    .expect("in time");
}
