//! Invariant 4 (acks): selective acks against a model. Runs of records are
//! admitted, then completed in a random order (in random groups, delivered
//! or filtered); after every completion the frontier and the completed
//! ranges [`BufferManager::ack_state`] reports are checked against the set
//! of records the model completed.

use std::collections::BTreeSet;

use proptest::prelude::*;
use sluice_buffer::{
    AckState, BufferManager, BufferedRecord, Limits, PipelineInfo, SeqRange, SourceId,
};

/// The most ranges an `Ack` carries (`ingest.proto`).
const MAX: usize = 64;

/// One case: where the source starts, its admitted runs, and the order and
/// grouping of the completions.
#[derive(Debug, Clone)]
struct Case {
    first_seq: u64,
    runs: Vec<usize>,
    /// A sort key per record: the completion order.
    order: Vec<u32>,
    /// Sizes of the groups completed by one call each.
    groups: Vec<usize>,
    /// Per group: completed as filtered instead of delivered.
    filtered: Vec<bool>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(1u64), 2..50u64, Just(u64::MAX / 2)],
        prop::collection::vec(1..40usize, 1..12),
    )
        .prop_flat_map(|(first_seq, runs)| {
            let n: usize = runs.iter().sum();
            (
                Just(first_seq),
                Just(runs),
                // Mostly in order with some shuffling, or wholly random.
                prop_oneof![
                    prop::collection::vec(0..u32::MAX, n),
                    prop::collection::vec(0..40u32, n).prop_map(|jitter| {
                        (0u32..).zip(jitter).map(|(i, j)| i * 8 + j).collect()
                    }),
                ],
                prop::collection::vec(1..30usize, 1..40),
                prop::collection::vec(any::<bool>(), 40),
            )
        })
        .prop_map(|(first_seq, runs, order, groups, filtered)| Case {
            first_seq,
            runs,
            order,
            groups,
            filtered,
        })
}

/// The maximal runs of `done` above `through + 1`.
fn model_ranges(done: &BTreeSet<u64>, through: u64) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for &seq in done.range(through.saturating_add(2)..) {
        match out.last_mut() {
            Some(r) if r.last + 1 == seq => r.last = seq,
            _ => out.push(SeqRange {
                first: seq,
                last: seq,
            }),
        }
    }
    out
}

/// Checks one reading against the model; `before` is the previous frontier.
fn check(
    acks: &AckState,
    done: &BTreeSet<u64>,
    first_seq: u64,
    admitted: u64,
    before: u64,
) -> Result<(), TestCaseError> {
    let through = acks.acked_through;
    prop_assert!(through >= before, "the frontier moved back");
    // Nothing up to the frontier was left uncompleted, and it is maximal.
    for seq in first_seq..=through {
        prop_assert!(done.contains(&seq), "{seq} acked, not completed");
    }
    prop_assert!(!done.contains(&(through + 1)), "frontier not maximal");
    let want = model_ranges(done, through);
    prop_assert_eq!(acks.ranges_total, want.len());
    prop_assert!(acks.ranges.len() <= MAX);
    // The lowest ranges, exactly: completed, ascending, disjoint, not
    // adjacent to each other nor to the frontier.
    prop_assert_eq!(&acks.ranges[..], &want[..want.len().min(MAX)]);
    for r in &acks.ranges {
        prop_assert!(r.first > through + 1 && r.first <= r.last);
        for seq in r.first..=r.last {
            prop_assert!(done.contains(&seq), "{seq} in a range, not completed");
        }
    }
    for w in acks.ranges.windows(2) {
        prop_assert!(w[0].last + 1 < w[1].first, "{:?}", w);
    }
    prop_assert_eq!(acks.outstanding, admitted - done.len() as u64);
    Ok(())
}

/// Pages through every range 3 at a time, as a session reports them.
fn paged(buffer: &BufferManager<()>, source: SourceId) -> Vec<SeqRange> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = buffer.ack_state(source, after, 3).unwrap().ranges;
        assert!(page.len() <= 3);
        match page.last() {
            Some(r) => after = r.last,
            None => return all,
        }
        all.extend(page);
    }
}

