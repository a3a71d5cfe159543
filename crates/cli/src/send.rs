//! `sluice send`: stream a file of JSON lines into an engine through the
//! [`SourceClient`].
//!
//! Each non-blank line of the input is one record's payload, sent as it is
//! (bytes unchanged, no key, no attributes). Lines are checked to be JSON
//! first: an invalid line stops the input there — the records before it are
//! still sent and acked — and the command fails with an error naming the line
//! number ([`SendError::InvalidJson`]). Blank lines (only whitespace) are
//! skipped.
//!
//! A progress bar on standard error shows sent and acked records and the
//! flow-control state; it is hidden when standard error is not a terminal.
//! Signals, rejects and reconnects are printed as they arrive (above the bar),
//! and a summary is printed on standard output at the end.

use std::io::IsTerminal;
use std::path::PathBuf;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::flags::ConnectFlags;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use sluice_client::{ClientError, ClientEvent, ClientOptions, SourceClient, Summary};
use sluice_proto::v1::{RejectReason, SignalKind, SignalReason};

/// What `sluice send` is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SendArgs {
    /// Engine address, for example `http://127.0.0.1:50051`.
    pub addr: String,
    /// Source id of the stream.
    pub source_id: String,
    /// Pipeline name; empty selects the engine's default pipeline.
    pub pipeline: String,
    /// Input file of JSON lines; `-` reads standard input.
    pub input: PathBuf,
    /// Client options (unacked window, batch size…).
    pub options: ClientOptions,
    /// Show a progress bar when standard error is a terminal.
    pub progress: bool,
}

impl Default for SendArgs {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:50051".into(),
            source_id: "sluice-send".into(),
            pipeline: String::new(),
            input: PathBuf::from("-"),
            options: ClientOptions::default(),
            progress: true,
        }
    }
}

/// Why `sluice send` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The input cannot be read.
    #[error("cannot read {path}: {source}")]
    Input {
        /// The input path (`-` for standard input).
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not valid JSON; what came before it was sent.
    #[error("line {line} is not valid JSON: {error}; the {sent} records before it were sent")]
    InvalidJson {
        /// Line number, from 1.
        line: u64,
        /// The parser's message.
        error: String,
        /// Records sent before the line.
        sent: u64,
        /// The client's summary of what was sent.
        summary: Box<Summary>,
    },
    /// The client failed to connect or stopped.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Runs `sluice send`: reads the input, streams it, prints progress and a
/// summary, and returns the client's summary (check
/// [`Summary::is_complete`]).
pub async fn run(args: SendArgs) -> Result<Summary, SendError> {
    let path_name = args.input.display().to_string();
    let input_err = |source| SendError::Input {
        path: path_name.clone(),
        source,
    };
    let (reader, total): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) =
        if args.input.as_os_str() == "-" {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let total = count_records(&args.input).await.map_err(input_err)?;
            let file = tokio::fs::File::open(&args.input)
                .await
                .map_err(input_err)?;
            (Box::new(file), Some(total))
        };
    let (client, mut events) =
        SourceClient::connect(&args.addr, &args.source_id, &args.pipeline, args.options).await?;

    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let visible = args.progress && std::io::stderr().is_terminal();
    bar.set_draw_target(if visible {
        ProgressDrawTarget::stderr_with_hz(10)
    } else {
        ProgressDrawTarget::hidden()
    });
    let template = if total.is_some() {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} acked {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} acked {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }

    // Events: printed above the bar (or on stderr when it is hidden).
    let printer = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Some(line) = describe(&event) {
                    if bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        bar.println(line);
                    }
                }
            }
        })
    };
    // Progress: polled ten times a second.
    let ticker = crate::progress::follow(bar.clone(), client.progress(), |p| {
        format!(
            "| sent {} | unacked {} | rejected {} | {}",
            p.sent, p.unacked, p.rejected, p.state
        )
    });

    let mut lines = BufReader::new(reader).lines();
    let mut line_no = 0u64;
    let mut sent = 0u64;
    let mut bad = None;
    let mut read_error = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&line) {
            // serde's message ends with " at line 1 column N" (of the line alone).
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            bad = Some((line_no, format!("{msg} (column {})", e.column())));
            break;
        }
        if let Err(e) = client.send_payload(Bytes::from(line)).await {
            // The client stopped; its summary tells why.
            tracing::debug!(error = %e, "client stopped while sending");
            break;
        }
        sent += 1;
    }

    let summary = client.finish().await;
    ticker.abort();
    bar.set_position(summary.acked);
    bar.finish_and_clear();
    // The event channel closes when the client's task ends.
    let _ = printer.await;
    println!("{}", format_summary(&summary));

    if let Some(e) = read_error {
        return Err(input_err(e));
    }
    if let Some((line, error)) = bad {
        return Err(SendError::InvalidJson {
            line,
            error,
            sent,
            summary: Box::new(summary),
        });
    }
    Ok(summary)
}

