//! The end-to-end tests of sluice, in one test binary: a real engine on
//! 127.0.0.1 (port 0), real gRPC, the Rust source client, raw generated
//! clients and the `sluice` commands in process. The helpers are in the
//! `sluice_tests` library (`tests/src/`).

mod acks;
mod chaos;
mod cli_bench;
mod cli_demo;
mod credit;
mod deploy;
mod flow;
mod group_commit;
mod health_reflection;
mod hostile;
mod memory;
mod message_gate;
mod nats;
mod observe;
mod postgres;
mod rules;
mod security;
mod send_command;
mod sink_contract;
mod smoke;
