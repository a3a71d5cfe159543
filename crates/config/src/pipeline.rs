//! `[[pipelines]]`: what happens to records — stages of transforms, a sink,
//! a dead-letter sink and batching.
//!
//! ```toml
//! [[pipelines]]
//! name = "orders"
//!
//! [[pipelines.stages]]
//! name = "only-paid"
//! transform = { kind = "filter", field = "status", op = "eq", value = "paid" }
//!
//! [[pipelines.stages]]
//! name = "tag"
//! transform = { kind = "set", field = "source", value = "shop" }
//!
//! [pipelines.sink]
//! kind = "file"
//! dir = "/var/lib/sluice/orders"
//!
//! [pipelines.dead_letter]
//! kind = "file"
//! dir = "/var/lib/sluice/orders/dead-letters"
//! prefix = "dead-letters"
//!
//! [pipelines.batch]
//! max_records = 500
//! linger = "20ms"
//! ```
//!
//! A `[[pipelines]]` array in a file *replaces* the built-in `default`
//! pipeline (arrays are not merged element by element), so every field of a
//! pipeline that is not written gets the default documented on it here.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::nats::NatsSinkSpec;
pub use crate::postgres::PostgresSinkSpec;

/// One mebibyte.
const MIB: usize = 1024 * 1024;

/// A named chain of stages feeding one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique, non-empty name; sources address a pipeline by it.
    #[serde(default)]
    pub name: String,
    /// The transform stages in order. May be empty (the default): records
    /// then go from the sources straight to the pipeline's final `sink`
    /// stage, which every pipeline has.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// Where completed records go. Required.
    #[serde(deserialize_with = "tagged_sink")]
    pub sink: SinkSpec,
    /// Where records go that failed more than `retry.max_retries` times.
    /// Default: a file sink in `./sluice-data/dead-letters` with prefix
    /// `dead-letters`.
    #[serde(
        default = "SinkSpec::default_dead_letter",
        deserialize_with = "tagged_sink"
    )]
    pub dead_letter: SinkSpec,
    /// How records are grouped before they are handed to the sink.
    #[serde(default)]
    pub batch: BatchSettings,
}

impl Default for PipelineSpec {
    /// The built-in pipeline `default`: no transform stages (records go
    /// unchanged to the sink), a file sink under `./sluice-data/` and the
    /// default dead-letter sink.
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            stages: Vec::new(),
            sink: SinkSpec::File {
                dir: PathBuf::from("./sluice-data"),
                prefix: default_prefix(),
                rotate_bytes: default_rotate_bytes(),
                fsync: true,
                group_commit_batches: default_group_commit_batches(),
                delay: Duration::ZERO,
                fail_rate: 0.0,
            },
            dead_letter: SinkSpec::default_dead_letter(),
            batch: BatchSettings::default(),
        }
    }
}

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Non-empty name, unique within its pipeline (used in metrics and dead letters).
    #[serde(default)]
    pub name: String,
    /// What the stage does to each record.
    #[serde(deserialize_with = "tagged_transform")]
    pub transform: TransformSpec,
}

/// What a stage does to a record, chosen by `kind`.
///
/// Field paths are dot-separated paths into the record's JSON object
/// (`user.id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// Keeps the records for which `field op value` holds; the others are
    /// filtered out (completed without reaching the sink).
    Filter {
        /// Path of the field tested.
        field: String,
        /// The comparison.
        op: FilterOp,
        /// The JSON value compared with; required by every op except
        /// `exists` / `not_exists`, which take none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<serde_json::Value>,
    },
    /// Sets `field` to `value` (creating intermediate objects).
    Set {
        /// Path of the field written.
        field: String,
        /// The JSON value written.
        value: serde_json::Value,
    },
    /// Moves the value at `from` to `to`.
    Rename {
        /// Path of the field moved.
        from: String,
        /// Its new path.
        to: String,
    },
    /// Removes fields.
    Drop {
        /// Paths of the fields removed (in the environment: comma-separated).
        #[serde(deserialize_with = "list_or_csv")]
        fields: Vec<String>,
    },
    /// Passes records through unchanged (alias `passthrough`).
    #[serde(alias = "passthrough")]
    Identity,
    /// **For testing**: fails a fraction `rate` (0–1, default 1 = every
    /// record) of the records it sees, to exercise retries and dead letters.
    Fail {
        /// Fraction of records failed, in [0, 1].
        #[serde(default = "one")]
        rate: f64,
    },
    /// Keeps a deterministic fraction `keep` (0–1) of the records it sees,
    /// chosen by a hash of their sequence number, and filters out the rest
    /// (sampling; `sluice bench --filter-keep` uses it as a filter that
    /// keeps 1 record in N).
    Sample {
        /// Fraction of records kept, in [0, 1].
        keep: f64,
    },
}

