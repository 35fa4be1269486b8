//! jam-worker: owns session state. Consumes commands from the partition streams,
//! applies them in order, commits, publishes the resulting events, acknowledges.

pub mod commit;
pub mod engine;
pub mod http;
pub mod model;
pub mod owner;
pub mod partition;
pub mod passwords;
pub mod quarantine;
pub mod queries;
pub mod store;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{Store, StoreError};
use jam_shared::bus::{Bus, BusError};
use jam_shared::config::Config;
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
            large_room: cfg.large_room,
            recovery_events: cfg.recovery_events,
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

/// What readiness reports: per owned partition, whether its last store call worked.
#[derive(Default)]
pub struct Health {
    partitions: Mutex<HashMap<u32, bool>>,
}

impl Health {
    pub fn claimed(&self, p: u32) {
        self.partitions.lock().unwrap().insert(p, true);
    }

    pub fn store_ok(&self, p: u32, ok: bool) {
        if let Some(v) = self.partitions.lock().unwrap().get_mut(&p) {
            *v = ok;
        }
    }

    pub fn release(&self, p: u32) {
        self.partitions.lock().unwrap().remove(&p);
    }

    /// Every owned partition can commit (none is riding out a store outage).
    pub fn committing(&self) -> bool {
        self.partitions.lock().unwrap().values().all(|ok| *ok)
    }

    pub fn owned(&self) -> usize {
        self.partitions.lock().unwrap().len()
    }
}

/// How often the retention purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Run the worker's engine until `shutdown` fires; owned partitions finish what they
/// applied and hand their leases back first.
pub async fn run_engine(
    cfg: &Config,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let (lanes, committer) = commit::Committer {
        bus: bus.clone(),
        store: store.clone(),
        health: health.clone(),
        queries: Arc::new(tokio::sync::Semaphore::new(32)),
    }
    .spawn(cfg.partitions);
    let sh = partition::Shared {
        bus,
        store: store.clone(),
        engine_cfg: EngineConfig::from_config(cfg),
        partitions: cfg.partitions,
        lease_ttl: cfg.lease_ttl,
        node: cfg.node_id(),
        liveness: Arc::new(Mutex::new(engine::GatewayLiveness::new(
            cfg.gateway_dead_after,
        ))),
        health,
        lanes,
    };
    let purge = cfg
        .chat_retention
        .map(|keep| tokio::spawn(purge(store, keep, shutdown.clone())));
    let r = owner::Owner::new(sh, cfg.lease_ttl).run(shutdown).await;
    // Every partition has finished its lane: the committer holds nothing of theirs.
    committer.abort();
    if let Some(p) = purge {
        p.abort();
    }
    r
}

/// The retention purge: the only thing that ever deletes chat.
async fn purge(store: Arc<dyn Store>, keep: Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let before = jam_shared::clock::now_ms() - keep.as_millis() as i64;
                match store.purge_messages(before).await {
                    Ok(n) if n > 0 => tracing::info!(messages = n, "retention purge"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention purge failed"),
                }
            }
        }
    }
}

/// The worker process: health/metrics endpoint plus the engine.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let health = Arc::new(Health::default());
    let state = http::HttpState {
        bus: bus.clone(),
        store: store.clone(),
        draining: shutdown.clone(),
        health: health.clone(),
    };
    let http_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });
    let result = run_engine(&cfg, bus, store, health, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
