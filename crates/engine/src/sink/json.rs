//! The record format of the file and stdout sinks: one JSON object per
//! record (one line), payload embedded as JSON when it parses.
//!
//! [`write_json_line`] writes the line straight into a byte buffer: the
//! small parts (names, numbers, strings escaped by serde_json's serializer)
//! one after the other, and a JSON payload as its own bytes after one
//! validation pass (no tree, no second serialization; BENCHMARKS.md, "JSON
//! payloads into the file sink"). [`json_value`] is the same object as a
//! [`Value`]: the definition the line is tested against.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use super::contract::SinkRecord;

fn bytes_field(out: &mut Map<String, Value>, name: &str, bytes: &[u8], json_ok: bool) {
    let (value, encoding) = if json_ok && let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        (v, "json")
    } else if let Ok(s) = std::str::from_utf8(bytes) {
        (Value::String(s.to_owned()), "string")
    } else {
        (Value::String(BASE64.encode(bytes)), "base64")
    };
    out.insert(name.to_owned(), value);
    out.insert(format!("{name}_encoding"), Value::String(encoding.into()));
}

/// The JSON object a sink writes for one record (see the [sink module
/// docs](crate::sink)), as a tree; [`write_json_line`] writes the same
/// object without building it.
pub fn json_value(r: &SinkRecord<'_>) -> Value {
    let mut out = Map::new();
    out.insert("source_id".into(), json!(r.source));
    out.insert("seq".into(), json!(r.seq));
    let rec = r.record;
    if !rec.key.is_empty() {
        bytes_field(&mut out, "key", &rec.key, false);
    }
    if !rec.attributes().is_empty() {
        let attrs: Map<String, Value> = rec
            .attributes()
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.insert("attributes".into(), Value::Object(attrs));
    }
    if rec.event_time_ms != 0 {
        out.insert("event_time_ms".into(), json!(rec.event_time_ms));
    }
    bytes_field(&mut out, "payload", rec.payload(), true);
    if let Some(d) = r.dead_letter {
        out.insert("pipeline".into(), json!(d.pipeline));
        out.insert("stage".into(), json!(d.stage));
        out.insert("error".into(), json!(d.error));
        out.insert("retries".into(), json!(d.retries));
        if rec.payload_rewritten() && rec.original_payload() != rec.payload() {
            bytes_field(&mut out, "original_payload", rec.original_payload(), true);
        }
    }
    Value::Object(out)
}

/// One record as a JSON line, newline included (a buffer of its own; the
/// sinks append to one buffer per batch with [`write_json_line`]).
pub fn json_line(r: &SinkRecord<'_>) -> Vec<u8> {
    let mut line = Vec::with_capacity(64 + r.record.payload().len());
    write_json_line(&mut line, r);
    line
}

/// Appends one record's JSON line, newline included, to `out`: the object
/// of [`json_value`], with its fields in the same (name) order. A JSON
/// payload is copied as it came, without the whitespace around it; when
/// whitespace inside it holds a line break, all whitespace between its
/// tokens is dropped, so that every record stays one line.
pub fn write_json_line(out: &mut Vec<u8>, r: &SinkRecord<'_>) {
    let rec = r.record;
    let mut obj = Obj { out, first: true };
    // Field names in sorted order, as the `Map` of `json_value` has them.
    if !rec.attributes().is_empty() {
        obj.name("attributes");
        let mut attrs = Obj {
            out: obj.out,
            first: true,
        };
        let all = rec.attributes();
        for (i, (k, v)) in all.iter().enumerate() {
            // Sorted by name: of a repeated name, the last one (as a map keeps it).
            if all.get(i + 1).is_some_and(|(next, _)| next == k) {
                continue;
            }
            attrs.sep();
            attrs.string(k);
            attrs.out.push(b':');
            attrs.string(v);
        }
        attrs.out.push(b'}');
    }
    if let Some(d) = r.dead_letter {
        obj.name("error");
        obj.string(d.error);
    }
    if rec.event_time_ms != 0 {
        obj.name("event_time_ms");
        obj.number(rec.event_time_ms);
    }
    if !rec.key.is_empty() {
        obj.bytes("key", &rec.key, false);
    }
    if r.dead_letter.is_some() && rec.payload_rewritten() && rec.original_payload() != rec.payload()
    {
        obj.bytes("original_payload", rec.original_payload(), true);
    }
    obj.bytes("payload", rec.payload(), true);
    if let Some(d) = r.dead_letter {
        obj.name("pipeline");
        obj.string(d.pipeline);
        obj.name("retries");
        obj.number(d.retries);
    }
    obj.name("seq");
    obj.number(r.seq);
    obj.name("source_id");
    obj.string(r.source);
    if let Some(d) = r.dead_letter {
        obj.name("stage");
        obj.string(d.stage);
    }
    obj.out.extend_from_slice(b"}\n");
}

