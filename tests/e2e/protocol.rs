//! The protocol scenarios against the standalone binary (in-memory bus and store).

use jam_tests::scenario::create;
use jam_tests::{procs, scenario, token, Client};
use serde_json::json;

#[tokio::test]
async fn standalone_sessions_and_chat() {
    let jam = procs::standalone(&[]).await;
    scenario::sessions_and_chat(&jam.ws_url(), &jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_bad_input() {
    let jam = procs::standalone(&[]).await;
    scenario::bad_input(&jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_tenants() {
    let jam = procs::standalone(&[]).await;
    scenario::tenants(&jam.ws_url(), &jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_socketio_emits_at_connect() {
    let jam = procs::standalone(&[]).await;
    scenario::socketio_emits_at_connect(&jam.http("")).await;
}

#[tokio::test]
async fn standalone_greeting_comes_first() {
    let jam = procs::standalone(&[("JAM_RATE_LIMIT_PER_SEC", "1000")]).await;
    scenario::greeting_comes_first(&jam.ws_url(), &jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_reconnect_recovery() {
    // The sender chats faster than the default frame rate allows.
    let jam = procs::standalone(&[("JAM_RATE_LIMIT_PER_SEC", "1000")]).await;
    scenario::reconnect_recovery(&jam.ws_url(), &jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_lagging_subscription() {
    let jam = procs::standalone(&[
        ("JAM_BUS_BUFFER", "4"),
        ("JAM_RATE_LIMIT_PER_SEC", "100000"),
        ("JAM_DM_RATE_PER_SEC", "100000"),
        ("JAM_RECOVERY_EVENTS", "10000"),
    ])
    .await;
    scenario::lagging_subscription(&jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_shows_and_attendance() {
    let jam = procs::standalone(&[("JAM_API_KEY", scenario::SHOW_API_KEY)]).await;
    scenario::shows_and_attendance(&jam.ws_url(), &jam.ws_url(), &jam.http("")).await;
}

#[tokio::test]
async fn standalone_notifications() {
    let jam = procs::standalone(&[("JAM_API_KEY", scenario::SHOW_API_KEY)]).await;
    scenario::notifications(&jam.ws_url(), &jam.ws_url(), &jam.http("")).await;
}

#[tokio::test]
async fn standalone_contacts_presence() {
    let jam = procs::standalone(&[("JAM_API_KEY", scenario::SHOW_API_KEY)]).await;
    scenario::contacts_presence(&jam.ws_url(), &jam.ws_url(), &jam.http("")).await;
}

/// Without PostgreSQL, history lives in memory: each session keeps its newest
/// `JAM_MEMORY_HISTORY` messages, and a page asks for no more than is kept.
#[tokio::test]
async fn standalone_history_in_memory_is_bounded() {
    let jam = procs::standalone(&[
        ("JAM_MEMORY_HISTORY", "3"),
        ("JAM_RATE_LIMIT_PER_SEC", "1000"),
    ])
    .await;
    let mut alice = Client::connect(&jam.ws_url(), &token("mem-alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "bounded"})).await;
    for i in 1..=5 {
        scenario::say(&mut alice, &sid, &format!("m{i}")).await;
    }
    let page = alice
        .request(json!({"type": "load_history", "sessionId": sid, "limit": 50}))
        .await;
    let texts: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"], "{page}");
    assert_eq!(page["hasMore"], false, "{page}");
}
