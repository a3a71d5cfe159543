//! Layered loading: defaults, file, environment, and the errors of loading.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_config::{
    ConfigError, FilterOp, LogFormat, PipelineSpec, Settings, SinkSpec, StageSpec, TransformSpec,
};
use tempfile::NamedTempFile;

const NO_ENV: [(&str, &str); 0] = [];

fn file(toml: &str) -> NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let f = file(toml);
    Settings::load_with_env(Some(f.path()), env.iter().copied())
}

/// The `key` and `message` of a load error, or a panic.
fn load_error(toml: &str, env: &[(&str, &str)]) -> (Option<String>, String, String) {
    match load(toml, env) {
        Err(e @ ConfigError::Load { .. }) => {
            let text = e.to_string();
            let ConfigError::Load { key, message, .. } = e else {
                unreachable!()
            };
            (key, message, text)
        }
        other => panic!("expected a load error, got {other:?}"),
    }
}

/// The TOML of one pipeline `p` (null sink) with one stage `s` whose
/// transform is the inline table `transform`.
fn one_stage(transform: &str) -> String {
    format!(
        r#"
        [[pipelines]]
        name = "p"
        sink = {{ kind = "null" }}
        stages = [{{ name = "s", transform = {transform} }}]
        "#
    )
}

#[test]
fn defaults_alone_load_and_are_valid() {
    let s = Settings::load_with_env(None, NO_ENV).unwrap();
    assert_eq!(s, Settings::default());
    s.validate().unwrap();
    assert_eq!(s.pipelines.len(), 1);
    let p = &s.pipelines[0];
    assert_eq!(p.name, "default");
    // No transform stages: records go straight to the sink stage.
    assert!(p.stages.is_empty());
    assert!(
        matches!(&p.sink, SinkSpec::File { dir, .. } if dir == &PathBuf::from("./sluice-data"))
    );
    assert!(matches!(&p.dead_letter, SinkSpec::File { dir, prefix, .. }
            if dir == &PathBuf::from("./sluice-data/dead-letters") && prefix == "dead-letters"));
    assert_eq!(
        s.server.listen,
        "127.0.0.1:50051".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        s.metrics.listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert!(s.metrics.enabled);
    assert_eq!(s.log.format, LogFormat::Text);
    assert_eq!(s.log.filter, "info");
    assert_eq!(s.server.shutdown_timeout, Duration::from_secs(30));
}

#[test]
fn file_overrides_defaults_key_by_key() {
    let s = load(
        r#"
        [server]
        listen = "0.0.0.0:7000"
        keepalive_interval = "1m"

        [buffer]
        high_watermark = 0.9

        [buffer.global]
        records = 5000000

        [retry]
        max_backoff = "10s"

        [log]
        format = "json"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(
        s.server.listen,
        "0.0.0.0:7000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(s.server.keepalive_interval, Duration::from_secs(60));
    // untouched keys of a touched section keep their defaults
    assert_eq!(s.server.keepalive_timeout, Duration::from_secs(10));
    assert_eq!(s.buffer.high_watermark, 0.9);
    assert_eq!(s.buffer.low_watermark, 0.5);
    assert_eq!(s.buffer.global.records, 5_000_000);
    assert_eq!(s.buffer.global.bytes, 256 * 1024 * 1024);
    assert_eq!(s.retry.max_backoff, Duration::from_secs(10));
    assert_eq!(s.retry.max_retries, 3);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.pipelines, vec![PipelineSpec::default()]);
}

#[test]
fn file_pipelines_replace_the_default_one() {
    let s = load(
        r#"
        [[pipelines]]
        name = "orders"
        sink = { kind = "null" }
        dead_letter = { kind = "stdout" }
        stages = [
            { name = "paid", transform = { kind = "filter", field = "status", op = "eq", value = "paid" } },
            { name = "pass", transform = { kind = "passthrough" } },
        ]
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(s.pipelines.len(), 1);
    let p = &s.pipelines[0];
    assert_eq!(p.name, "orders");
    assert_eq!(
        p.stages[0].transform,
        TransformSpec::Filter {
            field: "status".into(),
            op: FilterOp::Eq,
            value: Some("paid".into()),
        }
    );
    assert_eq!(p.stages[1].transform, TransformSpec::Identity);
    assert_eq!(p.sink.kind(), "null");
    assert_eq!(p.dead_letter.kind(), "stdout");
    // omitted batch gets its real default
    assert_eq!(p.batch, Default::default());
}

#[test]
fn environment_overrides_defaults() {
    let s = Settings::load_with_env(
        None,
        [
            ("SLUICE__SERVER__LISTEN", "127.0.0.1:6000"),
            ("SLUICE__SERVER__SHUTDOWN_TIMEOUT", "5s"),
            ("SLUICE__BUFFER__HIGH_WATERMARK", "0.9"),
            ("SLUICE__BUFFER__GLOBAL__RECORDS", "5000000"),
            ("SLUICE__BUFFER__PER_SOURCE__BYTES", "1048576"),
            ("SLUICE__MEMORY__ENABLED", "false"),
            ("SLUICE__MEMORY__ACTIVATE_PERCENT", "90"),
            ("SLUICE__MEMORY__LIMIT_BYTES", "2000000000"),
            ("SLUICE__RETRY__MAX_RETRIES", "7"),
            ("SLUICE__METRICS__ENABLED", "false"),
            ("SLUICE__LOG__FORMAT", "json"),
            // names are case-insensitive
            ("sluice__log__filter", "debug"),
            // a digit segment indexes a list
            ("SLUICE__PIPELINES__0__SINK__DIR", "/tmp/sluice-out"),
            ("SLUICE__PIPELINES__0__BATCH__LINGER", "1s"),
            // not ours: ignored
            ("SLUICE_CONFIG", "whatever.toml"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    assert_eq!(s.server.listen.port(), 6000);
    assert_eq!(s.server.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.buffer.high_watermark, 0.9);
    assert_eq!(s.buffer.global.records, 5_000_000);
    assert_eq!(s.buffer.global.bytes, 256 * 1024 * 1024);
    assert_eq!(s.buffer.per_source.bytes, 1 << 20);
    assert!(!s.memory.enabled);
    assert_eq!(s.memory.activate_percent, 90.0);
    assert_eq!(s.memory.limit_bytes, Some(2_000_000_000));
    assert_eq!(s.retry.max_retries, 7);
    assert!(!s.metrics.enabled);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.log.filter, "debug");
    let p = &s.pipelines[0];
    assert_eq!(p.name, "default");
    assert!(matches!(&p.sink, SinkSpec::File { dir, prefix, .. }
        if dir == &PathBuf::from("/tmp/sluice-out") && prefix == "records"));
    assert_eq!(p.batch.linger, Duration::from_secs(1));
    assert!(p.stages.is_empty());
}

#[test]
fn environment_beats_file() {
    let s = load(
        r#"
        [server]
        listen = "127.0.0.1:7000"
        max_message_bytes = 1000

        [buffer.global]
        records = 4000000

        [[pipelines]]
        name = "p"
        stages = [{ name = "d", transform = { kind = "drop", fields = ["x"] } }]
        sink = { kind = "null" }
        "#,
        &[
            ("SLUICE__SERVER__LISTEN", "127.0.0.1:6000"),
            ("SLUICE__BUFFER__GLOBAL__RECORDS", "5000000"),
            ("SLUICE__PIPELINES__0__NAME", "q"),
            (
                "SLUICE__PIPELINES__0__STAGES__0__TRANSFORM__FIELDS",
                "a,b.c",
            ),
        ],
    )
    .unwrap();
    assert_eq!(s.server.listen.port(), 6000);
    assert_eq!(s.server.max_message_bytes, 1000);
    assert_eq!(s.buffer.global.records, 5_000_000);
    assert_eq!(s.pipelines[0].name, "q");
    assert_eq!(
        s.pipelines[0].stages[0].transform,
        TransformSpec::Drop {
            fields: vec!["a".into(), "b.c".into()]
        }
    );
}

#[test]
fn omitted_sections_get_real_defaults_not_none() {
    let s = load("[server]\nlisten = \"127.0.0.1:1234\"\n", &[]).unwrap();
    assert_eq!(s.memory, Default::default());
    assert!(s.memory.enabled, "the memory gate must be on by default");
    assert_eq!(s.retry, Default::default());
    assert_eq!(s.buffer, Default::default());
    assert_eq!(s.metrics, Default::default());
    assert_eq!(s.log, Default::default());

    // a partly written section keeps the defaults of the other keys
    let s = load("[memory]\nlimit_bytes = 1000000\n", &[]).unwrap();
    assert!(s.memory.enabled);
    assert_eq!(s.memory.activate_percent, 85.0);
    assert_eq!(s.memory.limit_bytes, Some(1_000_000));

    // an empty file is the defaults
    assert_eq!(load("", &[]).unwrap(), Settings::default());
}

#[test]
fn unknown_keys_are_refused_naming_the_key() {
    let (key, message, text) = load_error("[server]\nlisen = \"127.0.0.1:1\"\n", &[]);
    assert_eq!(key.as_deref(), Some("server.lisen"));
    assert!(message.starts_with("unknown key"), "{message}");
    assert!(text.contains("server.lisen: unknown key"), "{text}");
    assert!(text.contains(".toml"), "names the file: {text}");

    let (key, ..) = load_error("[sever]\nlisten = \"127.0.0.1:1\"\n", &[]);
    assert_eq!(key.as_deref(), Some("sever"));

    let (key, ..) = load_error("[buffer.global]\nrecord = 5\n", &[]);
    assert_eq!(key.as_deref(), Some("buffer.global.record"));

    let (key, ..) = load_error("", &[("SLUICE__BUFFER__HIGH_WATERMAK", "0.9")]);
    assert_eq!(key.as_deref(), Some("buffer.high_watermak"));

    let (key, ..) = load_error(
        &one_stage(r#"{ kind = "rename", from = "a", to = "b", too = "c" }"#),
        &[],
    );
    assert_eq!(key.as_deref(), Some("pipelines[0].stages[0].transform.too"));
}

#[test]
fn unknown_transform_kind_is_refused_naming_the_key_and_the_kinds() {
    let (key, message, text) = load_error(
        r#"
        [[pipelines]]
        name = "p"
        sink = { kind = "null" }

        [[pipelines.stages]]
        name = "a"
        transform = { kind = "identity" }

        [[pipelines.stages]]
        name = "b"
        transform = { kind = "frobnicate" }
        "#,
        &[],
    );
    assert_eq!(
        key.as_deref(),
        Some("pipelines[0].stages[1].transform.kind")
    );
    assert_eq!(
        message,
        r#"unknown transform "frobnicate" (known: filter, set, rename, drop, identity, fail, sample)"#
    );
    assert!(
        text.contains(r#"pipelines[0].stages[1].transform.kind: unknown transform "frobnicate""#),
        "{text}"
    );
}

#[test]
fn unknown_sink_kind_is_refused_naming_the_key_and_the_kinds() {
    let (key, message, _) = load_error("", &[("SLUICE__PIPELINES__0__DEAD_LETTER__KIND", "kafka")]);
    assert_eq!(key.as_deref(), Some("pipelines[0].dead_letter.kind"));
    assert_eq!(
        message,
        r#"unknown sink "kafka" (known: file, stdout, null, postgres, nats)"#
    );
}

#[test]
fn wrong_types_and_missing_fields_name_the_key() {
    let (key, message, _) = load_error("[buffer.global]\nrecords = \"lots\"\n", &[]);
    assert_eq!(key.as_deref(), Some("buffer.global.records"));
    assert!(message.contains("invalid"), "{message}");

    let (key, _, _) = load_error("", &[("SLUICE__SERVER__LISTEN", "not an address")]);
    assert_eq!(key.as_deref(), Some("server.listen"));

    let (key, message, _) = load_error("[[pipelines]]\nname = \"p\"\n", &[]);
    assert_eq!(key.as_deref(), Some("pipelines[0].sink"));
    assert_eq!(message, "missing required field");

    let (key, message, _) =
        load_error("[[pipelines]]\nname = \"p\"\nsink = { dir = \"x\" }\n", &[]);
    assert_eq!(key.as_deref(), Some("pipelines[0].sink.kind"));
    assert_eq!(message, "missing required field");
}

#[test]
fn unreadable_and_unparsable_files_name_the_file() {
    let missing = std::env::temp_dir().join("sluice-config-test-does-not-exist.toml");
    let err = Settings::load_with_env(Some(&missing), NO_ENV).unwrap_err();
    assert!(matches!(&err, ConfigError::Load { path: Some(p), .. } if p == &missing));
    assert!(
        err.to_string()
            .contains("sluice-config-test-does-not-exist.toml")
    );

    let err = load("[server\nlisten = 1", &[]).unwrap_err();
    assert!(
        matches!(err, ConfigError::Load { path: Some(_), .. }),
        "{err}"
    );
}

#[test]
fn to_toml_string_round_trips() {
    // the defaults
    let text = Settings::default().to_toml_string().unwrap();
    assert_eq!(load(&text, &[]).unwrap(), Settings::default());

    // and something with every kind of transform and sink
    let mut s = Settings::default();
    s.server.listen = "0.0.0.0:6000".parse().unwrap();
    s.memory.limit_bytes = Some(123_456_789);
    s.retry.initial_backoff = Duration::from_millis(250);
    s.log.format = LogFormat::Json;
    s.pipelines.push(PipelineSpec {
        name: "second".into(),
        stages: vec![
            stage(
                "f",
                TransformSpec::Filter {
                    field: "n".into(),
                    op: FilterOp::Ge,
                    value: Some(serde_json::json!(10)),
                },
            ),
            stage(
                "e",
                TransformSpec::Filter {
                    field: "a.b".into(),
                    op: FilterOp::Exists,
                    value: None,
                },
            ),
            stage(
                "s",
                TransformSpec::Set {
                    field: "tag".into(),
                    value: serde_json::json!({"k": [1, 2.5, "x", true]}),
                },
            ),
            stage(
                "r",
                TransformSpec::Rename {
                    from: "a".into(),
                    to: "b".into(),
                },
            ),
            stage(
                "d",
                TransformSpec::Drop {
                    fields: vec!["x".into(), "y".into()],
                },
            ),
            stage("x", TransformSpec::Fail { rate: 0.25 }),
        ],
        sink: SinkSpec::Null {
            delay: Duration::from_millis(20),
            fail_rate: 0.5,
        },
        dead_letter: SinkSpec::Stdout {
            delay: Duration::ZERO,
            fail_rate: 0.0,
        },
        batch: sluice_config::BatchSettings {
            max_records: 10,
            max_bytes: 4096,
            linger: Duration::ZERO,
        },
    });
    s.validate().unwrap();
    let text = s.to_toml_string().unwrap();
    assert_eq!(load(&text, &[]).unwrap(), s, "{text}");
}

fn stage(name: &str, transform: TransformSpec) -> StageSpec {
    StageSpec {
        name: name.into(),
        transform,
    }
}

#[test]
fn identity_takes_no_other_keys() {
    let (key, message, _) = load_error(&one_stage(r#"{ kind = "identity", foo = 1 }"#), &[]);
    assert_eq!(key.as_deref(), Some("pipelines[0].stages[0].transform.foo"));
    assert_eq!(
        message,
        r#"unknown key; transform kind "identity" takes no other keys"#
    );
}

#[test]
fn transform_field_errors_name_the_transform() {
    let (key, message, _) = load_error(&one_stage(r#"{ kind = "rename", from = "a" }"#), &[]);
    assert_eq!(key.as_deref(), Some("pipelines[0].stages[0].transform"));
    assert_eq!(message, "missing field `to`");
}

/// The TOML block of the README between two `marker` lines, written to a
/// file in `dir`: its path.
fn readme_block(marker: &str, dir: &Path) -> PathBuf {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find(marker).expect("README has the example") + marker.len();
    let end = start + readme[start..].find(marker).expect("closing marker");
    let section = &readme[start..end];
    let body_start = section.find("```toml").expect("a toml block") + "```toml".len();
    let body_end = body_start + section[body_start..].find("```").expect("end of block");
    let path = dir.join("sluice.toml");
    std::fs::write(&path, &section[body_start..body_end]).unwrap();
    path
}

/// The configuration example in the README is loaded as written, so the
/// documentation cannot drift from the settings it describes.
#[test]
fn readme_config_example_loads_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = readme_block("<!-- config-example -->", dir.path());
    let settings =
        sluice_config::Settings::load_with_env(Some(&path), Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("README example does not load: {e}"));
    assert_eq!(settings.pipelines.len(), 1);
    assert_eq!(settings.pipelines[0].name, "orders");
    assert_eq!(settings.pipelines[0].stages.len(), 2);
}

/// The README's NATS JetStream sink example loads and validates as written.
#[test]
fn readme_nats_example_loads_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = readme_block("<!-- nats-example -->", dir.path());
    let settings =
        sluice_config::Settings::load_with_env(Some(&path), Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("README NATS example does not load: {e}"));
    let SinkSpec::Nats(n) = &settings.pipelines[0].sink else {
        panic!("a nats sink: {:?}", settings.pipelines[0].sink);
    };
    assert_eq!(n.subject, "sluice.{pipeline}.{source_id}");
    assert!(n.create_stream.is_some());
}

#[test]
fn redacted_toml_hides_every_inline_token_and_keeps_the_rest() {
    let secret_file = file("file-held-secret\n");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:7002"

[[server.auth.tokens]]
token = "very-secret-orders-123"
sources = ["orders"]

[[server.auth.tokens]]
token_file = "{}"
sources = ["web-*"]

[server.tls]
cert = "/etc/sluice/cert.pem"
key = "/etc/sluice/key.pem"
client_ca = "/etc/sluice/clients-ca.pem"
"#,
        secret_file.path().display()
    );
    let s = load(&toml, &NO_ENV).unwrap();
    assert_eq!(
        s.server.auth.tokens[1].secret().unwrap(),
        "file-held-secret"
    );
    assert_eq!(
        s.server.tls.as_ref().unwrap().client_ca.as_deref(),
        Some(std::path::Path::new("/etc/sluice/clients-ca.pem"))
    );

    let shown = s.to_toml_string_redacted().unwrap();
    assert!(!shown.contains("very-secret-orders-123"), "{shown}");
    assert!(!shown.contains("file-held-secret"), "{shown}");
    assert!(shown.contains(r#"token = "<redacted>""#), "{shown}");
    assert!(shown.contains("\"orders\""), "{shown}");
    assert!(shown.contains("\"web-*\""), "{shown}");
    assert!(shown.contains("token_file"), "{shown}");
    assert!(shown.contains("clients-ca.pem"), "{shown}");
    // The original is untouched and still round-trips with its secret.
    assert_eq!(
        s.server.auth.tokens[0].token.as_deref(),
        Some("very-secret-orders-123")
    );
    let full = s.to_toml_string().unwrap();
    assert_eq!(load(&full, &NO_ENV).unwrap(), s, "{full}");
}

#[test]
fn a_token_env_that_is_not_set_fails_the_load_naming_the_key() {
    let toml = r#"
[server.auth]
tokens = [
    { token = "tok-0", sources = ["a"] },
    { token_env = "SLUICE_LOAD_TEST_UNSET_TOKEN_81D2", sources = ["orders"] },
]
"#;
    let Err(ConfigError::Invalid(errors)) = load(toml, &NO_ENV) else {
        panic!("expected an invalid configuration");
    };
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["server.auth.tokens[1].token_env"]);
    let text = errors.to_string();
    assert_eq!(
        text,
        "server.auth.tokens[1].token_env: environment variable SLUICE_LOAD_TEST_UNSET_TOKEN_81D2 is not set"
    );
    assert!(!text.contains("tok-0"), "{text}");
}

#[test]
fn a_token_entry_with_two_secrets_fails_the_load() {
    let toml = r#"
[[server.auth.tokens]]
token = "tok-inline-9"
token_env = "SLUICE_LOAD_TEST_TWO_WAYS_77AB"
sources = ["a"]
"#;
    let err = load(toml, &NO_ENV).unwrap_err().to_string();
    assert!(
        err.contains(
            "server.auth.tokens[0]: give exactly one of token, token_env or token_file (token and token_env given)"
        ),
        "{err}"
    );
    assert!(!err.contains("tok-inline-9"), "{err}");
}