impl TransformSpec {
    /// The `kind` names, as written in a config file.
    pub const KINDS: &'static [&'static str] = &[
        "filter", "set", "rename", "drop", "identity", "fail", "sample",
    ];

    /// Accepted aliases of kinds.
    const ALIASES: &'static [&'static str] = &["passthrough"];

    /// This transform's `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Filter { .. } => "filter",
            Self::Set { .. } => "set",
            Self::Rename { .. } => "rename",
            Self::Drop { .. } => "drop",
            Self::Identity => "identity",
            Self::Fail { .. } => "fail",
            Self::Sample { .. } => "sample",
        }
    }
}

/// The comparison of a `filter` transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    /// Field equals value.
    Eq,
    /// Field differs from value (or is absent).
    Ne,
    /// Field is greater than value (numbers, or strings lexicographically).
    Gt,
    /// Field is greater than or equal to value.
    Ge,
    /// Field is less than value.
    Lt,
    /// Field is less than or equal to value.
    Le,
    /// Field is present (takes no value).
    Exists,
    /// Field is absent (takes no value).
    NotExists,
}

impl FilterOp {
    /// Whether this op compares with a `value` (all but `exists` / `not_exists`).
    pub fn takes_value(self) -> bool {
        !matches!(self, Self::Exists | Self::NotExists)
    }
}

/// Where a pipeline's records (or dead letters) are written, chosen by `kind`.
///
/// Every kind also takes two **testing** knobs, omitted from printed
/// configurations when off: `delay` (a pause before each batch is written,
/// to make a deliberately slow sink) and `fail_rate` (a fraction 0–1 of
/// records the sink refuses: record-level failures, retried and then
/// dead-lettered; the rest of each batch is written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// Newline-delimited JSON files `<dir>/<prefix>-<n>.jsonl`, rotated by size.
    File {
        /// Directory of the files (created if missing). Required.
        dir: PathBuf,
        /// File name prefix. Default `records`.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Size in bytes after which a new file is started. Default 64 MiB.
        #[serde(default = "default_rotate_bytes")]
        rotate_bytes: u64,
        /// Whether each batch is fsynced before it is committed. Default `true`.
        #[serde(default = "yes")]
        fsync: bool,
        /// Group commit: the most batches one commit (fsync) covers. While
        /// one commit runs, up to this many more batches are written; each
        /// is acked once a commit covering it returned. Default 16, at most
        /// [`MAX_GROUP_COMMIT_BATCHES`]; 1 = write, commit, write… in turn.
        #[serde(default = "default_group_commit_batches")]
        group_commit_batches: usize,
        /// Testing: pause before each batch. Default `0s`.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Duration::is_zero"
        )]
        delay: Duration,
        /// Testing: fraction of records the sink refuses. Default 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        fail_rate: f64,
    },
    /// Newline-delimited JSON on standard output.
    Stdout {
        /// Testing: pause before each batch. Default `0s`.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Duration::is_zero"
        )]
        delay: Duration,
        /// Testing: fraction of records the sink refuses. Default 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        fail_rate: f64,
    },
    /// Discards records (committing them at once).
    Null {
        /// Testing: pause before each batch. Default `0s`.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Duration::is_zero"
        )]
        delay: Duration,
        /// Testing: fraction of records the sink refuses. Default 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        fail_rate: f64,
    },
    /// Rows of a PostgreSQL table, exactly once (see [`PostgresSinkSpec`]).
    Postgres(Box<PostgresSinkSpec>),
    /// NATS JetStream: one message per record (see [`NatsSinkSpec`]).
    Nats(Box<NatsSinkSpec>),
}

impl SinkSpec {
    /// The `kind` names, as written in a config file.
    pub const KINDS: &'static [&'static str] = &["file", "stdout", "null", "postgres", "nats"];

    /// This sink's `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Stdout { .. } => "stdout",
            Self::Null { .. } => "null",
            Self::Postgres(_) => "postgres",
            Self::Nats(_) => "nats",
        }
    }

    /// Testing knob: the pause before each batch.
    pub fn delay(&self) -> Duration {
        match self {
            Self::File { delay, .. } | Self::Stdout { delay, .. } | Self::Null { delay, .. } => {
                *delay
            }
            Self::Postgres(p) => p.delay,
            Self::Nats(n) => n.delay,
        }
    }

    /// Testing knob: the fraction of records the sink refuses.
    pub fn fail_rate(&self) -> f64 {
        match self {
            Self::File { fail_rate, .. }
            | Self::Stdout { fail_rate, .. }
            | Self::Null { fail_rate, .. } => *fail_rate,
            Self::Postgres(p) => p.fail_rate,
            Self::Nats(n) => n.fail_rate,
        }
    }

    /// The default dead-letter sink: files `./sluice-data/dead-letters/dead-letters-<n>.jsonl`.
    pub fn default_dead_letter() -> Self {
        Self::File {
            dir: PathBuf::from("./sluice-data/dead-letters"),
            prefix: "dead-letters".to_owned(),
            rotate_bytes: default_rotate_bytes(),
            fsync: true,
            group_commit_batches: default_group_commit_batches(),
            delay: Duration::ZERO,
            fail_rate: 0.0,
        }
    }
}

