//! `kind = "nats"`: the NATS JetStream sink's settings and their rules.
//!
//! ```toml
//! [pipelines.sink]
//! kind = "nats"
//! urls = ["nats://127.0.0.1:4222"]
//! subject = "sluice.{pipeline}.{source_id}"
//! user = "sluice"
//! password_env = "NATS_PASSWORD"     # or password_file = "/run/secrets/nats"
//! max_in_flight = 1024
//!
//! [pipelines.sink.create_stream]
//! stream = "SLUICE"
//! subjects = ["sluice.>"]
//! storage = "file"
//! duplicate_window = "2m"
//! ```
//!
//! Secrets are never written in the configuration itself, only the name of
//! a variable or a file that holds them, so `sluice config` prints none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sections::{SecretError, secret_from_env, secret_from_file};
use crate::validate::ValidationErrors;

/// The placeholders a `subject` template may hold.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &["{pipeline}", "{source_id}", "{key}"];

/// Settings of the `nats` sink: JetStream publishing, one message per
/// record, each with the header `Nats-Msg-Id: <source_id>:<seq>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkSpec {
    /// Server URLs (`nats://host:port`, `tls://host:port`), tried in turn;
    /// one string or a list (key `url` also accepted). Required.
    #[serde(alias = "url", deserialize_with = "crate::pipeline::list_or_csv")]
    pub urls: Vec<String>,
    /// The subject of each record's message; `{pipeline}`, `{source_id}` and
    /// `{key}` (the record's key as UTF-8, `_` when empty) are replaced.
    /// Default `sluice.{pipeline}.{source_id}`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A NATS credentials file (`.creds`: JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Name of an environment variable holding an authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// A file holding an authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// User name; its password comes from `password_env` or `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Name of an environment variable holding `user`'s password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file holding `user`'s password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS to the server; absent: as the URL says (`tls://` requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
    /// Most messages published and not yet acknowledged by JetStream
    /// (> 0). Default 1024.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Longest wait for a connection to a server. Default `5s`.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for JetStream's PubAck of a message (and for a
    /// JetStream API answer); past it the batch fails sink-level and is
    /// published again. Default `5s`.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The stream to create (or check) at connection; absent: the stream
    /// must exist already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_stream: Option<NatsStreamSpec>,
    /// Testing: pause before each batch. Default `0s`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub delay: Duration,
    /// Testing: fraction of records the sink refuses. Default 0.
    #[serde(default, skip_serializing_if = "crate::pipeline::is_zero")]
    pub fail_rate: f64,
}

/// `[pipelines.sink.tls]` of a `nats` sink: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// CA certificates the server's certificate must chain to (in addition
    /// to the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// A client certificate (with `key`), for servers that verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Refuse a connection without TLS. Default `true`.
    #[serde(default = "yes")]
    pub required: bool,
}

/// `[pipelines.sink.create_stream]`: a JetStream stream created when the
/// sink connects, unless one of that name exists (which is then used as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamSpec {
    /// The stream's name. Required.
    pub stream: String,
    /// The subjects it captures (wildcards allowed). Required.
    pub subjects: Vec<String>,
    /// `file` (default) or `memory`.
    #[serde(default)]
    pub storage: NatsStorage,
    /// The window in which a message with an already seen `Nats-Msg-Id` is
    /// dropped as a duplicate. Default `2m` (JetStream's default).
    #[serde(default = "two_minutes", with = "humantime_serde")]
    pub duplicate_window: Duration,
}

/// Where a created stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsStorage {
    /// On disk.
    #[default]
    File,
    /// In memory (lost when the server stops).
    Memory,
}

/// How the sink authenticates, resolved from a [`NatsSinkSpec`].
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// A credentials file.
    Credentials(PathBuf),
    /// A token.
    Token(String),
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Credentials(p) => write!(f, "Credentials({})", p.display()),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
        }
    }
}

/// Why the credentials of a [`NatsSinkSpec`] cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// Two ways of authenticating are given (or a password without a user).
    #[error("{0}")]
    Conflict(String),
    /// A secret cannot be read; `field` is its key.
    #[error("{field}: {source}")]
    Secret {
        /// `token_env`, `token_file`, `password_env` or `password_file`.
        field: &'static str,
        /// Why.
        source: SecretError,
    },
}

