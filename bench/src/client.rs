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
    let greeted = async {
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
    };
    // A server that takes the connection and never greets it fails the run, not hangs it.
    tokio::time::timeout(WAIT, greeted)
        .await
        .context("no greeting within 30 s")?
}

/// How long a connection's greeting, or an awaited frame, may take.
const WAIT: Duration = Duration::from_secs(30);

/// The first JSON frame that satisfies `pred` ([`WAIT`] at most for each frame).
pub async fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes the connection and never answers the upgrade: the tool gives up
    /// after [`WAIT`] (on tokio's paused clock) instead of waiting for ever.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_greets_fails_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(sock);
        });
        let jwt = jam_shared::auth::JwtVerifier::new("a-test-secret-of-at-least-32-bytes!!");
        let started = tokio::time::Instant::now();
        let r = tokio::time::timeout(WAIT * 2, connect(&url, &jwt, "u")).await;
        let err = r
            .expect("connect gives up by itself")
            .expect_err("no greeting");
        assert!(err.to_string().contains("no greeting"), "{err:#}");
        assert!(started.elapsed() >= WAIT);
        held.abort();
    }
}
