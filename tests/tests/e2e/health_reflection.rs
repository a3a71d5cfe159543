//! gRPC clients against the engine's standard services: server reflection
//! (v1 and v1alpha) and grpc.health.v1, including NOT_SERVING while a
//! graceful shutdown drains.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{Settings, StageSpec, TransformSpec};
use sluice_engine::{EngineBuilder, EngineHandle};
use sluice_proto::v1::{engine_message::Body as EBody, ingest_client::IngestClient};
use sluice_tests::*;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Bound on every single wait in this file.
const WAIT: Duration = Duration::from_secs(5);

/// The names the engine registers with the health service.
const HEALTH_NAMES: [&str; 3] = ["", "sluice.v1.Ingest", "sluice.v1.Admin"];

/// [`staged_settings`] with an identity stage.
fn settings(dir: &Path) -> Settings {
    staged_settings(
        dir,
        vec![StageSpec {
            name: "identity".into(),
            transform: TransformSpec::Identity,
        }],
    )
}

async fn channel(engine: &EngineHandle) -> Channel {
    let endpoint = Endpoint::from_shared(url(engine))
        .unwrap()
        .connect_timeout(WAIT)
        .timeout(WAIT);
    timeout(WAIT, endpoint.connect())
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Just the fields of `google.protobuf.FileDescriptorProto` this test reads
/// (prost skips the others), so no `prost-types` dependency is needed.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorLite {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorLite>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceDescriptorLite {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

fn assert_lists_our_services(names: &[String]) {
    for want in [
        "sluice.v1.Ingest",
        "sluice.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not listed: {names:?}"
        );
    }
}

mod reflect_v1 {
    use super::*;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    /// Sends `requests` on one reflection stream and returns the answers.
    pub(super) async fn ask(
        channel: Channel,
        requests: Vec<MessageRequest>,
    ) -> Vec<MessageResponse> {
        let mut client = ServerReflectionClient::new(channel);
        let n = requests.len();
        let requests = requests.into_iter().map(|r| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r),
        });
        let mut responses = timeout(
            WAIT,
            client.server_reflection_info(tokio_stream::iter(requests)),
        )
        .await
        .expect("reflection call timed out")
        .expect("reflection call failed")
        .into_inner();
        let mut out = Vec::new();
        while out.len() < n {
            let msg = timeout(WAIT, responses.message())
                .await
                .expect("reflection answer timed out")
                .expect("reflection stream failed")
                .expect("reflection stream ended early");
            out.push(msg.message_response.expect("empty reflection answer"));
        }
        out
    }
}

