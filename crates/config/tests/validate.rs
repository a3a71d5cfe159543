//! Validation: each rule, with its message, and all problems at once.

use std::io::Write;
use std::time::Duration;

use sluice_config::{
    ConfigError, FilterOp, PipelineSpec, Settings, SinkSpec, StageSpec, TransformSpec,
    ValidationErrors,
};

/// The messages of `s`'s problems.
fn problems(s: &Settings) -> Vec<String> {
    match s.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(|e| e.message.clone()).collect(),
    }
}

/// Asserts that `s` has exactly the one problem `message`, about `key`.
#[track_caller]
fn only(s: &Settings, key: &str, message: &str) {
    let errors: ValidationErrors = s.validate().expect_err("expected a problem");
    let all: Vec<_> = errors
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(all, vec![(key, message)]);
}

/// Asserts that the default settings, changed by `change`, have exactly the
/// one problem `message`, about `key`.
#[track_caller]
fn only_after(change: impl FnOnce(&mut Settings), key: &str, message: &str) {
    let mut s = Settings::default();
    change(&mut s);
    only(&s, key, message);
}

#[test]
fn defaults_are_valid() {
    assert!(problems(&Settings::default()).is_empty());
}

#[test]
fn low_watermark_must_be_below_high() {
    let mut s = Settings::default();
    s.buffer.low_watermark = 0.9;
    only(
        &s,
        "buffer.low_watermark",
        "buffer.low_watermark (0.9) must be below buffer.high_watermark (0.8)",
    );
    s.buffer.low_watermark = 0.8;
    only(
        &s,
        "buffer.low_watermark",
        "buffer.low_watermark (0.8) must be below buffer.high_watermark (0.8)",
    );
}

#[test]
fn watermarks_must_be_fractions() {
    only_after(
        |s| s.buffer.high_watermark = 1.5,
        "buffer.high_watermark",
        "buffer.high_watermark (1.5) must be in (0, 1]",
    );
    only_after(
        |s| s.buffer.low_watermark = 0.0,
        "buffer.low_watermark",
        "buffer.low_watermark (0) must be in (0, 1]",
    );
    let mut s = Settings::default();
    s.buffer.high_watermark = 1.0;
    assert!(problems(&s).is_empty(), "1.0 is allowed");
}

#[test]
fn stage_and_source_limits_must_not_exceed_global() {
    only_after(
        |s| s.buffer.per_source.records = 2_000_000,
        "buffer.per_source.records",
        "buffer.per_source.records (2000000) must not exceed buffer.global.records (1000000)",
    );
    only_after(
        |s| s.buffer.per_stage.bytes = 512 * 1024 * 1024,
        "buffer.per_stage.bytes",
        "buffer.per_stage.bytes (536870912) must not exceed buffer.global.bytes (268435456)",
    );
}

#[test]
fn zero_limits_are_refused() {
    let mut s = Settings::default();
    s.buffer.global.bytes = 0;
    let p = problems(&s);
    assert!(
        p.contains(&"buffer.global.bytes must be greater than 0".to_owned()),
        "{p:?}"
    );
    only_after(
        |s| s.buffer.per_stage.records = 0,
        "buffer.per_stage.records",
        "buffer.per_stage.records must be greater than 0",
    );
}

#[test]
fn memory_rules() {
    only_after(
        |s| s.memory.resume_percent = 90.0,
        "memory.resume_percent",
        "memory.resume_percent (90) must be below memory.activate_percent (85)",
    );
    only_after(
        |s| s.memory.activate_percent = 150.0,
        "memory.activate_percent",
        "memory.activate_percent (150) must be in (0, 100]",
    );
    only_after(
        |s| s.memory.resume_percent = -1.0,
        "memory.resume_percent",
        "memory.resume_percent (-1) must be in (0, 100]",
    );
    only_after(
        |s| s.memory.refresh_ms = 0,
        "memory.refresh_ms",
        "memory.refresh_ms must be greater than 0",
    );
    let mut s = Settings::default();
    s.memory.limit_bytes = Some(0);
    assert!(s.validate().unwrap_err().has_key("memory.limit_bytes"));
}

