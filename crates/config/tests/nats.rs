//! The `nats` sink's settings: loaded from TOML, printed back without a
//! secret, and every wrong value refused naming its key.

use std::io::Write;

use sluice_config::{NatsAuth, Settings, SinkSpec};
use tempfile::NamedTempFile;

fn load(sink: &str) -> Result<Settings, sluice_config::ConfigError> {
    let mut f = NamedTempFile::new().unwrap();
    write!(
        f,
        "[[pipelines]]\nname = \"orders\"\n[pipelines.sink]\nkind = \"nats\"\n{sink}"
    )
    .unwrap();
    Settings::load_with_env(Some(f.path()), Vec::<(String, String)>::new())
}

fn invalid_keys(sink: &str) -> Vec<(String, String)> {
    match load(sink) {
        Err(sluice_config::ConfigError::Invalid(errors)) => {
            errors.into_iter().map(|e| (e.key, e.message)).collect()
        }
        other => panic!("expected invalid settings, got {other:?}"),
    }
}

#[test]
fn a_full_nats_sink_loads_and_prints_back_without_its_password() {
    let mut secret = NamedTempFile::new().unwrap();
    writeln!(secret, "s3cret-pass").unwrap();
    let sink = format!(
        r#"url = "nats://127.0.0.1:4222"
subject = "events.{{pipeline}}.{{key}}"
user = "sluice"
password_file = "{}"
max_in_flight = 64
ack_timeout = "2s"
create_stream = {{ stream = "EVENTS", subjects = ["events.>"], storage = "memory", duplicate_window = "10m" }}
"#,
        secret.path().display()
    );
    let s = load(&sink).expect("loads");
    let SinkSpec::Nats(n) = &s.pipelines[0].sink else {
        panic!("nats sink")
    };
    assert_eq!(n.urls, ["nats://127.0.0.1:4222"]);
    assert_eq!(n.max_in_flight, 64);
    assert_eq!(
        n.auth().unwrap(),
        NatsAuth::UserPassword {
            user: "sluice".into(),
            password: "s3cret-pass".into()
        }
    );
    let printed = s.to_toml_string_redacted().unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(!format!("{:?}", n.auth().unwrap()).contains("s3cret"));
    // What `sluice config` prints loads back to the same settings.
    let mut again = NamedTempFile::new().unwrap();
    write!(again, "{printed}").unwrap();
    let back = Settings::load_with_env(Some(again.path()), Vec::<(String, String)>::new())
        .expect("printed settings load");
    assert_eq!(back.pipelines, s.pipelines);
}

#[test]
fn wrong_nats_settings_are_refused_naming_each_key() {
    let errors = invalid_keys(
        r#"urls = []
subject = "a.{tenant}"
max_in_flight = 0
ack_timeout = "0s"
user = "u"
token_env = "SLUICE_TEST_SURELY_UNSET_TOKEN"
create_stream = { stream = "a.b", subjects = [], duplicate_window = "0s" }
"#,
    );
    let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "pipelines[0].sink.urls",
        "pipelines[0].sink.subject",
        "pipelines[0].sink.token_env",
        "pipelines[0].sink.max_in_flight",
        "pipelines[0].sink.ack_timeout",
        "pipelines[0].sink.create_stream.stream",
        "pipelines[0].sink.create_stream.subjects",
        "pipelines[0].sink.create_stream.duplicate_window",
    ] {
        assert!(keys.contains(&key), "{key} missing from {errors:#?}");
    }
    let subject = &errors
        .iter()
        .find(|(k, _)| k.ends_with(".subject"))
        .unwrap()
        .1;
    assert!(subject.contains("{tenant}"), "{subject}");
    let token = &errors
        .iter()
        .find(|(k, _)| k.ends_with(".token_env"))
        .unwrap()
        .1;
    assert!(token.contains("is not set"), "{token}");

    let errors = invalid_keys("url = \"nats://x:4222\"\nuser = \"u\"\n");
    assert!(
        errors
            .iter()
            .any(|(k, m)| k == "pipelines[0].sink" && m.contains("password")),
        "{errors:?}"
    );
    let errors = invalid_keys("url = \"nats://x:4222\"\nsubject = \"a..b\"\n");
    assert_eq!(errors[0].0, "pipelines[0].sink.subject", "{errors:?}");
}
