//! The error of loading a configuration.

use std::fmt;
use std::path::PathBuf;

use crate::ValidationErrors;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value (from the file or the
    /// environment) does not fit its key: an unknown key, a wrong type, an
    /// unknown transform or sink kind, a missing required field.
    #[error("{}", LoadDisplay { path, key, message })]
    Load {
        /// The configuration file, when one was given.
        path: Option<PathBuf>,
        /// The key path of the offending value, when known
        /// (`pipelines[0].stages[1].transform.kind`).
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The configuration was read but breaks rules; every problem is listed.
    #[error("invalid configuration:\n{0}")]
    Invalid(ValidationErrors),
    /// The settings could not be turned into TOML (e.g. a JSON `null` in a
    /// transform value, which TOML cannot hold).
    #[error("cannot serialize the configuration as TOML: {0}")]
    Serialize(String),
}

struct LoadDisplay<'a> {
    path: &'a Option<PathBuf>,
    key: &'a Option<String>,
    message: &'a str,
}

impl fmt::Display for LoadDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path {
            Some(p) => write!(f, "cannot load configuration file {}: ", p.display())?,
            None => f.write_str("cannot load configuration: ")?,
        }
        if let Some(key) = self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(self.message)
    }
}