mod reflect_v1alpha {
    use super::*;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    /// The service names listed through v1alpha.
    pub(super) async fn list(channel: Channel) -> Vec<String> {
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = timeout(
            WAIT,
            client.server_reflection_info(tokio_stream::iter([request])),
        )
        .await
        .expect("v1alpha reflection call timed out")
        .expect("v1alpha reflection call failed")
        .into_inner();
        let msg = timeout(WAIT, responses.message())
            .await
            .expect("v1alpha answer timed out")
            .expect("v1alpha stream failed")
            .expect("v1alpha stream ended early");
        match msg.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("expected a ListServicesResponse, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_services_and_serve_descriptors() {
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = timeout(WAIT, EngineBuilder::new(settings(dir.path())).start())
        .await
        .expect("engine start timed out")
        .unwrap();
    let ch = channel(&engine).await;

    let answers = reflect_v1::ask(
        ch.clone(),
        vec![
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("sluice.v1.Ingest".into()),
        ],
    )
    .await;

    let MessageResponse::ListServicesResponse(list) = &answers[0] else {
        panic!("expected a ListServicesResponse, got {:?}", answers[0]);
    };
    let names: Vec<String> = list.service.iter().map(|s| s.name.clone()).collect();
    assert_lists_our_services(&names);

    let MessageResponse::FileDescriptorResponse(fds) = &answers[1] else {
        panic!("expected a FileDescriptorResponse, got {:?}", answers[1]);
    };
    assert!(!fds.file_descriptor_proto.is_empty());
    let files: Vec<FileDescriptorLite> = fds
        .file_descriptor_proto
        .iter()
        .map(|b| <FileDescriptorLite as prost::Message>::decode(b.as_slice()).unwrap())
        .collect();
    let declaring = files
        .iter()
        .find(|f| {
            f.package.as_deref() == Some("sluice.v1")
                && f.service
                    .iter()
                    .any(|s| s.name.as_deref() == Some("Ingest"))
        })
        .unwrap_or_else(|| panic!("no returned file declares sluice.v1.Ingest: {files:?}"));
    assert!(
        declaring
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with(".proto")),
        "{declaring:?}"
    );

    let names = reflect_v1alpha::list(ch).await;
    assert_lists_our_services(&names);

    timeout(Duration::from_secs(10), engine.shutdown())
        .await
        .expect("shutdown timed out")
        .unwrap();
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> Result<i32, tonic::Status> {
    match timeout(
        WAIT,
        health.check(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    {
        Ok(r) => r.map(|r| r.into_inner().status),
        Err(_) => Err(tonic::Status::deadline_exceeded("health check timed out")),
    }
}

#[tokio::test]
async fn health_is_serving_then_not_serving_while_shutdown_drains() {
    const RECORDS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    // 5 records per sink batch, 100 ms per batch: 40 records take ~0.8 s to
    // drain, well inside shutdown_timeout.
    s.pipelines[0].batch.max_records = 5;
    // The 40 records go in one batch, covered by the first credit.
    s.buffer.guaranteed_credit_records = RECORDS;
    let slow = sluice_engine::sink::with_knobs(
        Arc::new(sluice_engine::sink::NullSink),
        Duration::from_millis(100),
        0.0,
    );
    let engine = timeout(WAIT, EngineBuilder::new(s).sink("default", slow).start())
        .await
        .expect("engine start timed out")
        .unwrap();
    let mut health = HealthClient::new(channel(&engine).await);
    for name in HEALTH_NAMES {
        assert_eq!(
            check(&mut health, name).await.unwrap(),
            ServingStatus::Serving as i32,
            "{name:?} after start"
        );
    }
    // The reflection and health services are not registered for health.
    let unknown = check(&mut health, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Push records through a slow sink so the drain takes a while.
    let mut ingest = IngestClient::new(channel(&engine).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(open_msg("src", "")).await.unwrap();
    let mut stream = timeout(WAIT, ingest.stream(ReceiverStream::new(rx)))
        .await
        .expect("open timed out")
        .unwrap()
        .into_inner();
    let opened = timeout(WAIT, stream.message())
        .await
        .expect("no Opened")
        .unwrap()
        .and_then(|m| m.body);
    assert!(
        matches!(opened, Some(EBody::Opened(_))),
        "expected Opened, got {opened:?}"
    );
    tx.send(batch_msg(1, RECORDS, 0)).await.unwrap();
    let buffer = engine.buffer().clone();
    let source = timeout(WAIT, async {
        loop {
            if let Some(id) = buffer.source_id("src")
                && buffer.admitted_through(id).unwrap_or(0) >= RECORDS
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the batch was not admitted");
    assert!(buffer.in_engine() > 0, "the drain would be instant");
    // Keep reading the stream so the engine's sends never block on us.
    let reader = tokio::spawn(async move {
        while let Ok(Ok(Some(_))) = timeout(Duration::from_secs(10), stream.message()).await {}
    });

    let shutdown = tokio::spawn(engine.shutdown());
    let poll_start = tokio::time::Instant::now();
    let seen = timeout(WAIT, async {
        loop {
            match check(&mut health, "").await {
                Ok(st) if st == ServingStatus::NotServing as i32 => {
                    // Observed while records are still in the engine: the
                    // flip happens before the drain, not after it.
                    return Some(buffer.in_engine());
                }
                Ok(st) => assert_eq!(st, ServingStatus::Serving as i32),
                // The server went away before NOT_SERVING was seen.
                Err(status) => panic!("server gone before NOT_SERVING was seen: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("NOT_SERVING was never reported during shutdown");
    let in_engine = seen.unwrap();
    assert!(
        in_engine > 0,
        "NOT_SERVING was only reported after the drain finished"
    );
    assert!(!shutdown.is_finished());
    // Every registered name is NOT_SERVING during the drain.
    for name in HEALTH_NAMES {
        match check(&mut health, name).await {
            Ok(st) => assert_eq!(st, ServingStatus::NotServing as i32, "{name:?}"),
            Err(status) => panic!("{name:?}: {status:?} (drain ended too early?)"),
        }
    }
    assert!(
        buffer.in_engine() > 0,
        "the drain ended before the checks ({:?} polling)",
        poll_start.elapsed()
    );

    let report = timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown timed out")
        .unwrap()
        .unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.undelivered, 0);
    assert_eq!(buffer.admitted_through(source).unwrap(), RECORDS);
    timeout(WAIT, reader)
        .await
        .expect("the ingest stream did not end")
        .unwrap();
    // The server is down: a fresh health check cannot succeed.
    assert!(check(&mut health, "").await.is_err());
}
