//! [`BufferManagerBuilder`]: checks the limits and the pipelines, and builds
//! the [`BufferManager`] with its (fixed) stages.

use std::collections::HashMap;

use tokio::sync::Notify;

use super::state::{StageState, State, Usage};
use super::{BufferManager, Credit, PipelineInfo, StageInfo};
use crate::error::BuildError;
use crate::limits::{FieldRule, Limits, RetryPolicy};
use crate::record::{PipelineId, StageId};
use crate::sync::Mutex;

/// Builds a [`BufferManager`] with its pipelines, which are fixed for its life.
#[derive(Debug)]
pub struct BufferManagerBuilder {
    limits: Limits,
    retry: RetryPolicy,
    pipelines: Vec<(String, Vec<String>)>,
}

impl BufferManagerBuilder {
    /// Sets how failed records are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Adds a pipeline with the given stage names, in order.
    pub fn pipeline<S: Into<String>>(
        mut self,
        name: impl Into<String>,
        stages: impl IntoIterator<Item = S>,
    ) -> Self {
        self.pipelines
            .push((name.into(), stages.into_iter().map(Into::into).collect()));
        self
    }

    /// Builds a manager of exactly one pipeline with one stage (`default`
    /// with `sink` when none was added), for [`channel`](Self::channel).
    pub(crate) fn build_single<T>(mut self) -> Result<BufferManager<T>, BuildError> {
        if self.pipelines.is_empty() {
            self = self.pipeline("default", ["sink"]);
        }
        if self.pipelines.len() != 1 || self.pipelines[0].1.len() != 1 {
            return Err(BuildError::NotAChannel);
        }
        self.build()
    }

    /// Checks the limits and pipelines and builds the manager.
    pub fn build<T>(self) -> Result<BufferManager<T>, BuildError> {
        // The one definition of valid limits and policies (shared with
        // sluice-config); the first problem is reported as before.
        if let Err(errors) = self.limits.validate() {
            let e = errors.first();
            let level = match e.field.split('.').next() {
                Some("per_stage") => "per-stage",
                Some("per_source") => "per-source",
                _ => "global",
            };
            return Err(match e.rule {
                FieldRule::NotAbove { .. } => BuildError::AboveGlobal(level),
                _ => BuildError::ZeroLimit(level),
            });
        }
        self.retry
            .validate()
            .map_err(|e| BuildError::Retry(e.to_string()))?;
        let mut pipelines = Vec::new();
        let mut stages: Vec<StageInfo> = Vec::new();
        for (p, (name, stage_names)) in self.pipelines.into_iter().enumerate() {
            if pipelines.iter().any(|x: &PipelineInfo| *x.name == *name) {
                return Err(BuildError::DuplicatePipeline(name));
            }
            if stage_names.is_empty() {
                return Err(BuildError::EmptyPipeline(name));
            }
            let pid = PipelineId(p as u32);
            let first = stages.len();
            let n = stage_names.len();
            let ids: Vec<StageId> = (first..first + n).map(|i| StageId(i as u32)).collect();
            for (index, stage_name) in stage_names.into_iter().enumerate() {
                stages.push(StageInfo {
                    id: ids[index],
                    pipeline: pid,
                    index,
                    name: stage_name.into(),
                    next: ids.get(index + 1).copied(),
                });
            }
            pipelines.push(PipelineInfo {
                id: pid,
                name: name.into(),
                stages: ids,
            });
        }
        let state = State {
            global: Usage::default(),
            global_reserved: Credit::ZERO,
            stages: stages.iter().map(|_| StageState::default()).collect(),
            sources: Vec::new(),
            names: HashMap::new(),
            shutdown: false,
            delay_order: 0,
            global_waiters: Default::default(),
            pipelines: pipelines.iter().map(|_| Default::default()).collect(),
        };
        Ok(BufferManager {
            stages,
            pipelines,
            limits: self.limits,
            retry: self.retry,
            freed: Notify::new(),
            state: Mutex::new(state),
        })
    }
}

impl<T> BufferManager<T> {
    /// Starts building a manager with these limits.
    pub fn builder(limits: Limits) -> BufferManagerBuilder {
        BufferManagerBuilder {
            limits,
            retry: RetryPolicy::default(),
            pipelines: Vec::new(),
        }
    }
}
