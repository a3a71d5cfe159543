//! The postgres sink's settings: loading, defaults, every rule with its
//! key, and the password never written in (or printed with) the config.

use std::io::Write;
use std::time::Duration;

use sluice_config::{
    ColumnType, ConfigError, PostgresMode, PostgresSinkSpec, Settings, SinkSpec, Staging,
};

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::load_with_env(Some(f.path()), env)
}

fn pipeline(sink: &str) -> String {
    format!("[[pipelines]]\nname = \"p\"\n[pipelines.sink]\nkind = \"postgres\"\n{sink}\n")
}

/// The problems of `s` as (key, message).
fn problems(s: &Settings) -> Vec<(String, String)> {
    match s.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e
            .iter()
            .map(|e| (e.key.clone(), e.message.clone()))
            .collect(),
    }
}

fn with_sink(spec: PostgresSinkSpec) -> Settings {
    let mut s = Settings::default();
    s.pipelines[0].sink = SinkSpec::Postgres(Box::new(spec));
    s
}

#[test]
fn a_postgres_sink_loads_with_its_defaults() {
    let s = load(
        &pipeline("url = \"postgres://sluice@127.0.0.1:5432/db\"\ntable = \"events\""),
        &[],
    )
    .unwrap();
    let SinkSpec::Postgres(p) = &s.pipelines[0].sink else {
        panic!("{:?}", s.pipelines[0].sink)
    };
    assert_eq!(
        **p,
        PostgresSinkSpec::new("postgres://sluice@127.0.0.1:5432/db", "events")
    );
    assert_eq!(p.mode, PostgresMode::Envelope);
    assert_eq!(p.staging, Staging::Fallback);
    assert_eq!(
        (p.pool_size, p.statement_timeout),
        (2, Duration::from_secs(30))
    );
    // Printed and read back: the same settings.
    let again: Settings = load(&s.to_toml_string().unwrap(), &[]).unwrap();
    assert_eq!(again, s);
}

#[test]
fn columns_mode_takes_typed_columns() {
    let s = load(
        &pipeline(
            "host = \"db\"\nport = 6432\nuser = \"u\"\ndbname = \"d\"\ntable = \"app.orders\"\n\
             mode = \"columns\"\ncreate_table = true\nstaging = \"always\"\n\
             columns = { id = \"bigint\", total = \"double precision\", at = \"timestamptz\", doc = \"jsonb\" }",
        ),
        &[("SLUICE__PIPELINES__0__SINK__POOL_SIZE", "5")],
    )
    .unwrap();
    let SinkSpec::Postgres(p) = &s.pipelines[0].sink else {
        panic!()
    };
    assert_eq!(p.mode, PostgresMode::Columns);
    assert_eq!(p.columns["total"], ColumnType::DoublePrecision);
    assert_eq!(p.columns["at"], ColumnType::Timestamptz);
    assert_eq!((p.port, p.pool_size), (Some(6432), 5));
    assert_eq!(p.staging, Staging::Always);
    assert!(p.create_table);
}

#[test]
fn unknown_keys_and_types_are_refused_naming_the_key() {
    let err = load(
        &pipeline("url = \"postgres://h/d\"\ntable = \"t\"\npasword_env = \"X\""),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("pasword_env"), "{err}");
    let err = load(
        &pipeline("url = \"postgres://h/d\"\ntable = \"t\"\nmode = \"columns\"\ncolumns = { a = \"varchar\" }"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("varchar"), "{err}");
}

#[test]
fn the_password_comes_from_a_variable_or_a_file_never_the_config() {
    let mut spec = PostgresSinkSpec::new("postgres://u:hunter2@h/d", "t");
    let s = with_sink(spec.clone());
    assert_eq!(
        problems(&s),
        vec![(
            "pipelines[0].sink.url".to_owned(),
            "pipelines[0].sink.url must not contain a password (it would be printed with the configuration); use pipelines[0].sink.password_env or pipelines[0].sink.password_file".to_owned()
        )]
    );
    spec.url = Some("postgres://u@h/d".into());
    spec.password_env = Some("SLUICE_TEST_PG_PASSWORD_SURELY_UNSET".into());
    assert_eq!(
        problems(&with_sink(spec.clone())),
        vec![(
            "pipelines[0].sink.password_env".to_owned(),
            "pipelines[0].sink.password_env: environment variable SLUICE_TEST_PG_PASSWORD_SURELY_UNSET is not set".to_owned()
        )]
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    spec.password_env = None;
    spec.password_file = Some(file.clone());
    assert_eq!(spec.password().unwrap().as_deref(), Some("s3cret"));
    let s = with_sink(spec.clone());
    assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    let printed = s.to_toml_string_redacted().unwrap();
    assert!(
        !printed.contains("s3cret") && printed.contains("password_file"),
        "{printed}"
    );
    spec.password_file = Some(dir.path().join("missing"));
    let p = problems(&with_sink(spec));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "pipelines[0].sink.password_file");
    assert!(
        p[0].1
            .starts_with("pipelines[0].sink.password_file: cannot read"),
        "{p:?}"
    );
}

#[test]
fn every_rule_names_its_key() {
    let mut spec = PostgresSinkSpec::new("postgres://u@h/d", " ");
    spec.host = Some("h".into());
    spec.columns.insert("seq".into(), ColumnType::Bigint);
    spec.pool_size = 0;
    spec.statement_timeout = Duration::ZERO;
    let keys: Vec<String> = problems(&with_sink(spec))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let p = "pipelines[0].sink";
    assert_eq!(
        keys,
        [
            format!("{p}.host"),
            format!("{p}.table"),
            format!("{p}.columns"),
            format!("{p}.columns.seq"),
            format!("{p}.statement_timeout"),
            format!("{p}.pool_size"),
        ]
    );
    let mut spec = PostgresSinkSpec::new("postgres://u@h/d", "a.b.c");
    spec.url = None;
    spec.mode = PostgresMode::Columns;
    let p = problems(&with_sink(spec));
    assert_eq!(
        p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [
            "pipelines[0].sink.url",
            "pipelines[0].sink.table",
            "pipelines[0].sink.columns"
        ],
        "{p:?}"
    );
    let mut s = Settings::default();
    s.pipelines[0].dead_letter =
        SinkSpec::Postgres(Box::new(PostgresSinkSpec::new("postgres://h/d", "t")));
    assert_eq!(problems(&s)[0].0, "pipelines[0].dead_letter.kind");
}
