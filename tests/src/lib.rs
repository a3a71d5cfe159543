//! End-to-end tests for sluice.
//!
//! The tests in this crate start a real engine (the `sluice-engine` library, on
//! a loopback address) and talk to it over gRPC with the generated clients of
//! `sluice-proto`, the way a source in any language would: they open ingest
//! streams, obey credits and signals, and check acks, rejects, dead letters and
//! what the sinks received. Helpers shared by those tests live in this library;
//! the tests themselves are under `tests/`.
//!
//! Unit tests of one crate belong in that crate, not here.

pub use sluice_proto as proto;
