//! The engine's record: what a source sent, as the buffer holds it.

use bytes::Bytes;
use sluice_buffer::ByteSize;
use sluice_proto::{size_of_parts, v1};

/// One record inside the engine: the wire [`v1::Record`]'s content.
///
/// Its size against every byte limit ([`ByteSize`]) is the wire protocol's
/// definition: `len(key) + len(payload) + Σ (len(name) + len(value))` over
/// the attributes, with the payload as the source sent it. Transforms may
/// rewrite the payload ([`set_payload`](Self::set_payload)); the charge
/// taken at admission stays the same (the buffer fixes it then).
///
/// Why the layout: every record is moved from queue to queue several times
/// and dropped once, so its size and its drop are per-record costs of the
/// whole engine (BENCHMARKS.md, "Where the engine spends its CPU"). The
/// common case (no attributes, payload not rewritten) is kept inline in 80
/// bytes with no heap allocation of its own; attributes and the original of
/// a rewritten payload live behind one optional box.
///
/// ```
/// use sluice_engine::record::EngineRecord;
///
/// let mut r = EngineRecord::from_payload(&b"{\"a\":1}"[..]);
/// r.set_payload(&b"{\"a\":2}"[..]);
/// assert_eq!(&r.payload()[..], b"{\"a\":2}");
/// assert_eq!(&r.original_payload()[..], b"{\"a\":1}"); // dead letters keep it
/// assert!(r.attributes().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRecord {
    /// Optional key (empty when absent).
    pub key: Bytes,
    /// Event time in ms since the Unix epoch, 0 when unknown.
    pub event_time_ms: i64,
    /// The content, as the last transform left it.
    payload: Bytes,
    /// Attributes and the original payload; `None` when there are no
    /// attributes and the payload was never rewritten.
    extra: Option<Box<Extra>>,
}

/// The rarely present parts of a record.
#[derive(Debug, Clone, PartialEq, Default)]
struct Extra {
    /// Sorted by name.
    attributes: Vec<(String, String)>,
    /// The payload as the source sent it, once a transform rewrote it.
    original_payload: Option<Bytes>,
}

impl EngineRecord {
    /// A record with just a payload.
    pub fn from_payload(payload: impl Into<Bytes>) -> Self {
        Self {
            key: Bytes::new(),
            event_time_ms: 0,
            payload: payload.into(),
            extra: None,
        }
    }

    /// A record from the fields of a wire record without attributes (the
    /// decoder's constructor; see `wire.rs`).
    pub(crate) fn from_wire_parts(key: Bytes, payload: Bytes, event_time_ms: i64) -> Self {
        Self {
            key,
            event_time_ms,
            payload,
            extra: None,
        }
    }

    /// The same record with these attributes (sorted by name here).
    pub fn with_attributes(
        mut self,
        attributes: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut attributes: Vec<(String, String)> = attributes.into_iter().collect();
        if attributes.is_empty() && self.extra.is_none() {
            return self;
        }
        attributes.sort_unstable();
        self.extra.get_or_insert_with(Box::default).attributes = attributes;
        self
    }

    /// The content, as the last transform left it.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Replaces the content; the first replacement keeps the original for
    /// [`original_payload`](Self::original_payload).
    pub fn set_payload(&mut self, payload: impl Into<Bytes>) {
        let old = std::mem::replace(&mut self.payload, payload.into());
        let extra = self.extra.get_or_insert_with(Box::default);
        if extra.original_payload.is_none() {
            extra.original_payload = Some(old);
        }
    }

    /// The payload as the source sent it (what dead letters keep).
    pub fn original_payload(&self) -> &Bytes {
        self.extra
            .as_ref()
            .and_then(|e| e.original_payload.as_ref())
            .unwrap_or(&self.payload)
    }