/// A JSON object being written.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    /// `{` before the first member, `,` before the others.
    fn sep(&mut self) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
    }

    /// A member's name (ours: plain ASCII, nothing to escape) and `:`.
    fn name(&mut self, name: &str) {
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, s: &str) {
        // Writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    fn number(&mut self, n: impl serde::Serialize) {
        let _ = serde_json::to_writer(&mut *self.out, &n);
    }

    /// `name` and `name_encoding`, as `bytes_field` makes them.
    fn bytes(&mut self, name: &str, bytes: &[u8], json_ok: bool) {
        self.name(name);
        let encoding = if json_ok && is_json(bytes) {
            write_json_text(self.out, bytes);
            "json"
        } else if let Ok(s) = std::str::from_utf8(bytes) {
            self.string(s);
            "string"
        } else {
            // Base64 has nothing to escape.
            self.out.push(b'"');
            self.out.extend_from_slice(BASE64.encode(bytes).as_bytes());
            self.out.push(b'"');
            "base64"
        };
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"_encoding\":\"");
        self.out.extend_from_slice(encoding.as_bytes());
        self.out.push(b'"');
    }
}

/// Whether `bytes` is one JSON text that parses as a [`Value`] (the same
/// test as `serde_json::from_slice::<Value>`: numbers in range, strings
/// valid UTF-8 without lone surrogates, the same nesting limit), without
/// building the tree.
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Valid>(bytes).is_ok()
}

