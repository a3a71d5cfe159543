//! `--sink postgres` and `--baseline copy`: the database the bench writes
//! to, and the baseline that loads the same rows with tokio-postgres alone.
//!
//! The database is a throwaway server the bench starts (`sluice-pgtemp`,
//! with `--fsync` the server's durable defaults, else `fsync = off`), or
//! the one at `--pg-url` (password from `PGPASSWORD`). The engine's sink
//! writes the envelope table `bench_sluice`; the baseline writes
//! `bench_copy`, created by the same sink code (the same columns and
//! primary key), with one `COPY … (FORMAT binary)` per `--sink-batch` rows
//! in a transaction of its own: what a program loading these rows with
//! tokio-postgres directly would do, without sluice's exactly-once insert
//! or anything else. Both tables are emptied before each run.

use std::pin::pin;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use sluice_config::{PostgresSinkSpec, Staging};
use sluice_engine::sink::PostgresSink;
use sluice_pgtemp::{Durability, PgServer};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{BenchArgs, BenchPayload, RunReport, payload};

/// The table the engine's sink writes.
pub const SLUICE_TABLE: &str = "bench_sluice";
/// The table the baseline writes.
pub const COPY_TABLE: &str = "bench_copy";

/// The database of a bench command, for all its rounds.
#[derive(Debug)]
pub struct BenchDb {
    /// The throwaway server, unless `--pg-url` was given.
    _server: Option<PgServer>,
    url: String,
    /// Holds the throwaway server's password file.
    _secrets: Option<tempfile::TempDir>,
    password_file: Option<std::path::PathBuf>,
    password_env: Option<String>,
}

impl BenchDb {
    /// Starts the throwaway server (or takes `--pg-url`) and creates both
    /// tables.
    pub async fn open(args: &BenchArgs) -> Result<Self, String> {
        let db = match &args.pg_url {
            Some(url) => Self {
                _server: None,
                url: url.clone(),
                _secrets: None,
                password_file: None,
                password_env: std::env::var_os("PGPASSWORD").map(|_| "PGPASSWORD".to_owned()),
            },
            None => {
                let durability = if args.fsync {
                    Durability::On
                } else {
                    Durability::Off
                };
                let server = tokio::task::spawn_blocking(move || PgServer::start(durability))
                    .await
                    .map_err(|e| format!("PostgreSQL: {e}"))?
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                let secrets = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
                let file = secrets.path().join("password");
                std::fs::write(&file, sluice_pgtemp::PASSWORD)
                    .map_err(|e| format!("password file: {e}"))?;
                Self {
                    url: server.url(),
                    _server: Some(server),
                    _secrets: Some(secrets),
                    password_file: Some(file),
                    password_env: None,
                }
            }
        };
        for table in [SLUICE_TABLE, COPY_TABLE] {
            // The sink creates its table: the baseline's is the same.
            let mut spec = db.spec(table, Staging::Fallback);
            spec.create_table = true;
            PostgresSink::connect(&spec)
                .await
                .map_err(|e| format!("postgres sink: {e}"))?;
        }
        Ok(db)
    }

    /// The envelope sink of `table`, inserting by `staging`.
    pub fn spec(&self, table: &str, staging: Staging) -> PostgresSinkSpec {
        let mut spec = PostgresSinkSpec::new(self.url.clone(), table);
        spec.password_file = self.password_file.clone();
        spec.password_env = self.password_env.clone();
        spec.staging = staging;
        spec
    }

    async fn client(&self) -> Result<tokio_postgres::Client, String> {
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e| format!("--pg-url: {e}"))?;
        let spec = self.spec(COPY_TABLE, Staging::Fallback);
        if let Some(password) = spec.password().map_err(|e| format!("password: {e}"))? {
            config.password(password);
        }
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "bench: PostgreSQL connection");
            }
        });
        Ok(client)
    }

    /// Empties `table` before a run.
    pub async fn empty(&self, table: &str) -> Result<(), String> {
        self.client()
            .await?
            .batch_execute(&format!("TRUNCATE {table}"))
            .await
            .map_err(|e| format!("TRUNCATE {table}: {e}"))
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &str) -> Result<u64, String> {
        let row = self
            .client()
            .await?
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(|e| format!("count {table}: {e}"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A JSON text as a `jsonb` value (version byte, then the text).
#[derive(Debug)]
struct RawJson<'a>(&'a [u8]);

impl ToSql for RawJson<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The baseline: the rows the sluice run writes (the same sources,
/// payloads and sequence numbers; `--records` of them, or for
/// `--duration`), `COPY`-loaded in batches of `--sink-batch` rows.
pub async fn run_copy(args: &BenchArgs, db: &BenchDb) -> Result<RunReport, String> {
    db.empty(COPY_TABLE).await?;
    let mut client = db.client().await?;
    let statement = client
        .prepare(&format!(
            "COPY {COPY_TABLE} (source_id, seq, key, payload, payload_bytes, attributes, event_time, ingested_at) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(|e| format!("COPY: {e}"))?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::BYTEA,
        Type::JSONB,
        Type::BYTEA,
        Type::JSONB,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
    ];
    let n = args.sources.max(1);
    let sources: Vec<(String, bytes::Bytes)> = (0..n)
        .map(|i| {
            (
                format!("bench-copy-{}-{i}", std::process::id()),
                payload(args.payload, args.record_bytes, i),
            )
        })
        .collect();
    let json = args.payload == BenchPayload::Json;
    let batch = args.sink_batch.max(1) as u64;
    let total = args.records;
    let mut seqs = vec![0i64; n];
    let mut written = 0u64;
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut k = 0;
    let null: Option<&[u8]> = None;
    let no_json: Option<RawJson<'_>> = None;
    let no_time: Option<SystemTime> = None;
    loop {
        let rows = match total {
            Some(t) if written >= t => break,
            Some(t) => batch.min(t - written),
            None if Instant::now() >= deadline => break,
            None => batch,
        };
        let index = k % n;
        k += 1;
        let (source, body) = &sources[index];
        let ingested_at = SystemTime::now();
        let tx = client
            .transaction()
            .await
            .map_err(|e| format!("BEGIN: {e}"))?;
        let sink = tx
            .copy_in(&statement)
            .await
            .map_err(|e| format!("COPY: {e}"))?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        let json_payload = json.then(|| RawJson(body));
        let bytes_payload = (!json).then_some(&body[..]);
        for _ in 0..rows {
            seqs[index] += 1;
            let seq = seqs[index];
            writer
                .as_mut()
                .write(&[
                    source,
                    &seq,
                    &null,
                    &json_payload,
                    &bytes_payload,
                    &no_json,
                    &no_time,
                    &ingested_at,
                ])
                .await
                .map_err(|e| format!("COPY: {e}"))?;
        }
        writer
            .as_mut()
            .finish()
            .await
            .map_err(|e| format!("COPY: {e}"))?;
        tx.commit().await.map_err(|e| format!("COMMIT: {e}"))?;
        written += rows;
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let in_table = db.count(COPY_TABLE).await?;
    let mut errors = Vec::new();
    if in_table != written {
        errors.push(format!("{written} rows copied, {in_table} in the table"));
    }
    Ok(RunReport {
        batch: args.sink_batch,
        elapsed_s: elapsed,
        sent: written,
        acked: written,
        delivered: in_table,
        lost: written as i64 - in_table as i64,
        records_per_s: written as f64 / elapsed,
        completed_per_s_while_sending: written as f64 / elapsed,
        mb_per_s: written as f64 * args.record_bytes as f64 / elapsed / 1e6,
        errors,
        ..RunReport::empty("copy", args, 0.0)
    })
}
