//! [`EngineBuilder`]: starts an engine from settings, with hooks for
//! embedding and tests (memory probe, sinks, flow-control settings).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_buffer::{
    BackpressureController, ControllerConfig, MemoryMonitor, MemoryProbe, StageId,
};
use sluice_config::Settings;
use sluice_proto::v1::admin_server::AdminServer;

use super::admin::AdminService;
use super::error::EngineError;
use super::handle::EngineHandle;
use super::state::EngineState;
use crate::ingest::{IngestContext, IngestService};
use crate::runtime::{
    AckHub, Buffer, PipelineRuntime, Runtime, SINK_STAGE, StageClocks, StageWork, WorkerEnv,
    spawn_workers,
};
use crate::sink::{Sink, build_sink};
use crate::transform::Transform;
use tokio_util::sync::CancellationToken;

/// Default of [`EngineBuilder::max_batch_records`].
pub const DEFAULT_MAX_BATCH_RECORDS: u32 = 10_000;

/// Builds an engine with test or embedding hooks.
///
/// ```no_run
/// # async fn f() -> Result<(), sluice_engine::EngineError> {
/// use std::sync::Arc;
/// use sluice_engine::{EngineBuilder, config::Settings, sink::{NullSink, with_knobs}};
/// use sluice_buffer::ManualProbe;
/// let probe = ManualProbe::new(10, 100);
/// let slow = with_knobs(Arc::new(NullSink), std::time::Duration::from_millis(50), 0.0);
/// let engine = EngineBuilder::new(Settings::default())
///     .memory_probe(probe.clone())
///     .sink("default", slow)
///     .start()
///     .await?;
/// probe.set_used(95); // closes the memory gate: every source is paused
/// engine.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct EngineBuilder {
    settings: Settings,
    probe: Option<Box<dyn MemoryProbe>>,
    sinks: HashMap<String, Arc<dyn Sink>>,
    dead_letters: HashMap<String, Arc<dyn Sink>>,
    controller: Option<ControllerConfig>,
    max_batch_records: u32,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("settings", &self.settings)
            .field("probe", &self.probe.is_some())
            .field("sinks", &self.sinks)
            .field("dead_letters", &self.dead_letters)
            .field("controller", &self.controller)
            .field("max_batch_records", &self.max_batch_records)
            .finish()
    }
}

