//! jam-worker: owns session state. Consumes commands from the partition streams,
//! applies them in order, commits, publishes the resulting events, acknowledges.

pub mod consumer;
pub mod engine;
pub mod http;
pub mod queries;
pub mod sync;

use std::sync::Arc;

use jam_shared::bus::{Bus, BusError};
use jam_shared::config::Config;
use jam_shared::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

pub use engine::EngineConfig;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineConfig {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            history_limit: cfg.history_limit,
            session_timeout: cfg.session_timeout,
            host_grace: cfg.host_grace,
            gateway_dead_after: cfg.gateway_dead_after,
            sync_interval: cfg.sync_interval,
            sync: crate::sync::SyncParams {
                seek_threshold_ms: cfg.seek_threshold_ms,
                ..Default::default()
            },
        }
    }
}

/// Run the worker's engine until `shutdown` fires; in-flight commands finish first.
pub async fn run_engine(
    cfg: &Config,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    consumer::Consumer::new(cfg, bus, store).run(shutdown).await
}

/// The worker process: health/metrics endpoint plus the engine.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let state = http::HttpState {
        bus: bus.clone(),
        store: store.clone(),
        draining: shutdown.clone(),
    };
    let http_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });
    let result = run_engine(&cfg, bus, store, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