#[test]
fn retry_max_backoff_must_not_be_below_initial() {
    let mut s = Settings::default();
    s.retry.initial_backoff = Duration::from_secs(5);
    s.retry.max_backoff = Duration::from_secs(1);
    only(
        &s,
        "retry.max_backoff",
        "retry.max_backoff (1s) must not be below retry.initial_backoff (5s)",
    );
}

fn two_pipelines() -> Settings {
    let mut s = Settings::default();
    s.pipelines.push(PipelineSpec {
        name: "second".into(),
        sink: SinkSpec::Null {
            delay: Duration::ZERO,
            fail_rate: 0.0,
        },
        dead_letter: SinkSpec::Stdout {
            delay: Duration::ZERO,
            fail_rate: 0.0,
        },
        ..Default::default()
    });
    assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    s
}

#[test]
fn pipeline_names_must_be_unique_and_non_empty() {
    let mut s = two_pipelines();
    s.pipelines[1].name = "default".into();
    only(
        &s,
        "pipelines[1].name",
        "pipelines[1].name \"default\" is already the name of pipelines[0]; pipeline names must be unique",
    );
    let mut s = two_pipelines();
    s.pipelines[1].name = String::new();
    only(
        &s,
        "pipelines[1].name",
        "pipelines[1].name must not be empty",
    );
}

#[test]
fn at_least_one_pipeline_and_one_stage() {
    only_after(
        |s| s.pipelines.clear(),
        "pipelines",
        "pipelines must contain at least one pipeline",
    );
    // A pipeline without transform stages is valid: sources feed its sink stage.
    let mut s = Settings::default();
    s.pipelines[0].stages.clear();
    s.validate().unwrap();
}

#[test]
fn batch_sizes_must_be_positive() {
    only_after(
        |s| s.pipelines[0].batch.max_records = 0,
        "pipelines[0].batch.max_records",
        "pipelines[0].batch.max_records must be greater than 0",
    );
}

#[test]
fn stage_and_transform_rules() {
    let identity = StageSpec {
        name: "identity".into(),
        transform: TransformSpec::Identity,
    };
    let mut s = Settings::default();
    let p = &mut s.pipelines[0];
    p.stages = vec![identity.clone(), identity.clone()];
    p.stages[1].transform = TransformSpec::Filter {
        field: "level".into(),
        op: FilterOp::Eq,
        value: None,
    };
    let p = problems(&s);
    assert_eq!(
        p,
        vec![
            "pipelines[0].stages[1].name \"identity\" is already the name of pipelines[0].stages[0]; stage names must be unique within a pipeline",
            "pipelines[0].stages[1].transform.value is required by op \"eq\"",
        ]
    );

    let mut s = Settings::default();
    s.pipelines[0].stages = vec![identity];
    s.pipelines[0].stages[0].transform = TransformSpec::Fail { rate: 2.0 };
    only(
        &s,
        "pipelines[0].stages[0].transform.rate",
        "pipelines[0].stages[0].transform.rate (2) must be in [0, 1]",
    );
}

#[test]
fn file_sinks_must_not_share_files() {
    let mut s = two_pipelines();
    s.pipelines[1].dead_letter = SinkSpec::default_dead_letter();
    only(
        &s,
        "pipelines[1].dead_letter",
        "pipelines[1].dead_letter writes the same files as pipelines[0].dead_letter (dir \"./sluice-data/dead-letters\", prefix \"dead-letters\"); give each file sink its own dir or prefix",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = Settings::default();
    s.buffer.low_watermark = 0.9;
    s.memory.refresh_ms = 0;
    s.pipelines[0].name = String::new();
    let e = s.validate().unwrap_err();
    assert_eq!(e.len(), 3, "{e}");
    assert_eq!(e.to_string().lines().count(), 3);
}

#[test]
fn load_refuses_an_invalid_file_with_every_problem() {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(
        br#"
        [buffer]
        low_watermark = 0.9

        [buffer.per_source]
        records = 2000000

        [retry]
        initial_backoff = "5s"
        max_backoff = "1s"
        "#,
    )
    .unwrap();
    let err = Settings::load_with_env(Some(f.path()), [("SLUICE__MEMORY__RESUME_PERCENT", "99")])
        .unwrap_err();
    let ConfigError::Invalid(errors) = &err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "buffer.per_source.records",
            "buffer.low_watermark",
            "memory.resume_percent",
            "retry.max_backoff"
        ]
    );
    let text = err.to_string();
    assert!(text.starts_with("invalid configuration:\n"), "{text}");
    assert!(text.contains("buffer.low_watermark (0.9) must be below buffer.high_watermark (0.8)"));
    assert_eq!(text.lines().count(), 5, "{text}");
}