/// Copies a valid JSON text without the whitespace around it; when what
/// remains holds a line break (whitespace between tokens: a JSON string
/// holds none raw), without any whitespace between its tokens.
fn write_json_text(out: &mut Vec<u8>, text: &[u8]) {
    let text = text.trim_ascii();
    if !text.iter().any(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(text);
        return;
    }
    out.reserve(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
}

/// Deserializes any JSON value as [`Value`] would, keeping nothing: every
/// scalar goes through `deserialize_any` (unlike `IgnoredAny`, which skips
/// numbers and strings without checking their range or UTF-8).
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::EngineRecord;
    use crate::sink::DeadLetterInfo;

    fn line_of(record: &EngineRecord, dead_letter: Option<DeadLetterInfo<'_>>) -> Vec<u8> {
        json_line(&SinkRecord {
            source: "s",
            seq: 1,
            record,
            dead_letter,
        })
    }

    /// The line is one line and parses as the tree of `json_value`; when no
    /// payload is embedded as JSON, it is the tree's own serialization.
    fn check(r: &SinkRecord<'_>) -> Result<(), TestCaseError> {
        let line = json_line(r);
        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        prop_assert!(!line.contains(&b'\r'));
        let new: Value = serde_json::from_slice(&line)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&line))))?;
        let old = json_value(r);
        prop_assert_eq!(&new, &old);
        let embedded = |f: &str| old.get(f).is_some_and(|e| e == "json");
        if !embedded("payload_encoding") && !embedded("original_payload_encoding") {
            let mut old_line = serde_json::to_vec(&old).unwrap();
            old_line.push(b'\n');
            prop_assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&old_line)
            );
        }
        Ok(())
    }

    fn json_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((".{0,4}", inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Payloads: JSON texts (compact or pretty, with whitespace around
    /// them), texts that are almost JSON, UTF-8 text, any bytes.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let ws = "[ \t\r\n]{0,3}";
        prop_oneof![
            (ws, json_tree(), any::<bool>(), ws).prop_map(|(a, v, pretty, b)| {
                let text = if pretty {
                    serde_json::to_vec_pretty(&v).unwrap()
                } else {
                    serde_json::to_vec(&v).unwrap()
                };
                [a.as_bytes(), &text, b.as_bytes()].concat()
            }),
            prop::sample::select(vec![
                &b"1e400"[..],
                b"[1e400]",
                b"-1e400",
                b"\"\\ud800\"",
                b"\"\\ud83d\\ude00\"",
                b"{\"a\":1}x",
                b"{\"a\":1,}",
                b"[1,\n2]\n",
                b"{\"a\" :\r\n \"b c\\\" \\n d\" }",
                b"\"\xff\"",
                b"\x0c1",
                b"",
                b" ",
                b"01",
                b"nul",
                b"{\"a\":1,\"a\":2}",
            ])
            .prop_map(|b| b.to_vec()),
            "\\PC{0,12}".prop_map(String::into_bytes),
            ".{0,12}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..16),
        ]
    }

    fn dead_letter() -> impl Strategy<Value = Option<(String, String, String, u32)>> {
        prop::option::of((".{0,6}", ".{0,6}", "(.|\n|\"){0,10}", any::<u32>()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_line_parses_as_the_tree(
            source in ".{0,8}",
            seq in any::<u64>(),
            key in prop_oneof![
                Just(Vec::new()),
                ".{0,6}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..6),
            ],
            attributes in prop::collection::vec((".{0,4}", "(.|\n){0,6}"), 0..4),
            event_time_ms in prop_oneof![Just(0i64), any::<i64>()],
            payload in payload(),
            rewritten in prop::option::of(payload()),
            dead in dead_letter(),
        ) {
            let mut record = EngineRecord::from_payload(payload).with_attributes(attributes);
            record.key = key.into();
            record.event_time_ms = event_time_ms;
            if let Some(p) = rewritten {
                record.set_payload(p);
            }
            let dead_letter = dead.as_ref().map(|(pipeline, stage, error, retries)| DeadLetterInfo {
                pipeline,
                stage,
                error,
                retries: *retries,
            });
            check(&SinkRecord { source: &source, seq, record: &record, dead_letter })?;
        }
    }

    #[test]
    fn a_json_payload_is_copied_as_it_came_without_surrounding_whitespace() {
        let r = EngineRecord::from_payload(&b" \t{\"b\":1.50, \"a\":[1, 2]}\r\n"[..]);
        assert_eq!(
            String::from_utf8(line_of(&r, None)).unwrap(),
            "{\"payload\":{\"b\":1.50, \"a\":[1, 2]},\"payload_encoding\":\"json\",\
             \"seq\":1,\"source_id\":\"s\"}\n"
        );
    }

    #[test]
    fn line_breaks_inside_a_json_payload_keep_the_record_on_one_line() {
        let r =
            EngineRecord::from_payload(&b"{\n  \"a b\": \"x\\n y\",\r\n  \"c\": [1,\n 2]\n}\n"[..]);
        assert_eq!(
            String::from_utf8(line_of(&r, None)).unwrap(),
            "{\"payload\":{\"a b\":\"x\\n y\",\"c\":[1,2]},\"payload_encoding\":\"json\",\
             \"seq\":1,\"source_id\":\"s\"}\n"
        );
    }

    #[test]
    fn what_the_tree_would_refuse_is_not_embedded() {
        for text in [&b"1e400"[..], b"\"\\udc00\"", b"[1] [2]", b"{\"a\":1"] {
            let line = line_of(&EngineRecord::from_payload(text), None);
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["payload_encoding"], "string", "{text:?}");
            assert_eq!(v["payload"], std::str::from_utf8(text).unwrap());
        }
    }

    #[test]
    fn one_buffer_takes_a_batch() {
        let a = EngineRecord::from_payload(&b"1"[..]);
        let b = EngineRecord::from_payload(&b"x"[..]);
        let mut buf = Vec::new();
        for (seq, record) in [(1, &a), (2, &b)] {
            write_json_line(
                &mut buf,
                &SinkRecord {
                    source: "s",
                    seq,
                    record,
                    dead_letter: None,
                },
            );
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("\"payload\":1,") && lines[1].contains("\"payload\":\"x\""));
    }
}
