//! The generated code encodes and decodes, and the descriptor set for
//! reflection is complete.

use bytes::Bytes;
use prost::Message;
use prost_types::FileDescriptorSet;
use sluice_proto::{
    FILE_DESCRIPTOR_SET,
    v1::{
        Batch, Credit, EngineMessage, Open, Opened, Record, RejectReason, SignalKind,
        SourceMessage, engine_message, source_message,
    },
};

#[test]
fn source_message_roundtrip() {
    let open = SourceMessage {
        body: Some(source_message::Body::Open(Open {
            source_id: "src-1".into(),
            pipeline: "default".into(),
            protocol_version: 2,
            backlog: Some(sluice_proto::v1::Backlog {
                records: 10,
                bytes: 1000,
            }),
            first_unacked_seq: 7,
        })),
    };
    let batch = SourceMessage {
        body: Some(source_message::Body::Batch(Batch {
            first_seq: 1,
            records: vec![
                Record {
                    key: Bytes::from_static(b"k1"),
                    payload: Bytes::from_static(b"hello"),
                    attributes: [("content-type".to_owned(), "text/plain".to_owned())]
                        .into_iter()
                        .collect(),
                    event_time_ms: 1_700_000_000_000,
                },
                Record {
                    payload: Bytes::from(vec![0u8; 1000]),
                    ..Default::default()
                },
            ],
            batch_id: 3,
        })),
    };
    for msg in [open, batch] {
        let buf = msg.encode_to_vec();
        // Decoding from `Bytes` keeps key and payload as slices of the buffer.
        let decoded = SourceMessage::decode(Bytes::from(buf)).expect("decodes");
        assert_eq!(decoded, msg);
    }
}

#[test]
fn engine_message_roundtrip() {
    let msg = EngineMessage {
        body: Some(engine_message::Body::Opened(Opened {
            admitted_through_seq: 41,
            acked_through_seq: 40,
            credit: Some(Credit {
                records: 1024,
                bytes: 1 << 20,
            }),
            max_batch_records: 512,
            max_message_bytes: 4 << 20,
            ..Opened::default()
        })),
    };
    let decoded = EngineMessage::decode(msg.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, msg);
}

#[test]
fn enum_zero_values_are_unspecified() {
    assert_eq!(SignalKind::default(), SignalKind::Unspecified);
    assert_eq!(RejectReason::default(), RejectReason::Unspecified);
    assert_eq!(SignalKind::SlowDown.as_str_name(), "SIGNAL_KIND_SLOW_DOWN");
}

#[test]
fn descriptor_set_names_both_services() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut services: Vec<String> = fds
        .file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service
                .iter()
                .map(move |svc| format!("{package}.{}", svc.name()))
        })
        .collect();
    services.sort();
    assert_eq!(services, ["sluice.v1.Admin", "sluice.v1.Ingest"]);

    // Comments are kept, so reflection clients can show the contract.
    let ingest = fds
        .file
        .iter()
        .find(|f| f.name() == "sluice/v1/ingest.proto")
        .expect("ingest.proto is in the set");
    assert!(ingest.source_code_info.is_some());
}

#[test]
fn service_names_match_generated_servers() {
    assert_eq!(
        sluice_proto::v1::ingest_server::SERVICE_NAME,
        "sluice.v1.Ingest"
    );
    assert_eq!(
        sluice_proto::v1::admin_server::SERVICE_NAME,
        "sluice.v1.Admin"
    );
}
