//! Server TLS (`[server.tls]`): the server's identity from PEM files and,
//! with `client_ca`, the CA that client certificates must chain to (mutual
//! TLS), on tonic's rustls transport with the ring crypto provider. The
//! client side is `sluice_client::tls`.

use std::path::Path;

use super::error::EngineError;

use sluice_config::TlsSettings;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The server TLS configuration from `[server.tls]`; an unreadable file is
/// an error naming its key and path ([`EngineError::TlsFile`]). With
/// `client_ca`, clients must present a certificate signed by that CA.
pub fn server_config(tls: &TlsSettings) -> Result<ServerTlsConfig, EngineError> {
    let read = |key, path: &Path| {
        std::fs::read(path).map_err(|source| EngineError::TlsFile {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let cert = read("server.tls.cert", &tls.cert)?;
    let key = read("server.tls.key", &tls.key)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(path) = &tls.client_ca {
        let ca = read("server.tls.client_ca", path)?;
        // Required, not optional: a client without a certificate fails the handshake.
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }
    Ok(config)
}
