//! A batch's records as rows of values, converted before anything is sent
//! to the database: a value that does not convert refuses its record alone
//! (naming the column and the value), the rest of the batch goes on.
//!
//! Values borrow from the records where they can: a JSON payload goes to
//! its `jsonb` column as the source sent it, validated once, never parsed
//! into a tree and serialized again.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;
use serde_json::value::RawValue;
use sluice_config::ColumnType;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::layout::{Fill, Layout};
use crate::sink::contract::{RecordFailure, SinkBatch, SinkRecord};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Longest quote of a value in a conversion error.
const QUOTE_MAX: usize = 80;

/// One value of a row, in the binary form of its column's type.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    /// SQL NULL.
    Null,
    /// `text`.
    Text(Cow<'a, str>),
    /// `integer`.
    Int4(i32),
    /// `bigint`.
    Int8(i64),
    /// `double precision`.
    Float8(f64),
    /// `boolean`.
    Bool(bool),
    /// `jsonb`: a valid JSON text.
    Jsonb(Cow<'a, [u8]>),
    /// `timestamptz`: microseconds since 2000-01-01 UTC.
    Timestamp(i64),
    /// `bytea`.
    Bytea(Cow<'a, [u8]>),
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Int4(v) => return v.to_sql(ty, out),
            Value::Int8(v) => return v.to_sql(ty, out),
            Value::Float8(v) => return v.to_sql(ty, out),
            Value::Bool(v) => return v.to_sql(ty, out),
            Value::Jsonb(json) => {
                // jsonb's binary form: a version byte, then the text.
                out.extend_from_slice(&[1]);
                out.extend_from_slice(json);
            }
            Value::Timestamp(us) => out.extend_from_slice(&us.to_be_bytes()),
            Value::Bytea(b) => out.extend_from_slice(b),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // The layout gives each column the type its values are made for.
        true
    }

    to_sql_checked!();
}

/// A batch's convertible records as rows, flat: row `i` is
/// `values[i * width..(i + 1) * width]`, from the batch's record `index[i]`.
#[derive(Debug)]
pub(super) struct Rows<'a> {
    pub(super) values: Vec<Value<'a>>,
    pub(super) width: usize,
    pub(super) index: Vec<usize>,
}

impl<'a> Rows<'a> {
    /// The number of rows.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Row `i`'s values.
    pub(super) fn row(&self, i: usize) -> &[Value<'a>] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// The rows of `batch` in `layout`, and the records refused because a value
/// does not convert. `ingested_at` (µs since 2000) fills `ingested_at`.
pub(super) fn rows<'a>(
    layout: &Layout,
    batch: &SinkBatch<'a>,
    ingested_at: i64,
) -> (Rows<'a>, Vec<RecordFailure>) {
    let width = layout.columns.len();
    let mut rows = Rows {
        values: Vec::with_capacity(batch.len() * width),
        width,
        index: Vec::with_capacity(batch.len()),
    };
    let mut refused = Vec::new();
    for (index, r) in batch.iter().enumerate() {
        let start = rows.values.len();
        match row(layout, &r, ingested_at, &mut rows.values) {
            Ok(()) => rows.index.push(index),
            Err(error) => {
                rows.values.truncate(start);
                refused.push(RecordFailure { index, error });
            }
        }
    }
    (rows, refused)
}

/// Appends `r`'s values to `out`, or says why one does not convert.
fn row<'a>(
    layout: &Layout,
    r: &SinkRecord<'a>,
    ingested_at: i64,
    out: &mut Vec<Value<'a>>,
) -> Result<(), String> {
    let rec = r.record;
    let payload: &'a [u8] = rec.payload();
    // Columns mode: the payload's top-level fields, parsed once.
    let fields = match layout.mode {
        sluice_config::PostgresMode::Columns => Some(fields(payload)?),
        sluice_config::PostgresMode::Envelope => None,
    };
    let json_payload = layout.mode == sluice_config::PostgresMode::Envelope && is_json(payload);
    for c in &layout.columns {
        let v = match c.from {
            Fill::SourceId => Value::Text(Cow::Borrowed(r.source)),
            Fill::Seq => Value::Int8(
                i64::try_from(r.seq)
                    .map_err(|_| format!("column \"seq\": {} does not fit a bigint", r.seq))?,
            ),
            Fill::Key if rec.key.is_empty() => Value::Null,
            Fill::Key => Value::Bytea(Cow::Borrowed(&rec.key)),
            Fill::PayloadJson if json_payload => Value::Jsonb(Cow::Borrowed(payload)),
            Fill::PayloadBytes if !json_payload => Value::Bytea(Cow::Borrowed(payload)),
            Fill::PayloadJson | Fill::PayloadBytes => Value::Null,
            Fill::Attributes if rec.attributes().is_empty() => Value::Null,
            Fill::Attributes => Value::Jsonb(Cow::Owned(attributes(rec.attributes()))),
            Fill::EventTime if rec.event_time_ms == 0 => Value::Null,
            Fill::EventTime => Value::Timestamp(pg_micros_from_unix_ms(rec.event_time_ms)),
            Fill::IngestedAt => Value::Timestamp(ingested_at),
            Fill::Field => match fields.as_ref().and_then(|f| f.get(c.name.as_str())) {
                None => Value::Null,
                Some(raw) => convert(c.ty, raw)
                    .map_err(|what| format!("column {:?}: {} {what}", c.name, quoted(raw)))?,
            },
        };
        out.push(v);
    }
    Ok(())
}

