//! Standalone jam: the gateway and the worker engine in one process, over the in-memory
//! bus and store (or Redis/PostgreSQL when configured). Still no direct calls between
//! them: the gateway only talks to the bus.

use std::sync::Arc;

use jam_shared::bus::memory::MemoryBus;
use jam_shared::bus::redis::RedisBus;
use jam_shared::bus::Bus;
use jam_shared::config::Config;
use jam_worker::store::memory::MemoryStore;
use jam_worker::store::postgres::PgStore;
use jam_worker::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Run gateway + engine until `shutdown`. Uses Redis / PostgreSQL when their URLs are set.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus: Arc<dyn Bus> = match &cfg.redis_url {
        Some(url) => Arc::new(RedisBus::connect(url).await?),
        None => Arc::new(MemoryBus::new()),
    };
    let store: Arc<dyn Store> = match &cfg.database_url {
        Some(url) => Arc::new(PgStore::connect(url, cfg.database_pool_size).await?),
        None => Arc::new(MemoryStore::with_history_limit(cfg.memory_history)),
    };
    // The development secret only when nothing else checks tokens.
    let a = &cfg.auth;
    let secret = if a.public_key.is_some() || a.jwks_url.is_some() || a.introspection_url.is_some()
    {
        cfg.jwt_secret.clone()
    } else {
        Some(cfg.jwt_secret_or_dev())
    };
    let engine_stop = CancellationToken::new();
    let engine = {
        let (cfg, bus, store, stop) =
            (cfg.clone(), bus.clone(), store.clone(), engine_stop.clone());
        tokio::spawn(async move {
            jam_worker::run_engine(&cfg, bus, store, Default::default(), stop).await
        })
    };
    let gateway = jam_gateway::run(cfg, secret, listener, bus, shutdown).await;
    // The engine outlives the gateway's drain, so the last disconnects are applied.
    engine_stop.cancel();
    engine.await??;
    gateway?;
    Ok(())
}
