//! A real PostgreSQL for a test: a throwaway server (`sluice-pgtemp`:
//! `initdb` + `pg_ctl` in a temporary directory on a free loopback port,
//! unprivileged when run as root), skipped loudly where PostgreSQL is not
//! installed (a failure with `SLUICE_REQUIRE_EXTERNAL`), and what a test
//! reads back from its tables.

use std::collections::HashMap;
use std::path::PathBuf;

use sluice_config::PostgresSinkSpec;
use sluice_pgtemp::{Durability, PgServer};

use crate::external::missing;

/// A running throwaway server, stopped and removed on drop.
#[derive(Debug)]
pub struct Postgres {
    server: PgServer,
    /// Holds the password file the sinks read (`password_file`).
    secrets: tempfile::TempDir,
}

impl Postgres {
    /// A server for `test`, or `None` after a `SKIPPED` line when
    /// PostgreSQL is not installed (a panic with `SLUICE_REQUIRE_EXTERNAL`).
    pub fn start(test: &str) -> Option<Self> {
        if !Self::installed(test) {
            return None;
        }
        let server = PgServer::start(Durability::Off).expect("PostgreSQL starts");
        let secrets = tempfile::tempdir().expect("tempdir");
        std::fs::write(secrets.path().join("password"), sluice_pgtemp::PASSWORD)
            .expect("password file");
        Some(Self { server, secrets })
    }

    /// Whether PostgreSQL is installed; if not, says so for `test` (a
    /// `SKIPPED` line, or a panic with `SLUICE_REQUIRE_EXTERNAL`).
    pub fn installed(test: &str) -> bool {
        let found = sluice_pgtemp::find_bin_dir().is_some();
        if !found {
            missing(test, "PostgreSQL (initdb, pg_ctl)");
        }
        found
    }

    /// The server's URL (no password in it).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The file holding the server's password.
    pub fn password_file(&self) -> PathBuf {
        self.secrets.path().join("password")
    }

    /// A sink writing `table` of this server (envelope mode, the table
    /// created), with the password from [`password_file`](Self::password_file)
    /// and short timeouts.
    pub fn sink(&self, table: &str) -> PostgresSinkSpec {
        let mut spec = PostgresSinkSpec::new(self.server.url(), table);
        spec.password_file = Some(self.password_file());
        spec.create_table = true;
        spec.connect_timeout = std::time::Duration::from_secs(2);
        spec.statement_timeout = std::time::Duration::from_secs(5);
        spec
    }

    /// Stops the server (connections end at once): an outage.
    pub fn stop(&mut self) {
        self.server.stop().expect("PostgreSQL stops");
    }

    /// Starts the stopped server again (same port, same data).
    pub fn start_again(&mut self) {
        self.server.start_again().expect("PostgreSQL starts again");
    }

    /// Turns TLS on with this certificate chain and key (PEM); restarts the
    /// server.
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) {
        self.server
            .enable_tls(cert_pem, key_pem)
            .expect("PostgreSQL with TLS");
    }

    /// A client of the test's own (its connection runs in a task).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.server.conninfo(), tokio_postgres::NoTls)
                .await
                .expect("test client connects");
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("test client connection: {e}");
            }
        });
        client
    }

    /// Runs `sql` (several statements may be given).
    pub async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Count of each `(source_id, seq)` in `table` (the shape of
    /// [`delivered_keys`](crate::delivered_keys), for
    /// [`assert_exactly_once`](crate::assert_exactly_once)).
    pub async fn keys(&self, table: &str) -> HashMap<(String, u64), u32> {
        let rows = self
            .client()
            .await
            .query(&format!("SELECT source_id, seq FROM {table}"), &[])
            .await
            .expect("rows of the table");
        let mut out = HashMap::new();
        for row in rows {
            let seq: i64 = row.get(1);
            *out.entry((row.get(0), seq as u64)).or_insert(0) += 1;
        }
        out
    }
}
