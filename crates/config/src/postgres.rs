//! `kind = "postgres"`: the settings of the PostgreSQL sink and their rules.
//!
//! ```toml
//! [pipelines.sink]
//! kind = "postgres"
//! url = "postgres://sluice@db.internal:5432/events"   # or host / port / dbname / user
//! password_env = "SLUICE_PG_PASSWORD"                 # or password_file = "/run/secrets/pg"
//! table = "public.orders"
//! mode = "columns"                                    # or "envelope" (the default)
//! columns = { order_id = "bigint", status = "text", total = "double precision", at = "timestamptz" }
//! ```
//!
//! The password is never written in the configuration (a password inside
//! `url` is refused): it comes from an environment variable or a file, like
//! the bearer tokens, and `sluice config` has nothing to redact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sections::{SecretError, secret_from_env, secret_from_file};
use crate::validate::ValidationErrors;

/// The settings of a `kind = "postgres"` sink (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSpec {
    /// A connection URL (`postgres://user@host:port/dbname?sslmode=…`) or a
    /// libpq `key=value` string, without a password. Exclusive with
    /// `host` / `port` / `dbname` / `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Server host name or address (when `url` is not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Server port. Default 5432.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Database. Default: the server's default (the user's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// User name. Default `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file holding the password (trailing line breaks trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The table written to, `name` or `schema.name`. Required. It must have
    /// a unique constraint on `(source_id, seq)` (what makes delivery
    /// exactly once); `create_table = true` creates it so.
    pub table: String,
    /// How records map to rows. Default `envelope`.
    #[serde(default)]
    pub mode: PostgresMode,
    /// `columns` mode: the typed columns filled from the top-level fields
    /// of the record's JSON payload, by name (besides `source_id` and
    /// `seq`). Must be empty in `envelope` mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, ColumnType>,
    /// Create the table (with its unique constraint) when it is missing.
    /// Default `false`: a missing table stops start-up.
    #[serde(default)]
    pub create_table: bool,
    /// How each batch is inserted. Default `fallback`.
    #[serde(default)]
    pub staging: Staging,
    /// The server-side `statement_timeout` of the sink's sessions, and the
    /// bound of each batch's round trips on the client side. Default `30s`.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long establishing a connection may take. Default `10s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most connections the sink opens (a bounded pool). Default 2.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// TLS to the server (rustls), required and verified when set.
    /// Absent: plaintext (the `url`'s `sslmode` is then ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PostgresTls>,
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

/// `tls = { ca_file = "…" }`: TLS to the server, verified against a CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTls {
    /// PEM file with the CA certificate(s) the server's certificate must
    /// chain to. Required.
    pub ca_file: PathBuf,
}

/// How records map to rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    /// The whole record: `source_id text, seq bigint, key bytea, payload
    /// jsonb` (a JSON payload) `, payload_bytes bytea` (any other payload),
    /// `attributes jsonb, event_time timestamptz, ingested_at timestamptz`.
    #[default]
    Envelope,
    /// Typed columns from the top-level fields of a JSON payload, plus
    /// `source_id` and `seq`.
    Columns,
}

/// How a batch reaches the table; both are exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Staging {
    /// `COPY` straight into the table, in the batch's transaction; the
    /// unique `(source_id, seq)` constraint refuses a batch holding a row
    /// already there, and only such a batch (or one with a bad record) is
    /// done again through a staging table with `ON CONFLICT DO NOTHING`.
    /// As fast as a plain `COPY` while nothing is resent (BENCHMARKS.md).
    #[default]
    Fallback,
    /// Every batch: `COPY` into a temporary staging table, then `INSERT …
    /// SELECT … ON CONFLICT (source_id, seq) DO NOTHING`.
    Always,
}