/// Counts the non-blank lines of a file (the progress bar's length).
async fn count_records(path: &std::path::Path) -> std::io::Result<u64> {
    let file = tokio::fs::File::open(path).await?;
    let mut lines = BufReader::new(file).lines();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        if !line.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

/// One human-readable line for an event worth showing, `None` for routine ones
/// (credits, acks, the first connection).
pub fn describe(event: &ClientEvent) -> Option<String> {
    match event {
        ClientEvent::Signal(s) => {
            let kind = SignalKind::try_from(s.kind).unwrap_or(SignalKind::Unspecified);
            let reason = SignalReason::try_from(s.reason).unwrap_or(SignalReason::Unspecified);
            let what = match kind {
                SignalKind::SlowDown => "SLOW_DOWN",
                SignalKind::Pause => "PAUSE",
                SignalKind::Resume => "RESUME",
                SignalKind::Unspecified => return None,
            };
            Some(format!(
                "signal {what}: {} at {:.0}%{}",
                reason_name(reason, &s.stage, &s.sink),
                s.utilization * 100.0,
                match s.retry_after_ms {
                    0 => String::new(),
                    ms => format!(", retry after {ms} ms"),
                }
            ))
        }
        ClientEvent::Reject(r) => {
            let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
            Some(format!(
                "reject seq {}..={} ({} records): {} {}",
                r.first_seq,
                (r.first_seq + r.count).saturating_sub(1),
                r.count,
                reason.as_str_name(),
                r.message
            ))
        }
        ClientEvent::Disconnected { error, retry_in } => Some(format!(
            "disconnected ({error}); reconnecting in {retry_in:?}"
        )),
        ClientEvent::Connected { attempt, opened } if *attempt > 0 => Some(format!(
            "reconnected (attempt {attempt}); engine admitted through seq {}, acked through {}",
            opened.admitted_through_seq, opened.acked_through_seq
        )),
        ClientEvent::RecordTooLarge { seq, record } => Some(format!(
            "record seq {seq} ({} bytes) is too large for the engine and was not sent",
            record.payload.len()
        )),
        _ => None,
    }
}

fn reason_name(reason: SignalReason, stage: &str, sink: &str) -> String {
    match reason {
        SignalReason::Sink => format!("sink {sink:?} stalled (stage {stage:?})"),
        SignalReason::Global => "global buffer".into(),
        SignalReason::Stage => format!("stage {stage:?}"),
        SignalReason::Source => "source buffer".into(),
        SignalReason::Memory => "memory gate".into(),
        SignalReason::Shutdown => "engine shutting down".into(),
        SignalReason::Unspecified => "unspecified".into(),
    }
}

/// The summary line printed at the end of `sluice send`.
pub fn format_summary(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.acked as f64 / secs
    } else {
        0.0
    };
    let mut out = format!(
        "sent {} | acked {} | delivered {} | dead-lettered {} | filtered {} | rejected {} | resent {} | reconnects {} | elapsed {:.2}s | {:.0} records/s",
        s.sent,
        s.acked,
        s.delivered,
        s.dead_lettered,
        s.filtered,
        s.rejected,
        s.resent,
        s.reconnects,
        secs,
        rate
    );
    if s.unacked > 0 {
        out.push_str(&format!(" | NOT ACKED {}", s.unacked));
    }
    if s.too_large > 0 {
        out.push_str(&format!(" | too large {}", s.too_large));
    }
    if let Some(e) = &s.error {
        out.push_str(&format!(" | error: {e}"));
    }
    out
}

/// Command-line arguments of `sluice send` (the binary only parses them and
/// calls [`SendCommand::run`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SendCommand {
    /// File of JSON lines, one record payload per line; `-` reads standard input.
    #[arg(value_name = "FILE|-")]
    pub input: PathBuf,
    /// Source id (stable across runs: sequence numbers continue after what
    /// the engine already admitted from it).
    #[arg(long, default_value = "sluice-send")]
    pub source_id: String,
    /// Pipeline name; empty selects the engine's default pipeline.
    #[arg(long, default_value = "")]
    pub pipeline: String,
    /// Most records held unacked by the client.
    #[arg(long, default_value_t = 10_000)]
    pub max_unacked: usize,
    /// Most records per batch (the engine may allow fewer).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Never show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Address, token and TLS.
    #[command(flatten)]
    pub connect: ConnectFlags,
}

impl SendCommand {
    /// Runs the command to its end. Exit code 0 when every record was acked,
    /// 1 when some were not (or the client stopped early), 2 when the input is
    /// unreadable or invalid or the engine cannot be reached.
    pub fn run(self) -> std::process::ExitCode {
        use std::process::ExitCode;
        crate::runtime::init_tracing();
        let runtime = match crate::runtime::runtime("sluice send", ExitCode::from(2)) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        let tls = match self.connect.tls_files() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("sluice send: {e}");
                return ExitCode::from(2);
            }
        };
        let args = SendArgs {
            addr: self.connect.addr,
            source_id: self.source_id,
            pipeline: self.pipeline,
            input: self.input,
            options: ClientOptions {
                max_unacked: self.max_unacked.max(1),
                max_batch_records: self.batch.max(1),
                token: self.connect.token,
                ca_pem: tls.ca_pem,
                identity: tls.identity,
                ..ClientOptions::default()
            },
            progress: !self.no_progress,
        };
        match runtime.block_on(run(args)) {
            Ok(summary) if summary.is_complete() => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!("sluice send: not every record was acked");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("sluice send: {e}");
                ExitCode::from(2)
            }
        }
    }
}
