//! The commands of the `sluice` binary, as a library so that `demo` and
//! `bench` are testable in-process.
//!
//! The binary (`main.rs`) only parses the command line and calls one of
//! these. Each command is a thin front end over the library crates:
//! [`serve`] over `sluice-engine`, [`send`] over `sluice-client`, [`top`]
//! over the Admin service of `sluice-proto`, [`demo`] and [`bench`](mod@bench) over
//! both the engine and the client.
#![warn(missing_docs)]

pub mod alloc;
pub mod bench;
pub mod demo;
pub mod flags;
mod progress;
mod runtime;
pub mod send;
pub mod serve;
pub mod top;
