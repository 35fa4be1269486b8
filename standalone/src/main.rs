//! `jam`: the whole system in one binary with nothing to install.

use clap::{Parser, Subcommand};
use jam_shared::auth::{claims_for, JwtVerifier};
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
    Gentoken {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 86_400)]
        ttl: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::from_env()?;
    jam_shared::telemetry::init(cfg.log_json, &cfg.log_filter);
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Gentoken {
            sub,
            name,
            tenant,
            ttl,
        } => {
            let name = name.unwrap_or_else(|| sub.clone());
            let jwt = JwtVerifier::new(&cfg.jwt_secret_or_dev());
            println!(
                "{}",
                jwt.sign(&claims_for(&sub, &name, tenant.as_deref(), ttl))
            );
        }
        Cmd::Serve => {
            let listener = tokio::net::TcpListener::bind(&cfg.listen_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "jam standalone listening (ws://{}/ws)", listener.local_addr()?);
            let shutdown = CancellationToken::new();
            tokio::spawn(jam_shared::telemetry::on_signal(shutdown.clone()));
            jam::run(cfg, listener, shutdown).await?;
        }
    }
    Ok(())
}