fn token(t: &str, sources: &[&str]) -> sluice_config::TokenSpec {
    sluice_config::TokenSpec::inline(t, sources)
}

#[test]
fn auth_tokens_must_be_non_empty_unique_and_cover_sources() {
    let mut s = Settings::default();
    s.server.auth.tokens = vec![token("t1", &["a", "web-*"]), token("t2", &["*"])];
    assert!(problems(&s).is_empty(), "{:?}", problems(&s));

    s.server.auth.tokens = vec![token("", &["a"])];
    only(
        &s,
        "server.auth.tokens[0].token",
        "server.auth.tokens[0].token must not be empty",
    );
    s.server.auth.tokens = vec![token("secret-1", &["a"]), token("secret-1", &["b"])];
    only(
        &s,
        "server.auth.tokens[1].token",
        "server.auth.tokens[1].token is the same as server.auth.tokens[0].token; tokens must be unique",
    );
    assert!(
        !problems(&s)[0].contains("secret-1"),
        "a message never quotes a token"
    );
    s.server.auth.tokens = vec![token("t", &[])];
    only(
        &s,
        "server.auth.tokens[0].sources",
        "server.auth.tokens[0].sources must name at least one source (an id, a prefix ending in *, or \"*\")",
    );
    s.server.auth.tokens = vec![token("t", &["a", "", "x*y"])];
    let errors = s.validate().unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.auth.tokens[0].sources[1]",
            "server.auth.tokens[0].sources[2]"
        ]
    );
    s.server.auth.tokens = vec![token("has space", &["a"])];
    only(
        &s,
        "server.auth.tokens[0].token",
        "server.auth.tokens[0].token must not contain whitespace or control characters",
    );
}

#[test]
fn per_connection_limits_must_be_positive() {
    only_after(
        |s| s.server.max_sessions_per_connection = 0,
        "server.max_sessions_per_connection",
        "server.max_sessions_per_connection must be greater than 0",
    );
    only_after(
        |s| s.server.max_unacked_per_session = 0,
        "server.max_unacked_per_session",
        "server.max_unacked_per_session must be greater than 0",
    );
}

#[test]
fn http2_windows_are_bounded_and_named() {
    let d = Settings::default().server;
    assert_eq!(
        (d.http2_stream_window, d.http2_connection_window),
        (1 << 20, 1 << 20)
    );
    only_after(
        |s| s.server.http2_stream_window = 1000,
        "server.http2_stream_window",
        "server.http2_stream_window must be between 65535 and 2147483647 bytes, got 1000",
    );
    only_after(
        |s| s.server.http2_connection_window = u32::MAX,
        "server.http2_connection_window",
        "server.http2_connection_window must be between 65535 and 2147483647 bytes, got 4294967295",
    );
}

#[test]
fn the_message_gate_settings_are_named_and_the_pool_is_derived() {
    let d = Settings::default();
    assert_eq!(d.server.max_connections, 1024);
    assert_eq!(d.server.message_timeout, Duration::from_secs(30));
    // Absent: the smaller of max_message_bytes and an eighth of the budget.
    assert_eq!(d.uncovered_message_bytes(), 16 << 20);
    let mut s = Settings::default();
    s.buffer.global.bytes = 32 << 20;
    assert_eq!(s.uncovered_message_bytes(), 4 << 20);
    s.server.uncovered_message_bytes = Some(12345);
    assert_eq!(s.uncovered_message_bytes(), 12345);
    only_after(
        |s| s.server.max_connections = 0,
        "server.max_connections",
        "server.max_connections must be greater than 0",
    );
    only_after(
        |s| s.server.uncovered_message_bytes = Some(0),
        "server.uncovered_message_bytes",
        "server.uncovered_message_bytes must be greater than 0",
    );
    only_after(
        |s| s.server.message_timeout = Duration::ZERO,
        "server.message_timeout",
        "server.message_timeout must be greater than 0s",
    );
}