/// The type of a `columns` mode column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    /// A JSON string (numbers and booleans as their JSON text).
    #[serde(rename = "text")]
    Text,
    /// A JSON integer within 32 bits.
    #[serde(rename = "integer")]
    Integer,
    /// A JSON integer within 64 bits.
    #[serde(rename = "bigint")]
    Bigint,
    /// A JSON number.
    #[serde(rename = "double precision")]
    DoublePrecision,
    /// A JSON boolean.
    #[serde(rename = "boolean")]
    Boolean,
    /// Any JSON value, as it came.
    #[serde(rename = "jsonb")]
    Jsonb,
    /// An RFC 3339 string (`2026-12-01T10:00:00.5+01:00`) or a number of
    /// milliseconds since the Unix epoch.
    #[serde(rename = "timestamptz")]
    Timestamptz,
    /// A base64 string (standard alphabet, padded).
    #[serde(rename = "bytea")]
    Bytea,
}

impl ColumnType {
    /// The SQL name of the type, as in the configuration.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "integer",
            Self::Bigint => "bigint",
            Self::DoublePrecision => "double precision",
            Self::Boolean => "boolean",
            Self::Jsonb => "jsonb",
            Self::Timestamptz => "timestamptz",
            Self::Bytea => "bytea",
        }
    }
}

impl PostgresSinkSpec {
    /// The columns every table of the sink has: the idempotency key.
    pub const KEY_COLUMNS: [&'static str; 2] = ["source_id", "seq"];

    /// A sink writing `table` of the server at `url`, envelope mode, every
    /// other setting at its default.
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            host: None,
            port: None,
            dbname: None,
            user: None,
            password_env: None,
            password_file: None,
            table: table.into(),
            mode: PostgresMode::default(),
            columns: BTreeMap::new(),
            create_table: false,
            staging: Staging::default(),
            statement_timeout: default_statement_timeout(),
            connect_timeout: default_connect_timeout(),
            pool_size: default_pool_size(),
            tls: None,
            delay: Duration::ZERO,
            fail_rate: 0.0,
        }
    }

    /// The key of the setting that gives the password (`password_env` or
    /// `password_file`), `None` when there is no password.
    pub fn password_key(&self) -> Option<&'static str> {
        match (&self.password_env, &self.password_file) {
            (Some(_), _) => Some("password_env"),
            (None, Some(_)) => Some("password_file"),
            (None, None) => None,
        }
    }

    /// The password: the value of the `password_env` variable or the
    /// contents of `password_file`, read anew on every call; `None` when
    /// neither is given. The error never quotes a secret.
    pub fn password(&self) -> Result<Option<String>, SecretError> {
        match (&self.password_env, &self.password_file) {
            (Some(name), None) => secret_from_env(name).map(Some),
            (None, Some(path)) => secret_from_file(path).map(Some),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(SecretError::NotExactlyOne {
                given: "password_env and password_file given".to_owned(),
            }),
        }
    }
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_pool_size() -> usize {
    2
}

/// Whether a connection string carries a password: `user:password@` in a
/// URL, or a `password` parameter (URL query or `key=value` form).
fn has_password(url: &str) -> bool {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return true;
        }
    }
    url.split(['?', '&', ' ', '\t', '\n'])
        .any(|part| part.trim_start().starts_with("password="))
}

