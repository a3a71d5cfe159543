//! Settings of the sluice engine: one [`Settings`] value for the whole
//! process, loaded in layers and validated as a whole.
//!
//! # Layers
//!
//! 1. Built-in defaults: [`Settings::default()`], a complete, valid
//!    configuration with one pipeline named `default`.
//! 2. An optional TOML file (`sluice serve --config FILE`).
//! 3. Environment variables `SLUICE__SECTION__KEY`: the prefix `SLUICE`, then
//!    each key segment, all separated by `__` (double underscore). Names are
//!    case-insensitive (they are lowercased). For example
//!    `SLUICE__SERVER__LISTEN=0.0.0.0:50051`,
//!    `SLUICE__BUFFER__GLOBAL__RECORDS=5000`,
//!    `SLUICE__BUFFER__HIGH_WATERMARK=0.9`,
//!    `SLUICE__RETRY__MAX_BACKOFF=10s`. A segment of digits indexes a list:
//!    `SLUICE__PIPELINES__0__SINK__DIR=/data` changes the first pipeline.
//!    Values that read as a boolean or a number are taken as one, so a
//!    string setting given through the environment loses leading zeros or
//!    trailing decimal zeros (`007` → `7`, `1.10` → `1.1`); put such values in
//!    the file. The only list that can be given in the environment is a `drop`
//!    transform's `fields`, as a comma-separated string.
//!
//! Tables merge key by key across layers; a list (`[[pipelines]]`) in a
//! file replaces the default list as a whole.
//!
//! # Errors
//!
//! An unknown key, a value of the wrong type or an unknown transform or sink
//! kind is refused while loading ([`ConfigError::Load`], naming the key
//! path). Then [`Settings::validate`] checks the rules that span values and
//! reports every problem at once ([`ConfigError::Invalid`]).
//!
//! ```
//! use sluice_config::Settings;
//! let env = [("SLUICE__SERVER__LISTEN".to_string(), "127.0.0.1:6000".to_string())];
//! let s = Settings::load_with_env(None, env).unwrap();
//! assert_eq!(s.server.listen.port(), 6000);
//! assert_eq!(s.pipelines[0].name, "default");
//! ```
#![warn(missing_docs)]

mod error;
mod load;
mod nats;
mod pipeline;
mod postgres;
mod sections;
mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use nats::{
    NatsAuth, NatsAuthError, NatsSinkSpec, NatsStorage, NatsStreamSpec, NatsTls,
    SUBJECT_PLACEHOLDERS, is_publish_subject,
};
pub use pipeline::{
    BatchSettings, DEFAULT_GROUP_COMMIT_BATCHES, FilterOp, MAX_GROUP_COMMIT_BATCHES, PipelineSpec,
    SinkSpec, StageSpec, TransformSpec,
};
pub use postgres::{ColumnType, PostgresMode, PostgresSinkSpec, PostgresTls, Staging};
pub use sections::{
    AuthSettings, BufferSettings, LogFormat, LogSettings, MetricsSettings, SecretError,
    ServerSettings, TlsSettings, TokenSpec,
};
pub use sluice_buffer::{Limit, Limits, MemoryGateConfig, RetryPolicy, Watermarks};
pub use validate::{ValidationError, ValidationErrors};

/// Everything the engine can be told. Every section has a real default, so
/// any part may be omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[server]`: the gRPC endpoint.
    pub server: ServerSettings,
    /// `[buffer]`: limits and watermarks of the buffer manager.
    pub buffer: BufferSettings,
    /// `[memory]`: the memory gate.
    pub memory: MemoryGateConfig,
    /// `[retry]`: retries of failed records before they become dead letters.
    pub retry: RetryPolicy,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// `[log]`: log format and filter.
    pub log: LogSettings,
    /// `[[pipelines]]`: at least one; the default is one pipeline named `default`.
    pub pipelines: Vec<PipelineSpec>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            buffer: BufferSettings::default(),
            memory: MemoryGateConfig::default(),
            retry: RetryPolicy::default(),
            metrics: MetricsSettings::default(),
            log: LogSettings::default(),
            pipelines: vec![PipelineSpec::default()],
        }
    }
}

impl Settings {
    /// Prefix of the environment variables that override settings.
    pub const ENV_PREFIX: &'static str = load::ENV_PREFIX;
    /// Separator after the prefix and between key segments in variable names.
    pub const ENV_SEPARATOR: &'static str = load::ENV_SEPARATOR;

    /// Loads defaults, then the TOML file at `path` (if any), then the
    /// process's `SLUICE__…` environment variables, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        load::load(path, None)
    }

    /// Like [`load`](Self::load), but the environment is `env` instead of the
    /// process's (variables without the `SLUICE__` prefix are ignored), so
    /// tests need not change the process environment.
    pub fn load_with_env<I, K, V>(path: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        load::load(path, Some(env))
    }

    /// `server.uncovered_message_bytes`, or its default when absent: the
    /// smaller of `server.max_message_bytes` and an eighth of
    /// `buffer.global.bytes` (so that messages read before their capacity
    /// is reserved add at most an eighth to the byte budget; at the default
    /// 256 MiB budget that is one message of the default 16 MiB).
    pub fn uncovered_message_bytes(&self) -> usize {
        self.server.uncovered_message_bytes.unwrap_or_else(|| {
            let eighth = usize::try_from(self.buffer.global.bytes / 8).unwrap_or(usize::MAX);
            self.server.max_message_bytes.min(eighth).max(1)
        })
    }

    /// Checks the rules that span values (limits against each other,
    /// watermarks, percentages, pipeline names…) and returns every problem.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        validate::validate(self).into_result()
    }

    /// The settings as a TOML document, which [`load`](Self::load) reads back
    /// to the same settings (the effective configuration printed by
    /// `sluice config`).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// A copy with every secret written in the configuration replaced by
    /// [`TokenSpec::REDACTED`]: each `server.auth.tokens[i].token`. The
    /// `token_env` variable names and `token_file` paths are kept (they are
    /// not secrets). The copy is for showing, not for running: its tokens
    /// are no longer the real ones.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for t in &mut copy.server.auth.tokens {
            if let Some(token) = &mut t.token {
                *token = TokenSpec::REDACTED.to_owned();
            }
        }
        copy
    }

    /// [`redacted`](Self::redacted) as a TOML document: what `sluice config`
    /// prints, safe to paste into a ticket.
    pub fn to_toml_string_redacted(&self) -> Result<String, ConfigError> {
        self.redacted().to_toml_string()
    }
}
