//! jam-load: the project's load tool. Loopback only; bounded in count and time; stops by
//! itself. Scenarios (one per run):
//!
//! - fan-out (default): `--clients` listeners spread over the `--url`s join one session,
//!   one sender chats at `--rate`; deliveries per second and per server CPU-second, and
//!   send → receive latency percentiles (same machine clock);
//! - `--rooms K`: K rooms of `--members`, everyone chatting at `--member-rate` (a list makes
//!   a ramp, one step per rate), lost deliveries counted; `--timeline-ms N` adds p50/p99
//!   per N ms of send time, to see when a tail happens; `--count-named postgres` adds the
//!   CPU of PostgreSQL's backends (every process of that name on the host);
//! - `--idle N`: resident memory per idle connection of a gateway;
//! - `--join-storm N`: N listeners join one session at once.
//!
//! ```text
//! jam-load --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --clients 500 \
//!          --messages 2000 --rate 200 --secret local-cluster-secret --pid 1234 --pid 1235
//! jam-load --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --rooms 200 \
//!          --member-rate 2,5,10 --seconds 8 --secret local-cluster-secret --pid ... \
//!          --count-named postgres
//! ```

use anyhow::Context;
use clap::Parser;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod client;
mod fanout;
mod follow;
mod idle;
mod procstat;
mod rooms;
mod stats;
mod storm;

#[derive(Parser)]
pub struct Args {
    /// Gateway WebSocket URLs; listeners are spread round-robin. Loopback only.
    #[arg(long, required = true)]
    url: Vec<String>,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages per second from the sender.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, env = "JAM_JWT_SECRET", default_value = jam_shared::config::DEV_JWT_SECRET)]
    secret: String,
    /// Server processes whose CPU time is measured (gateways, worker).
    #[arg(long)]
    pid: Vec<u32>,
    /// With `--rooms`: also the CPU of every process on the host with this name
    /// (`postgres`: its backends, which `--pid` cannot name ahead), reported apart from the
    /// server CPU.
    #[arg(long)]
    count_named: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Instead of chat: open this many idle authenticated connections to the first URL and
    /// report the resident memory they cost the first `--pid` (a gateway).
    #[arg(long)]
    idle: Option<usize>,
    /// Instead of chat: connect this many listeners first, then have them all join one
    /// session at once; report the time until every join is answered and the frames and
    /// bytes every member received until the room settles.
    #[arg(long)]
    join_storm: Option<usize>,
    /// Instead of one session: this many rooms of `--members`, every member chatting.
    #[arg(long)]
    rooms: Option<usize>,
    /// Members per room (`--rooms`); each room's members are spread over the URLs.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Messages a second each member sends (`--rooms`); several, comma-separated, make a
    /// ramp: one step per rate, with fresh rooms.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    member_rate: Vec<f64>,
    /// How long each member chats (`--rooms`).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// With `--rooms`: also one JSON line per this many milliseconds of send time (its
    /// deliveries' p50, p99 and max), to see when a tail happens.
    #[arg(long)]
    timeline_ms: Option<u64>,
    /// One JSON line per result instead of prose (`--rooms`).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    for u in &a.url {
        client::check_loopback(u)?;
    }
    let jwt = jam_shared::auth::JwtVerifier::new(&a.secret);
    if let Some(n) = a.idle {
        return idle::run(&a, &jwt, n).await;
    }
    if let Some(k) = a.rooms {
        return tokio::time::timeout(
            std::time::Duration::from_secs(a.timeout),
            rooms::run(&a, &jwt, k),
        )
        .await
        .context("timed out")?;
    }
    let mut host = client::connect(&a.url[0], &jwt, "load-host").await?;
    host.send(Message::Text(
        json!({"type":"create_session","name":"load","maxParticipants": 10000,"ref":"c"})
            .to_string()
            .into(),
    ))
    .await?;
    let created = client::until(&mut host, |v| v["ref"] == "c").await?;
    let sid = created["session"]["id"]
        .as_str()
        .context("no session")?
        .to_string();
    if let Some(n) = a.join_storm {
        return storm::run(&a, &jwt, n, host, &sid).await;
    }
    fanout::run(&a, &jwt, host, &sid).await
}
