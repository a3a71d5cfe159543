//! The engine-wide sections of [`Settings`](crate::Settings): server, buffer,
//! metrics and log. (The memory and retry sections are the buffer crate's own
//! [`MemoryGateConfig`](sluice_buffer::MemoryGateConfig) and
//! [`RetryPolicy`](sluice_buffer::RetryPolicy).)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_buffer::{Limit, Limits, Watermarks};

/// One mebibyte.
const MIB: u64 = 1024 * 1024;

/// `[server]`: the gRPC endpoint sources connect to.
///
/// ```toml
/// [server]
/// listen = "127.0.0.1:50051"
/// max_message_bytes = 16777216
/// keepalive_interval = "30s"
/// keepalive_timeout = "10s"
/// shutdown_timeout = "30s"
/// open_timeout = "10s"
/// max_sessions_per_connection = 100
/// max_unacked_per_session = 100000
/// http2_stream_window = 1048576
/// http2_connection_window = 1048576
/// max_connections = 1024
/// message_timeout = "30s"
/// # uncovered_message_bytes = 4194304   # default: derived, see the field
///
/// [server.auth]            # optional: bearer tokens (off when no token is listed)
/// tokens = [
///   { token = "s3cret", sources = ["orders", "web-*"] },
///   { token_env = "ADMIN_TOKEN", sources = ["*"] },   # or token_file = "/path"
/// ]
///
/// [server.tls]             # optional: TLS (plaintext when the table is absent)
/// cert = "/etc/sluice/cert.pem"
/// key = "/etc/sluice/key.pem"
/// client_ca = "/etc/sluice/clients-ca.pem"   # optional: require client certificates
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the gRPC server binds. Default `127.0.0.1:50051` (local only).
    pub listen: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes. Default 16 MiB, above
    /// tonic's 4 MiB default so that a full batch of larger records fits.
    pub max_message_bytes: usize,
    /// Period of HTTP/2 keepalive pings. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long to wait for a keepalive ping's answer before closing the
    /// connection. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// On shutdown, how long open streams get to finish before they are cut.
    /// Default `30s`; `0s` stops at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a new `Ingest.Stream` may take to send its first message
    /// (`Open`) before the engine ends it `DEADLINE_EXCEEDED`. Without it a
    /// client could open streams that never send anything and hold their
    /// resources forever (bounded per connection by
    /// `max_sessions_per_connection`, but not in total). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub open_timeout: Duration,
    /// Most concurrent `Ingest.Stream` sessions (HTTP/2 streams) one client
    /// connection may have open; further streams wait until one ends (the
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` the server announces, which
    /// covers every RPC on the connection). Default 100.
    pub max_sessions_per_connection: u32,
    /// Most records one session may have admitted and not yet completed
    /// (records completed above a gap, which a selective ack lets the
    /// source forget, do not count; `Opened.max_unacked_records`). The
    /// engine grants a session credit only while its unacked records plus a
    /// full credit window fit under this (and the credit window is capped at
    /// it), so a source that obeys its credit is never rejected for it;
    /// records beyond it are rejected `SOURCE_LIMIT`. Default 100 000.
    pub max_unacked_per_session: u64,
    /// The HTTP/2 receive window of each stream (its
    /// `SETTINGS_INITIAL_WINDOW_SIZE`), in bytes: how much a source may
    /// send on a stream that the engine has not read yet. Between 65 535
    /// and 2 147 483 647; default 1 MiB (hyper's). One of the transport
    /// buffers outside the byte limits (docs/architecture.md, "Memory
    /// budget").
    pub http2_stream_window: u32,
    /// The HTTP/2 receive window of each connection, in bytes: how much all
    /// streams of a connection together may have sent and the engine not
    /// read yet. Between 65 535 and 2 147 483 647; default 1 MiB (hyper's).
    pub http2_connection_window: u32,
    /// Most client connections served at once; a connection beyond it
    /// waits in the listen backlog until one closes (with one warning per
    /// episode). Each connection may hold up to `http2_connection_window`
    /// bytes the engine has not read, outside the byte limits
    /// (docs/architecture.md, "Memory budget"). Default 1024.
    pub max_connections: u32,
    /// Most bytes of messages *not covered by credit* the engine reads at
    /// once, over all streams. A batch that fits in the byte credit its
    /// stream holds (the capacity reserved for it) is read at once; any other
    /// message of more than 16 KiB (an `Open` before any credit, a resend of
    /// records already admitted, a record under the large-record rule, a
    /// batch beyond the credit) first takes its size from this pool, and its
    /// stream is not read further until it can: such messages wait, in
    /// order, instead of each holding up to `max_message_bytes` in the
    /// decoder. A message larger than the pool that its credit does not
    /// cover ends the stream `OUT_OF_RANGE` (`Opened.max_record_bytes` is
    /// capped so that a record up to it always fits). Default (absent): the
    /// smaller of `max_message_bytes` and an eighth of `buffer.global.bytes`
    /// ([`Settings::uncovered_message_bytes`](crate::Settings::uncovered_message_bytes)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncovered_message_bytes: Option<usize>,
    /// How long a message that holds room in the uncovered-message pool
    /// (`uncovered_message_bytes`) may take to arrive whole; past it the
    /// stream ends `DEADLINE_EXCEEDED` and the room returns to the pool, so
    /// that a client sending the start of a message and never its end holds
    /// the pool for at most this long. Default `30s` (16 MiB at 0.5 MiB/s).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// `[server.auth]`: bearer tokens. No token listed (the default): no
    /// authentication.
    pub auth: AuthSettings,
    /// `[server.tls]`: TLS certificate and key. Absent (the default):
    /// plaintext HTTP/2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

/// `[server.auth]`: per-source bearer tokens.
///
/// When at least one token is listed, every `Ingest.Stream` and `Admin.Stats`
/// call must carry `authorization: Bearer <token>` metadata with a listed
/// token (else `UNAUTHENTICATED`), and a stream may only `Open` a source id
/// its token covers (else `PERMISSION_DENIED`). A source pattern is an exact
/// source id, a prefix followed by `*` (`"web-*"` covers `web-1`), or `"*"`
/// (every source). Health and reflection need no token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The accepted tokens and the sources each may feed.
    pub tokens: Vec<TokenSpec>,
}

impl AuthSettings {
    /// Whether authentication is on (at least one token is listed).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// One accepted bearer token: exactly one of `token` (the secret itself),
/// `token_env` (the name of an environment variable holding it) or
/// `token_file` (a file holding it), and the sources it may feed.
///
/// ```toml
/// [[server.auth.tokens]]
/// token_env = "ORDERS_TOKEN"            # read from the environment
/// sources = ["orders"]
///
/// [[server.auth.tokens]]
/// token_file = "/run/secrets/web"       # file contents, trailing newline trimmed
/// sources = ["web-*"]
/// ```
///
/// [`secret`](Self::secret) resolves the token; validation
/// ([`Settings::validate`](crate::Settings::validate), run by every load)
/// resolves each token and reports a missing variable or an unreadable file
/// as an error naming the key, never quoting a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The secret the client sends as `authorization: Bearer <token>`, given
    /// in the configuration itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Name of an environment variable (of the engine process) that holds
    /// the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// A file that holds the secret; trailing line breaks are trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Source id patterns this token may open: exact ids, `prefix*`, or `*`.
    pub sources: Vec<String>,
}