#[test]
fn open_timeout_must_be_positive() {
    assert_eq!(
        Settings::default().server.open_timeout,
        Duration::from_secs(10)
    );
    let mut s = Settings::default();
    s.server.open_timeout = Duration::ZERO;
    only(
        &s,
        "server.open_timeout",
        "server.open_timeout must be greater than 0s",
    );
    s.server.open_timeout = Duration::from_millis(1);
    assert!(problems(&s).is_empty(), "1ms is allowed");
}

#[test]
fn tls_paths_must_not_be_empty() {
    only_after(
        |s| s.server.tls = Some(sluice_config::TlsSettings::new("", "key.pem")),
        "server.tls.cert",
        "server.tls.cert must not be empty (a PEM file)",
    );
    only_after(
        |s| {
            let mut tls = sluice_config::TlsSettings::new("cert.pem", "key.pem");
            tls.client_ca = Some("".into());
            s.server.tls = Some(tls);
        },
        "server.tls.client_ca",
        "server.tls.client_ca must not be empty (a PEM file)",
    );
}

#[test]
fn security_settings_load_from_toml_and_round_trip() {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    writeln!(
        f,
        r#"
[server]
listen = "127.0.0.1:7001"
max_sessions_per_connection = 8
max_unacked_per_session = 5000
open_timeout = "750ms"

[server.auth]
tokens = [{{ token = "tok-a", sources = ["a", "web-*"] }}, {{ token = "tok-all", sources = ["*"] }}]

[server.tls]
cert = "/etc/sluice/cert.pem"
key = "/etc/sluice/key.pem"
"#
    )
    .unwrap();
    let s =
        Settings::load_with_env(Some(f.path()), std::iter::empty::<(String, String)>()).unwrap();
    assert_eq!(s.server.max_sessions_per_connection, 8);
    assert_eq!(s.server.max_unacked_per_session, 5000);
    assert_eq!(s.server.open_timeout, Duration::from_millis(750));
    assert_eq!(s.server.auth.tokens.len(), 2);
    assert_eq!(s.server.auth.tokens[0].sources, ["a", "web-*"]);
    let tls = s.server.tls.clone().unwrap();
    assert_eq!(tls.key, std::path::Path::new("/etc/sluice/key.pem"));
    assert!(
        !format!("{s:?}").contains("tok-a"),
        "Debug never prints a token"
    );
    let text = s.to_toml_string().unwrap();
    let mut g = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    g.write_all(text.as_bytes()).unwrap();
    let back =
        Settings::load_with_env(Some(g.path()), std::iter::empty::<(String, String)>()).unwrap();
    assert_eq!(back, s);
    // Defaults: no auth, no TLS.
    let d = Settings::default();
    assert!(!d.server.auth.enabled());
    assert!(d.server.tls.is_none());
}

/// A file holding `text`, for `token_file`.
fn secret_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

/// Every problem message of `s`, one string, for "never quotes" checks.
fn all_problems(s: &Settings) -> String {
    problems(s).join("\n")
}

#[test]
fn token_file_is_read_with_trailing_newlines_trimmed() {
    use sluice_config::TokenSpec;
    let f = secret_file("file-secret-1\r\n\n");
    let spec = TokenSpec::from_file(f.path(), &["orders"]);
    assert_eq!(spec.secret().unwrap(), "file-secret-1");
    assert_eq!(spec.secret_field(), "token_file");
    let mut s = Settings::default();
    s.server.auth.tokens = vec![spec.clone()];
    assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    assert!(
        !format!("{spec:?}").contains("file-secret-1"),
        "Debug never prints a token"
    );
}

#[test]
fn exactly_one_of_token_token_env_token_file() {
    use sluice_config::TokenSpec;
    let f = secret_file("from-file\n");
    let mut s = Settings::default();
    let mut both = TokenSpec::inline("inline-secret", &["a"]);
    both.token_file = Some(f.path().to_owned());
    s.server.auth.tokens = vec![token("t0", &["x"]), both];
    only(
        &s,
        "server.auth.tokens[1]",
        "server.auth.tokens[1]: give exactly one of token, token_env or token_file (token and token_file given)",
    );
    let mut none = TokenSpec::inline("x", &["a"]);
    none.token = None;
    s.server.auth.tokens = vec![none];
    only(
        &s,
        "server.auth.tokens[0]",
        "server.auth.tokens[0]: give exactly one of token, token_env or token_file (none given)",
    );
    let mut three = TokenSpec::from_env("SLUICE_TEST_NEVER_SET_3C9E", &["a"]);
    three.token = Some("inline-secret".into());
    three.token_file = Some(f.path().to_owned());
    s.server.auth.tokens = vec![three];
    let text = all_problems(&s);
    assert!(
        text.contains("(token and token_env and token_file given)"),
        "{text}"
    );
    assert!(
        !text.contains("inline-secret") && !text.contains("from-file"),
        "{text}"
    );
}

