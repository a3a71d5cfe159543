//! Generated Rust code for the sluice wire protocol.
//!
//! The protocol is defined once, in `proto/sluice/v1/*.proto` at the root of the
//! repository; this crate holds only what is generated from it at build time by
//! [protox](https://docs.rs/protox) (a protobuf compiler in pure Rust, so no
//! `protoc` is needed) and `tonic-prost-build`.
//!
//! - [`v1`]: the messages (prost), the clients
//!   ([`v1::ingest_client::IngestClient`], [`v1::admin_client::AdminClient`]) and
//!   the server traits ([`v1::ingest_server::Ingest`], [`v1::admin_server::Admin`]).
//! - [`record_size`]: the record size rule of the contract (what a record
//!   counts against byte credits and limits), defined once for the engine,
//!   the clients and the tests.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set of every file, with
//!   comments, for `tonic-reflection`.
//!
//! Read the `.proto` files (or the docs of [`v1`], generated from their
//! comments) for the contract: credits, signals, cumulative acks and rejects.

#![warn(missing_docs)]

mod size;

pub use size::{record_size, size_of_parts};

/// Version 1 of the sluice protocol (protobuf package `sluice.v1`).
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of the sluice protocol files,
/// with source info (comments), to register with `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