/// Why the secret of a [`TokenSpec`] cannot be had. The message never
/// contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// None or several of `token`, `token_env`, `token_file` are given.
    #[error("give exactly one of token, token_env or token_file ({given})")]
    NotExactlyOne {
        /// What was given: `"none given"` or e.g. `"token and token_env given"`.
        given: String,
    },
    /// `token_env` is not a usable variable name (empty, or with `=` or NUL).
    #[error("{name:?} is not an environment variable name")]
    BadEnvName {
        /// The name given.
        name: String,
    },
    /// The environment variable named by `token_env` is not set.
    #[error("environment variable {name} is not set")]
    EnvNotSet {
        /// The variable.
        name: String,
    },
    /// The environment variable named by `token_env` is not valid Unicode.
    #[error("environment variable {name} is not valid Unicode")]
    EnvNotUnicode {
        /// The variable.
        name: String,
    },
    /// The environment variable named by `token_env` is empty.
    #[error("environment variable {name} is empty")]
    EnvEmpty {
        /// The variable.
        name: String,
    },
    /// `token_file` is an empty path.
    #[error("must not be empty (a file holding the secret)")]
    EmptyPath,
    /// The file named by `token_file` cannot be read (or is not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file named by `token_file` holds nothing but line breaks.
    #[error("file {} is empty", path.display())]
    FileEmpty {
        /// The file.
        path: PathBuf,
    },
}

