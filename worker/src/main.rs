//! The worker binary: config, tracing, connect, run until SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use jam_shared::bus::redis::RedisBus;
use jam_shared::config::Config;
use jam_worker::store::postgres::PgStore;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "jam-worker", version, about = "jam worker: owns sessions, drift and timers", after_help = Config::help())]
struct Cli {}

fn main() -> anyhow::Result<()> {
    jam_shared::telemetry::run_main(serve())
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
    let bus = Arc::new(
        RedisBus::connect(&redis)
            .await
            .context("connecting to redis")?,
    );
    let store = Arc::new(
        PgStore::connect(&db, 16)
            .await
            .context("connecting to postgres")?,
    );
    let listener = jam_shared::telemetry::bind(&cfg.worker_listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, instance = %cfg.instance_id, "jam-worker listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(jam_shared::telemetry::on_signal(shutdown.clone()));
    jam_worker::run(cfg, listener, bus, store, shutdown).await?;
    Ok(())
}
