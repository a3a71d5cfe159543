//! The engine's record: what a source sent, as the buffer holds it.

use std::sync::Arc;

use bytes::Bytes;
use sluice_buffer::ByteSize;
use sluice_proto::v1;

/// One record inside the engine: the wire [`v1::Record`]'s content.
///
/// Its size against every byte limit ([`ByteSize`]) is the wire protocol's
/// definition: `len(key) + len(payload) + Σ (len(name) + len(value))` over
/// the attributes. Transforms may rewrite the payload; the charge taken at
/// admission stays the same (the buffer fixes it then).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRecord {
    /// Optional key (empty when absent).
    pub key: Bytes,
    /// The content; transforms rewrite it.
    pub payload: Bytes,
    /// Free-form metadata, sorted by name.
    pub attributes: Arc<[(String, String)]>,
    /// Event time in ms since the Unix epoch, 0 when unknown.
    pub event_time_ms: i64,
    /// The payload as the source sent it (shares memory with `payload` until
    /// a transform rewrites it); dead letters keep it.
    pub original_payload: Bytes,
}

impl EngineRecord {
    /// A record with just a payload.
    pub fn from_payload(payload: impl Into<Bytes>) -> Self {
        let payload = payload.into();
        Self {
            key: Bytes::new(),
            original_payload: payload.clone(),
            payload,
            attributes: Arc::from(Vec::new()),
            event_time_ms: 0,
        }
    }

    /// The wire size of a record, as credits and limits count it.
    pub fn wire_size(record: &v1::Record) -> usize {
        record.key.len()
            + record.payload.len()
            + record
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl From<v1::Record> for EngineRecord {
    fn from(r: v1::Record) -> Self {
        let mut attributes: Vec<(String, String)> = r.attributes.into_iter().collect();
        attributes.sort_unstable();
        Self {
            key: r.key,
            original_payload: r.payload.clone(),
            payload: r.payload,
            attributes: attributes.into(),
            event_time_ms: r.event_time_ms,
        }
    }
}

impl ByteSize for EngineRecord {
    fn byte_size(&self) -> usize {
        self.key.len()
            + self.original_payload.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_size_matches_the_wire_definition() {
        let wire = v1::Record {
            key: Bytes::from_static(b"k1"),
            payload: Bytes::from_static(b"{\"a\":1}"),
            attributes: [("host".to_string(), "abc".to_string())].into(),
            event_time_ms: 5,
        };
        let n = EngineRecord::wire_size(&wire);
        assert_eq!(n, 2 + 7 + 4 + 3);
        let r = EngineRecord::from(wire);
        assert_eq!(r.byte_size(), n);
    }
}