impl SecretError {
    /// The key of the [`TokenSpec`] field the problem is about (`token_env`
    /// or `token_file`), or `None` when it is about the entry as a whole.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::NotExactlyOne { .. } => None,
            Self::BadEnvName { .. }
            | Self::EnvNotSet { .. }
            | Self::EnvNotUnicode { .. }
            | Self::EnvEmpty { .. } => Some("token_env"),
            Self::EmptyPath | Self::File { .. } | Self::FileEmpty { .. } => Some("token_file"),
        }
    }
}

impl TokenSpec {
    /// What [`redacted`](crate::Settings::redacted) puts in place of a
    /// `token` secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// A token given in the configuration itself (`token = "..."`).
    pub fn inline(token: impl Into<String>, sources: &[&str]) -> Self {
        Self::with(Some(token.into()), None, None, sources)
    }

    /// A token read from the environment variable `name` (`token_env`).
    pub fn from_env(name: impl Into<String>, sources: &[&str]) -> Self {
        Self::with(None, Some(name.into()), None, sources)
    }

    /// A token read from the file at `path` (`token_file`).
    pub fn from_file(path: impl Into<PathBuf>, sources: &[&str]) -> Self {
        Self::with(None, None, Some(path.into()), sources)
    }

    fn with(
        token: Option<String>,
        token_env: Option<String>,
        token_file: Option<PathBuf>,
        sources: &[&str],
    ) -> Self {
        Self {
            token,
            token_env,
            token_file,
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The key of the field that gives the secret (`token`, `token_env` or
    /// `token_file`); `token` when none or several are given.
    pub fn secret_field(&self) -> &'static str {
        match (&self.token, &self.token_env, &self.token_file) {
            (None, Some(_), None) => "token_env",
            (None, None, Some(_)) => "token_file",
            _ => "token",
        }
    }

    /// The secret: `token` as given, the value of the `token_env` variable
    /// (of this process), or the contents of `token_file` without trailing
    /// line breaks. Read anew on every call. Errors: none or several of the
    /// three given, a variable not set, not Unicode or empty, a file that
    /// cannot be read or is empty. An inline `token` is returned even when
    /// empty (validation reports it).
    pub fn secret(&self) -> Result<String, SecretError> {
        match (&self.token, &self.token_env, &self.token_file) {
            (Some(token), None, None) => Ok(token.clone()),
            (None, Some(name), None) => secret_from_env(name),
            (None, None, Some(path)) => secret_from_file(path),
            (token, env, file) => {
                let given: Vec<&str> = [
                    token.as_ref().map(|_| "token"),
                    env.as_ref().map(|_| "token_env"),
                    file.as_ref().map(|_| "token_file"),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(SecretError::NotExactlyOne {
                    given: if given.is_empty() {
                        "none given".to_owned()
                    } else {
                        format!("{} given", given.join(" and "))
                    },
                })
            }
        }
    }
}

/// The secret held by the environment variable `name` (of this process):
/// set, Unicode and non-empty. The one way every `*_env` secret is read.
pub(crate) fn secret_from_env(name: &str) -> Result<String, SecretError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(SecretError::BadEnvName {
            name: name.to_owned(),
        });
    }
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Err(SecretError::EnvEmpty {
            name: name.to_owned(),
        }),
        Ok(v) => Ok(v),
        Err(std::env::VarError::NotPresent) => Err(SecretError::EnvNotSet {
            name: name.to_owned(),
        }),
        // The value is not quoted: it is a secret.
        Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode {
            name: name.to_owned(),
        }),
    }
}

/// The secret held by the file at `path`, trailing line breaks trimmed
/// (a Docker or Kubernetes secret ends with one). The one way every
/// `*_file` secret is read.
pub(crate) fn secret_from_file(path: &std::path::Path) -> Result<String, SecretError> {
    if path.as_os_str().is_empty() {
        return Err(SecretError::EmptyPath);
    }
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(SecretError::FileEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_owned())
}

impl std::fmt::Debug for TokenSpec {
    /// Never prints the token (the variable name and the file are shown).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("token", &self.token.as_ref().map(|_| Self::REDACTED))
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("sources", &self.sources)
            .finish()
    }
}

