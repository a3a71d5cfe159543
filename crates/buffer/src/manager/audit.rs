//! The invariant check: [`audit`](BufferManager::audit) reads the state once
//! and reports every violation of invariants 1 (limits), 2 (conservation),
//! 4 (no lost wake-up) and the shape of 5 (acks), as stated at the lock
//! (`BufferManager::state`).

use super::{BufferManager, Credit};
use crate::channel::waiters::WaitList;
use crate::limits::Limit;

impl<T> BufferManager<T> {
    /// Checks invariants 1 (limits), 2 (conservation), 4 (no waiter
    /// sleeps on a level with the room it needs, no consumer on a stage
    /// with ready records) and the shape of 5 (the completed ranges) in one
    /// consistent reading and describes every violation. Meant for tests and debugging;
    /// it walks every queue, so do not call it on a hot path.
    pub fn audit(&self) -> Result<(), String> {
        let st = self.state.lock();
        let mut problems = Vec::new();
        let check_limit = |problems: &mut Vec<String>, what: String, used: Credit, limit: Limit| {
            if used.records > limit.records || used.bytes > limit.bytes {
                problems.push(format!("{what}: {used:?} exceeds {limit:?}"));
            }
        };
        check_limit(
            &mut problems,
            "global".into(),
            st.global.used,
            self.limits.global,
        );
        check_limit(
            &mut problems,
            "global peak".into(),
            st.global.peak,
            self.limits.global,
        );
        let mut sum_sources = Credit::ZERO;
        let mut sum_reserved = Credit::ZERO;
        for (i, s) in st.sources.iter().enumerate() {
            check_limit(
                &mut problems,
                format!("source {i}"),
                s.usage.used,
                self.limits.per_source,
            );
            check_limit(
                &mut problems,
                format!("source {i} peak"),
                s.usage.peak,
                self.limits.per_source,
            );
            sum_sources.add(s.usage.used);
            sum_reserved.add(s.reserved);
            let in_engine = s.usage.used.records - s.reserved.records;
            // Invariant 5's shape: ranges ascending, disjoint, not adjacent
            // to each other nor to the frontier, none above what was admitted.
            let mut below = s.acks.through;
            for (&first, &last) in &s.acks.pending {
                if first <= below.saturating_add(1) || last < first || last > s.admitted_through {
                    problems.push(format!(
                        "source {i}: completed range {first}..={last} after {below} \
                         (frontier {}, admitted through {})",
                        s.acks.through, s.admitted_through
                    ));
                }
                below = last;
            }
            if s.admitted != in_engine + s.delivered + s.filtered + s.dead_lettered {
                problems.push(format!(
                    "source {i}: admitted {} != in engine {in_engine} + delivered {} + filtered {} + dead-lettered {}",
                    s.admitted, s.delivered, s.filtered, s.dead_lettered
                ));
            }
        }
        let mut sum_stages = Credit::ZERO;
        for (i, s) in st.stages.iter().enumerate() {
            check_limit(
                &mut problems,
                format!("stage {i}"),
                s.usage.used,
                self.limits.per_stage,
            );
            check_limit(
                &mut problems,
                format!("stage {i} peak"),
                s.usage.peak,
                self.limits.per_stage,
            );
            sum_stages.add(s.usage.used);
            let q_records = (s.ready.len() + s.delayed.len()) as u64;
            // Summed record by record, not from the queue's chunk totals,
            // which are checked against the same sum here.
            let ready_bytes: u64 = s.ready.sizes().map(u64::from).sum();
            if s.ready.bytes() != ready_bytes {
                problems.push(format!(
                    "stage {i}: queue chunk totals {} bytes != records {ready_bytes} bytes",
                    s.ready.bytes()
                ));
            }
            let q_bytes: u64 = ready_bytes
                + s.delayed
                    .iter()
                    .map(|d| u64::from(d.0.record.size))
                    .sum::<u64>();
            if s.queued != Credit::new(q_records, q_bytes) {
                problems.push(format!("stage {i}: queued count {:?} != queue contents {q_records} records, {q_bytes} bytes", s.queued));
            }
            let held = s.reserved.records + s.queued.records;
            if held > s.usage.used.records {
                problems.push(format!(
                    "stage {i}: reserved + queued {held} > used {}",
                    s.usage.used.records
                ));
            }
        }
        if sum_sources != st.global.used {
            problems.push(format!(
                "sum of sources {sum_sources:?} != global {:?}",
                st.global.used
            ));
        }
        if sum_stages != st.global.used {
            problems.push(format!(
                "sum of stages {sum_stages:?} != global {:?}",
                st.global.used
            ));
        }
        if sum_reserved != st.global_reserved {
            problems.push(format!(
                "sum of reservations {sum_reserved:?} != global reserved {:?}",
                st.global_reserved
            ));
        }
        // Invariant 4: a waiting producer's level lacks the room its refused
        // record needs (else the release that made the room should have
        // woken it), and a waiting consumer's stage has nothing ready.
        let check_waiters =
            |problems: &mut Vec<String>, what: String, list: &WaitList, free: Credit| {
                for need in list.needs() {
                    if free.records >= need.records && free.bytes >= need.bytes {
                        problems.push(format!(
                            "{what}: a producer waits for {need:?} with {free:?} free"
                        ));
                    }
                }
            };
        check_waiters(
            &mut problems,
            "global".into(),
            &st.global_waiters,
            st.global.free(self.limits.global),
        );
        for (i, s) in st.sources.iter().enumerate() {
            let free = s.usage.free(self.limits.per_source);
            check_waiters(&mut problems, format!("source {i}"), &s.waiters, free);
        }
        for (i, s) in st.stages.iter().enumerate() {
            let free = s.usage.free(self.limits.per_stage);
            check_waiters(&mut problems, format!("stage {i}"), &s.space_waiters, free);
            if !s.ready_waiters.is_empty() && !s.ready.is_empty() {
                problems.push(format!(
                    "stage {i}: {} consumers wait with {} records ready",
                    s.ready_waiters.len(),
                    s.ready.len()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}
