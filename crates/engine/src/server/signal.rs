//! [`run_until_signal`]: what `sluice serve` runs.

use sluice_config::Settings;

use super::builder::EngineBuilder;
use super::error::EngineError;
use super::handle::ShutdownReport;

/// Runs an engine until SIGINT or SIGTERM, then shuts it down gracefully
/// (what `sluice serve` does).
pub async fn run_until_signal(settings: Settings) -> Result<ShutdownReport, EngineError> {
    if settings.metrics.enabled {
        crate::observe::install_prometheus(settings.metrics.listen)?;
    }
    let engine = EngineBuilder::new(settings).start().await?;
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