/// `[server.tls]`: the server's certificate chain and private key, PEM files,
/// and optionally the CA that client certificates must be signed by
/// (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
    /// PEM file with the CA certificate(s) that client certificates must
    /// chain to. When set, every client must present a certificate signed by
    /// it (mutual TLS); a client without one fails the handshake. Absent
    /// (the default): clients are not asked for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Server TLS with certificate chain `cert` and private key `key`, no
    /// client certificates.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 50051)),
            max_message_bytes: 16 * MIB as usize,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(10),
            max_sessions_per_connection: 100,
            max_unacked_per_session: 100_000,
            http2_stream_window: MIB as u32,
            http2_connection_window: MIB as u32,
            max_connections: 1024,
            uncovered_message_bytes: None,
            message_timeout: Duration::from_secs(30),
            auth: AuthSettings::default(),
            tls: None,
        }
    }
}

/// `[buffer]`: the limits of the buffer manager and the backpressure
/// watermarks.
///
/// The three limits are the buffer crate's [`Limit`] type; [`limits`](Self::limits)
/// and [`watermarks`](Self::watermarks) give the buffer crate's aggregate types.
///
/// ```toml
/// [buffer]
/// high_watermark = 0.8
/// low_watermark = 0.5
///
/// [buffer.global]
/// records = 1000000
/// bytes = 268435456
///
/// [buffer.per_stage]
/// records = 100000
/// bytes = 67108864
///
/// [buffer.per_source]
/// records = 100000
/// bytes = 67108864
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferSettings {
    /// Utilization (0–1] of any limit at which sources are told to slow down.
    pub high_watermark: f64,
    /// Utilization (0–1], below `high_watermark`, at which slowed or paused
    /// sources are resumed.
    pub low_watermark: f64,
    /// Bound over everything buffered in the process.
    pub global: Limit,
    /// Bound for each stage's queue.
    pub per_stage: Limit,
    /// Bound for each source's records in the engine.
    pub per_source: Limit,
    /// The credit window of a source session, in records: the most unused
    /// credit it may hold (the byte window is this × 1 KiB). Capped at
    /// `low_watermark × per_source`. Throughput per source is about
    /// window ÷ completion latency, so a small window idles the engine.
    pub credit_window_records: u64,
    /// The guaranteed share of every open stream, in records (the bytes are
    /// this × 1 KiB): credit it is given whether it sends or not, never
    /// revoked. The rest of a window is floating: it goes to streams that
    /// send (or, protocol version 2, announce a backlog), so idle streams
    /// hold no more than this. Capped at the window.
    pub guaranteed_credit_records: u64,
    /// How long floating credit may stay unused: a protocol-version-2
    /// stream is asked to give it back after it; a version-1 stream claims
    /// floating credit for this long after it last sent.
    #[serde(with = "humantime_serde")]
    pub credit_lease: std::time::Duration,
}

impl Default for BufferSettings {
    /// The buffer crate's defaults ([`Limits::default`], [`Watermarks::default`]).
    fn default() -> Self {
        let limits = Limits::default();
        let marks = Watermarks::default();
        Self {
            high_watermark: marks.high,
            low_watermark: marks.low,
            global: limits.global,
            per_stage: limits.per_stage,
            per_source: limits.per_source,
            credit_window_records: sluice_buffer::DEFAULT_WINDOW_RECORDS,
            guaranteed_credit_records: sluice_buffer::DEFAULT_GUARANTEED_RECORDS,
            credit_lease: sluice_buffer::DEFAULT_CREDIT_LEASE,
        }
    }
}

impl BufferSettings {
    /// The three limits as the buffer crate's [`Limits`].
    pub fn limits(&self) -> Limits {
        Limits {
            global: self.global,
            per_stage: self.per_stage,
            per_source: self.per_source,
        }
    }

    /// The watermarks as the buffer crate's [`Watermarks`].
    pub fn watermarks(&self) -> Watermarks {
        Watermarks {
            high: self.high_watermark,
            low: self.low_watermark,
        }
    }
}

/// `[metrics]`: the Prometheus scrape endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Whether the endpoint is served. Default `true`.
    pub enabled: bool,
    /// Address of the HTTP endpoint. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
        }
    }
}

/// Output format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A `tracing` env-filter directive such as `info` or
    /// `info,sluice_buffer=debug`. Default `info`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}
