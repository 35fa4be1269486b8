//! The load client's side of a connection: connect with a token, wait for a frame.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Load is only ever sent to loopback.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .trim_start_matches("ws://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !(host.starts_with("127.") || host == "localhost") {
        bail!("{url}: load is only ever sent to loopback");
    }
    Ok(())
}

/// Open a connection as `user` and wait for `authenticated`.
pub async fn connect(
    url: &str,
    jwt: &jam_shared::auth::JwtVerifier,
    user: &str,
) -> anyhow::Result<Ws> {
    let token = jwt.sign(&jam_shared::auth::claims_for(user, user, None, 3600));
    // tungstenite zero-fills its read buffer up to `read_buffer_size` before every read
    // (128 KiB by default): a memset per frame that took a third of this tool's CPU, on the
    // cores the servers it measures share. Frames here are a few hundred bytes. Small
    // sends go out at once (TCP_NODELAY), as the servers' do.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("{url}?token={token}"),
        Some(config),
        true,
    )
    .await?;
    let first = ws.next().await.context("closed")??;
    if !first.to_text()?.contains("authenticated") {
        bail!("not authenticated: {first}");
    }
    Ok(ws)
}

/// The first JSON frame that satisfies `pred` (30 s at most).
pub async fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await?
            .context("closed")??;
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t)?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

/// Microseconds on the machine's clock (sender and receivers share it).
pub fn now_us() -> i64 {
    jam_shared::clock::now_us()
}
