//! TLS for the client side: the trust of a CA (`--ca FILE`,
//! [`ClientOptions::ca_pem`](crate::ClientOptions::ca_pem)) and the client's
//! own certificate for mutual TLS (`--cert FILE --key FILE`,
//! [`ClientOptions::identity`](crate::ClientOptions::identity)), on tonic's
//! rustls transport with the ring crypto provider.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A TLS file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot read {}: {source}", path.display())]
pub struct TlsFileError {
    /// The flag or key that names the file (`--cert`).
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

/// A client's own certificate chain and private key (PEM), presented to an
/// engine that requires client certificates (`[server.tls] client_ca`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

impl ClientIdentity {
    /// An identity from PEM certificate chain `cert_pem` and key `key_pem`.
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// Reads the PEM files given as `--cert` and `--key`; an unreadable file
    /// is an error naming the flag and the path.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        Ok(Self {
            cert_pem: read("--cert", cert)?,
            key_pem: read("--key", key)?,
        })
    }
}

impl std::fmt::Debug for ClientIdentity {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A client TLS configuration trusting the CA certificate(s) in `ca_pem`
/// (PEM), for an `https://` engine address.
pub fn client_config(ca_pem: &[u8]) -> ClientTlsConfig {
    client_tls(Some(ca_pem), None)
}

/// A client TLS configuration trusting the CA certificate(s) in `ca_pem`
/// (when given) and presenting `identity` (when given) as the client
/// certificate.
pub fn client_tls(ca_pem: Option<&[u8]>, identity: Option<&ClientIdentity>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = ca_pem {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some(id) = identity {
        config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    config
}