impl NatsAuthError {
    /// The key (below the sink's) the problem is about, when one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Conflict(_) => None,
            Self::Secret { field, .. } => Some(field),
        }
    }
}

impl NatsSinkSpec {
    /// A spec with `urls` and `subject`, every other field its default.
    pub fn new(urls: Vec<String>, subject: impl Into<String>) -> Self {
        Self {
            urls,
            subject: subject.into(),
            credentials_file: None,
            token_env: None,
            token_file: None,
            user: None,
            password_env: None,
            password_file: None,
            tls: None,
            max_in_flight: default_max_in_flight(),
            connect_timeout: five_seconds(),
            ack_timeout: five_seconds(),
            create_stream: None,
            delay: Duration::ZERO,
            fail_rate: 0.0,
        }
    }

    /// The credentials, secrets read anew (from the environment or files).
    /// At most one of `credentials_file`, a token or `user` may be given; a
    /// token by exactly one of `token_env` / `token_file`, a user's password
    /// likewise by exactly one of `password_env` / `password_file`.
    pub fn auth(&self) -> Result<NatsAuth, NatsAuthError> {
        let token = one_secret(
            ("token_env", &self.token_env),
            ("token_file", &self.token_file),
        )?;
        let password = one_secret(
            ("password_env", &self.password_env),
            ("password_file", &self.password_file),
        )?;
        let given = [
            self.credentials_file.as_ref().map(|_| "credentials_file"),
            token.as_ref().map(|_| "a token"),
            self.user.as_ref().map(|_| "user"),
        ];
        let given: Vec<&str> = given.into_iter().flatten().collect();
        if given.len() > 1 {
            return Err(NatsAuthError::Conflict(format!(
                "give at most one of credentials_file, a token or user ({} given)",
                given.join(" and ")
            )));
        }
        match (&self.credentials_file, token, &self.user, password) {
            (Some(path), ..) => Ok(NatsAuth::Credentials(path.clone())),
            (_, Some(token), ..) => Ok(NatsAuth::Token(token)),
            (_, _, Some(user), Some(password)) => Ok(NatsAuth::UserPassword {
                user: user.clone(),
                password,
            }),
            (_, _, Some(_), None) => Err(NatsAuthError::Conflict(
                "user needs password_env or password_file".into(),
            )),
            (_, _, None, Some(_)) => Err(NatsAuthError::Conflict(
                "password_env or password_file needs user".into(),
            )),
            (None, None, None, None) => Ok(NatsAuth::None),
        }
    }
}

