//! The `subject` template of the `nats` sink, parsed once.

use sluice_config::is_publish_subject;

use crate::sink::contract::SinkRecord;

/// A part of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    SourceId,
    Key,
}

/// A subject template with `{pipeline}` already filled in (it is the same
/// for every record of the sink) and `{source_id}` / `{key}` left to fill
/// per record.
#[derive(Debug, Clone)]
pub(crate) struct SubjectTemplate {
    parts: Vec<Part>,
    /// The subject itself when the template has no per-record part: the
    /// common case costs no formatting per record.
    fixed: Option<String>,
}

impl SubjectTemplate {
    /// Parses `template` (validated by the config: known placeholders only).
    pub(crate) fn new(template: &str, pipeline: &str) -> Self {
        let template = template.replace("{pipeline}", pipeline);
        let mut parts = Vec::new();
        let mut rest = template.as_str();
        while !rest.is_empty() {
            let (at, part, len) = [("{source_id}", Part::SourceId), ("{key}", Part::Key)]
                .into_iter()
                .filter_map(|(p, part)| rest.find(p).map(|at| (at, part, p.len())))
                .min_by_key(|(at, ..)| *at)
                .unwrap_or((rest.len(), Part::Text(String::new()), 0));
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_owned()));
            }
            if len > 0 {
                parts.push(part);
            }
            rest = &rest[at + len..];
        }
        let fixed = match parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        };
        Self { parts, fixed }
    }

    /// The subject of `record`, or why it has none (a record-level failure:
    /// a key that is not UTF-8 or makes an invalid subject).
    pub(crate) fn render(&self, record: &SinkRecord<'_>) -> Result<String, String> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::SourceId => out.push_str(record.source),
                // Why `_`: an empty token (`a..b`) is not a subject, and a
                // record without a key is common.
                Part::Key if record.record.key.is_empty() => out.push('_'),
                Part::Key => match std::str::from_utf8(&record.record.key) {
                    Ok(key) => out.push_str(key),
                    Err(_) => return Err("the record's key is not UTF-8: no subject".into()),
                },
            }
        }
        if is_publish_subject(&out) {
            Ok(out)
        } else {
            Err(format!("{out:?} is not a valid NATS subject"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EngineRecord;

    fn rec<'a>(source: &'a str, record: &'a EngineRecord) -> SinkRecord<'a> {
        SinkRecord {
            source,
            seq: 1,
            record,
            dead_letter: None,
        }
    }

    #[test]
    fn fills_pipeline_source_and_key() {
        let mut r = EngineRecord::from_payload(&b"{}"[..]);
        let t = SubjectTemplate::new("sluice.{pipeline}.{source_id}.{key}", "orders");
        assert_eq!(
            t.render(&rec("web-1", &r)).unwrap(),
            "sluice.orders.web-1._"
        );
        r.key = bytes::Bytes::from_static(b"eu");
        assert_eq!(
            t.render(&rec("web-1", &r)).unwrap(),
            "sluice.orders.web-1.eu"
        );
        r.key = bytes::Bytes::from_static(b"a b");
        assert!(t.render(&rec("web-1", &r)).is_err());
        r.key = bytes::Bytes::from_static(&[0xff]);
        assert!(t.render(&rec("web-1", &r)).unwrap_err().contains("UTF-8"));
        let fixed = SubjectTemplate::new("events.{pipeline}", "p");
        assert_eq!(fixed.render(&rec("s", &r)).unwrap(), "events.p");
    }
}
