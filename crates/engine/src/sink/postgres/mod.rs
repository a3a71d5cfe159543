//! The `postgres` sink: records into a PostgreSQL table, exactly once.
//!
//! Each sink batch is one transaction: its records are converted first
//! (`row`: a value that does not convert refuses its record alone), then
//! `COPY … (FORMAT binary)` into the table, or through a per-connection
//! staging table with `INSERT … SELECT … ON CONFLICT (source_id, seq) DO
//! NOTHING` (`copy`); [`commit`](crate::sink::Sink::commit) returns only
//! after `COMMIT`. The table's unique `(source_id, seq)` makes a batch
//! written again (after an engine crash, a source's resend, a lost
//! `COMMIT` reply, another engine) harmless: each key is in the table once.
//! A record the database refuses (SQLSTATE classes 22 and 23) is found by
//! bisection in savepoints and refused with the database's message; the
//! rest of its batch is written. Every other failure (the server
//! unreachable, the login refused, a lost connection, a timeout, a missing
//! table) is sink-level, named by its setting (`error`): the stage
//! stalls until the database is back.
//!
//! The parts: [`sink`](PostgresSink) (the trait, transactions, start-up),
//! `connect` (settings to a bounded pool, TLS), `layout` (each mode's
//! columns and SQL, the table's check), `row` (records to values),
//! `copy` (the insert paths and the bisection), `error` (what a database
//! error means).

mod connect;
mod copy;
mod error;
mod layout;
mod row;
mod sink;

pub use sink::PostgresSink;
