//! The engine: buffer, flow control, pipeline workers and the gRPC server
//! (`Ingest`, `Admin`, grpc.health.v1, server reflection v1 and v1alpha).
//!
//! Start it with [`Engine::start`] or, to inject a memory probe, custom
//! sinks or flow-control settings, with an [`EngineBuilder`]. Stop it with
//! [`EngineHandle::shutdown`]: health goes NOT_SERVING, flow control stops
//! granting and pauses every source (reason SHUTDOWN), sessions reject new
//! batches, the pipelines drain to the sinks for at most
//! `server.shutdown_timeout`, workers stop, each stream gets its last `Ack`
//! and ends with `UNAVAILABLE`, and the server stops (bounded waits).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use parking_lot::Mutex;
use sluice_buffer::{
    BackpressureController, BuildError, ControllerConfig, ControllerError, GateState,
    LevelSnapshot, MemoryError, MemoryMonitor, MemoryProbe, SourceId, SourceState, StageId,
};
use sluice_config::{Settings, ValidationErrors};
use sluice_proto::v1::{
    self, EngineMessage,
    admin_server::{Admin, AdminServer},
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use crate::ack::AckHub;
use crate::pipeline::{
    Buffer, PipelineRuntime, SINK_STAGE, StageTimes, StageWork, WorkerEnv, spawn_workers,
};
use crate::record::EngineRecord;
use crate::session::{self, StreamEntry};
use crate::sink::{Sink, SinkError, build_sink};
use crate::transform::Transform;
use crate::wire;

/// Default of [`EngineBuilder::max_batch_records`].
pub const DEFAULT_MAX_BATCH_RECORDS: u32 = 10_000;

/// Why the engine could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The settings are invalid.
    #[error("invalid settings: {0}")]
    Config(#[from] ValidationErrors),
    /// The buffer could not be built from the settings.
    #[error("buffer: {0}")]
    Buffer(#[from] BuildError),
    /// The memory monitor could not start.
    #[error("memory monitor: {0}")]
    Memory(#[from] MemoryError),
    /// Flow control could not start.
    #[error("flow control: {0}")]
    Controller(#[from] ControllerError),
    /// A sink could not be opened.
    #[error("pipeline {pipeline:?}: {source}")]
    Sink {
        /// The pipeline.
        pipeline: String,
        /// The error.
        source: SinkError,
    },
    /// A custom sink names a pipeline that is not configured.
    #[error("a custom sink is given for pipeline {0:?}, which is not configured")]
    UnknownPipeline(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Server reflection could not be built from the descriptor set.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The Prometheus exporter could not be installed.
    #[error(transparent)]
    Metrics(#[from] crate::observe::MetricsError),
    /// A `[server.tls]` file could not be read.
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
}

/// State shared by the services, the sessions and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) buffer: Arc<Buffer>,
    pub(crate) controller: Arc<BackpressureController<EngineRecord>>,
    pub(crate) hub: Arc<AckHub>,
    pub(crate) pipelines: Vec<Arc<PipelineRuntime>>,
    pub(crate) stage_times: HashMap<StageId, Arc<StageTimes>>,
    /// Recent stage rates and log rate limiting ([`crate::observe`]).
    pub(crate) observe: crate::observe::Observer,
    pub(crate) gate: watch::Receiver<GateState>,
    pub(crate) max_batch_records: u32,
    /// `[server.auth]`, when tokens are configured.
    pub(crate) auth: Option<crate::auth::Authenticator>,
    /// Cancelled when shutdown starts: batches are rejected.
    pub(crate) draining: CancellationToken,
    /// Cancelled when streams must end (after draining).
    pub(crate) stop: CancellationToken,
    streams: Mutex<HashMap<SourceId, StreamEntry>>,
    next_stream: AtomicU64,
    started: Instant,
}

impl Shared {
    /// Registers a new stream for `source`, ending the older one (ABORTED).
    pub(crate) fn register_stream(
        &self,
        source: SourceId,
    ) -> (u64, CancellationToken, Arc<AtomicBool>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let half_closed = Arc::new(AtomicBool::new(false));
        let old = self.streams.lock().insert(
            source,
            StreamEntry {
                id,
                takeover: token.clone(),
                half_closed: half_closed.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(source = %source, old = old.id, new = id, "newer stream takes over");
            old.takeover.cancel();
        }
        (id, token, half_closed)
    }

    /// Forgets `source`'s stream `id` if it is still the registered one.
    pub(crate) fn unregister_stream(&self, source: SourceId, id: u64) {
        let mut streams = self.streams.lock();
        if streams.get(&source).is_some_and(|e| e.id == id) {
            streams.remove(&source);
        }
    }

    pub(crate) fn stats(&self) -> v1::StatsResponse {
        let snap = self.buffer.snapshot();
        let level = |l: &LevelSnapshot| v1::LevelStats {
            records: l.records,
            bytes: l.bytes,
            limit_records: l.limit.records,
            limit_bytes: l.limit.bytes,
            utilization: l.utilization(),
        };
        let uptime = self.started.elapsed();
        let pipeline_name = |id: sluice_buffer::PipelineId| {
            self.buffer
                .pipeline(id)
                .map(|p| p.name.to_string())
                .unwrap_or_default()
        };
        let stages = snap
            .stages
            .iter()
            .map(|s| {
                // The same last-interval rates as the /metrics gauges.
                let rates = self.observe.rates(s.id);
                v1::StageStats {
                    pipeline: pipeline_name(s.pipeline),
                    name: s.name.to_string(),
                    index: self.buffer.stage(s.id).map_or(0, |i| i.index as u32),
                    level: Some(level(&s.level)),
                    queued: s.queued_records,
                    in_flight: s.in_flight_records,
                    busy_ms_per_s: rates.busy_ms_per_s,
                    idle_ms_per_s: rates.idle_ms_per_s,
                    backpressured_ms_per_s: rates.backpressured_ms_per_s,
                }
            })
            .collect();
        let streams = self.streams.lock();
        let sources = snap
            .sources
            .iter()
            .map(|s| {
                let entry = streams.get(&s.id);
                let connected = entry.is_some();
                let closed = entry.is_none_or(|e| e.half_closed.load(Ordering::Relaxed));
                let state = if closed {
                    v1::SourceState::Closed
                } else {
                    match self.controller.state(s.id) {
                        Some(SourceState::SlowedDown) => v1::SourceState::Slowed,
                        Some(SourceState::Paused) => v1::SourceState::Paused,
                        _ => v1::SourceState::Normal,
                    }
                };
                let (received, rejected, filtered) = self.hub.counters(s.id);
                v1::SourceStats {
                    source_id: s.name.to_string(),
                    pipeline: pipeline_name(s.pipeline),
                    state: state as i32,
                    connected,
                    credits_outstanding_records: s.level.reserved_records,
                    credits_outstanding_bytes: s.level.reserved_bytes,
                    admitted_through_seq: s.admitted_through,
                    acked_through_seq: s.acked_through,
                    received,
                    delivered: s.delivered.saturating_sub(filtered),
                    dead_lettered: s.dead_lettered,
                    rejected,
                    filtered,
                    level: Some(level(&s.level)),
                }
            })
            .collect();
        drop(streams);
        let gate = self.gate.borrow().clone();
        let mem = &self.settings.memory;
        v1::StatsResponse {
            uptime_ms: uptime.as_millis() as u64,
            draining: self.draining.is_cancelled(),
            global: Some(level(&snap.global)),
            pipelines: self
                .pipelines
                .iter()
                .enumerate()
                .map(|(i, p)| v1::PipelineStats {
                    name: p.name.to_string(),
                    is_default: i == 0,
                    stages: self
                        .buffer
                        .pipeline(p.id)
                        .map(|info| {
                            info.stages
                                .iter()
                                .filter_map(|s| self.buffer.stage(*s).map(|s| s.name.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    sink: p.sink.describe(),
                    dead_letter: p.dead_letter.describe(),
                })
                .collect(),
            stages,
            sources,
            memory: Some(v1::MemoryStats {
                enabled: mem.enabled,
                closed: gate.closed,
                used_bytes: gate.used_bytes,
                limit_bytes: gate.limit_bytes,
                percent: gate.percent,
                activate_percent: mem.activate_percent,
                resume_percent: mem.resume_percent,
            }),
        }
    }
}

/// The `sluice.v1.Ingest` service.
///
/// Served by hand rather than through the generated `IngestServer` so that
/// requests are decoded by [`IngestCodec`](crate::wire::IngestCodec) straight
/// into records the buffer admits in place (see `wire.rs`); the route, the
/// message size limits and the behaviour are the generated server's.
#[derive(Debug, Clone)]
pub struct IngestService {
    shared: Arc<Shared>,
}

/// The response stream of an `Ingest.Stream` call.
pub(crate) type EngineStream =
    Pin<Box<dyn Stream<Item = Result<EngineMessage, Status>> + Send + 'static>>;

impl IngestService {
    async fn stream(
        &self,
        request: Request<Streaming<wire::Inbound>>,
    ) -> Result<Response<EngineStream>, Status> {
        let grant = crate::auth::check(self.shared.auth.as_ref(), request.metadata())?;
        let rx = session::open(self.shared.clone(), request.into_inner(), grant).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl tonic::server::NamedService for IngestService {
    const NAME: &'static str = v1::ingest_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for IngestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.clone();
        if req.uri().path() != "/sluice.v1.Ingest/Stream" {
            let path = req.uri().path().to_owned();
            return Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("no method {path} in sluice.v1.Ingest"))
                        .into_http(),
                )
            });
        }
        Box::pin(async move {
            let max = service.shared.settings.server.max_message_bytes;
            let codec = wire::IngestCodec {
                max_records: service.shared.max_batch_records as usize,
            };
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.streaming(StreamCall(service), req).await)
        })
    }
}

/// One `Ingest.Stream` call, as tonic's server machinery calls it.
struct StreamCall(IngestService);

impl tonic::server::StreamingService<wire::Inbound> for StreamCall {
    type Response = EngineMessage;
    type ResponseStream = EngineStream;
    type Future = BoxFuture<Response<EngineStream>, Status>;

    fn call(&mut self, request: Request<Streaming<wire::Inbound>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream(request).await })
    }
}

/// The `sluice.v1.Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        crate::auth::check(self.shared.auth.as_ref(), request.metadata())?;
        Ok(Response::new(self.shared.stats()))
    }
}

/// Entry point: [`Engine::start`] runs an engine from settings.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Starts an engine from `settings` (binding `server.listen`; use port 0
    /// in tests and read [`EngineHandle::local_addr`]).
    pub async fn start(settings: Settings) -> Result<EngineHandle, EngineError> {
        EngineBuilder::new(settings).start().await
    }

    /// A builder, to inject a memory probe, sinks or flow-control settings.
    pub fn builder(settings: Settings) -> EngineBuilder {
        EngineBuilder::new(settings)
    }
}

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
                None => build_sink(&spec.sink).map_err(sink_err)?,
            };
            let dead_letter = match dead_letters.remove(&spec.name) {
                Some(s) => s,
                None => build_sink(&spec.dead_letter).map_err(sink_err)?,
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
                stages,
                batch: spec.batch.clone(),
            }));
        }
        let env = WorkerEnv {
            buffer: buffer.clone(),
            hub: hub.clone(),
            gate: Some(gate.clone()),
            high_watermark: settings.buffer.high_watermark,
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
            Some(t) => Some(crate::tls::server_config(t)?),
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

        let shared = Arc::new(Shared {
            buffer: buffer.clone(),
            controller: controller.clone(),
            hub,
            pipelines,
            stage_times,
            observe: crate::observe::Observer::default(),
            gate,
            max_batch_records,
            auth: crate::auth::Authenticator::from_settings(&settings.server.auth),
            draining: CancellationToken::new(),
            stop: CancellationToken::new(),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(0),
            started: Instant::now(),
            settings,
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in SERVICES {
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

        let ingest = IngestService {
            shared: shared.clone(),
        };
        let admin = AdminServer::new(AdminService {
            shared: shared.clone(),
        });
        let non_zero = |d: Duration| (!d.is_zero()).then_some(d);
        let server_stop = CancellationToken::new();
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(non_zero(shared.settings.server.keepalive_interval))
            .http2_keepalive_timeout(non_zero(shared.settings.server.keepalive_timeout))
            // Per connection: the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
            .max_concurrent_streams(Some(shared.settings.server.max_sessions_per_connection));
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
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                server_stop.clone().cancelled_owned(),
            );
        let server = tokio::spawn(server);
        crate::observe::spawn(&shared);
        tracing::info!(%local_addr, pipelines = shared.pipelines.len(),
            tls = shared.settings.server.tls.is_some(), auth = shared.auth.is_some(),
            "sluice engine listening");
        Ok(EngineHandle {
            shared,
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

/// Names the health service reports: the whole server ("") and each service.
const SERVICES: [&str; 3] = [
    "",
    <IngestService as tonic::server::NamedService>::NAME,
    <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
];

/// What [`EngineHandle::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every admitted record was completed within `shutdown_timeout`.
    pub drained: bool,
    /// Records still admitted and not completed when the engine stopped (to
    /// be resent by their sources, which never got an ack for them).
    pub undelivered: u64,
}

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    health: tonic_health::server::HealthReporter,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    controller_task: JoinHandle<()>,
    monitor: MemoryMonitor,
}

impl EngineHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The buffer manager (for tests and embedding).
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.shared.buffer
    }

    /// The flow-control controller.
    pub fn controller(&self) -> &Arc<BackpressureController<EngineRecord>> {
        &self.shared.controller
    }

    /// Per-source ack progress.
    pub fn acks(&self) -> &Arc<AckHub> {
        &self.shared.hub
    }

    /// What `Admin.Stats` would answer now.
    pub fn stats(&self) -> v1::StatsResponse {
        self.shared.stats()
    }

    /// Whether the gRPC server task has ended (it should not before shutdown).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// Graceful shutdown (see the [module docs](self)); every wait is bounded
    /// by `server.shutdown_timeout` (plus a second for the last steps).
    pub async fn shutdown(mut self) -> Result<ShutdownReport, EngineError> {
        let timeout = self.shared.settings.server.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(?timeout, "shutting down: draining");
        for name in SERVICES {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.shared.draining.cancel();
        self.shared.controller.shutdown();
        let buffer = self.shared.buffer.clone();
        let drained = tokio::time::timeout_at(deadline, buffer.drain())
            .await
            .is_ok();
        // Stop the workers, and let them finish (and publish) what they hold.
        buffer.shutdown();
        let grace = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        for w in std::mem::take(&mut self.workers) {
            if tokio::time::timeout_at(grace, w).await.is_err() {
                tracing::warn!("a stage worker did not stop in time");
            }
        }
        let undelivered = buffer.in_engine();
        // Streams send their last Ack and end themselves.
        self.shared.stop.cancel();
        self.server_stop.cancel();
        let server = &mut self.server;
        let result = match tokio::time::timeout_at(grace, &mut *server).await {
            Ok(Ok(r)) => r.map_err(EngineError::from),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "gRPC server task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("connections did not close in time; cutting them");
                server.abort();
                Ok(())
            }
        };
        self.controller_task.abort();
        self.monitor.shutdown();
        tracing::info!(drained, undelivered, "engine stopped");
        result.map(|()| ShutdownReport {
            drained,
            undelivered,
        })
    }
}

/// Runs an engine until SIGINT or SIGTERM, then shuts it down gracefully
/// (what `sluice serve` does).
pub async fn run_until_signal(settings: Settings) -> Result<ShutdownReport, EngineError> {
    if settings.metrics.enabled {
        crate::observe::install_prometheus(settings.metrics.listen)?;
    }
    let engine = Engine::start(settings).await?;
    wait_for_signal().await;
    tracing::info!("signal received");
    engine.shutdown().await
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