    /// Whether a transform rewrote the payload.
    pub fn payload_rewritten(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|e| e.original_payload.is_some())
    }

    /// Free-form metadata, sorted by name.
    pub fn attributes(&self) -> &[(String, String)] {
        self.extra.as_ref().map_or(&[], |e| &e.attributes)
    }

    /// The bytes its key and payloads reference (what compaction copies,
    /// `record_memory::compact`).
    pub(crate) fn held_len(&self) -> usize {
        let original = self
            .extra
            .as_ref()
            .and_then(|e| e.original_payload.as_ref())
            .map_or(0, Bytes::len);
        self.key.len() + self.payload.len() + original
    }

    /// Appends its key, payload and original payload to `out`, in that
    /// order (`held_len` bytes).
    pub(crate) fn write_parts(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.payload);
        if let Some(original) = self
            .extra
            .as_ref()
            .and_then(|e| e.original_payload.as_ref())
        {
            out.extend_from_slice(original);
        }
    }

    /// Replaces its key and payloads with slices of `own`, where
    /// [`write_parts`](Self::write_parts) wrote them from `at`; returns the
    /// offset after them.
    pub(crate) fn take_parts(&mut self, own: &Bytes, at: usize) -> usize {
        let mut at = at;
        let mut next = |len: usize| {
            let part = own.slice(at..at + len);
            at += len;
            part
        };
        self.key = next(self.key.len());
        self.payload = next(self.payload.len());
        if let Some(original) = self
            .extra
            .as_mut()
            .and_then(|e| e.original_payload.as_mut())
        {
            *original = next(original.len());
        }
        at
    }
}

impl From<v1::Record> for EngineRecord {
    fn from(r: v1::Record) -> Self {
        let record = Self::from_wire_parts(r.key, r.payload, r.event_time_ms);
        if r.attributes.is_empty() {
            // No allocation for the common case.
            record
        } else {
            record.with_attributes(r.attributes)
        }
    }
}

impl ByteSize for EngineRecord {
    fn byte_size(&self) -> usize {
        // The contract's rule (`sluice_proto::record_size`), over the parts
        // the source sent: a rewritten payload is charged as it arrived.
        let size = match &self.extra {
            // The common case, asked several times per record at admission.
            None => size_of_parts(self.key.len(), self.payload.len(), []),
            Some(e) => size_of_parts(
                self.key.len(),
                e.original_payload.as_ref().unwrap_or(&self.payload).len(),
                e.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        };
        size as usize
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
        let n = sluice_proto::record_size(&wire) as usize;
        assert_eq!(n, 2 + 7 + 4 + 3);
        let mut r = EngineRecord::from(wire);
        assert_eq!(r.byte_size(), n);
        // A rewrite does not change the charge.
        r.set_payload(&b"{\"a\":1,\"b\":2}"[..]);
        assert_eq!(r.byte_size(), n);
    }

    #[test]
    fn attributes_are_sorted_and_kept() {
        let wire = v1::Record {
            attributes: [("b".into(), "2".into()), ("a".into(), "1".into())].into(),
            ..Default::default()
        };
        let r = EngineRecord::from(wire);
        assert_eq!(
            r.attributes(),
            &[("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn the_original_payload_survives_rewrites() {
        let mut r =
            EngineRecord::from_payload(&b"1"[..]).with_attributes([("k".into(), "v".into())]);
        assert!(!r.payload_rewritten());
        assert_eq!(&r.original_payload()[..], b"1");
        r.set_payload(&b"2"[..]);
        r.set_payload(&b"3"[..]);
        assert!(r.payload_rewritten());
        assert_eq!(&r.payload()[..], b"3");
        assert_eq!(&r.original_payload()[..], b"1");
        assert_eq!(r.attributes().len(), 1);
    }

    /// The size the stage queues move per record (see the type's docs):
    /// the buffer's 48 bytes of bookkeeping plus this record. Growing it
    /// costs every record several copies.
    #[test]
    fn a_buffered_record_is_128_bytes() {
        assert_eq!(std::mem::size_of::<EngineRecord>(), 80);
        assert_eq!(
            std::mem::size_of::<sluice_buffer::BufferedRecord<EngineRecord>>(),
            128
        );
    }
}