/// `[pipelines.batch]`: how records are grouped for the sink. A batch is
/// written when it reaches `max_records` or `max_bytes`, or `linger` after
/// its first record arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Most records in one batch (> 0). Default 1000.
    pub max_records: usize,
    /// Most payload bytes in one batch (> 0). Default 1 MiB.
    pub max_bytes: usize,
    /// Longest wait for a batch to fill. Default `50ms`; `0s` writes whatever is ready.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: MIB,
            linger: Duration::from_millis(50),
        }
    }
}

fn default_prefix() -> String {
    "records".to_owned()
}

fn default_rotate_bytes() -> u64 {
    64 * MIB as u64
}

/// The file sink's default `group_commit_batches`.
pub const DEFAULT_GROUP_COMMIT_BATCHES: usize = 16;

/// The largest `group_commit_batches` a file sink accepts.
pub const MAX_GROUP_COMMIT_BATCHES: usize = 1024;

fn default_group_commit_batches() -> usize {
    DEFAULT_GROUP_COMMIT_BATCHES
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

pub(crate) fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Accepts a list of strings, or one comma-separated string (what an
/// environment variable can hold).
pub(crate) fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of field paths or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',').map(|s| s.trim().to_owned()).collect())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

// ---------------------------------------------------------------------------
// Tagged deserialization with a clear error for an unknown `kind`.
//
// The enums above derive serde's internally tagged representation, whose
// error for an unknown kind names neither the key nor the word "transform".
// Inside `Settings` the fields are read through these functions instead: the
// table is collected with `kind` read as its own map value (so the config
// deserializer puts the key path, `...transform.kind`, on its error), checked
// against the known kinds, and the rest converted through `serde_json::Value`.
// ---------------------------------------------------------------------------

fn tagged_transform<'de, D: Deserializer<'de>>(d: D) -> Result<TransformSpec, D::Error> {
    let table = d.deserialize_map(TaggedVisitor {
        what: "transform",
        known: TransformSpec::KINDS,
        aliases: TransformSpec::ALIASES,
    })?;
    // serde ignores extra keys of an internally tagged unit variant.
    if let Some(serde_json::Value::String(kind)) = table.get("kind")
        && (kind == "identity" || kind == "passthrough")
        && let Some(extra) = table.keys().find(|k| *k != "kind")
    {
        return Err(de::Error::custom(format_args!(
            "unknown field `{extra}`, transform kind {kind:?} takes no other keys"
        )));
    }
    serde_json::from_value(serde_json::Value::Object(table)).map_err(de::Error::custom)
}

fn tagged_sink<'de, D: Deserializer<'de>>(d: D) -> Result<SinkSpec, D::Error> {
    let table = d.deserialize_map(TaggedVisitor {
        what: "sink",
        known: SinkSpec::KINDS,
        aliases: &[],
    })?;
    serde_json::from_value(serde_json::Value::Object(table)).map_err(de::Error::custom)
}

struct TaggedVisitor {
    what: &'static str,
    known: &'static [&'static str],
    aliases: &'static [&'static str],
}

impl<'de> Visitor<'de> for TaggedVisitor {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a {} table with a `kind` key", self.what)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut table = serde_json::Map::new();
        let mut kind = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "kind" {
                if kind.is_some() {
                    return Err(de::Error::duplicate_field("kind"));
                }
                kind = Some(map.next_value_seed(KindSeed {
                    what: self.what,
                    known: self.known,
                    aliases: self.aliases,
                })?);
            } else {
                let value: serde_json::Value = map.next_value()?;
                if table.insert(key.clone(), value).is_some() {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        table.insert("kind".to_owned(), serde_json::Value::String(kind));
        Ok(table)
    }
}

struct KindSeed {
    what: &'static str,
    known: &'static [&'static str],
    aliases: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let kind = String::deserialize(d)?;
        if self.known.contains(&kind.as_str()) || self.aliases.contains(&kind.as_str()) {
            Ok(kind)
        } else {
            Err(de::Error::custom(format_args!(
                "unknown {} {kind:?} (known: {})",
                self.what,
                self.known.join(", ")
            )))
        }
    }
}
