//! `sluice top`: a live terminal view of a running engine, refreshed every
//! second from `Admin.Stats`.
//!
//! The view is built by a pure function, [`view`], from the latest and the
//! previous [`StatsResponse`] (rates are computed from the two snapshots'
//! uptimes), so it is tested without a terminal. Every line fits in
//! [`WIDTH`] columns. `q`, `Esc` or `Ctrl-C` quits; the terminal is restored
//! on every exit path (a panic too: ratatui's panic hook).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use sluice_proto::v1::{SourceState, StatsRequest, StatsResponse, admin_client::AdminClient};

/// Columns the view is laid out for.
pub const WIDTH: usize = 80;

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// `sluice top`: watch pipelines, stages, sources and the memory gate live.
#[derive(Debug, Clone, clap::Args)]
pub struct TopCommand {
    /// Address, token and TLS.
    #[command(flatten)]
    pub connect: crate::flags::ConnectFlags,
}

impl TopCommand {
    /// Runs the view until `q`, `Esc` or `Ctrl-C`. Exit code 1 when the
    /// engine cannot be reached at start or the terminal fails.
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("sluice top: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = self.connect.addr.clone();
        let tls = match self.connect.tls_files() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("sluice top: {e}");
                return ExitCode::FAILURE;
            }
        };
        let client = runtime.block_on(async {
            let mut endpoint = tonic::transport::Endpoint::from_shared(addr.clone())?;
            if tls.ca_pem.is_some() || tls.identity.is_some() {
                let tls =
                    sluice_client::tls::client_tls(tls.ca_pem.as_deref(), tls.identity.as_ref());
                endpoint = endpoint.tls_config(tls)?;
            }
            Ok::<_, tonic::transport::Error>(AdminClient::new(endpoint.connect().await?))
        });
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sluice top: cannot connect to {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let terminal = match ratatui::try_init() {
            Ok(t) => t,
            Err(e) => {
                ratatui::restore();
                eprintln!("sluice top: cannot set up the terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = run_loop(
            &runtime,
            client,
            terminal,
            &addr,
            self.connect.token.as_deref(),
        );
        ratatui::restore();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice top: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

fn run_loop(
    runtime: &tokio::runtime::Runtime,
    mut client: AdminClient<tonic::transport::Channel>,
    mut terminal: ratatui::DefaultTerminal,
    addr: &str,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut current: Option<StatsResponse> = None;
    let mut previous: Option<StatsResponse> = None;
    loop {
        let fetched = runtime.block_on(async {
            let mut request = tonic::Request::new(StatsRequest {});
            if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
                request.metadata_mut().insert("authorization", value);
            }
            tokio::time::timeout(Duration::from_secs(2), client.stats(request)).await
        });
        let error = match fetched {
            Ok(Ok(resp)) => {
                previous = current.replace(resp.into_inner());
                None
            }
            Ok(Err(status)) => Some(format!(
                "{}: {}",
                code_name(status.code()),
                status.message()
            )),
            Err(_) => Some("Stats timed out".to_owned()),
        };
        let lines = view(addr, current.as_ref(), previous.as_ref(), error.as_deref());
        terminal.draw(|f| f.render_widget(Paragraph::new(lines), f.area()))?;
        let next = Instant::now() + REFRESH;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if event::poll(left)?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let ctrl_c =
                    k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
                if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return Ok(());
                }
            }
        }
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Truncates `s` to `w` characters (with `…` when cut).
fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A bar of `w` cells filled to `frac` (0–1).
fn bar(frac: f64, w: usize) -> String {
    let filled = ((frac.clamp(0.0, 1.0) * w as f64).round() as usize).min(w);
    "█".repeat(filled) + &"░".repeat(w - filled)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

fn util_style(u: f64) -> Style {
    let c = if u >= 0.9 {
        Color::Red
    } else if u >= 0.7 {
        Color::Yellow
    } else {
        Color::Green
    };
    Style::default().fg(c)
}

fn heading(s: &str) -> Line<'static> {
    Line::styled(
        s.to_owned(),
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    )
}

/// The lines of the view for `current` (and `previous`, for rates); every
/// line is at most [`WIDTH`] columns wide. `error` is the last refresh's
/// failure, shown under the title.
pub fn view(
    addr: &str,
    current: Option<&StatsResponse>,
    previous: Option<&StatsResponse>,
    error: Option<&str>,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let up = current.map_or_else(|| "-".to_owned(), |s| uptime(s.uptime_ms));
    let draining = if current.is_some_and(|s| s.draining) {
        " DRAINING"
    } else {
        ""
    };
    let title = format!("sluice top  up {up}{draining}  {addr}");
    lines.push(Line::from(vec![
        Span::styled(
            format!("{:<67}", fit(&title, 66)),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw("q/Ctrl-C quit"),
    ]));
    if let Some(e) = error {
        lines.push(Line::styled(
            fit(&format!("error: {e}"), WIDTH),
            Style::default().fg(Color::Red),
        ));
    }
    let Some(s) = current else {
        lines.push(Line::raw("waiting for the first snapshot…"));
        return lines;
    };
    if let Some(g) = &s.global {
        lines.push(Line::from(vec![
            Span::raw("global  "),
            Span::styled(bar(g.utilization, 20), util_style(g.utilization)),
            Span::raw(fit(
                &format!(
                    " {:>5.1}%  {}/{} rec  {}/{}",
                    g.utilization * 100.0,
                    count(g.records),
                    count(g.limit_records),
                    bytes(g.bytes),
                    bytes(g.limit_bytes)
                ),
                WIDTH - 28,
            )),
        ]));
    }
    if let Some(m) = &s.memory {
        let (gate, style) = match (m.enabled, m.closed) {
            (false, _) => ("off", Style::default()),
            (true, false) => ("open", Style::default().fg(Color::Green)),
            (true, true) => ("CLOSED", Style::default().fg(Color::Red)),
        };
        lines.push(Line::from(vec![
            Span::raw("memory  gate "),
            Span::styled(format!("{gate:<6}"), style),
            Span::raw(fit(
                &format!(
                    " {} {}/{} ({:.1}%)  closes {:.0}%  reopens {:.0}%",
                    m.measured,
                    bytes(m.used_bytes),
                    bytes(m.limit_bytes),
                    m.percent,
                    m.activate_percent,
                    m.resume_percent
                ),
                WIDTH - 19,
            )),
        ]));
    }

    lines.push(heading(&format!("{:<80}", " PIPELINES")));
    for p in &s.pipelines {
        let def = if p.is_default { "*" } else { " " };
        let text = format!(
            "{def}{:<14} {}  → {}",
            fit(&p.name, 14),
            p.stages.join(" → "),
            p.sink
        );
        lines.push(Line::raw(fit(&text, WIDTH)));
        for (what, h) in [
            ("sink", &p.sink_health),
            ("dead-letter sink", &p.dead_letter_health),
        ] {
            let Some(h) = h.as_ref().filter(|h| h.stalled) else {
                continue;
            };
            let text = format!(
                "  {what} STALLED {}  ({} failures): {}",
                uptime(h.stalled_ms),
                count(h.failures),
                h.error
            );
            lines.push(Line::styled(
                fit(&text, WIDTH),
                Style::default().fg(Color::Red),
            ));
        }
    }

    lines.push(heading(&format!(
        "{:<80}",
        format!(
            " {:<10} {:<12} {:>7} {:<12} {:>6} {:>6} {:>6}",
            "PIPELINE", "STAGE", "QUEUE", "UTILIZATION", "", "BUSY%", "BP%"
        )
    )));
    for st in &s.stages {
        let u = st.level.as_ref().map_or(0.0, |l| l.utilization);
        lines.push(Line::from(vec![
            Span::raw(format!(
                " {:<10} {:<12} {:>7} ",
                fit(&st.pipeline, 10),
                fit(&st.name, 12),
                count(st.queued)
            )),
            Span::styled(bar(u, 12), util_style(u)),
            Span::raw(format!(
                " {:>5.1}% {:>6.1} {:>6.1}",
                u * 100.0,
                st.busy_ms_per_s / 10.0,
                st.backpressured_ms_per_s / 10.0
            )),
        ]));
    }

    lines.push(heading(&format!(
        "{:<80}",
        format!(
            " {:<14} {:<10} {:<7} {:>9} {:>10} {:>20}",
            "SOURCE", "PIPELINE", "STATE", "CREDITS", "RATE/S", "ACKED"
        )
    )));
    let dt = previous
        .filter(|p| s.uptime_ms > p.uptime_ms)
        .map(|p| (p, (s.uptime_ms - p.uptime_ms) as f64 / 1000.0));
    for src in &s.sources {
        let state = SourceState::try_from(src.state).unwrap_or(SourceState::Unspecified);
        let (name, style) = match state {
            SourceState::Normal => ("normal", Style::default().fg(Color::Green)),
            SourceState::Slowed => ("slowed", Style::default().fg(Color::Yellow)),
            SourceState::Paused => ("PAUSED", Style::default().fg(Color::Red)),
            SourceState::Closed => ("closed", Style::default().fg(Color::DarkGray)),
            SourceState::Unspecified => ("?", Style::default()),
        };
        let rate = dt
            .and_then(|(p, secs)| {
                p.sources
                    .iter()
                    .find(|o| o.source_id == src.source_id)
                    .map(|o| src.received.saturating_sub(o.received) as f64 / secs)
            })
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        lines.push(Line::from(vec![
            Span::raw(format!(
                " {:<14} {:<10} ",
                fit(&src.source_id, 14),
                fit(&src.pipeline, 10)
            )),
            Span::styled(format!("{name:<7}"), style),
            Span::raw(format!(
                " {:>9} {:>10} {:>20}",
                fit(&count(src.credits_outstanding_records), 9),
                fit(&rate, 10),
                src.acked_through_seq
            )),
        ]));
    }
    if s.sources.is_empty() {
        lines.push(Line::raw(" (no sources yet)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use sluice_proto::v1::{LevelStats, MemoryStats, PipelineStats, SourceStats, StageStats};

    fn level(u: f64) -> Option<LevelStats> {
        Some(LevelStats {
            records: 123_456,
            bytes: 987_654_321,
            limit_records: 1_000_000,
            limit_bytes: 4 << 30,
            utilization: u,
            ..LevelStats::default()
        })
    }

    fn stats(uptime_ms: u64, received: u64) -> StatsResponse {
        StatsResponse {
            uptime_ms,
            draining: true,
            global: level(0.42),
            pipelines: vec![PipelineStats {
                name: "a-very-long-pipeline-name-indeed".into(),
                is_default: true,
                stages: vec![
                    "parse".into(),
                    "enrich-with-a-long-name".into(),
                    "sink".into(),
                ],
                sink: "file ./sluice-data/a/very/long/path/to/the/output/file.jsonl".into(),
                dead_letter: "file dl.jsonl".into(),
                sink_health: Some(sluice_proto::v1::SinkHealth {
                    stalled: true,
                    error: "./sluice-data/x/records-3.jsonl: No such file or directory (os error 2) and then some more words".into(),
                    stalled_ms: 12_000,
                    failures: 7,
                    ..Default::default()
                }),
                dead_letter_health: None,
            }],
            stages: vec![StageStats {
                pipeline: "a-very-long-pipeline-name-indeed".into(),
                name: "enrich-with-a-long-name".into(),
                index: 1,
                level: level(0.95),
                queued: 99_999_999_999,
                in_flight: 3,
                busy_ms_per_s: 1000.0,
                idle_ms_per_s: 0.0,
                backpressured_ms_per_s: 1000.0,
            }],
            sources: vec![SourceStats {
                source_id: "source-with-a-very-long-identifier".into(),
                pipeline: "a-very-long-pipeline-name-indeed".into(),
                state: SourceState::Paused as i32,
                connected: true,
                credits_outstanding_records: u64::MAX,
                acked_through_seq: u64::MAX,
                received,
                level: level(0.5),
                ..Default::default()
            }],
            memory: Some(MemoryStats {
                enabled: true,
                closed: true,
                used_bytes: u64::MAX,
                limit_bytes: u64::MAX,
                percent: 100.0,
                activate_percent: 90.0,
                resume_percent: 80.0,
                measured: "process".into(),
            }),
        }
    }

    fn text(line: &Line<'_>) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    #[test]
    fn every_line_fits_80_columns_even_with_long_names_and_huge_numbers() {
        let prev = stats(1_000, 0);
        let cur = stats(3_000, 5_000);
        let addr = "http://a-very-long-host-name.example.invalid:50051/and/more";
        let lines = view(addr, Some(&cur), Some(&prev), Some(&"x".repeat(200)));
        assert!(lines.len() > 8);
        for l in &lines {
            assert!(l.width() <= WIDTH, "{} columns: {:?}", l.width(), text(l));
        }
        let all: Vec<String> = lines.iter().map(text).collect();
        assert!(all.iter().any(|l| l.contains("PAUSED")));
        assert!(all.iter().any(|l| l.contains("2500.0")), "{all:#?}"); // rate
        assert!(all.iter().any(|l| l.contains("CLOSED")));
        assert!(all.iter().any(|l| l.contains("DRAINING")));
        assert!(
            all.iter()
                .any(|l| l.contains("sink STALLED 0h00m12s  (7 failures): ./sluice-data")),
            "{all:#?}"
        );
    }

    #[test]
    fn renders_on_an_80_column_terminal() {
        let cur = stats(2_000, 10);
        let mut terminal = Terminal::new(TestBackend::new(80, 30)).unwrap();
        terminal
            .draw(|f| {
                f.render_widget(
                    Paragraph::new(view("http://127.0.0.1:50051", Some(&cur), None, None)),
                    f.area(),
                )
            })
            .unwrap();
        let buf = terminal.backend().buffer();
        let rows: Vec<String> = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect()
            })
            .collect();
        assert!(rows[0].starts_with("sluice top  up 0h00m02s DRAINING  http://127.0.0.1:50051"));
        assert!(rows[0].trim_end().ends_with("q/Ctrl-C quit"));
        assert!(rows.iter().any(|r| r.contains("source-with-a…")));
        assert!(rows.iter().any(|r| r.contains("STAGE")));
    }

    #[test]
    fn waiting_view_without_a_snapshot() {
        let lines = view(
            "http://x",
            None,
            None,
            Some("Unavailable: connection refused"),
        );
        assert_eq!(lines.len(), 3);
        assert!(text(&lines[1]).contains("connection refused"));
    }

    #[test]
    fn helpers() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(2.0, 2), "██");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(uptime(3_723_000), "1h02m03s");
    }
}
