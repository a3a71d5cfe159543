//! The table's layout in each mode (envelope, columns): its columns and
//! their types, and the SQL the sink runs against it: `CREATE TABLE`, the
//! staging table, `COPY`, `INSERT … SELECT … ON CONFLICT`, and the check of
//! an existing table at start-up.

use sluice_config::{ColumnType, PostgresMode, PostgresSinkSpec};
use tokio_postgres::types::Type;

use super::error::{Keys, PgFailure};

/// The per-connection staging table (`pg_temp`: each session its own).
const STAGING: &str = "pg_temp.sluice_staging";

/// One column the sink writes.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// Its name, as in the table (case-sensitive: it is quoted).
    pub(super) name: String,
    /// Its type.
    pub(super) ty: ColumnType,
    /// What fills it.
    pub(super) from: Fill,
}

/// What fills a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fill {
    /// The record's source id.
    SourceId,
    /// The record's sequence number.
    Seq,
    /// Envelope: the key (NULL when empty).
    Key,
    /// Envelope: a JSON payload (NULL when the payload is not JSON).
    PayloadJson,
    /// Envelope: a payload that is not JSON (NULL when it is).
    PayloadBytes,
    /// Envelope: the attributes as a JSON object (NULL when none).
    Attributes,
    /// Envelope: the event time (NULL when unknown).
    EventTime,
    /// Envelope: when the sink wrote the batch.
    IngestedAt,
    /// Columns mode: the payload's top-level field of the column's name.
    Field,
}

/// The sink's table and the columns it writes, in `COPY` order.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// The table's name as written in the settings (for messages, metrics).
    pub(super) name: String,
    /// The table, quoted (`"schema"."name"`).
    pub(super) table: String,
    /// The columns.
    pub(super) columns: Vec<Column>,
    /// Their wire types, for `COPY … BINARY`.
    pub(super) types: Vec<Type>,
    /// Envelope or columns.
    pub(super) mode: PostgresMode,
}

/// What start-up learnt about an existing table.
#[derive(Debug, Clone, Copy)]
pub(super) struct TableCheck {
    /// Whether every column has exactly the sink's type, so that `COPY`
    /// straight into the table is possible (binary `COPY` does no casts;
    /// the staging path's `INSERT … SELECT` does).
    pub(super) direct: bool,
}

impl Layout {
    /// The layout `spec` describes.
    pub(super) fn of(spec: &PostgresSinkSpec) -> Self {
        let col = |name: &str, ty, from| Column {
            name: name.to_owned(),
            ty,
            from,
        };
        let mut columns = vec![
            col("source_id", ColumnType::Text, Fill::SourceId),
            col("seq", ColumnType::Bigint, Fill::Seq),
        ];
        match spec.mode {
            PostgresMode::Envelope => columns.extend([
                col("key", ColumnType::Bytea, Fill::Key),
                col("payload", ColumnType::Jsonb, Fill::PayloadJson),
                col("payload_bytes", ColumnType::Bytea, Fill::PayloadBytes),
                col("attributes", ColumnType::Jsonb, Fill::Attributes),
                col("event_time", ColumnType::Timestamptz, Fill::EventTime),
                col("ingested_at", ColumnType::Timestamptz, Fill::IngestedAt),
            ]),
            PostgresMode::Columns => columns.extend(
                spec.columns
                    .iter()
                    .map(|(name, ty)| col(name, *ty, Fill::Field)),
            ),
        }
        let types = columns.iter().map(|c| wire_type(c.ty)).collect();
        Self {
            name: spec.table.clone(),
            table: spec
                .table
                .split('.')
                .map(quote)
                .collect::<Vec<_>>()
                .join("."),
            columns,
            types,
            mode: spec.mode,
        }
    }

