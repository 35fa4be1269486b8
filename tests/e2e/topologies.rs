//! The Redis topologies users run, on local instances started by the test: a Redis Cluster
//! of three masters (sharded pub/sub) and a master with a replica behind Sentinel (a
//! failover the gateways and the worker follow).

use std::time::Duration;

use jam_tests::procs::{self, Proc};
use jam_tests::scenario::{self, create, join, say};
use jam_tests::services::{RedisCluster, RedisSentinel, TestDb};
use jam_tests::{token, Client};
use serde_json::json;

const GW_ENV: &[(&str, &str)] = &[("JAM_RATE_LIMIT_PER_SEC", "1000")];

/// A worker and two gateways over `redis` (any topology's URL) and a fresh database.
async fn stack(redis: &str) -> (TestDb, Proc, Proc, Proc) {
    let db = TestDb::create().await;
    let worker = procs::worker(redis, &db.url, &[]).await;
    let a = procs::gateway(redis, "gw-a", GW_ENV).await;
    let b = procs::gateway(redis, "gw-b", GW_ENV).await;
    (db, worker, a, b)
}

/// Every acknowledged text of `sid` is in its history exactly once, in seq order.
async fn audit(c: &mut Client, sid: &str, acked: &[String]) {
    let hist = c
        .request(json!({"type": "load_history", "sessionId": sid, "limit": 100}))
        .await;
    let texts = scenario::history_texts(&hist);
    for t in acked {
        let n = texts.iter().filter(|x| *x == t).count();
        assert_eq!(n, 1, "{t:?} stored {n} times in {texts:?}");
    }
    let seqs = scenario::history_seqs(&hist);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order: {seqs:?}");
}

#[tokio::test]
async fn chat_works_over_a_redis_cluster_with_sessions_on_every_shard() {
    let rc = RedisCluster::start();
    let (_db, _worker, a, b) = stack(&rc.url()).await;
    scenario::sessions_and_chat(&a.ws_url(), &b.ws_url()).await;

    // Many sessions: their command streams and room channels hash to every shard.
    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let mut sessions = Vec::new();
    for i in 0..12 {
        let sid = create(&mut alice, json!({"name": format!("shard {i}")})).await;
        join(&mut bob, &sid, None).await;
        bob.recv_type("message_history").await;
        let text = format!("over the cluster {i}");
        say(&mut alice, &sid, &text).await;
        let t = text.clone();
        // Delivered to the other gateway through the room's shard (SSUBSCRIBE/SPUBLISH).
        bob.recv_where("the message on the other gateway", move |v| {
            v["type"] == "new_message" && v["message"] == t.as_str()
        })
        .await;
        sessions.push((sid, text));
    }
    let per_node = rc.keys_per_node("jam:cmd:*");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "command streams spread over the shards: {per_node:?}"
    );
    // Room channels are sharded channels, on more than one shard; none is a plain channel.
    let rooms = rc.shard_channels_per_node("jam:*:room:*");
    assert!(
        rooms.iter().filter(|n| **n > 0).count() >= 2,
        "room channels on several shards: {rooms:?}"
    );
    assert_eq!(
        rc.plain_channels("jam:*"),
        0,
        "no plain pub/sub in a cluster: {:?}",
        rc.plain_channel_names("jam:*")
    );
    for (sid, text) in &sessions {
        audit(&mut bob, sid, std::slice::from_ref(text)).await;
    }
}

#[tokio::test]
async fn chat_survives_a_sentinel_failover() {
    let rs = RedisSentinel::start();
    let (_db, _worker, a, b) = stack(&rs.url()).await;

    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "failover"})).await;
    join(&mut bob, &sid, None).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let text = format!("before {i}");
        say(&mut alice, &sid, &text).await;
        acked.push(text);
    }
    let old = rs.master_port();
    rs.failover().await;
    let new = rs.master_port();
    assert_ne!(old, new);
    assert!(rs.ports().contains(&new));

    // Everyone follows the new master: the gateways ask their clients to reconnect (pub/sub
    // may have dropped events), and chat is acknowledged again.
    let t = std::time::Instant::now();
    let text = "after the failover".to_string();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "chat never came back"
        );
        let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
        let r = alice
            .request(json!({"type": "join_session", "sessionId": sid}))
            .await;
        if r["type"] != "session_update" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let r = alice
            .request(
                json!({"type": "send_message", "sessionId": sid, "message": text,
                            "idempotencyKey": "after-failover"}),
            )
            .await;
        if r["type"] == "new_message" {
            acked.push(text.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut carol = Client::connect(&b.ws_url(), &token("carol", "Carol", None)).await;
    join(&mut carol, &sid, None).await;
    audit(&mut carol, &sid, &acked).await;
}
