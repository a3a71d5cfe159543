//! Transforms: what a stage does to each record's JSON payload.
//!
//! Built from a [`TransformSpec`]. A transform either keeps the record
//! (possibly rewritten), filters it out ([`Outcome::Filtered`]: it is
//! completed without reaching the sink) or fails with a [`TransformError`]
//! (a payload that is not JSON, a `set` into a non-object…). A failure is a
//! per-record failure: the runtime retries the record and, past
//! `retry.max_retries`, dead-letters it. It never stops the pipeline.

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_config::{FilterOp, TransformSpec};

use crate::record::EngineRecord;

/// Why a transform failed on one record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// The payload is not valid JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload (or an intermediate field) is not a JSON object where one is needed.
    #[error("cannot {op} field {field:?}: {reason}")]
    NotAnObject {
        /// The operation (`set`, `rename`, `drop`).
        op: &'static str,
        /// The field path.
        field: String,
        /// What was found instead.
        reason: String,
    },
    /// A `fail` transform failed the record on purpose (testing).
    #[error("injected failure (fail transform, rate {rate})")]
    Injected {
        /// The configured rate.
        rate: f64,
    },
}

/// What a transform did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record goes on to the next stage.
    Keep,
    /// The record was filtered out: complete it as delivered, do not sink it.
    Filtered,
}

/// A transform built from a [`TransformSpec`].
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Keeps records for which `field op value` holds.
    Filter {
        /// The field path, split on dots.
        path: Vec<String>,
        /// The comparison.
        op: FilterOp,
        /// The value compared with (`Null` for exists / not_exists).
        value: Value,
    },
    /// Sets a field.
    Set {
        /// The field path.
        path: Vec<String>,
        /// The value written.
        value: Value,
    },
    /// Moves a field.
    Rename {
        /// From this path.
        from: Vec<String>,
        /// To this path.
        to: Vec<String>,
    },
    /// Removes fields.
    Drop {
        /// The paths removed.
        paths: Vec<Vec<String>>,
    },
    /// Passes records through.
    Identity,
    /// Fails a deterministic fraction of records (by a hash of their sequence number).
    Fail {
        /// Fraction in [0, 1].
        rate: f64,
    },
    /// Keeps a deterministic fraction of records (by another hash of their
    /// sequence number than `Fail`'s), filters out the rest.
    Sample {
        /// Fraction kept, in [0, 1].
        keep: f64,
    },
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

impl From<&TransformSpec> for Transform {
    fn from(spec: &TransformSpec) -> Self {
        match spec {
            TransformSpec::Filter { field, op, value } => Transform::Filter {
                path: split(field),
                op: *op,
                value: value.clone().unwrap_or(Value::Null),
            },
            TransformSpec::Set { field, value } => Transform::Set {
                path: split(field),
                value: value.clone(),
            },
            TransformSpec::Rename { from, to } => Transform::Rename {
                from: split(from),
                to: split(to),
            },
            TransformSpec::Drop { fields } => Transform::Drop {
                paths: fields.iter().map(|f| split(f)).collect(),
            },
            TransformSpec::Identity => Transform::Identity,
            TransformSpec::Fail { rate } => Transform::Fail { rate: *rate },
            TransformSpec::Sample { keep } => Transform::Sample { keep: *keep },
        }
    }
}

/// SplitMix64: a well-mixed hash of a sequence number.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Whether the event numbered `n` falls in a fraction `rate` (deterministic).
pub(crate) fn hits(n: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    ((mix(n) >> 11) as f64 / (1u64 << 53) as f64) < rate
}

fn parse(payload: &Bytes) -> Result<Value, TransformError> {
    serde_json::from_slice(payload).map_err(|e| TransformError::NotJson(e.to_string()))
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object that holds the last segment of `path`, creating missing
/// intermediate objects when `create`.
fn parent_mut<'a>(
    v: &'a mut Value,
    path: &[String],
    create: bool,
    op: &'static str,
) -> Result<Option<&'a mut Map<String, Value>>, TransformError> {
    let err = |reason: String| TransformError::NotAnObject {
        op,
        field: path.join("."),
        reason,
    };
    let (_, parents) = path.split_last().ok_or_else(|| err("empty path".into()))?;
    let mut cur = v;
    for (i, k) in parents.iter().enumerate() {
        let obj = match cur {
            Value::Object(o) => o,
            other => {
                return Err(err(format!(
                    "{} is {}",
                    if i == 0 {
                        "the payload".to_owned()
                    } else {
                        parents[..i].join(".")
                    },
                    type_name(other)
                )));
            }
        };
        if !obj.contains_key(k) {
            if !create {
                return Ok(None);
            }
            obj.insert(k.clone(), Value::Object(Map::new()));
        }
        cur = match obj.get_mut(k) {
            Some(next) => next,
            None => return Ok(None),
        };
    }
    match cur {
        Value::Object(o) => Ok(Some(o)),
        other => Err(err(format!(
            "{} is {}",
            if parents.is_empty() {
                "the payload".to_owned()
            } else {
                parents.join(".")
            },
            type_name(other)
        ))),
    }
}

