//! End-to-end tests for sluice, and the one helper library they share.
//!
//! The tests start a real engine (the `sluice-engine` library, on a loopback
//! address) and talk to it over gRPC with the generated clients of
//! `sluice-proto` and the Rust source client, the way a source in any
//! language would: they open ingest streams, obey credits and signals, and
//! check acks, rejects, dead letters and what the sinks received. The `sluice`
//! commands (`send`, `demo`, `bench`) are tested here too, in process,
//! through the `sluice_cli` library.
//!
//! Layout:
//!
//! - this library (`tests/src/`): the helpers, in [`settings`] (a test
//!   engine's settings and starting it), [`sink_files`] (what a file sink
//!   wrote), [`sinks`] (test sinks: one that refuses chosen records, and
//!   the engine's outage wrapper), [`raw`] (the raw protocol, without the
//!   Rust client), [`proxy`] (a TCP proxy whose connections can be cut),
//!   [`process`] (a test alone in its own process), [`client`] (options of
//!   the Rust source client), [`sources`] (clients whose events are
//!   collected, sending ranges, polling waits), [`external`] (servers and
//!   tools a test needs), [`nats`] (a real nats-server with JetStream),
//!   [`nginx`] (a real nginx balancing gRPC) and [`engine_process`] (an
//!   engine in its own process, to SIGKILL). Everything is re-exported at the root: tests say
//!   `use sluice_tests::*`.
//! - one test binary, `tests/tests/e2e/main.rs`, with a module per area:
//!   `flow`, `chaos`, `hostile`, `observe`, `rules`, `security`, `smoke`, `sink_contract`,
//!   `health_reflection`, `send_command`, `cli_demo`, `cli_bench` and `nats`.
//!
//! The crash test (`crates/cli/tests/crash.rs`) runs the `sluice` binary, so
//! it lives in the package that builds it; it uses this library as a
//! dev-dependency. Unit tests of one crate belong in that crate, not here.

pub mod client;
pub mod engine_process;
pub mod external;
pub mod nats;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod settings;
pub mod sink_files;
pub mod sinks;
pub mod sources;

pub use sluice_proto as proto;

pub use client::reconnecting;
pub use engine_process::{ENGINE_CHILD_TEST, EngineProcess, engine_child};
pub use external::{REQUIRE_EXTERNAL, external_program};
pub use nats::{NatsServer, StreamMessage, assert_ids_exactly_once};
pub use nginx::{Nginx, nginx_config};
pub use process::in_own_process;
pub use proxy::Proxy;
pub use raw::{
    Raw, batch_msg, batch_of, channel, expect_status, open_msg, payload, raw_on, raw_stream,
};
pub use settings::{file_sink, free_port, staged_settings, start_engine, test_settings, url};
pub use sink_files::{assert_exactly_once, delivered_keys, read_jsonl, seqs_of};
pub use sinks::{Outage, Refuse};
pub use sources::{
    Events, assert_all_delivered, client_with_events, finish, send_range, signals, wait_for,
    within, within_secs,
};
