//! Command-line pieces both binaries with a gateway share (`jam-gateway`, `jam`).

use jam_shared::auth::{claims_for, JwtVerifier};
use jam_shared::config::Config;

/// `gentoken`: print a token for the configured secret (the development one in standalone).
#[derive(clap::Args, Debug)]
pub struct GentokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// The display name (defaults to the user id).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: i64,
}

pub fn gentoken(cfg: &Config, a: &GentokenArgs) -> String {
    let name = a.name.clone().unwrap_or_else(|| a.sub.clone());
    JwtVerifier::new(&cfg.jwt_secret_or_dev()).sign(&claims_for(
        &a.sub,
        &name,
        a.tenant.as_deref(),
        a.ttl,
    ))
}