fn last(path: &[String]) -> &str {
    path.last().map_or("", String::as_str)
}

fn compare(field: &Value, op: FilterOp, value: &Value) -> bool {
    use std::cmp::Ordering;
    let eq = || match (field.as_f64(), value.as_f64()) {
        (Some(a), Some(b)) if field.is_number() && value.is_number() => a == b,
        _ => field == value,
    };
    let ord = || -> Option<Ordering> {
        match (field, value) {
            (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => None,
        }
    };
    match op {
        FilterOp::Eq => eq(),
        FilterOp::Ne => !eq(),
        FilterOp::Gt => ord() == Some(Ordering::Greater),
        FilterOp::Ge => matches!(ord(), Some(Ordering::Greater | Ordering::Equal)),
        FilterOp::Lt => ord() == Some(Ordering::Less),
        FilterOp::Le => matches!(ord(), Some(Ordering::Less | Ordering::Equal)),
        FilterOp::Exists => true,
        FilterOp::NotExists => false,
    }
}

impl Transform {
    /// Applies the transform to the record numbered `seq`.
    pub fn apply(&self, seq: u64, record: &mut EngineRecord) -> Result<Outcome, TransformError> {
        match self {
            Transform::Identity => Ok(Outcome::Keep),
            Transform::Sample { keep } => Ok(if hits(!seq, *keep) {
                Outcome::Keep
            } else {
                Outcome::Filtered
            }),
            Transform::Fail { rate } => {
                if hits(seq, *rate) {
                    Err(TransformError::Injected { rate: *rate })
                } else {
                    Ok(Outcome::Keep)
                }
            }
            Transform::Filter { path, op, value } => {
                let doc = parse(record.payload())?;
                let keep = match get(&doc, path) {
                    None => matches!(op, FilterOp::Ne | FilterOp::NotExists),
                    Some(field) => compare(field, *op, value),
                };
                Ok(if keep {
                    Outcome::Keep
                } else {
                    Outcome::Filtered
                })
            }
            Transform::Set { path, value } => {
                let mut doc = parse(record.payload())?;
                if let Some(obj) = parent_mut(&mut doc, path, true, "set")? {
                    obj.insert(last(path).to_owned(), value.clone());
                }
                write_back(record, &doc);
                Ok(Outcome::Keep)
            }
            Transform::Rename { from, to } => {
                let mut doc = parse(record.payload())?;
                let taken = match parent_mut(&mut doc, from, false, "rename")? {
                    Some(obj) => obj.remove(last(from)),
                    None => None,
                };
                if let Some(v) = taken {
                    if let Some(obj) = parent_mut(&mut doc, to, true, "rename")? {
                        obj.insert(last(to).to_owned(), v);
                    }
                    write_back(record, &doc);
                }
                Ok(Outcome::Keep)
            }
            Transform::Drop { paths } => {
                let mut doc = parse(record.payload())?;
                let mut changed = false;
                for path in paths {
                    // A field under a non-object simply is not there.
                    if let Ok(Some(obj)) = parent_mut(&mut doc, path, false, "drop") {
                        changed |= obj.remove(last(path)).is_some();
                    }
                }
                if changed {
                    write_back(record, &doc);
                }
                Ok(Outcome::Keep)
            }
        }
    }
}

fn write_back(record: &mut EngineRecord, doc: &Value) {
    // Serializing a `Value` cannot fail (its keys are strings).
    record.set_payload(serde_json::to_vec(doc).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> EngineRecord {
        EngineRecord::from_payload(serde_json::to_vec(&v).unwrap())
    }
    fn payload(r: &EngineRecord) -> Value {
        serde_json::from_slice(r.payload()).unwrap()
    }
    fn filter(field: &str, op: FilterOp, value: Option<Value>) -> Transform {
        Transform::from(&TransformSpec::Filter {
            field: field.into(),
            op,
            value,
        })
    }

    #[test]
    fn filter_ops() {
        let doc = json!({"status": "paid", "n": 5, "user": {"id": 7}});
        let cases = [
            ("status", FilterOp::Eq, Some(json!("paid")), true),
            ("status", FilterOp::Eq, Some(json!("new")), false),
            ("status", FilterOp::Ne, Some(json!("new")), true),
            ("missing", FilterOp::Ne, Some(json!("x")), true),
            ("missing", FilterOp::Eq, Some(json!("x")), false),
            ("n", FilterOp::Eq, Some(json!(5.0)), true),
            ("n", FilterOp::Gt, Some(json!(4)), true),
            ("n", FilterOp::Gt, Some(json!(5)), false),
            ("n", FilterOp::Ge, Some(json!(5)), true),
            ("n", FilterOp::Lt, Some(json!(6)), true),
            ("n", FilterOp::Le, Some(json!(4)), false),
            ("n", FilterOp::Gt, Some(json!("4")), false),
            ("status", FilterOp::Lt, Some(json!("zzz")), true),
            ("user.id", FilterOp::Eq, Some(json!(7)), true),
            ("user.id", FilterOp::Exists, None, true),
            ("user.name", FilterOp::Exists, None, false),
            ("user.name", FilterOp::NotExists, None, true),
            ("status.deep", FilterOp::NotExists, None, true),
        ];
        for (field, op, value, keep) in cases {
            let t = filter(field, op, value.clone());
            let out = t.apply(1, &mut rec(doc.clone())).unwrap();
            let want = if keep {
                Outcome::Keep
            } else {
                Outcome::Filtered
            };
            assert_eq!(out, want, "{field} {op:?} {value:?}");
        }
    }

    #[test]
    fn filter_on_non_json_is_an_error() {
        let t = filter("a", FilterOp::Exists, None);
        let err = t
            .apply(1, &mut EngineRecord::from_payload(&b"not json"[..]))
            .unwrap_err();
        assert!(matches!(err, TransformError::NotJson(_)));
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let t = Transform::from(&TransformSpec::Set {
            field: "meta.source".into(),
            value: json!("shop"),
        });
        let mut r = rec(json!({"a": 1}));
        assert_eq!(t.apply(1, &mut r).unwrap(), Outcome::Keep);
        assert_eq!(payload(&r), json!({"a": 1, "meta": {"source": "shop"}}));
        // The original payload is kept for dead letters.
        assert_eq!(&r.original_payload()[..], br#"{"a":1}"#);
        let err = t.apply(1, &mut rec(json!([1, 2]))).unwrap_err();
        assert!(matches!(err, TransformError::NotAnObject { .. }), "{err}");
        let err = t.apply(1, &mut rec(json!({"meta": 3}))).unwrap_err();
        assert!(err.to_string().contains("meta is a number"), "{err}");
    }

    #[test]
    fn rename_moves_a_field() {
        let t = Transform::from(&TransformSpec::Rename {
            from: "user.id".into(),
            to: "uid".into(),
        });
        let mut r = rec(json!({"user": {"id": 7, "n": 1}}));
        t.apply(1, &mut r).unwrap();
        assert_eq!(payload(&r), json!({"user": {"n": 1}, "uid": 7}));
        // Missing field: unchanged.
        let mut r = rec(json!({"x": 1}));
        t.apply(1, &mut r).unwrap();
        assert_eq!(payload(&r), json!({"x": 1}));
    }

    #[test]
    fn drop_removes_fields() {
        let t = Transform::from(&TransformSpec::Drop {
            fields: vec!["a".into(), "b.c".into(), "zz.y".into()],
        });
        let mut r = rec(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4}));
        t.apply(1, &mut r).unwrap();
        assert_eq!(payload(&r), json!({"b": {"d": 3}, "e": 4}));
    }

    #[test]
    fn identity_passes_anything() {
        let mut r = EngineRecord::from_payload(&b"\xff binary"[..]);
        let before = r.clone();
        assert_eq!(Transform::Identity.apply(1, &mut r).unwrap(), Outcome::Keep);
        assert_eq!(r, before);
    }

    #[test]
    fn fail_is_deterministic_and_near_its_rate() {
        let t = Transform::from(&TransformSpec::Fail { rate: 0.3 });
        let failed: Vec<bool> = (1..=10_000u64)
            .map(|seq| t.apply(seq, &mut rec(json!({}))).is_err())
            .collect();
        let again: Vec<bool> = (1..=10_000u64)
            .map(|seq| t.apply(seq, &mut rec(json!({}))).is_err())
            .collect();
        assert_eq!(failed, again);
        let n = failed.iter().filter(|f| **f).count();
        assert!((2_700..3_300).contains(&n), "{n}");
        let all = Transform::Fail { rate: 1.0 };
        assert!(all.apply(1, &mut rec(json!({}))).is_err());
        let none = Transform::Fail { rate: 0.0 };
        assert!(none.apply(1, &mut rec(json!({}))).is_ok());
    }

    #[test]
    fn sample_keeps_its_fraction_and_filters_the_rest() {
        let t = Transform::from(&TransformSpec::Sample { keep: 0.01 });
        let kept = (1..=100_000u64)
            .filter(|&seq| t.apply(seq, &mut rec(json!({}))).unwrap() == Outcome::Keep)
            .count();
        assert!((800..1_200).contains(&kept), "{kept}");
        let all = Transform::Sample { keep: 1.0 };
        assert_eq!(all.apply(1, &mut rec(json!({}))).unwrap(), Outcome::Keep);
    }
}