#[test]
fn unreadable_empty_or_bad_token_files_name_the_key() {
    use sluice_config::TokenSpec;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let mut s = Settings::default();
    s.server.auth.tokens = vec![TokenSpec::from_file(&missing, &["a"])];
    let errors = s.validate().unwrap_err();
    let e = errors.iter().next().unwrap();
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(e.key, "server.auth.tokens[0].token_file");
    assert!(
        e.message
            .starts_with("server.auth.tokens[0].token_file: cannot read "),
        "{}",
        e.message
    );
    assert!(e.message.contains("no-such-token"), "{}", e.message);

    let empty = secret_file("\n");
    s.server.auth.tokens = vec![TokenSpec::from_file(empty.path(), &["a"])];
    let text = all_problems(&s);
    assert!(
        text.starts_with("server.auth.tokens[0].token_file: file ") && text.ends_with(" is empty"),
        "{text}"
    );

    let spaced = secret_file("two words\n");
    s.server.auth.tokens = vec![TokenSpec::from_file(spaced.path(), &["a"])];
    only(
        &s,
        "server.auth.tokens[0].token_file",
        "server.auth.tokens[0].token_file must not contain whitespace or control characters",
    );

    s.server.auth.tokens = vec![TokenSpec::from_file("", &["a"])];
    only(
        &s,
        "server.auth.tokens[0].token_file",
        "server.auth.tokens[0].token_file: must not be empty (a file holding the secret)",
    );
}

#[test]
fn tokens_are_unique_across_inline_env_and_file() {
    use sluice_config::TokenSpec;
    let f = secret_file("dup-secret\n");
    let mut s = Settings::default();
    s.server.auth.tokens = vec![
        token("dup-secret", &["a"]),
        TokenSpec::from_file(f.path(), &["b"]),
    ];
    only(
        &s,
        "server.auth.tokens[1].token_file",
        "server.auth.tokens[1].token_file is the same as server.auth.tokens[0].token; tokens must be unique",
    );
}

#[test]
fn token_env_is_read_from_the_process_environment() {
    use sluice_config::TokenSpec;
    // A name no other test uses: the process environment is shared.
    const VAR: &str = "SLUICE_CONFIG_TEST_TOKEN_ENV_5A1F";
    let mut s = Settings::default();
    s.server.auth.tokens = vec![TokenSpec::from_env(VAR, &["orders"])];
    only(
        &s,
        "server.auth.tokens[0].token_env",
        &format!("server.auth.tokens[0].token_env: environment variable {VAR} is not set"),
    );
    // SAFETY: only this test reads or writes this variable. The other tests
    // of this binary touch the environment only through Rust's std (temp dir
    // look-ups), which serialises its reads with this write; none calls C
    // code that reads the environment.
    unsafe { std::env::set_var(VAR, "env-secret-42") };
    assert_eq!(s.server.auth.tokens[0].secret().unwrap(), "env-secret-42");
    assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    // SAFETY: as above.
    unsafe { std::env::set_var(VAR, "") };
    only(
        &s,
        "server.auth.tokens[0].token_env",
        &format!("server.auth.tokens[0].token_env: environment variable {VAR} is empty"),
    );
    // SAFETY: as above.
    unsafe { std::env::remove_var(VAR) };

    s.server.auth.tokens = vec![TokenSpec::from_env("A=B", &["orders"])];
    only(
        &s,
        "server.auth.tokens[0].token_env",
        "server.auth.tokens[0].token_env: \"A=B\" is not an environment variable name",
    );
}