    fn column_list(&self) -> String {
        (self.columns.iter())
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `CREATE TABLE IF NOT EXISTS` with the key as primary key.
    pub(super) fn create_table_sql(&self) -> String {
        let cols: Vec<String> = (self.columns.iter())
            .map(|c| {
                let not_null = match c.from {
                    Fill::SourceId | Fill::Seq => " NOT NULL",
                    Fill::IngestedAt => " NOT NULL DEFAULT now()",
                    _ => "",
                };
                format!("{} {}{not_null}", quote(&c.name), c.ty.sql())
            })
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (source_id, seq))",
            self.table,
            cols.join(", ")
        )
    }

    /// The staging table of a connection: the sink's columns and types, no
    /// constraint, emptied at every commit.
    pub(super) fn staging_sql(&self) -> String {
        let cols: Vec<String> = (self.columns.iter())
            .map(|c| format!("{} {}", quote(&c.name), c.ty.sql()))
            .collect();
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS sluice_staging ({}) ON COMMIT DELETE ROWS",
            cols.join(", ")
        )
    }

    /// `COPY` into the table itself.
    pub(super) fn copy_direct_sql(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.table,
            self.column_list()
        )
    }

    /// `COPY` into the staging table.
    pub(super) fn copy_staging_sql(&self) -> String {
        format!(
            "COPY {STAGING} ({}) FROM STDIN (FORMAT binary)",
            self.column_list()
        )
    }

    /// The staging table's rows into the table, those whose key is there
    /// already skipped: what makes a batch written again harmless.
    pub(super) fn insert_sql(&self) -> String {
        let cols = self.column_list();
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {STAGING} ON CONFLICT (source_id, seq) DO NOTHING",
            self.table
        )
    }

    /// Empties the staging table (between the parts of a bisection).
    pub(super) fn clear_staging_sql() -> String {
        format!("DELETE FROM {STAGING}")
    }

    /// Checks the table at start-up: it exists, has a unique constraint
    /// on `(source_id, seq)` and every column the sink writes, each of a
    /// type the sink's can be assigned to.
    pub(super) async fn check(
        &self,
        client: &tokio_postgres::Client,
        keys: &Keys,
    ) -> Result<TableCheck, PgFailure> {
        let fail = |e: tokio_postgres::Error| keys.sink_level(&e);
        let row = client
            .query_one("SELECT to_regclass($1)::oid", &[&self.table])
            .await
            .map_err(fail)?;
        let oid: Option<u32> = row.try_get(0).map_err(fail)?;
        let Some(oid) = oid else {
            return Err(keys.failure(
                "table",
                format!(
                    "relation {:?} does not exist (create it, or set create_table = true)",
                    self.name
                ),
                false,
            ));
        };
        let unique = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                 AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2 \
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a \
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = ARRAY['seq', 'source_id'])",
                &[&oid],
            )
            .await
            .map_err(fail)?;
        if !unique.try_get::<_, bool>(0).map_err(fail)? {
            return Err(keys.failure(
                "table",
                format!(
                    "table {:?} has no unique constraint on (source_id, seq), which exactly-once delivery needs (ALTER TABLE … ADD UNIQUE (source_id, seq))",
                    self.name
                ),
                false,
            ));
        }
        let rows = client
            .query(
                "SELECT attname::text, atttypid, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(fail)?;
        let mut direct = true;
        for c in &self.columns {
            let Some(row) = rows
                .iter()
                .find(|r| r.try_get::<_, &str>(0).is_ok_and(|n| n == c.name))
            else {
                let setting = if c.from == Fill::Field {
                    keys.columns
                } else {
                    "table"
                };
                return Err(keys.failure(
                    setting,
                    format!("table {:?} has no column {:?}", self.name, c.name),
                    false,
                ));
            };
            let type_oid: u32 = row.try_get(1).map_err(fail)?;
            if type_oid != wire_type(c.ty).oid() {
                let actual: String = row.try_get(2).map_err(fail)?;
                tracing::info!(
                    table = %self.name,
                    column = %c.name,
                    expected = c.ty.sql(),
                    %actual,
                    "postgres sink: a column's type differs from the sink's; every batch goes through the staging table (casts)"
                );
                direct = false;
            }
        }
        Ok(TableCheck { direct })
    }
}

/// The wire type of a column type.
fn wire_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Text => Type::TEXT,
        ColumnType::Integer => Type::INT4,
        ColumnType::Bigint => Type::INT8,
        ColumnType::DoublePrecision => Type::FLOAT8,
        ColumnType::Boolean => Type::BOOL,
        ColumnType::Jsonb => Type::JSONB,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Bytea => Type::BYTEA,
    }
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_quotes_names_and_keeps_the_column_order() {
        let mut spec = PostgresSinkSpec::new("postgres://h/d", "app.Orders");
        spec.mode = PostgresMode::Columns;
        spec.columns
            .insert("total".into(), ColumnType::DoublePrecision);
        spec.columns.insert("we\"ird".into(), ColumnType::Text);
        let l = Layout::of(&spec);
        assert_eq!(l.table, "\"app\".\"Orders\"");
        assert_eq!(
            l.copy_direct_sql(),
            "COPY \"app\".\"Orders\" (\"source_id\", \"seq\", \"total\", \"we\"\"ird\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            l.insert_sql(),
            "INSERT INTO \"app\".\"Orders\" (\"source_id\", \"seq\", \"total\", \"we\"\"ird\") SELECT \"source_id\", \"seq\", \"total\", \"we\"\"ird\" FROM pg_temp.sluice_staging ON CONFLICT (source_id, seq) DO NOTHING"
        );
        assert_eq!(l.types, [Type::TEXT, Type::INT8, Type::FLOAT8, Type::TEXT]);
        assert!(l.create_table_sql().ends_with(
            "\"total\" double precision, \"we\"\"ird\" text, PRIMARY KEY (source_id, seq))"
        ));
        let envelope = Layout::of(&PostgresSinkSpec::new("postgres://h/d", "events"));
        assert_eq!(envelope.columns.len(), 8);
        assert!(envelope.staging_sql().contains("ON COMMIT DELETE ROWS"));
    }
}
