//! sluice-engine: the server and pipeline runtime of the sluice ETL engine;
//! under construction.
//!
//! For now it only re-exports the settings it will run from.
#![warn(missing_docs)]

pub use sluice_config as config;