/// The secret given by exactly one of an env field and a file field, if any.
fn one_secret(
    (env_key, env): (&'static str, &Option<String>),
    (file_key, file): (&'static str, &Option<PathBuf>),
) -> Result<Option<String>, NatsAuthError> {
    let secret = |field, r: Result<String, SecretError>| {
        r.map(Some)
            .map_err(|source| NatsAuthError::Secret { field, source })
    };
    match (env, file) {
        (Some(_), Some(_)) => Err(NatsAuthError::Conflict(format!(
            "give one of {env_key} or {file_key}, not both"
        ))),
        (Some(name), None) => secret(env_key, secret_from_env(name)),
        (None, Some(path)) => secret(file_key, secret_from_file(path)),
        (None, None) => Ok(None),
    }
}

/// Whether `subject` is a subject a message may be published to: tokens
/// separated by `.`, none empty, no whitespace, no wildcard (`*`, `>`).
pub fn is_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

/// The rules of a `nats` sink at `key` (`pipelines[0].sink`).
pub(crate) fn validate(key: &str, n: &NatsSinkSpec, e: &mut ValidationErrors) {
    let urls = format!("{key}.urls");
    if n.urls.is_empty() {
        e.push(
            urls.clone(),
            format!("{urls} must name at least one server"),
        );
    }
    for (i, url) in n.urls.iter().enumerate() {
        if url.trim().is_empty() || url.chars().any(char::is_whitespace) {
            e.push(
                format!("{urls}[{i}]"),
                format!("{urls}[{i}] ({url:?}) must be a server URL such as nats://127.0.0.1:4222"),
            );
        }
    }
    subject_template(&format!("{key}.subject"), &n.subject, e);
    match n.auth() {
        Ok(_) => {}
        Err(err) => {
            let ekey = match err.field() {
                Some(f) => format!("{key}.{f}"),
                None => key.to_owned(),
            };
            let message = match &err {
                NatsAuthError::Secret { source, .. } => format!("{ekey}: {source}"),
                NatsAuthError::Conflict(m) => format!("{ekey}: {m}"),
            };
            e.push(ekey, message);
        }
    }
    if let Some(path) = &n.credentials_file {
        readable(e, format!("{key}.credentials_file"), path);
    }
    if n.max_in_flight == 0 {
        let k = format!("{key}.max_in_flight");
        e.push(k.clone(), format!("{k} must be greater than 0"));
    }
    for (field, d) in [
        ("connect_timeout", n.connect_timeout),
        ("ack_timeout", n.ack_timeout),
    ] {
        if d.is_zero() {
            let k = format!("{key}.{field}");
            e.push(k.clone(), format!("{k} must be greater than 0s"));
        }
    }
    if let Some(tls) = &n.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            let k = format!("{key}.tls");
            e.push(
                k.clone(),
                format!("{k}: give both cert and key, or neither"),
            );
        }
        for (field, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(path) = path {
                readable(e, format!("{key}.tls.{field}"), path);
            }
        }
    }
    if let Some(s) = &n.create_stream {
        let k = format!("{key}.create_stream.stream");
        if s.stream.is_empty() || s.stream.contains(['.', '*', '>', ' ', '\t', '/', '\\']) {
            e.push(
                k.clone(),
                format!("{k} ({:?}) must be a stream name: not empty, no '.', '*', '>', '/', '\\' or whitespace", s.stream),
            );
        }
        let k = format!("{key}.create_stream.subjects");
        if s.subjects.is_empty() {
            e.push(k.clone(), format!("{k} must name at least one subject"));
        }
        for (i, subject) in s.subjects.iter().enumerate() {
            if subject.is_empty()
                || subject
                    .split('.')
                    .any(|t| t.is_empty() || t.contains(char::is_whitespace))
            {
                e.push(
                    format!("{k}[{i}]"),
                    format!("{k}[{i}] ({subject:?}) must be a subject (wildcards allowed)"),
                );
            }
        }
        if s.duplicate_window.is_zero() {
            let k = format!("{key}.create_stream.duplicate_window");
            e.push(
                k.clone(),
                format!("{k} must be greater than 0s (it is what makes resends exactly once)"),
            );
        }
    }
}

/// A subject template: known placeholders only, and a valid subject once
/// they are filled in.
fn subject_template(key: &str, template: &str, e: &mut ValidationErrors) {
    let mut filled = template.to_owned();
    for p in SUBJECT_PLACEHOLDERS {
        filled = filled.replace(p, "x");
    }
    if let Some(at) = filled.find('{') {
        let rest = &filled[at..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        e.push(
            key.to_owned(),
            format!(
                "{key} has an unknown placeholder {} (known: {})",
                &rest[..end],
                SUBJECT_PLACEHOLDERS.join(", ")
            ),
        );
    } else if !is_publish_subject(&filled) {
        e.push(
            key.to_owned(),
            format!(
                "{key} ({template:?}) must be a subject: tokens separated by '.', none empty, no whitespace or wildcard"
            ),
        );
    }
}

fn readable(e: &mut ValidationErrors, key: String, path: &Path) {
    if let Err(err) = std::fs::metadata(path) {
        e.push(
            key.clone(),
            format!("{key}: cannot read {}: {err}", path.display()),
        );
    }
}

fn default_subject() -> String {
    "sluice.{pipeline}.{source_id}".to_owned()
}

fn default_max_in_flight() -> usize {
    1024
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

fn yes() -> bool {
    true
}