/// The top-level fields of a JSON object payload.
fn fields(payload: &[u8]) -> Result<HashMap<Cow<'_, str>, &RawValue>, String> {
    serde_json::from_slice(payload).map_err(|e| {
        if is_json(payload) {
            "payload: not a JSON object (mode = \"columns\" maps an object's fields)".to_owned()
        } else {
            format!("payload: not JSON ({e})")
        }
    })
}

/// Whether `bytes` is one JSON text (validated without building a tree).
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// The attributes as a JSON object (the last of a repeated name).
fn attributes(attrs: &[(String, String)]) -> Vec<u8> {
    let map: std::collections::BTreeMap<&str, &str> = attrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Writing strings into a `Vec` cannot fail.
    serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec())
}

fn pg_micros_from_unix_ms(ms: i64) -> i64 {
    ms.saturating_mul(1000).saturating_sub(PG_EPOCH_US)
}

/// Now, in µs since 2000-01-01 UTC.
pub(super) fn now_pg_micros() -> i64 {
    let unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix_us - PG_EPOCH_US
}

/// A field's JSON text as a value of `ty`, or why not ("is not a bigint").
fn convert<'a>(ty: ColumnType, raw: &'a RawValue) -> Result<Value<'a>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(Value::Null);
    }
    let not = |what: &str| format!("is not {what}");
    let string = || serde_json::from_str::<Cow<'a, str>>(text).ok();
    Ok(match ty {
        ColumnType::Text => match text.as_bytes()[0] {
            b'"' => {
                let s = string().ok_or_else(|| not("a string"))?;
                if s.contains('\0') {
                    return Err("holds a NUL character, which text cannot".into());
                }
                Value::Text(s)
            }
            b'{' | b'[' => return Err(not("a text (an object or array: use jsonb)")),
            // A number or a boolean, as written.
            _ => Value::Text(Cow::Borrowed(text)),
        },
        ColumnType::Integer => {
            Value::Int4(serde_json::from_str::<i32>(text).map_err(|_| not("an integer (32-bit)"))?)
        }
        ColumnType::Bigint => {
            Value::Int8(serde_json::from_str::<i64>(text).map_err(|_| not("a bigint"))?)
        }
        ColumnType::DoublePrecision => {
            Value::Float8(serde_json::from_str::<f64>(text).map_err(|_| not("a double precision"))?)
        }
        ColumnType::Boolean => {
            Value::Bool(serde_json::from_str::<bool>(text).map_err(|_| not("a boolean"))?)
        }
        ColumnType::Jsonb => Value::Jsonb(Cow::Borrowed(text.as_bytes())),
        ColumnType::Timestamptz => {
            let bad = || not("a timestamptz (an RFC 3339 string or milliseconds since 1970)");
            if let Ok(ms) = serde_json::from_str::<i64>(text) {
                Value::Timestamp(pg_micros_from_unix_ms(ms))
            } else {
                let s = string().ok_or_else(bad)?;
                let t =
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| bad())?;
                let unix_us = t.unix_timestamp_nanos() / 1000;
                Value::Timestamp(i64::try_from(unix_us).map_err(|_| bad())? - PG_EPOCH_US)
            }
        }
        ColumnType::Bytea => {
            let s = string().ok_or_else(|| not("a base64 string"))?;
            Value::Bytea(Cow::Owned(
                BASE64
                    .decode(s.as_bytes())
                    .map_err(|_| not("a base64 string"))?,
            ))
        }
    })
}

