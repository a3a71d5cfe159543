//! The names the grpc.health.v1 service reports: SERVING from start,
//! NOT_SERVING once shutdown starts (so a load balancer stops sending new
//! streams to a draining engine).

use sluice_proto::v1::admin_server::AdminServer;

use super::admin::AdminService;
use crate::ingest::IngestService;

/// Names the health service reports: the whole server ("") and each service.
pub(crate) const SERVICES: [&str; 3] = [
    "",
    <IngestService as tonic::server::NamedService>::NAME,
    <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
];
