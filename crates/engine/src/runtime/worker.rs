//! A stage worker: takes batches from its stage, transforms and forwards
//! them or writes them to the sink, completes them, publishes the acks
//! (see the [module docs](super)).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_buffer::{
    BackpressureController, BatchSize, BufferedRecord, DeadLetter, GateState, SourceId, StageId,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::acks::AckHub;
use super::health::SinkHealth;
use super::pipeline::{Buffer, PipelineRuntime, StageWork};
use super::timing::{StageTimes, add};
use crate::record::EngineRecord;
use crate::record_memory::{self, RecordMemory};
use crate::sink::{Sink, SinkBatch, SourceNames, Written};
use crate::transform::{Outcome, Transform};

mod group_commit;

/// How often a lingering worker re-checks whether the pipeline is backpressured.
const PRESSURE_CHECK: Duration = Duration::from_millis(5);

/// How often a stalled sink's wait checks whether the buffer shut down.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// Which of a pipeline's sinks a write goes to (the `sink` label of the
/// sink metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkRole {
    /// The pipeline's sink.
    Sink,
    /// Its dead-letter sink.
    DeadLetter,
}

impl SinkRole {
    /// `sink` or `dead_letter`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            SinkRole::Sink => "sink",
            SinkRole::DeadLetter => "dead_letter",
        }
    }
}

/// Shared inputs of every worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEnv {
    /// The buffer.
    pub(crate) buffer: Arc<Buffer>,
    /// Flow control, told when a sink stalls.
    pub(crate) controller: Arc<BackpressureController<EngineRecord>>,
    /// Where completions are published.
    pub(crate) hub: Arc<AckHub>,
    /// The memory gate, if any.
    pub(crate) gate: Option<watch::Receiver<GateState>>,
    /// The high watermark (0–1).
    pub(crate) high_watermark: f64,
    /// Where compacted records' copies are counted.
    pub(crate) record_memory: Arc<RecordMemory>,
}

/// A batch as the buffer handed it out: whole queued batches, in order.
type Parts = Vec<Vec<BufferedRecord<EngineRecord>>>;

struct Worker {
    env: WorkerEnv,
    pipeline: Arc<PipelineRuntime>,
    stage: StageId,
    next: Option<StageId>,
    work: StageWork,
    max: BatchSize,
    linger: Duration,
    times: Arc<StageTimes>,
}

/// Spawns one worker per stage of `pipeline`; returns the tasks and each
/// stage's timing counters.
pub(crate) fn spawn_workers(
    env: &WorkerEnv,
    pipeline: Arc<PipelineRuntime>,
) -> Vec<(StageId, Arc<StageTimes>, JoinHandle<()>)> {
    let max = BatchSize {
        records: pipeline.batch.max_records.max(1),
        bytes: (pipeline.batch.max_bytes as u64).max(1),
    };
    let mut out = Vec::new();
    for (i, (stage, work)) in pipeline.stages.iter().enumerate() {
        let times = Arc::new(StageTimes::default());
        let worker = Worker {
            env: env.clone(),
            pipeline: pipeline.clone(),
            stage: *stage,
            next: pipeline.stages.get(i + 1).map(|(s, _)| *s),
            work: work.clone(),
            max,
            linger: pipeline.batch.linger,
            times: times.clone(),
        };
        let name = env.buffer.stage(*stage).map(|s| s.name.clone());
        let span = tracing::info_span!("stage", pipeline = %pipeline.name, stage = name.as_deref().unwrap_or("?"));
        let task = tokio::spawn(tracing::Instrument::instrument(worker.run(), span));
        out.push((*stage, times, task));
    }
    out
}