impl EngineBuilder {
    /// A builder over `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            probe: None,
            sinks: HashMap::new(),
            dead_letters: HashMap::new(),
            controller: None,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
        }
    }

    /// Reads memory from `probe` instead of the process (e.g. a
    /// [`ManualProbe`](sluice_buffer::ManualProbe) a test turns up and down).
    /// Ignored when `memory.enabled` is false.
    pub fn memory_probe(mut self, probe: impl MemoryProbe) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// Uses `sink` for `pipeline` instead of its configured sink (e.g. a slow
    /// or failing one: [`with_knobs`](crate::sink::with_knobs)).
    pub fn sink(mut self, pipeline: impl Into<String>, sink: Arc<dyn Sink>) -> Self {
        self.sinks.insert(pipeline.into(), sink);
        self
    }

    /// Uses `sink` as `pipeline`'s dead-letter sink.
    pub fn dead_letter_sink(mut self, pipeline: impl Into<String>, sink: Arc<dyn Sink>) -> Self {
        self.dead_letters.insert(pipeline.into(), sink);
        self
    }

    /// Flow-control settings (window, tick, retry-after hints). The
    /// watermarks always come from `buffer.high_watermark` / `low_watermark`.
    pub fn controller_config(mut self, config: ControllerConfig) -> Self {
        self.controller = Some(config);
        self
    }

    /// Most records accepted in one `Batch` (`Opened.max_batch_records`).
    /// Default [`DEFAULT_MAX_BATCH_RECORDS`].
    pub fn max_batch_records(mut self, n: u32) -> Self {
        self.max_batch_records = n.max(1);
        self
    }

    /// Starts the engine: workers, flow control, memory monitor, gRPC server.
    pub async fn start(self) -> Result<EngineHandle, EngineError> {
        let Self {
            settings,
            probe,
            mut sinks,
            mut dead_letters,
            controller,
            max_batch_records,
        } = self;
        settings.validate()?;
        for name in sinks.keys().chain(dead_letters.keys()) {
            if !settings.pipelines.iter().any(|p| p.name == *name) {
                return Err(EngineError::UnknownPipeline(name.clone()));
            }
        }
        let mut builder = Buffer::builder(settings.buffer.limits()).retry(settings.retry);
        for p in &settings.pipelines {
            let stages = p
                .stages
                .iter()
                .map(|s| s.name.clone())
                .chain([SINK_STAGE.to_owned()]);
            builder = builder.pipeline(p.name.clone(), stages);
        }
        let buffer: Arc<Buffer> = Arc::new(builder.build()?);

        let monitor = match probe {
            Some(mut probe) if settings.memory.enabled => {
                MemoryMonitor::spawn(settings.memory, move || probe.read())?
            }
            _ => MemoryMonitor::spawn_sysinfo(settings.memory)?,
        };
        let gate = monitor.subscribe();
        let mut ccfg = controller.unwrap_or_else(|| {
            ControllerConfig::default().with_window_records(
                settings.buffer.credit_window_records,
                sluice_buffer::DEFAULT_EXPECTED_RECORD_BYTES,
            )
        });
        ccfg.watermarks = settings.buffer.watermarks();
        if controller.is_none() {
            ccfg.guaranteed = sluice_buffer::Credit::new(
                settings.buffer.guaranteed_credit_records,
                settings
                    .buffer
                    .guaranteed_credit_records
                    .saturating_mul(sluice_buffer::DEFAULT_EXPECTED_RECORD_BYTES),
            );
            ccfg.credit_lease = settings.buffer.credit_lease;
        }
        // A session never holds more credit than it may have unacked.
        ccfg.window.records = ccfg
            .window
            .records
            .min(settings.server.max_unacked_per_session);
        let controller = BackpressureController::new(buffer.clone(), ccfg, Some(gate.clone()))?;
        let controller_task = controller.spawn();
        let hub = Arc::new(AckHub::new());

        let mut pipelines = Vec::new();
        for (spec, info) in settings.pipelines.iter().zip(buffer.pipelines()) {
            let sink_err = |source| EngineError::Sink {
                pipeline: spec.name.clone(),
                source,
            };
            let sink = match sinks.remove(&spec.name) {
                Some(s) => s,
                None => build_sink(&spec.name, &spec.sink).await.map_err(sink_err)?,
            };
            let dead_letter = match dead_letters.remove(&spec.name) {
                Some(s) => s,
                None => build_sink(&spec.name, &spec.dead_letter)
                    .await
                    .map_err(sink_err)?,
            };
            let mut stages: Vec<(StageId, StageWork)> = spec
                .stages
                .iter()
                .zip(&info.stages)
                .map(|(s, id)| (*id, StageWork::Transform(Transform::from(&s.transform))))
                .collect();
            if let Some(last) = info.stages.last() {
                stages.push((*last, StageWork::Sink(sink.clone())));
            }
            pipelines.push(Arc::new(PipelineRuntime {
                id: info.id,
                name: info.name.clone(),
                sink,
                dead_letter,
                sink_health: Default::default(),
                dead_letter_health: Default::default(),
                stages,
                batch: spec.batch.clone(),
            }));
        }
        let record_memory = Arc::new(crate::record_memory::RecordMemory::default());
        let env = WorkerEnv {
            buffer: buffer.clone(),
            controller: controller.clone(),
            hub: hub.clone(),
            gate: Some(gate.clone()),
            high_watermark: settings.buffer.high_watermark,
            record_memory: record_memory.clone(),
        };
        let mut workers = Vec::new();
        let mut stage_times = HashMap::new();
        for p in &pipelines {
            for (stage, times, task) in spawn_workers(&env, p.clone()) {
                stage_times.insert(stage, times);
                workers.push(task);
            }
        }

        // Read the TLS files before binding: a missing file names its key.
        let tls = match &settings.server.tls {
            Some(t) => Some(super::tls::server_config(t)?),
            None => None,
        };
        if let Some(warning) = crate::auth::server_exposure_warning(&settings.server) {
            tracing::warn!("{warning}");
        }
        let addr = settings.server.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EngineError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EngineError::Bind { addr, source })?;

        let runtime = Arc::new(Runtime {
            buffer: buffer.clone(),
            controller: controller.clone(),
            hub,
            pipelines,
            clocks: StageClocks::new(stage_times),
            gate,
            record_memory,
        });
        let ingest = Arc::new(IngestContext::new(
            runtime.clone(),
            settings.server.clone(),
            max_batch_records,
            crate::auth::Authenticator::from_settings(&settings.server.auth),
            settings.uncovered_message_bytes(),
        ));
        let state = Arc::new(EngineState {
            runtime,
            ingest: ingest.clone(),
            started: Instant::now(),
            settings,
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in super::health::SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| EngineError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| EngineError::Reflection(e.to_string()))?;

        let ingest = IngestService::new(ingest);
        let admin = AdminServer::new(AdminService {
            state: state.clone(),
        });
        let non_zero = |d: Duration| (!d.is_zero()).then_some(d);
        let server_stop = CancellationToken::new();
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(non_zero(state.settings.server.keepalive_interval))
            .http2_keepalive_timeout(non_zero(state.settings.server.keepalive_timeout))
            // Per connection: the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
            .max_concurrent_streams(Some(state.settings.server.max_sessions_per_connection))
            // The transport buffers outside the byte limits
            // (docs/architecture.md, "Memory budget").
            .initial_stream_window_size(state.settings.server.http2_stream_window)
            .initial_connection_window_size(state.settings.server.http2_connection_window);
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        let server = server
            .add_service(ingest)
            .add_service(admin)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                // TCP_NODELAY: Credit and Ack are small messages that a
                // source waits for. With Nagle's algorithm they sat behind
                // unacknowledged data (and the peer's delayed ACK) for up to
                // tens of milliseconds, which capped a source at ~0.5 M
                // records/s with the CPU idle (BENCHMARKS.md).
                super::connections::limit(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    state.settings.server.max_connections,
                ),
                server_stop.clone().cancelled_owned(),
            );
        let server = tokio::spawn(server);
        super::publish::spawn(&state);
        tracing::info!(%local_addr, pipelines = state.runtime.pipelines.len(),
            tls = state.settings.server.tls.is_some(), auth = state.ingest.auth.is_some(),
            "sluice engine listening");
        Ok(EngineHandle {
            state,
            local_addr,
            health,
            server,
            server_stop,
            workers,
            controller_task,
            monitor,
        })
    }
}