/// A buffer with one pipeline `p` of one stage and one source `s`.
fn one_source() -> (BufferManager<()>, PipelineInfo, SourceId) {
    let buffer = BufferManager::<()>::builder(Limits::default())
        .pipeline("p", ["sink"])
        .build()
        .unwrap();
    let p = buffer.pipeline_by_name("p").unwrap().clone();
    let source = buffer.register_source("s", p.id).unwrap();
    (buffer, p, source)
}

fn run(case: Case) -> Result<(), TestCaseError> {
    let (buffer, p, source) = one_source();
    let mut seq = case.first_seq;
    for &n in &case.runs {
        let a = buffer.admit(source, seq, vec![(); n]).unwrap();
        prop_assert_eq!(a.admitted, n);
        seq += n as u64;
    }
    let admitted = seq - case.first_seq;
    let mut records: Vec<BufferedRecord<()>> = Vec::new();
    loop {
        let batch = buffer.try_batch(p.stages[0], usize::MAX);
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    prop_assert_eq!(records.len() as u64, admitted);
    let mut keyed: Vec<(u32, BufferedRecord<()>)> =
        case.order.iter().copied().zip(records).collect();
    keyed.sort_by_key(|(k, r)| (*k, r.seq()));
    let mut rest = keyed.into_iter().map(|(_, r)| r);
    let mut done = BTreeSet::new();
    let mut before = case.first_seq - 1;
    let mut groups = case.groups.iter().cycle().zip(case.filtered.iter().cycle());
    loop {
        let (&size, &filtered) = groups.next().unwrap();
        let group: Vec<_> = rest.by_ref().take(size).collect();
        if group.is_empty() {
            break;
        }
        done.extend(group.iter().map(|r| r.seq()));
        let completion = if filtered {
            buffer.complete_filtered(group)
        } else {
            buffer.complete(group)
        };
        let acks = buffer.ack_state(source, 0, MAX).unwrap();
        check(&acks, &done, case.first_seq, admitted, before)?;
        let progress = &completion.sources[0];
        prop_assert_eq!(progress.acked_through, acks.acked_through);
        prop_assert_eq!(progress.ranges, acks.ranges_total);
        prop_assert_eq!(progress.outstanding, acks.outstanding);
        // Paging from any point gives every range above it, each once.
        prop_assert_eq!(
            paged(&buffer, source),
            model_ranges(&done, acks.acked_through)
        );
        before = acks.acked_through;
    }
    let acks = buffer.ack_state(source, 0, MAX).unwrap();
    prop_assert_eq!(acks.acked_through, seq - 1);
    prop_assert!(acks.ranges.is_empty());
    prop_assert_eq!(acks.outstanding, 0);
    buffer.audit().map_err(TestCaseError::fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ack_ranges_follow_the_model(case in case()) {
        run(case)?;
    }
}

/// More than 64 ranges: an `Ack` lists the lowest 64, paging reaches all.
#[test]
fn more_than_64_ranges_are_listed_lowest_first_and_paged() {
    let (buffer, p, source) = one_source();
    let _ = buffer.admit(source, 1, vec![(); 400]).unwrap();
    let all = buffer.try_batch(p.stages[0], usize::MAX);
    // Every odd record stays in the works: 199 ranges of one record each.
    let (held, done): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.seq() % 2 == 1);
    buffer.complete(done);
    let acks = buffer.ack_state(source, 0, MAX).unwrap();
    assert_eq!((acks.acked_through, acks.ranges_total), (0, 200));
    assert_eq!(acks.ranges.len(), MAX);
    assert_eq!(acks.ranges[0], SeqRange { first: 2, last: 2 });
    assert_eq!(paged(&buffer, source).len(), 200);
    assert_eq!(acks.outstanding, 200);
    buffer.complete(held);
    let acks = buffer.ack_state(source, 0, MAX).unwrap();
    assert_eq!((acks.acked_through, acks.ranges_total), (400, 0));
}