/// The rules of a postgres sink at `key` (`pipelines[0].sink`).
pub(crate) fn validate(key: &str, p: &PostgresSinkSpec, e: &mut ValidationErrors) {
    let conn_keys = [
        ("host", p.host.is_some()),
        ("port", p.port.is_some()),
        ("dbname", p.dbname.is_some()),
        ("user", p.user.is_some()),
    ];
    match &p.url {
        Some(url) => {
            if url.trim().is_empty() {
                e.push(format!("{key}.url"), format!("{key}.url must not be empty"));
            }
            if has_password(url) {
                e.push(
                    format!("{key}.url"),
                    format!(
                        "{key}.url must not contain a password (it would be printed with the configuration); use {key}.password_env or {key}.password_file"
                    ),
                );
            }
            for (k, _) in conn_keys.iter().filter(|(_, given)| *given) {
                e.push(
                    format!("{key}.{k}"),
                    format!("{key}.{k} must not be given with {key}.url (put it in the URL)"),
                );
            }
        }
        None => match &p.host {
            None => e.push(
                format!("{key}.url"),
                format!("{key}.url or {key}.host is required"),
            ),
            Some(host) if host.trim().is_empty() => {
                e.push(
                    format!("{key}.host"),
                    format!("{key}.host must not be empty"),
                );
            }
            Some(_) => {}
        },
    }
    if p.port == Some(0) {
        e.push(
            format!("{key}.port"),
            format!("{key}.port must be greater than 0"),
        );
    }
    match p.password() {
        Err(SecretError::NotExactlyOne { .. }) => e.push(
            format!("{key}.password_env"),
            format!("{key}.password_env and {key}.password_file: give at most one"),
        ),
        Err(err) => {
            let pkey = format!("{key}.{}", p.password_key().unwrap_or("password_env"));
            e.push(pkey.clone(), format!("{pkey}: {err}"));
        }
        Ok(_) => {}
    }
    if p.table.trim().is_empty() {
        e.push(
            format!("{key}.table"),
            format!("{key}.table must not be empty"),
        );
    } else if p.table.contains('\0') || p.table.split('.').count() > 2 {
        e.push(
            format!("{key}.table"),
            format!("{key}.table {:?} must be `name` or `schema.name`", p.table),
        );
    } else if p.table.split('.').any(|part| part.is_empty()) {
        e.push(
            format!("{key}.table"),
            format!("{key}.table {:?} has an empty part", p.table),
        );
    }
    match p.mode {
        PostgresMode::Envelope if !p.columns.is_empty() => e.push(
            format!("{key}.columns"),
            format!("{key}.columns is only for mode = \"columns\" (mode is \"envelope\")"),
        ),
        PostgresMode::Columns if p.columns.is_empty() => e.push(
            format!("{key}.columns"),
            format!("{key}.columns must name at least one column in mode = \"columns\""),
        ),
        _ => {}
    }
    for name in p.columns.keys() {
        let ckey = format!("{key}.columns.{name}");
        if name.trim().is_empty() || name.contains('\0') {
            e.push(
                format!("{key}.columns"),
                format!("{key}.columns: a column name must not be empty"),
            );
        } else if PostgresSinkSpec::KEY_COLUMNS.contains(&name.as_str()) {
            e.push(
                ckey.clone(),
                format!(
                    "{ckey}: {name} is always written (the idempotency key); do not declare it"
                ),
            );
        }
    }
    if p.statement_timeout.is_zero() {
        e.push(
            format!("{key}.statement_timeout"),
            format!("{key}.statement_timeout must be greater than 0s"),
        );
    }
    if p.connect_timeout.is_zero() {
        e.push(
            format!("{key}.connect_timeout"),
            format!("{key}.connect_timeout must be greater than 0s"),
        );
    }
    if p.pool_size == 0 {
        e.push(
            format!("{key}.pool_size"),
            format!("{key}.pool_size must be greater than 0"),
        );
    }
    if let Some(tls) = &p.tls
        && tls.ca_file.as_os_str().is_empty()
    {
        e.push(
            format!("{key}.tls.ca_file"),
            format!("{key}.tls.ca_file must not be empty (a PEM file)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn passwords_in_connection_strings_are_found() {
        for url in [
            "postgres://u:p@h/db",
            "postgresql://u:p@h:5432",
            "postgres://u@h/db?password=x",
            "host=h user=u password=x",
            "postgres://u@h/db?sslmode=require&password=x",
        ] {
            assert!(has_password(url), "{url}");
        }
        for url in [
            "postgres://u@h/db",
            "postgres://h:5432/db",
            "postgres://u@h:5432/db?sslmode=require",
            "host=h user=u dbname=d",
        ] {
            assert!(!has_password(url), "{url}");
        }
    }
}