impl Worker {
    async fn run(self) {
        tracing::debug!(pipeline = %self.pipeline.name, stage = %self.stage, "stage worker started");
        if let StageWork::Sink(sink) = &self.work
            && sink.group_commit() > 1
        {
            let sink = sink.clone();
            self.group_commit(&sink).await;
            tracing::debug!(pipeline = %self.pipeline.name, stage = %self.stage, "stage worker stopped");
            return;
        }
        'batches: loop {
            let t = Instant::now();
            let Some(parts) = self.collect().await else {
                break;
            };
            add(&self.times.idle_ns, t);
            match &self.work {
                StageWork::Transform(tf) => {
                    for part in parts {
                        if !self.transform(tf, part).await {
                            break 'batches;
                        }
                    }
                }
                StageWork::Sink(sink) => self.sink(sink, parts).await,
            }
        }
        tracing::debug!(pipeline = %self.pipeline.name, stage = %self.stage, "stage worker stopped");
    }

    /// Whether any level of this pipeline is at or above the high watermark
    /// (as flow control reads it: [`Buffer::pipeline_pressure`]), or the
    /// memory gate is closed.
    fn pressured(&self) -> bool {
        self.env.gate.as_ref().is_some_and(|g| g.borrow().closed)
            || self.env.buffer.pipeline_pressure(self.pipeline.id) >= self.env.high_watermark
    }

    /// A batch of at most `max` records, as the parts the buffer handed out
    /// (whole queued batches; kept apart rather than copied into one `Vec`):
    /// what is ready now, topped up for at most `linger` unless the pipeline
    /// is backpressured. `None` once the buffer is shut down.
    async fn collect(&self) -> Option<Parts> {
        let buffer = &self.env.buffer;
        let first = buffer.next_batch(self.stage, self.max).await?;
        let mut records = first.len();
        let mut bytes: u64 = first.iter().map(|r| r.size()).sum();
        let mut parts = vec![first];
        let deadline = tokio::time::Instant::now() + self.linger;
        loop {
            if records >= self.max.records || bytes >= self.max.bytes {
                break;
            }
            let rest = BatchSize {
                records: self.max.records - records,
                bytes: self.max.bytes - bytes,
            };
            // Whatever is ready joins the batch at once; otherwise wait for
            // more, unless lingering is off or the pipeline is pressured.
            let mut more = buffer.try_batch(self.stage, rest);
            if more.is_empty() {
                if self.linger.is_zero() || self.pressured() {
                    break;
                }
                let check = deadline.min(tokio::time::Instant::now() + PRESSURE_CHECK);
                more = tokio::select! {
                    more = buffer.next_batch(self.stage, rest) => match more {
                        Some(more) => more,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(check) => {
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        continue;
                    }
                };
            }
            records += more.len();
            bytes += more.iter().map(|r| r.size()).sum::<u64>();
            parts.push(more);
        }
        Some(parts)
    }

    /// Returns false when the worker should stop (the buffer shut down).
    async fn transform(&self, tf: &Transform, batch: Vec<BufferedRecord<EngineRecord>>) -> bool {
        let t = Instant::now();
        let mut keep = batch;
        // What happened to each record taken out of `keep`, in order:
        // `None` filtered, `Some(error)` failed. Kept records stay where
        // they are (no per-record move when all are kept).
        let mut outcomes: Vec<Option<Arc<str>>> = Vec::new();
        let removed: Vec<BufferedRecord<EngineRecord>> = keep
            .extract_if(.., |r| {
                let seq = r.seq();
                match tf.apply(seq, &mut r.payload) {
                    Ok(Outcome::Keep) => false,
                    Ok(Outcome::Filtered) => {
                        outcomes.push(None);
                        true
                    }
                    Err(e) => {
                        outcomes.push(Some(Arc::from(e.to_string())));
                        true
                    }
                }
            })
            .collect();
        // Sized only when something left the part (not on the path where
        // every record is kept).
        let removed_bytes: u64 = removed.iter().map(|r| r.size()).sum();
        let mut filtered = Vec::new();
        let mut failed: Vec<(BufferedRecord<EngineRecord>, Arc<str>)> = Vec::new();
        for (r, outcome) in removed.into_iter().zip(outcomes) {
            match outcome {
                None => filtered.push(r),
                Some(error) => failed.push((r, error)),
            }
        }
        // Records that stay behind their batch move out of its copy
        // (`record_memory`): the failed ones before their backoff, the
        // kept ones when they are less than half of the part.
        self.compact_failed(&mut failed);
        if removed_bytes > 0 {
            // Less than half of the part: kept < removed.
            let kept_bytes: u64 = keep.iter().map(|r| r.size()).sum();
            if kept_bytes < removed_bytes {
                record_memory::compact(
                    &self.env.record_memory,
                    keep.iter_mut()
                        .filter(|r| r.retry_count() == 0)
                        .map(|r| &mut r.payload),
                );
            }
        }
        let buffer = &self.env.buffer;
        if !filtered.is_empty() {
            crate::observe::ack_latency(&self.pipeline.name, &filtered);
            let done = buffer.complete_filtered(filtered);
            self.env.hub.publish(&done);
        }
        if !failed.is_empty() {
            tracing::debug!(stage = %self.stage, failed = failed.len(), "transform failures, retrying");
            let dead = buffer.retry_each(failed);
            self.dead_letters(dead).await;
        }
        add(&self.times.busy_ns, t);
        if keep.is_empty() {
            return true;
        }
        let Some(next) = self.next else {
            // A transform stage is never last; complete rather than hold.
            crate::observe::ack_latency(&self.pipeline.name, &keep);
            let done = buffer.complete(keep);
            self.env.hub.publish(&done);
            return true;
        };
        let t = Instant::now();
        let forwarded = buffer.forward(keep, next).await;
        add(&self.times.blocked_ns, t);
        forwarded.is_ok()
    }

    /// Moves each record failing for the first time into an allocation of
    /// its own (`record_memory`): it waits out its backoff without keeping
    /// its batch's copy alive. A retried record was moved on its first failure.
    fn compact_failed(&self, failed: &mut [(BufferedRecord<EngineRecord>, Arc<str>)]) {
        for (r, _) in failed.iter_mut().filter(|(r, _)| r.retry_count() == 0) {
            record_memory::compact(&self.env.record_memory, [&mut r.payload]);
        }
    }

    fn source_name(&self, source: SourceId) -> Arc<str> {
        self.env
            .buffer
            .source_name(source)
            .unwrap_or_else(|| Arc::from(format!("source-{source}")))
    }

    /// The names of the sources in `sources`, each looked up once (the
    /// lookup takes the AckHub lock; per record it cost ~8 % of the engine's
    /// CPU, see BENCHMARKS.md), for [`SourceNames::get`] per record.
    fn source_names(&self, sources: impl Iterator<Item = SourceId>) -> SourceNames {
        let mut names: Vec<(SourceId, Arc<str>)> = Vec::new();
        let mut last = None;
        for id in sources {
            if last != Some(id) && !names.iter().any(|(s, _)| *s == id) {
                names.push((id, self.source_name(id)));
            }
            last = Some(id);
        }
        SourceNames(names)
    }

    /// Writes one batch (its parts in order) to the sink and commits it,
    /// through any stall ([`write_through`](Self::write_through)), then
    /// completes it; the records the sink refused are retried one by one
    /// with its message (and dead-lettered past `max_retries`).
    async fn sink(&self, sink: &Arc<dyn Sink>, parts: Parts) {
        let t = Instant::now();
        // Time spent waiting out a stall counts as backpressured, not busy.
        let blocked_before = self.times.blocked_ns.load(Ordering::Relaxed);
        let names = self.source_names(parts.iter().flatten().map(|r| r.source()));
        let batch = SinkBatch::parts(&parts, &names);
        let Some(written) = self
            .write_through(&**sink, SinkRole::Sink, batch, Vec::new())
            .await
        else {
            return;
        };
        self.complete_written(parts, written).await;
        let stalled = self
            .times
            .blocked_ns
            .load(Ordering::Relaxed)
            .saturating_sub(blocked_before);
        let busy = (t.elapsed().as_nanos() as u64).saturating_sub(stalled);
        self.times.busy_ns.fetch_add(busy, Ordering::Relaxed);
    }

    /// Completes a batch the sink committed: all of it, or (some refused)
    /// the rest, and the refused records go back with the sink's message,
    /// retried one by one (dead-lettered past `max_retries`).
    async fn complete_written(&self, parts: Parts, written: Written) {
        let buffer = &self.env.buffer;
        match written {
            Written::All => {
                crate::observe::ack_latency(&self.pipeline.name, parts.iter().flatten());
                let done = buffer.complete_parts(parts);
                self.env.hub.publish(&done);
            }
            Written::Refused(refused) => {
                self.pipeline.sink_health.refused(refused.len());
                let mut refused = refused.into_iter().peekable();
                let mut delivered = Vec::new();
                let mut failed: Vec<(BufferedRecord<EngineRecord>, Arc<str>)> = Vec::new();
                for (i, r) in parts.into_iter().flatten().enumerate() {
                    // Indexes are in batch order; one out of order is skipped.
                    while refused.next_if(|f| f.index < i).is_some() {}
                    match refused.next_if(|f| f.index == i) {
                        Some(f) => failed.push((r, Arc::from(f.error))),
                        None => delivered.push(r),
                    }
                }
                tracing::debug!(pipeline = %self.pipeline.name, refused = failed.len(), "the sink refused records, retrying them");
                self.compact_failed(&mut failed);
                if !delivered.is_empty() {
                    crate::observe::ack_latency(&self.pipeline.name, &delivered);
                    let done = buffer.complete(delivered);
                    self.env.hub.publish(&done);
                }
                let dead = buffer.retry_each(failed);
                self.dead_letters(dead).await;
            }
        }
    }

    /// Writes `batch` to `sink` and commits it, again and again through
    /// sink-level failures: the first failure of an episode marks the sink
    /// stalled (its health, the controller: sources are paused with reason
    /// `Sink`) with one WARN; each attempt waits the retry policy's backoff;
    /// the success that ends it clears the stall with one INFO. Nothing is
    /// charged to the records. `None` if the buffer shut down meanwhile
    /// (the records stay unacked; their sources resend them). `failed`: the
    /// errors of attempts already made (a group commit that failed, the
    /// writes of its group that failed), which count as failed attempts
    /// before the first backoff.
    async fn write_through(
        &self,
        sink: &dyn Sink,
        role: SinkRole,
        batch: SinkBatch<'_>,
        failed: Vec<crate::sink::SinkError>,
    ) -> Option<Written> {
        let health: &SinkHealth = match role {
            SinkRole::Sink => &self.pipeline.sink_health,
            SinkRole::DeadLetter => &self.pipeline.dead_letter_health,
        };
        let buffer = &self.env.buffer;
        let mut attempts = 0u32;
        let mut failed = failed.into_iter();
        loop {
            let result = match failed.next() {
                Some(e) => Err(e),
                None => {
                    async {
                        let written = sink.write(batch).await?;
                        sink.commit().await?;
                        Ok::<_, crate::sink::SinkError>(written)
                    }
                    .await
                }
            };
            let error = match result {
                Ok(written) => {
                    if let Some((stalled, stage)) = health.recovered() {
                        self.env.controller.set_stage_stalled(stage, None);
                        tracing::info!(pipeline = %self.pipeline.name, sink = %sink.describe(), role = role.label(),
                            ?stalled, attempts, "sink is back; the stall is over");
                    }
                    return Some(written);
                }
                Err(e) => e,
            };
            attempts += 1;
            if health.failed(self.stage, error.to_string()) {
                let description = sink.describe();
                tracing::warn!(pipeline = %self.pipeline.name, sink = %description, role = role.label(),
                    records = batch.len(), error = %error,
                    "sink failed (sink-level): stalled; the batch is kept and written again with backoff, sources are paused");
                self.env
                    .controller
                    .set_stage_stalled(self.stage, Some(Arc::from(description)));
            }
            if failed.len() > 0 {
                // Another failure already met: counted, without a wait.
                continue;
            }
            let t = Instant::now();
            let until = tokio::time::Instant::now() + buffer.retry_policy().backoff(attempts);
            loop {
                if buffer.is_shut_down() {
                    tracing::error!(pipeline = %self.pipeline.name, sink = %sink.describe(), role = role.label(),
                        records = batch.len(), error = %error,
                        "sink still failing at shutdown; the records stay unacked and will be resent by their sources");
                    add(&self.times.blocked_ns, t);
                    return None;
                }
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::time::sleep_until(until.min(now + SHUTDOWN_CHECK)).await;
            }
            add(&self.times.blocked_ns, t);
        }
    }

    /// Writes dead letters to the dead-letter sink (through its stalls, see
    /// [`write_through`](Self::write_through)), then completes them.
    async fn dead_letters(&self, dead: Vec<DeadLetter<EngineRecord>>) {
        if dead.is_empty() {
            return;
        }
        let buffer = &self.env.buffer;
        let dl = &self.pipeline.dead_letter;
        let names = self.source_names(dead.iter().map(|d| d.record.source()));
        let stages: Vec<Arc<str>> = dead
            .iter()
            .map(|d| {
                buffer
                    .stage(d.stage())
                    .map_or_else(|| Arc::from("?"), |s| s.name.clone())
            })
            .collect();
        let batch = SinkBatch::dead_letters(&dead, &stages, &names, &self.pipeline.name);
        let Some(written) = self
            .write_through(&**dl, SinkRole::DeadLetter, batch, Vec::new())
            .await
        else {
            return;
        };
        if let Written::Refused(refused) = written {
            // A dead letter has nowhere else to go: it is completed as
            // dead-lettered all the same, and the refusal logged.
            self.pipeline.dead_letter_health.refused(refused.len());
            tracing::error!(pipeline = %self.pipeline.name, sink = %dl.describe(), refused = refused.len(),
                first = %refused.first().map_or("", |f| f.error.as_str()),
                "the dead-letter sink refused records; they are lost");
        }
        tracing::info!(pipeline = %self.pipeline.name, records = dead.len(), "records dead-lettered");
        crate::observe::ack_latency(&self.pipeline.name, dead.iter().map(|d| &d.record));
        let done = buffer.complete_dead_letters(dead);
        self.env.hub.publish(&done);
    }
}
