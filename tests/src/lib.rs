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
//!   [`process`] (a test alone in its own process, engines in
//!   child processes to SIGKILL), [`certs`] (a test CA and its
//!   certificates), [`client`] (the Rust
//!   source client: options, collected events, sending), [`wait`]
//!   (waiting for conditions, an engine's stats), [`external`] (servers and tools a test
//!   needs), [`postgres`] (a throwaway PostgreSQL server), [`nats`] (a real
//!   nats-server with JetStream) and [`nginx`] (a real nginx balancing gRPC).
//!   Everything is re-exported at the root: tests say `use sluice_tests::*`.
//! - one test binary, `tests/tests/e2e/main.rs`, with a module per area:
//!   `flow`, `acks`, `credit`, `chaos`, `hostile`, `observe`, `rules`, `security`, `smoke`,
//!   `sink_contract`, `postgres`, `nats` (with `nats::cluster`, `nats::auth`,
//!   `nats::stream`), `deploy` (the examples of `deploy/`),
//!   `health_reflection`, `send_command`, `cli_demo` and `cli_bench`.
//!
//! The crash test (`crates/cli/tests/crash.rs`) runs the `sluice` binary, so
//! it lives in the package that builds it; it uses this library as a
//! dev-dependency. Unit tests of one crate belong in that crate, not here.

pub mod certs;
pub mod client;
pub mod external;
pub mod nats;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod settings;
pub mod sink_files;
pub mod sinks;
pub mod wait;

pub use sluice_proto as proto;

pub use certs::TestCa;
pub use client::{
    Events, assert_all_delivered, events_client, events_client_at, finish, reconnecting, send_all,
    send_range, signal_readings, signals,
};
pub use external::{REQUIRE_EXTERNAL, external_program, missing};
pub use nats::{NatsServer, StreamMessage, TestConnect, assert_ids_exactly_once};
pub use nginx::{Nginx, nginx_command, nginx_config};
pub use postgres::Postgres;
pub use process::{
    EngineProcess, engine_child_command, in_own_process, log_tail, serve_if_engine_child,
};
pub use proxy::Proxy;
pub use raw::{
    Raw, backlog_msg, batch_msg, batch_of, batch_v2, channel, covers, expect_status, open_msg,
    open_v2, payload, raw_on, raw_stream, release_msg,
};
pub use settings::{file_sink, free_port, staged_settings, start_engine, test_settings, url};
pub use sink_files::{assert_exactly_once, delivered_keys, read_jsonl, seqs_of};
pub use sinks::{Outage, Refuse};
pub use wait::{pipeline_stats, retried, wait_for, within, within_secs};
