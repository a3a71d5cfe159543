//! [`PostgresSink`]: the [`Sink`] over a pool of connections, each batch
//! in a transaction that `commit` ends.

use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object, Pool};
use sluice_config::PostgresSinkSpec;

use super::connect;
use super::copy::Inserter;
use super::error::{Keys, PgFailure};
use super::layout::{Layout, TableCheck};
use super::row;
use crate::sink::contract::{Sink, SinkBatch, SinkError, SinkFuture, Written};

/// Records into a PostgreSQL table, exactly once per `(source_id, seq)`;
/// see the [module docs](super). Built from a `kind = "postgres"` sink's
/// settings by [`connect`](Self::connect).
#[derive(Debug)]
pub struct PostgresSink {
    pool: Pool,
    inserter: Inserter,
    /// What the start-up check found; checked again at the first write
    /// when the database was unreachable at start-up.
    ready: tokio::sync::OnceCell<TableCheck>,
    /// The transaction the last `write` left for `commit`.
    open: tokio::sync::Mutex<Option<Transaction>>,
    create_table: Option<String>,
    describe: String,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

/// A connection with a batch's transaction open. Dropped before it is
/// [`release`](Self::release)d (after an error, or a timeout that dropped
/// the future mid-`COPY`), the connection is closed instead of going back
/// to the pool, so no later batch ever runs in a half-done transaction.
#[derive(Debug)]
struct Transaction(Option<Object>);

impl Transaction {
    fn client(&self) -> Option<&ClientWrapper> {
        self.0.as_deref()
    }

    /// Back to the pool: the transaction is over (committed).
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

impl PostgresSink {
    /// Builds the sink of `spec` and checks its table (creating it with
    /// `create_table`). A wrong setting (the password, the user, the
    /// database, the table, its columns or key) is an error naming it; an
    /// unreachable database is logged and the sink starts anyway: its first
    /// writes stall until the database is there.
    pub async fn connect(spec: &PostgresSinkSpec) -> Result<Self, SinkError> {
        let keys = Keys::of(spec);
        let layout = Layout::of(spec);
        let (pool, server) = connect::pool(spec, &keys, layout.staging_sql())?;
        let sink = Self {
            pool,
            describe: format!("postgres {} at {server}", spec.table),
            create_table: spec.create_table.then(|| layout.create_table_sql()),
            inserter: Inserter::new(layout, keys, spec.staging),
            ready: tokio::sync::OnceCell::new(),
            open: tokio::sync::Mutex::new(None),
            connect_timeout: spec.connect_timeout,
            statement_timeout: spec.statement_timeout,
        };
        match sink.bounded(sink.ready()).await {
            Ok(_) => {}
            Err(f) if f.transient => tracing::warn!(
                sink = %sink.describe,
                error = %f,
                "postgres sink: the database is not reachable at start-up; its batches wait for it"
            ),
            Err(f) => return Err(f.into()),
        }
        Ok(sink)
    }

    fn keys(&self) -> &Keys {
        &self.inserter.keys
    }

    /// `work`, within one batch's bound on the client side (a network that
    /// drops packets silently never answers).
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, PgFailure>>,
    ) -> Result<T, PgFailure> {
        let bound = self.connect_timeout + self.statement_timeout;
        tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
            Err(self.keys().failure(
                "statement_timeout",
                format!("no answer from the database within {}ms", bound.as_millis()),
                true,
            ))
        })
    }

    /// The table's check, done once it succeeds.
    async fn ready(&self) -> Result<TableCheck, PgFailure> {
        self.ready
            .get_or_try_init(|| async {
                let conn = self.connection().await?;
                if let Some(create) = &self.create_table {
                    conn.batch_execute(create)
                        .await
                        .map_err(|e| self.keys().sink_level(&e))?;
                }
                self.inserter.layout.check(&conn, self.keys()).await
            })
            .await
            .copied()
    }

    async fn connection(&self) -> Result<Object, PgFailure> {
        self.pool
            .get()
            .await
            .map_err(|e| self.keys().pool(e, self.connect_timeout))
    }

    async fn begin(&self) -> Result<Transaction, PgFailure> {
        let tx = Transaction(Some(self.connection().await?));
        if let Some(client) = tx.client() {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| self.keys().sink_level(&e))?;
        }
        Ok(tx)
    }

    async fn write_batch(&self, batch: SinkBatch<'_>) -> Result<Written, PgFailure> {
        let check = self.ready().await?;
        let (rows, mut refused) = row::rows(&self.inserter.layout, &batch, row::now_pg_micros());
        if rows.len() > 0 {
            let mut open = self.open.lock().await;
            let tx = match open.take() {
                Some(tx) => tx,
                None => self.begin().await?,
            };
            if let Some(client) = tx.client() {
                refused.extend(self.inserter.insert(client, &rows, check.direct).await?);
            }
            *open = Some(tx);
        }
        if refused.is_empty() {
            return Ok(Written::All);
        }
        refused.sort_by_key(|f| f.index);
        Ok(Written::Refused(refused))
    }

    async fn commit_open(&self) -> Result<(), PgFailure> {
        let Some(tx) = self.open.lock().await.take() else {
            return Ok(());
        };
        if let Some(client) = tx.client() {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| self.keys().sink_level(&e))?;
        }
        tx.release();
        Ok(())
    }
}

impl Sink for PostgresSink {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move { Ok(self.bounded(self.write_batch(batch)).await?) })
    }

    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async move { Ok(self.bounded(self.commit_open()).await?) })
    }
}
