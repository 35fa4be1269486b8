//! The worker binary: config, tracing, connect, run until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use jam_shared::bus::redis::RedisBus;
use jam_shared::config::Config;
use jam_worker::store::postgres::PgStore;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "jam-worker", version, about = "jam worker: owns sessions, drift and timers", after_help = Config::help())]
struct Cli {}

/// jemalloc: no per-allocation header and size-class slabs cost an idle connection less
/// than glibc's malloc (decision 21, docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    jam_shared::telemetry::run_main(None, serve())
}

async fn serve() -> anyhow::Result<()> {
    Cli::parse();
    let cfg = Config::from_env()?;
    jam_shared::telemetry::init(cfg.log_json, &cfg.log_filter);
    let redis = cfg
        .redis_url
        .clone()
        .context("JAM_REDIS_URL is required for jam-worker")?;
    let db = cfg
        .database_url
        .clone()
        .context("JAM_DATABASE_URL is required for jam-worker")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(jam_shared::telemetry::on_signal(shutdown.clone()));
    // Redis or PostgreSQL not there yet (a cluster starting, an outage): wait for them.
    let Some(bus) = until_up("redis", &shutdown, || RedisBus::connect(&redis)).await else {
        return Ok(());
    };
    let Some(store) = until_up("postgres", &shutdown, || {
        PgStore::connect(&db, cfg.database_pool_size)
    })
    .await
    else {
        return Ok(());
    };
    let (bus, store) = (Arc::new(bus), Arc::new(store));
    let listener = jam_shared::telemetry::bind(&cfg.worker_listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, instance = %cfg.instance_id, "jam-worker listening");
    jam_worker::run(cfg, listener, bus, store, shutdown).await?;
    Ok(())
}

/// `connect()` until it works, with back-off up to 5 s; `None` when SIGTERM comes first.
async fn until_up<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, connect: F) -> Option<T>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} unavailable at start; waiting for it");
                metrics::counter!("jam_start_retries_total", "dependency" => what.to_string())
                    .increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
