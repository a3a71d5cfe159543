//! The record format of the file and stdout sinks: one JSON object per
//! record (one line), payload embedded as JSON when it parses.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
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

/// The JSON object a sink writes for one record (see the [sink module docs](crate::sink)).
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

/// One record as a JSON line, newline included.
pub fn json_line(r: &SinkRecord<'_>) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    let mut line = serde_json::to_vec(&json_value(r)).unwrap_or_default();
    line.push(b'\n');
    line
}
