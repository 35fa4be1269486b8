//! The gateway binary: `serve` (default) joins the Redis bus; `gentoken` mints a token.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jam_shared::bus::redis::RedisBus;
use jam_shared::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "jam-gateway", version, about = "jam gateway: WebSockets, auth, REST, fan-out", after_help = Config::help())]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve WebSocket and HTTP clients (the default).
    Serve,
    /// Print a token signed with the configured secret.
    Gentoken(jam_gateway::cli::GentokenArgs),
}

/// jemalloc: no per-allocation header and size-class slabs cost an idle connection less
/// than glibc's malloc (decision 21, docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    jam_shared::telemetry::run_main(None, serve())
}

async fn serve() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::from_env()?;
    jam_shared::telemetry::init(cfg.log_json, &cfg.log_filter);
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Gentoken(args) => {
            println!("{}", jam_gateway::cli::gentoken(&cfg, &args));
            Ok(())
        }
        Cmd::Serve => {
            cfg.token_check_required()?;
            let secret = cfg.jwt_secret.clone();
            let redis = cfg
                .redis_url
                .clone()
                .context("JAM_REDIS_URL is required for jam-gateway")?;
            let bus = Arc::new(
                RedisBus::connect(&redis)
                    .await
                    .context("connecting to redis")?,
            );
            let listener = jam_shared::telemetry::bind(&cfg.listen_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, instance = %cfg.instance_id, "jam-gateway listening");
            let shutdown = CancellationToken::new();
            tokio::spawn(jam_shared::telemetry::on_signal(shutdown.clone()));
            jam_gateway::run(cfg, secret, listener, bus, shutdown).await?;
            Ok(())
        }
    }
}
