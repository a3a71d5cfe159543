//! The flags every client-side command (`send`, `top`) takes to reach an
//! engine: its address, a bearer token and TLS, defined once.

use std::path::PathBuf;

use sluice_client::tls::ClientIdentity;

/// How to reach an engine: address, bearer token, TLS and mutual TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectFlags {
    /// The engine's gRPC address (`https://` for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "SLUICE_ADDR")]
    pub addr: String,
    /// Bearer token for an engine with `[server.auth]` tokens (sent as
    /// `authorization: Bearer <token>`).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the engine's certificate, for an
    /// `https://` address (TLS).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM file of this client's certificate chain, for an engine that
    /// requires client certificates (`[server.tls] client_ca`); needs `--key`.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// The TLS material the flags name, read from its files.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// The CA's PEM (`--ca`).
    pub ca_pem: Option<Vec<u8>>,
    /// This client's certificate and key (`--cert`, `--key`).
    pub identity: Option<ClientIdentity>,
}

impl ConnectFlags {
    /// Reads the files `--ca`, `--cert` and `--key` name; an unreadable one
    /// is an error naming the flag and the path.
    pub fn tls_files(&self) -> Result<TlsFiles, String> {
        let ca_pem = match &self.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--ca: cannot read {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                Some(ClientIdentity::from_files(cert, key).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        Ok(TlsFiles { ca_pem, identity })
    }
}
