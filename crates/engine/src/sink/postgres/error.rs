//! What a PostgreSQL error means for the sink: a record the database
//! refused (record-level: retried, then dead-lettered with the database's
//! message) or a failure of the database itself (sink-level: the stage
//! stalls), named by the setting it concerns.

use deadpool_postgres::PoolError;
use sluice_config::PostgresSinkSpec;

use crate::sink::contract::SinkError;

/// A sink-level failure of the postgres sink: `sink.<setting>: <message>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink.{setting}: {message}")]
pub(super) struct PgFailure {
    /// The key of the sink's setting it concerns (`table`, `url`).
    pub(super) setting: &'static str,
    /// What went wrong.
    pub(super) message: String,
    /// Whether it may pass by itself (the server unreachable, restarting,
    /// the connection lost), as opposed to a wrong setting (password,
    /// table) that start-up should refuse.
    pub(super) transient: bool,
}

impl From<PgFailure> for SinkError {
    fn from(f: PgFailure) -> Self {
        SinkError::Setting {
            setting: format!("sink.{}", f.setting),
            message: f.message,
        }
    }
}

/// The outcome of a failed statement.
#[derive(Debug)]
pub(super) enum Fault {
    /// Some record of the statement is at fault (SQLSTATE classes 22, data
    /// exception, and 23, integrity constraint violation): the database's
    /// message, and whether it is a unique violation (23505).
    Record { message: String, duplicate: bool },
    /// The database or the connection is at fault.
    Sink(PgFailure),
}

/// Which settings errors are blamed on, for one sink.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keys {
    /// `url` or `host`: where the server is.
    pub(super) server: &'static str,
    /// `password_env`, `password_file`, or `user` when there is no password.
    pub(super) login: &'static str,
    /// `columns` in columns mode, else `table`: what names the columns.
    pub(super) columns: &'static str,
}

impl Keys {
    /// The keys of `spec`'s settings.
    pub(super) fn of(spec: &PostgresSinkSpec) -> Self {
        Self {
            server: if spec.url.is_some() { "url" } else { "host" },
            login: spec.password_key().unwrap_or("user"),
            columns: if spec.columns.is_empty() {
                "table"
            } else {
                "columns"
            },
        }
    }

    /// A failure of `setting`.
    pub(super) fn failure(
        &self,
        setting: &'static str,
        message: impl Into<String>,
        transient: bool,
    ) -> PgFailure {
        PgFailure {
            setting,
            message: message.into(),
            transient,
        }
    }

    /// What `e` means for the sink.
    pub(super) fn classify(&self, e: &tokio_postgres::Error) -> Fault {
        let Some(db) = e.as_db_error() else {
            let text = chain(e);
            // A certificate the CA does not vouch for, or a server without
            // TLS, does not pass by itself (tokio-postgres has no public
            // error kind: its message is the one sign).
            if text.contains("TLS") {
                return Fault::Sink(self.failure("tls.ca_file", text, false));
            }
            // No answer from the server: the connection failed or was lost.
            return Fault::Sink(self.failure(
                self.server,
                format!("cannot reach the database: {}", chain(e)),
                true,
            ));
        };
        let code = db.code().code();
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        let message = format!("{message} (SQLSTATE {code})");
        let (setting, transient) = match code.get(..2).unwrap_or_default() {
            "22" | "23" => {
                return Fault::Record {
                    message,
                    duplicate: code == "23505",
                };
            }
            // Invalid authorization: the password or the user.
            "28" => (self.login, false),
            // No such database.
            "3D" => ("dbname", false),
            // No such schema, or table.
            "3F" => ("table", false),
            // Connection exceptions, operator intervention (the server
            // shutting down or starting up), insufficient resources
            // (too many connections), a serialization failure or deadlock:
            // they pass.
            "08" | "53" | "40" => (self.server, true),
            "57" if code == "57014" => ("statement_timeout", true),
            "57" => (self.server, true),
            _ => match code {
                "42P01" => ("table", false),
                "42703" | "42804" => (self.columns, false),
                "42501" => ("user", false),
                // Anything else is about what the sink does to its table.
                _ => ("table", false),
            },
        };
        Fault::Sink(self.failure(setting, message, transient))
    }

    /// `e` when a record-level fault is not expected (the statement
    /// concerns no record): always sink-level.
    pub(super) fn sink_level(&self, e: &tokio_postgres::Error) -> PgFailure {
        match self.classify(e) {
            Fault::Sink(f) => f,
            Fault::Record { message, .. } => self.failure("table", message, false),
        }
    }

    /// What a failure to get a connection from the pool means.
    pub(super) fn pool(&self, e: PoolError, connect_timeout: std::time::Duration) -> PgFailure {
        match e {
            PoolError::Backend(e) => self.sink_level(&e),
            PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => {
                self.sink_level(&e)
            }
            PoolError::Timeout(_) => self.failure(
                "connect_timeout",
                format!(
                    "no connection to the database within {}",
                    humantime_like(connect_timeout)
                ),
                true,
            ),
            other => self.failure(self.server, other.to_string(), true),
        }
    }
}

/// `e` and its causes, `: `-separated (tokio-postgres puts the reason, e.g.
/// "Connection refused", in the source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `1.5s`, `250ms`.
fn humantime_like(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
