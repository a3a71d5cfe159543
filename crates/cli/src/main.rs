//! The `sluice` command: a thin front end over the sluice crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sluice: an ETL engine for records pushed by remote sources.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Log format, over `log.format` (`text` or `json`); RUST_LOG overrides `log.filter`.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine server.
    Serve {
        /// TOML configuration file; `SLUICE__SECTION__KEY` variables override it.
        #[arg(long, short, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults < file < environment) as TOML,
    /// with the bearer tokens written in it replaced by `<redacted>`.
    Config {
        /// TOML configuration file; `SLUICE__SECTION__KEY` variables override it.
        #[arg(long, short, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Stream a file of JSON lines (or standard input) into an engine.
    Send(sluice_cli::send::SendCommand),
    /// Watch backpressure: an in-process engine with a slow sink and three sources.
    Demo(sluice_cli::demo::DemoCommand),
    /// Live view of a running engine: pipelines, stages, sources, memory gate.
    Top(sluice_cli::top::TopCommand),
    /// Measure end-to-end throughput and ack latency over loopback gRPC.
    Bench(sluice_cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    sluice_cli::alloc::tune();
    let cli = Cli::parse();
    if let Some(f) = &cli.log_format {
        sluice_engine::logging::set_format_override(if f == "json" {
            sluice_config::LogFormat::Json
        } else {
            sluice_config::LogFormat::Text
        });
    }
    match cli.command {
        Command::Serve { config } => sluice_cli::serve::serve(config.as_deref()),
        Command::Config { config } => sluice_cli::serve::print_config(config.as_deref()),
        Command::Send(cmd) => cmd.run(),
        Command::Demo(cmd) => cmd.run(),
        Command::Top(cmd) => cmd.run(),
        Command::Bench(args) => sluice_cli::bench::run(args),
    }
}
