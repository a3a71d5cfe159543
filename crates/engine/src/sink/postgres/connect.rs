//! The sink's connections: the server and login its settings name, TLS
//! (rustls) when asked for, the session's `statement_timeout`, and a
//! bounded pool whose every new connection gets its staging table.

use std::sync::Arc;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sluice_config::PostgresSinkSpec;
use tokio_postgres::config::SslMode;

use super::error::{Keys, PgFailure};

/// A pool of connections to the server of `spec`; `staging_sql` runs on
/// every new connection. Also returns where the server is, for
/// descriptions (`host:port/dbname`, never the password).
pub(super) fn pool(
    spec: &PostgresSinkSpec,
    keys: &Keys,
    staging_sql: String,
) -> Result<(Pool, String), PgFailure> {
    let mut config = match &spec.url {
        Some(url) => url.parse::<tokio_postgres::Config>().map_err(|e| {
            // The message of the parser, not the URL: it is the user's
            // text, and may hold what should not be in logs.
            keys.failure("url", format!("not a connection string: {e}"), false)
        })?,
        None => {
            let mut c = tokio_postgres::Config::new();
            c.host(spec.host.as_deref().unwrap_or("localhost"));
            c.port(spec.port.unwrap_or(5432));
            c.user(spec.user.as_deref().unwrap_or("postgres"));
            if let Some(db) = &spec.dbname {
                c.dbname(db);
            }
            c
        }
    };
    if config.get_user().is_none() {
        config.user("postgres");
    }
    match spec.password() {
        Ok(Some(password)) => {
            config.password(password);
        }
        Ok(None) => {}
        Err(e) => return Err(keys.failure(keys.login, e.to_string(), false)),
    }
    config
        .application_name("sluice")
        .connect_timeout(spec.connect_timeout)
        .options(format!(
            "-c statement_timeout={}",
            spec.statement_timeout.as_millis().max(1)
        ));
    let where_ = describe(&config);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &spec.tls {
        None => {
            config.ssl_mode(SslMode::Disable);
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        }
        Some(tls) => {
            config.ssl_mode(SslMode::Require);
            let tls =
                tls_connector(&tls.ca_file).map_err(|m| keys.failure("tls.ca_file", m, false))?;
            Manager::from_config(config, tls, manager_config)
        }
    };
    let staging_sql: Arc<str> = staging_sql.into();
    let pool = Pool::builder(manager)
        .max_size(spec.pool_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(spec.connect_timeout))
        .wait_timeout(Some(spec.connect_timeout + spec.statement_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let staging_sql = staging_sql.clone();
            Box::pin(async move {
                client
                    .batch_execute(&staging_sql)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| keys.failure(keys.server, e.to_string(), false))?;
    Ok((pool, where_))
}

/// `host:port/dbname` of `config`.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("{host}:{port}/{db}")
}

/// A rustls connector that trusts the CA certificates in `ca_file` (PEM).
fn tls_connector(
    ca_file: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: not PEM: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("{} holds no certificate", ca_file.display()));
    }
    // The ring provider, as the server's TLS (no aws-lc C build).
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
