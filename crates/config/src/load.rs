//! Layered loading: built-in defaults < TOML file < `SLUICE__…` environment.

use std::path::Path;

use config::{Config, Environment, FileFormat, Format, Map, Source, Value};

use crate::{ConfigError, Settings};

/// Prefix of the environment variables (`SLUICE__SECTION__KEY`).
pub(crate) const ENV_PREFIX: &str = "SLUICE";
/// Separator between the prefix and the key, and between key segments.
pub(crate) const ENV_SEPARATOR: &str = "__";

/// Loads the layers; `env` of `None` reads the process environment.
pub(crate) fn load(
    path: Option<&Path>,
    env: Option<Map<String, String>>,
) -> Result<Settings, ConfigError> {
    let fail = |key: Option<String>, message: String| ConfigError::Load {
        path: path.map(Path::to_path_buf),
        key,
        message,
    };

    let defaults = Config::try_from(&Settings::default())
        .map_err(|e| fail(None, format!("built-in defaults: {e}")))?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| fail(None, e.to_string()))?;
        builder = builder.add_source(TomlText {
            uri: path.display().to_string(),
            text,
        });
    }
    builder = builder.add_source(IndexedEnv(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(env),
    ));

    let settings: Settings = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| {
            let (key, message) = describe(&e);
            fail(key.map(|k| dot_after_index(&k)), message)
        })?;
    settings.validate().map_err(ConfigError::Invalid)?;
    Ok(settings)
}

/// A TOML document read by us (so the path is exactly the one given and an
/// I/O error is reported as such), parsed by config's TOML format.
#[derive(Debug, Clone)]
struct TomlText {
    uri: String,
    text: String,
}

impl Source for TomlText {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        FileFormat::Toml
            .parse(Some(&self.uri), &self.text)
            .map_err(|cause| config::ConfigError::FileParse {
                uri: Some(self.uri.clone()),
                cause,
            })
    }
}

/// The environment source, with all-digit key segments turned into list
/// indexes: `SLUICE__PIPELINES__0__SINK__DIR` sets `pipelines[0].sink.dir`
/// (in the list that the file or the defaults gave) instead of replacing the
/// `pipelines` list with a table.
#[derive(Debug, Clone)]
struct IndexedEnv(Environment);

impl Source for IndexedEnv {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self
            .0
            .collect()?
            .into_iter()
            .map(|(key, value)| (index_segments(&key), value))
            .collect())
    }
}

/// `pipelines.0.stages.1.name` → `pipelines[0].stages[1].name`.
fn index_segments(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, seg) in key.split('.').enumerate() {
        if i > 0 && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Turns config's error into `(key path, message)`.
fn describe(err: &config::ConfigError) -> (Option<String>, String) {
    use config::ConfigError as E;
    match err {
        E::At { error, key, origin } => {
            let (inner_key, message) = describe(error);
            let key = match (key, inner_key) {
                (Some(k), Some(i)) => Some(format!("{k}.{i}")),
                (k, i) => k.clone().or(i),
            };
            let (key, message) = unknown_field(key, message);
            (key, with_origin(message, origin))
        }
        E::Type {
            origin,
            unexpected,
            expected,
            key,
        } => (
            key.clone(),
            with_origin(
                format!("invalid type: {unexpected}, expected {expected}"),
                origin,
            ),
        ),
        E::NotFound(key) => (Some(key.clone()), "missing required field".to_owned()),
        E::Message(message) => unknown_field(None, message.clone()),
        E::FileParse { cause, .. } => (None, cause.to_string()),
        other => (None, other.to_string()),
    }
}

/// config writes `pipelines[0]stages[1]transform`; put the dots back.
fn dot_after_index(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| *n != '.' && *n != '[') {
            out.push('.');
        }
    }
    out
}

fn with_origin(message: String, origin: &Option<String>) -> String {
    match origin {
        Some(o) => format!("{message} (from {o})"),
        None => message,
    }
}

/// serde says "unknown field `lisen`, expected one of …" at the *parent's*
/// key; name the field itself in the key path.
fn unknown_field(key: Option<String>, message: String) -> (Option<String>, String) {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (key, message);
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return (key, message);
    };
    let key = match key {
        Some(k) => format!("{k}.{field}"),
        None => field.to_owned(),
    };
    let tail = tail.trim_start_matches(',').trim();
    let message = if tail.is_empty() {
        "unknown key".to_owned()
    } else {
        format!("unknown key; {tail}")
    };
    (Some(key), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_segments_become_indexes() {
        assert_eq!(
            index_segments("pipelines.0.stages.12.name"),
            "pipelines[0].stages[12].name"
        );
        assert_eq!(index_segments("server.listen"), "server.listen");
    }

    #[test]
    fn dots_after_indexes() {
        assert_eq!(
            dot_after_index("pipelines[0]stages[1][2]transform.kind"),
            "pipelines[0].stages[1][2].transform.kind"
        );
    }

    #[test]
    fn unknown_field_names_the_key() {
        let (k, m) = unknown_field(
            Some("server".into()),
            "unknown field `lisen`, expected one of `listen`".into(),
        );
        assert_eq!(k.as_deref(), Some("server.lisen"));
        assert_eq!(m, "unknown key; expected one of `listen`");
    }
}
