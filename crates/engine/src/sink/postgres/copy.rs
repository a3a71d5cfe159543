//! A batch into the table, inside the batch's open transaction: `COPY`
//! straight into the table, or through the staging table with `ON CONFLICT
//! (source_id, seq) DO NOTHING`, and, when the database refuses a record,
//! the bisection that finds it while the rest of the batch is written.

use std::ops::Range;
use std::pin::pin;

use deadpool_postgres::ClientWrapper as Client;
use sluice_config::Staging;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use super::error::{Fault, Keys, PgFailure};
use super::layout::Layout;
use super::row::Rows;
use crate::observe::POSTGRES_STAGED_BATCHES_TOTAL;
use crate::sink::contract::RecordFailure;

/// How batches go in, with the statements that do it.
#[derive(Debug)]
pub(super) struct Inserter {
    pub(super) layout: Layout,
    pub(super) keys: Keys,
    pub(super) staging: Staging,
    copy_direct: String,
    copy_staging: String,
    insert: String,
    clear: String,
}

impl Inserter {
    pub(super) fn new(layout: Layout, keys: Keys, staging: Staging) -> Self {
        Self {
            copy_direct: layout.copy_direct_sql(),
            copy_staging: layout.copy_staging_sql(),
            insert: layout.insert_sql(),
            clear: Layout::clear_staging_sql(),
            layout,
            keys,
            staging,
        }
    }

    /// Writes `rows` in the transaction open on `client`; `direct` says
    /// whether the table takes a `COPY` of the sink's types. Returns the
    /// rows the database refused (their batch indexes and its messages);
    /// every other row is in the table when the transaction commits.
    pub(super) async fn insert(
        &self,
        client: &Client,
        rows: &Rows<'_>,
        direct: bool,
    ) -> Result<Vec<RecordFailure>, PgFailure> {
        let all = 0..rows.len();
        let reason = if direct && self.staging == Staging::Fallback {
            // The common case: no row of the batch is in the table yet.
            match self
                .copy(client, &self.copy_direct, rows, all.clone())
                .await
            {
                Ok(()) => return Ok(Vec::new()),
                Err(Fault::Sink(f)) => return Err(f),
                Err(Fault::Record { duplicate, .. }) => {
                    // The transaction is aborted: start it again.
                    self.restart(client).await?;
                    if duplicate {
                        "duplicate"
                    } else {
                        "record_error"
                    }
                }
            }
        } else {
            "always"
        };
        metrics::counter!(POSTGRES_STAGED_BATCHES_TOTAL, "table" => self.layout.name.clone(), "reason" => reason)
            .increment(1);
        match self.staged(client, rows, all.clone(), false).await {
            Ok(()) => Ok(Vec::new()),
            Err(Fault::Sink(f)) => Err(f),
            Err(Fault::Record { .. }) => {
                if reason != "record_error" {
                    metrics::counter!(POSTGRES_STAGED_BATCHES_TOTAL, "table" => self.layout.name.clone(), "reason" => "record_error")
                        .increment(1);
                }
                self.restart(client).await?;
                self.bisect(client, rows).await
            }
        }
    }

    /// Finds the rows the database refuses, in savepoints: a part that
    /// fails is rolled back and halved until the refused rows stand alone;
    /// every part that succeeds stays written. `k` bad rows cost about
    /// `2 k log2(n)` attempts.
    async fn bisect(
        &self,
        client: &Client,
        rows: &Rows<'_>,
    ) -> Result<Vec<RecordFailure>, PgFailure> {
        let sql = |e: tokio_postgres::Error| self.keys.sink_level(&e);
        let mut refused = Vec::new();
        let mut todo: Vec<Range<usize>> = Vec::new();
        todo.push(0..rows.len());
        while let Some(part) = todo.pop() {
            client
                .batch_execute("SAVEPOINT sluice_part")
                .await
                .map_err(sql)?;
            match self.staged(client, rows, part.clone(), true).await {
                Ok(()) => client
                    .batch_execute("RELEASE SAVEPOINT sluice_part")
                    .await
                    .map_err(sql)?,
                Err(Fault::Sink(f)) => return Err(f),
                Err(Fault::Record { message, .. }) => {
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT sluice_part")
                        .await
                        .map_err(sql)?;
                    if part.len() == 1 {
                        refused.push(RecordFailure {
                            index: rows.index[part.start],
                            error: format!("postgres: {message}"),
                        });
                    } else {
                        let mid = part.start + part.len() / 2;
                        // The first half next: the stack is last in, first out.
                        todo.push(mid..part.end);
                        todo.push(part.start..mid);
                    }
                }
            }
        }
        refused.sort_by_key(|f| f.index);
        Ok(refused)
    }

    /// `rows[part]` through the staging table (emptied afterwards when
    /// `clear`, so that the next part does not insert these again).
    async fn staged(
        &self,
        client: &Client,
        rows: &Rows<'_>,
        part: Range<usize>,
        clear: bool,
    ) -> Result<(), Fault> {
        self.copy(client, &self.copy_staging, rows, part).await?;
        let classify = |e: tokio_postgres::Error| self.keys.classify(&e);
        let insert = client
            .prepare_cached(&self.insert)
            .await
            .map_err(classify)?;
        client.execute(&insert, &[]).await.map_err(classify)?;
        if clear {
            client.batch_execute(&self.clear).await.map_err(classify)?;
        }
        Ok(())
    }

    /// `COPY … FROM STDIN (FORMAT binary)` of `rows[part]` with `sql`.
    async fn copy(
        &self,
        client: &Client,
        sql: &str,
        rows: &Rows<'_>,
        part: Range<usize>,
    ) -> Result<(), Fault> {
        let classify = |e: tokio_postgres::Error| self.keys.classify(&e);
        // Prepared once per connection: a batch costs no extra round trip.
        let statement = client.prepare_cached(sql).await.map_err(classify)?;
        let sink = client.copy_in(&statement).await.map_err(classify)?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &self.layout.types));
        for i in part {
            writer
                .as_mut()
                .write_raw(rows.row(i).iter())
                .await
                .map_err(classify)?;
        }
        writer.as_mut().finish().await.map_err(classify)?;
        Ok(())
    }

    /// Rolls the aborted transaction back and begins another.
    async fn restart(&self, client: &Client) -> Result<(), PgFailure> {
        client
            .batch_execute("ROLLBACK; BEGIN")
            .await
            .map_err(|e| self.keys.sink_level(&e))
    }
}