/// The buffer crate owns the rules; config and the buffer's own
/// constructors agree on them. `memory.resume_percent = 0` used to be
/// refused by config and accepted by the buffer's gate.
#[test]
fn config_and_buffer_agree_resume_percent_zero() {
    use sluice_buffer::{Gate, MemoryMonitor};

    let mut s = Settings::default();
    s.memory.resume_percent = 0.0;
    only(
        &s,
        "memory.resume_percent",
        "memory.resume_percent (0) must be in (0, 100]",
    );
    let own = s.memory.validate().unwrap_err();
    assert_eq!(own.first().field, "resume_percent");
    assert!(Gate::new(&s.memory).is_err(), "the gate refuses it too");
    assert!(
        MemoryMonitor::spawn(s.memory, sluice_buffer::ManualProbe::new(1, 10)).is_err(),
        "and so does the monitor"
    );
}

/// Over a range of values, config refuses a memory, buffer, watermark or
/// retry setting exactly when the buffer's constructors do.
#[test]
fn config_and_buffer_constructors_agree() {
    use sluice_buffer::{
        BackpressureController, BufferManager, ControllerConfig, Gate, Watermarks,
    };

    for (activate, resume) in [
        (85.0, 75.0),
        (85.0, 0.0),
        (85.0, -1.0),
        (100.0, 99.0),
        (101.0, 50.0),
        (0.0, 0.0),
        (80.0, 80.0),
        (f64::NAN, 1.0),
    ] {
        let mut s = Settings::default();
        s.memory.activate_percent = activate;
        s.memory.resume_percent = resume;
        let config_refuses = s.validate().is_err();
        assert_eq!(
            config_refuses,
            Gate::new(&s.memory).is_err(),
            "{activate}/{resume}"
        );
    }
    for (high, low) in [(0.8, 0.5), (0.8, 0.0), (1.0, 0.5), (1.5, 0.5), (0.5, 0.5)] {
        let mut s = Settings::default();
        s.buffer.high_watermark = high;
        s.buffer.low_watermark = low;
        let manager = std::sync::Arc::new(
            BufferManager::<Vec<u8>>::builder(s.buffer.limits())
                .pipeline("p", ["s"])
                .build::<Vec<u8>>()
                .unwrap(),
        );
        let config = ControllerConfig {
            watermarks: Watermarks { high, low },
            ..ControllerConfig::default()
        };
        assert_eq!(
            s.validate().is_err(),
            BackpressureController::new(manager, config, None).is_err(),
            "{high}/{low}"
        );
    }
    for (stage_records, source_bytes) in [(1, 1), (0, 1), (1, 0), (2_000_000, 1), (1, u64::MAX)] {
        let mut s = Settings::default();
        s.buffer.per_stage.records = stage_records;
        s.buffer.per_source.bytes = source_bytes;
        let built = BufferManager::<Vec<u8>>::builder(s.buffer.limits())
            .retry(s.retry)
            .pipeline("p", ["s"])
            .build::<Vec<u8>>();
        assert_eq!(
            s.validate().is_err(),
            built.is_err(),
            "{stage_records}/{source_bytes}"
        );
    }
    let mut s = Settings::default();
    s.retry.initial_backoff = Duration::from_secs(2);
    s.retry.max_backoff = Duration::from_secs(1);
    assert!(s.validate().is_err());
    assert!(
        BufferManager::<Vec<u8>>::builder(s.buffer.limits())
            .retry(s.retry)
            .pipeline("p", ["s"])
            .build::<Vec<u8>>()
            .is_err()
    );
}

#[test]
fn file_sink_group_commit_batches_is_bounded_and_named() {
    for bad in [0, sluice_config::MAX_GROUP_COMMIT_BATCHES + 1] {
        only_after(
            |s| {
                if let SinkSpec::File {
                    group_commit_batches,
                    ..
                } = &mut s.pipelines[0].sink
                {
                    *group_commit_batches = bad;
                }
            },
            "pipelines[0].sink.group_commit_batches",
            &format!(
                "pipelines[0].sink.group_commit_batches must be between 1 and 1024 (got {bad})"
            ),
        );
    }
    let s = Settings::default();
    assert!(matches!(
        s.pipelines[0].sink,
        SinkSpec::File {
            group_commit_batches: sluice_config::DEFAULT_GROUP_COMMIT_BATCHES,
            ..
        }
    ));
}
