//! Rules of the contract that two crates apply and must agree on.

use std::time::Duration;

use proptest::prelude::*;
use sluice_buffer::RetryPolicy;
use sluice_client::ReconnectPolicy;

proptest! {
    /// One backoff rule: a record's retries in the engine (sluice-buffer)
    /// and a client's reconnects (sluice-client) wait the same, doubling from
    /// the initial wait up to the maximum. (The two leaf crates share no
    /// dependency to hold one function; this pins them together.)
    #[test]
    fn retries_and_reconnects_back_off_alike(
        initial_us in 0u64..10_000_000,
        max_us in 0u64..100_000_000,
        attempt in 0u32..64,
    ) {
        let (initial, max) = (Duration::from_micros(initial_us), Duration::from_micros(max_us));
        let retry = RetryPolicy { max_retries: 3, initial_backoff: initial, max_backoff: max };
        let reconnect = ReconnectPolicy { max_attempts: 3, initial_backoff: initial, max_backoff: max };
        prop_assert_eq!(retry.backoff(attempt), reconnect.backoff(attempt));
    }
}

/// The record size rule: the engine charges a record what
/// `sluice_proto::record_size` says, which is what the client counts.
#[test]
fn the_engine_charges_the_contracts_record_size() {
    use sluice_buffer::ByteSize;
    use sluice_engine::record::EngineRecord;
    use sluice_proto::v1::Record;
    let wire = Record {
        key: b"key".to_vec().into(),
        payload: b"{\"n\":1}".to_vec().into(),
        attributes: [
            ("a".to_owned(), "bc".to_owned()),
            ("d".to_owned(), String::new()),
        ]
        .into(),
        event_time_ms: 0,
    };
    let size = sluice_proto::record_size(&wire);
    assert_eq!(size, 3 + 7 + 3 + 1);
    assert_eq!(sluice_client::record_size(&wire), size);
    assert_eq!(EngineRecord::from(wire).byte_size() as u64, size);
}