/// A JSON value as quoted in an error, cut to [`QUOTE_MAX`] characters.
fn quoted(raw: &RawValue) -> String {
    let text = raw.get();
    match text.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EngineRecord;
    use sluice_config::{PostgresMode, PostgresSinkSpec};

    fn columns(cols: &[(&str, ColumnType)]) -> Layout {
        let mut spec = PostgresSinkSpec::new("postgres://h/d", "t");
        spec.mode = PostgresMode::Columns;
        for (name, ty) in cols {
            spec.columns.insert((*name).into(), *ty);
        }
        Layout::of(&spec)
    }

    fn convert_one(layout: &Layout, payload: &str) -> Result<Vec<String>, String> {
        let rec = EngineRecord::from_payload(payload.as_bytes().to_vec());
        let records = [SinkRecord {
            source: "s",
            seq: 7,
            record: &rec,
            dead_letter: None,
        }];
        let batch = SinkBatch::from(&records[..]);
        let (rows, refused) = rows(layout, &batch, 0);
        if let Some(f) = refused.first() {
            return Err(f.error.clone());
        }
        Ok(rows.row(0).iter().map(|v| format!("{v:?}")).collect())
    }

    #[test]
    fn fields_convert_to_their_columns_types() {
        let l = columns(&[
            ("a_text", ColumnType::Text),
            ("b_int", ColumnType::Integer),
            ("c_big", ColumnType::Bigint),
            ("d_f", ColumnType::DoublePrecision),
            ("e_b", ColumnType::Boolean),
            ("f_j", ColumnType::Jsonb),
            ("g_t", ColumnType::Timestamptz),
            ("h_y", ColumnType::Bytea),
        ]);
        let got = convert_one(
            &l,
            r#"{"a_text":"hé\"","b_int":-5,"c_big":9007199254740993,"d_f":1.5,"e_b":true,
                "f_j":{"x":[1,2]},"g_t":"2000-01-01T00:00:01+00:00","h_y":"AAE=","extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "Text(\"s\")",
                "Int8(7)",
                "Text(\"hé\\\"\")",
                "Int4(-5)",
                "Int8(9007199254740993)",
                "Float8(1.5)",
                "Bool(true)",
                "Jsonb([123, 34, 120, 34, 58, 91, 49, 44, 50, 93, 125])",
                "Timestamp(1000000)",
                "Bytea([0, 1])",
            ]
        );
        // Missing and null fields are NULL; a number into text is its text.
        let got = convert_one(&l, r#"{"a_text":12,"b_int":null}"#).unwrap();
        assert_eq!(got[2], "Text(\"12\")");
        assert!(got[3..].iter().all(|v| v == "Null"), "{got:?}");
        assert_eq!(
            convert_one(&l, r#"{"g_t":946684800000}"#).unwrap()[8],
            "Timestamp(0)"
        );
    }

    #[test]
    fn a_value_that_does_not_convert_names_the_column_and_the_value() {
        let l = columns(&[("n", ColumnType::Integer), ("t", ColumnType::Timestamptz)]);
        for (payload, error) in [
            (
                r#"{"n":"abc"}"#,
                r#"column "n": "abc" is not an integer (32-bit)"#,
            ),
            (
                r#"{"n":1.5}"#,
                r#"column "n": 1.5 is not an integer (32-bit)"#,
            ),
            (
                r#"{"n":4294967296}"#,
                r#"column "n": 4294967296 is not an integer (32-bit)"#,
            ),
            (
                r#"{"t":"yesterday"}"#,
                r#"column "t": "yesterday" is not a timestamptz (an RFC 3339 string or milliseconds since 1970)"#,
            ),
            (
                "[1]",
                "payload: not a JSON object (mode = \"columns\" maps an object's fields)",
            ),
        ] {
            assert_eq!(convert_one(&l, payload).unwrap_err(), error, "{payload}");
        }
        assert!(
            convert_one(&l, "nope")
                .unwrap_err()
                .starts_with("payload: not JSON")
        );
        let long = format!(r#"{{"n":"{}"}}"#, "x".repeat(200));
        let e = convert_one(&l, &long).unwrap_err();
        assert!(e.len() < 150 && e.contains('…'), "{e}");
    }

    #[test]
    fn the_envelope_keeps_json_payloads_as_they_came() {
        let l = Layout::of(&PostgresSinkSpec::new("postgres://h/d", "t"));
        let json = convert_one(&l, r#"{"a": 1}"#).unwrap();
        assert_eq!(json[3], format!("Jsonb({:?})", br#"{"a": 1}"#.to_vec()));
        assert_eq!((json[2].as_str(), json[4].as_str()), ("Null", "Null"));
        let bytes = convert_one(&l, "not json").unwrap();
        assert_eq!(bytes[3], "Null");
        assert_eq!(bytes[4], format!("Bytea({:?})", b"not json".to_vec()));
    }
}
