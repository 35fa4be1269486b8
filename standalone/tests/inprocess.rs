//! The library `run` the binary calls, called in-process on port 0: the protocol
//! scenarios pass, and cancelling it drains connections (1012) and returns cleanly.

use std::collections::HashMap;
use std::time::Duration;

use jam_shared::config::Config;
use jam_tests::{scenario, token, Client};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_port_zero_then_drain() {
    let env: HashMap<String, String> = [
        ("JAM_JWT_SECRET", jam_tests::SECRET),
        ("JAM_DRAIN_GRACE_SECS", "3"),
        ("JAM_DRAIN_LINGER_MS", "100"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Config::from_map(&env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(jam::run(cfg, listener, stop.clone()));

    scenario::sessions_and_chat(&url, &url).await;
    let mut c = Client::connect(&url, &token("zoe", "Zoe", None)).await;
    stop.cancel();
    assert_eq!(c.closed(Duration::from_secs(5)).await, Some(1012));
    let done = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "run returned {done:?}");
}
