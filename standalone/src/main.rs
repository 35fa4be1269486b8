//! `jam`: the whole system in one binary with nothing to install.

use clap::{Parser, Subcommand};
use jam_shared::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "jam", version, about = "jam standalone: gateway + worker, in-memory bus and store", after_help = Config::help())]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run jam (the default).
    Serve,
    /// Print a token signed with the configured (or development) secret.
    Gentoken(jam_gateway::cli::GentokenArgs),
}

/// One event-loop thread unless `JAM_THREADS` says otherwise: on one loop a message goes
/// from its reader through the worker to its recipients' sockets without waking a second
/// thread, the least CPU per message (docs/decisions/0014-one-loop-for-the-standalone.md).
const STANDALONE_THREADS: usize = 1;

/// jemalloc: no per-allocation header and size-class slabs cost an idle connection less
/// than glibc's malloc (decision 21, docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    jam_shared::telemetry::run_main(Some(STANDALONE_THREADS), serve())
}

async fn serve() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::from_env()?;
    jam_shared::telemetry::init(cfg.log_json, &cfg.log_filter);
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Gentoken(args) => println!("{}", jam_gateway::cli::gentoken(&cfg, &args)),
        Cmd::Serve => {
            let listener = jam_shared::telemetry::bind(&cfg.listen_addr).await?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "jam standalone listening (ws://{addr}/ws)");
            if cfg.web_ui {
                // The quickest way to see jam work: the listening-party page.
                println!("jam is running: open http://{addr}/ for the listening-party page (WebSocket: ws://{addr}/ws)");
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(jam_shared::telemetry::on_signal(shutdown.clone()));
            jam::run(cfg, listener, shutdown).await?;
        }
    }
    Ok(())
}
