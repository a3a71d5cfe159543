//! The record size rule: how many bytes a record counts against credits and
//! limits. It is part of the contract (`Credit.bytes` in `ingest.proto`), so
//! it is defined once, here, and the engine, the clients and the tests call
//! it.

use crate::v1::Record;

/// The size a record counts against byte credits and limits:
/// `len(key) + len(payload) + Σ (len(name) + len(value))` over its
/// attributes. Framing and protobuf overhead are not counted.
///
/// ```
/// use sluice_proto::{record_size, v1::Record};
/// let r = Record { key: b"k".to_vec().into(), payload: b"abc".to_vec().into(),
///                  attributes: [("a".into(), "xy".into())].into(), ..Default::default() };
/// assert_eq!(record_size(&r), 1 + 3 + 1 + 2);
/// ```
pub fn record_size(record: &Record) -> u64 {
    size_of_parts(
        record.key.len(),
        record.payload.len(),
        record
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// [`record_size`] from a record's parts, for record types other than the
/// generated [`Record`] (the engine's own record keeps the same parts).
#[inline]
pub fn size_of_parts<'a>(
    key_len: usize,
    payload_len: usize,
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> u64 {
    let attrs: usize = attributes.into_iter().map(|(k, v)| k.len() + v.len()).sum();
    (key_len + payload_len + attrs) as u64
}
