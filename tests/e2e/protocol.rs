//! The protocol scenarios against the standalone binary (in-memory bus and store).

use std::time::Duration;

use jam_tests::scenario::{create, join, RoomView};
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

/// A gateway whose bus buffer overflows tells its rooms' members to resync; rejoining with
/// the last seq they applied gives them every message, without a gap.
#[tokio::test]
async fn a_lagging_subscription_makes_members_resync() {
    let jam = procs::standalone(&[
        ("JAM_BUS_BUFFER", "4"),
        ("JAM_RATE_LIMIT_PER_SEC", "100000"),
        ("JAM_RECOVERY_EVENTS", "10000"),
    ])
    .await;
    let url = jam.ws_url();
    let mut alice = Client::connect(&url, &token("lag-alice", "Alice", None)).await;
    let mut bob = Client::connect(&url, &token("lag-bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "lag"})).await;
    let mut view = RoomView::default();
    view.rejoined(&join(&mut bob, &sid, None).await);
    // Bursts, not waiting for acknowledgements, until the gateway falls behind the bus.
    let mut sent = 0;
    let mut resync = None;
    for _ in 0..20 {
        for _ in 0..100 {
            let text = format!("m{sent}");
            alice
                .send(json!({"type": "send_message", "sessionId": sid, "message": text}))
                .await;
            sent += 1;
        }
        resync = bob
            .try_recv_where(Duration::from_secs(2), |f| f["type"] == "resync_required")
            .await;
        if resync.is_some() {
            break;
        }
    }
    let resync = resync.expect("a 4-message bus buffer overflows under bursts of 100");
    assert_eq!(resync["sessionId"], sid.as_str());
    // What arrived applies up to the first gap; the rest comes with the rejoin.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Some(f) = bob
        .try_recv_where(Duration::from_millis(200), |f| f["type"] == "new_message")
        .await
    {
        if !view.try_apply(&f) {
            break;
        }
    }
    bob.clear();
    let since = view.seq;
    assert!((since as usize) < sent + 1, "something was dropped");
    let r = bob
        .request(json!({"type": "join_session", "sessionId": sid, "sinceSeq": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    view.rejoined(&r);
    let want: Vec<String> = (0..sent).map(|i| format!("m{i}")).collect();
    assert_eq!(view.texts, want);
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
