//! TLS (`[server.tls]`): the server's identity from PEM files, and the
//! client side's trust of a CA (`--ca FILE`, [`ClientOptions::ca_pem`](crate::client::ClientOptions::ca_pem)).
//!
//! Both use tonic's rustls transport with the ring crypto provider.

use std::path::{Path, PathBuf};

use sluice_config::TlsSettings;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot read {}: {source}", path.display())]
pub struct TlsFileError {
    /// The configuration key that names the file (`server.tls.cert`).
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The server TLS configuration from `[server.tls]`; an unreadable file is
/// an error naming its key and path.
pub fn server_config(tls: &TlsSettings) -> Result<ServerTlsConfig, TlsFileError> {
    let cert = read("server.tls.cert", &tls.cert)?;
    let key = read("server.tls.key", &tls.key)?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// A client TLS configuration trusting the CA certificate(s) in `ca_pem`
/// (PEM), for an `https://` engine address.
pub fn client_config(ca_pem: &[u8]) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
}
