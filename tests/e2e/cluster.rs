//! Two gateways and a worker as separate processes over a private Redis and a fresh
//! PostgreSQL database: the protocol scenarios, then durability across a worker SIGKILL.

use std::time::Duration;

use jam_tests::cluster::Cluster;
use jam_tests::scenario::{create, join, say};
use jam_tests::{scenario, token, Client};
use serde_json::json;

#[tokio::test]
async fn cluster_protocol_scenarios() {
    let c = Cluster::start(
        &[],
        &[
            ("JAM_RATE_LIMIT_PER_SEC", "1000"),
            ("JAM_API_KEY", scenario::SHOW_API_KEY),
        ],
    )
    .await;
    let (a, b) = (&c.a, &c.b);
    scenario::sessions_and_chat(&a.ws_url(), &b.ws_url()).await;
    scenario::bad_input(&b.ws_url()).await;
    scenario::tenants(&a.ws_url(), &b.ws_url()).await;
    scenario::reconnect_recovery(&a.ws_url(), &b.ws_url()).await;
    scenario::shows_and_attendance(&a.ws_url(), &b.ws_url(), &a.http("")).await;
    scenario::notifications(&a.ws_url(), &b.ws_url(), &a.http("")).await;
    scenario::contacts_presence(&a.ws_url(), &b.ws_url(), &a.http("")).await;
    scenario::greeting_comes_first(&a.ws_url(), &b.ws_url()).await;
    scenario::socketio_emits_at_connect(&b.http("")).await;
    message_path_is_measured(&c).await;
}

/// The Redis bus's subscriber names the channels it dropped: only the lagging room resyncs.
#[tokio::test]
async fn cluster_lagging_subscription() {
    let c = Cluster::start(
        &[("JAM_RECOVERY_EVENTS", "10000")],
        &[
            ("JAM_BUS_BUFFER", "4"),
            ("JAM_RATE_LIMIT_PER_SEC", "100000"),
            ("JAM_DM_RATE_PER_SEC", "100000"),
        ],
    )
    .await;
    scenario::lagging_subscription(&c.a.ws_url()).await;
}

/// The histograms docs/operations.md follows a message by have seen it: the wait in the
/// stream, each stage of a batch, the commit and the publish, the hand-off to the gateways,
/// and the batched reads before apply (the contacts scenario reads watchers).
async fn message_path_is_measured(c: &Cluster) {
    let worker = jam_tests::metrics::scrape(&c.worker.http("/metrics")).await;
    let count = |name: &str, labels: &[(&str, &str)]| {
        jam_tests::metrics::sum(&worker, &format!("{name}_count"), labels)
    };
    for stage in ["prefetch", "apply", "queue"] {
        assert!(
            count("jam_partition_stage_seconds", &[("stage", stage)]) > 0.0,
            "no {stage} stage measured"
        );
    }
    for name in [
        "jam_command_lag_seconds",
        "jam_commit_seconds",
        "jam_publish_seconds",
    ] {
        assert!(count(name, &[]) > 0.0, "{name} measured nothing");
    }
    assert!(count("jam_pg_query_duration_seconds", &[("op", "watchers")]) > 0.0);
    let mut delivered = 0.0;
    for g in [&c.a, &c.b] {
        let text = jam_tests::metrics::scrape(&g.http("/metrics")).await;
        delivered += jam_tests::metrics::sum(&text, "jam_delivery_latency_seconds_count", &[]);
    }
    assert!(delivered > 0.0, "the gateways measured no delivery");
}

#[tokio::test]
async fn acknowledged_messages_survive_a_worker_sigkill() {
    let mut c = Cluster::start(&[], &[]).await;
    let (a, b) = (&c.a, &c.b);

    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(
        &mut alice,
        json!({"name": "durable", "isPrivate": true, "password": "pw"}),
    )
    .await;
    assert_eq!(
        join(&mut bob, &sid, Some("wrong")).await["code"],
        "INVALID_PASSWORD"
    );
    assert_eq!(
        join(&mut bob, &sid, Some("pw")).await["type"],
        "session_update"
    );
    bob.recv_type("message_history").await;

    let mut acked = Vec::new();
    let mut last_seq = 0;
    for i in 0..5 {
        let (who, other) = if i % 2 == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let text = format!("message {i}");
        let m = say(who, &sid, &text).await;
        let seq = m["seq"].as_i64().unwrap();
        assert!(seq > last_seq, "seq increases: {seq} after {last_seq}");
        last_seq = seq;
        let t = text.clone();
        let seen = other
            .recv_where("the other's message", move |v| {
                v["type"] == "new_message" && v["message"] == t.as_str()
            })
            .await;
        assert_eq!(seen["seq"], seq);
        acked.push(text);
    }

    c.worker.signal("KILL");
    assert!(c.worker.wait_exit(Duration::from_secs(5)).await);
    // A message sent while no worker runs waits on the stream and is applied after restart.
    let queued = c.redis.queued_commands();
    alice.send(json!({"type": "send_message", "sessionId": sid, "message": "while down", "ref": "down"})).await;
    c.redis.wait_queued(queued + 1).await;
    c.worker.restart().await;
    let m = alice
        .recv_where("ack of the queued message", |v| v["ref"] == "down")
        .await;
    assert_eq!(m["type"], "new_message", "{m}");
    assert!(
        m["seq"].as_i64().unwrap() > last_seq,
        "seq never reused after restart"
    );
    acked.push("while down".into());

    let mut carol = Client::connect(&a.ws_url(), &token("carol", "Carol", None)).await;
    let joined = join(&mut carol, &sid, Some("pw")).await;
    assert_eq!(joined["type"], "session_update", "{joined}");
    let names: Vec<&str> = joined["session"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let hist = carol.recv_type("message_history").await;
    assert_eq!(scenario::history_texts(&hist), acked);
    let seqs = scenario::history_seqs(&hist);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // And the others still get the room's events after the restart.
    let uj = alice
        .recv_where("carol's join", |v| {
            v["type"] == "user_joined" && v["userId"] == "carol"
        })
        .await;
    assert_eq!(uj["count"], 3);
}

/// An inbox is kept by the worker that owns its user's partition: after that worker is
/// killed, the next one loads it from PostgreSQL with the same count and ids.
#[tokio::test]
async fn an_inbox_survives_a_worker_sigkill() {
    let mut c = Cluster::start(&[], &[("JAM_API_KEY", scenario::SHOW_API_KEY)]).await;
    let http = reqwest::Client::new();
    let notify = |title: &str| {
        http.post(c.a.http("/api/notifications"))
            .header("x-api-key", scenario::SHOW_API_KEY)
            .json(&json!({"userId": "dana", "type": "t", "title": title}))
            .send()
    };
    for t in ["one", "two", "three"] {
        assert_eq!(notify(t).await.unwrap().status(), 201);
    }
    let mut dana = Client::connect(&c.b.ws_url(), &token("dana", "Dana", None)).await;
    let r = dana
        .request(json!({"type": "notification:read", "notificationId": 2}))
        .await;
    assert_eq!(r["unreadCount"], 2, "{r}");
    c.worker.signal("KILL");
    assert!(c.worker.wait_exit(Duration::from_secs(5)).await);
    c.worker.restart().await;
    let v = dana.request(json!({"type": "notification:list"})).await;
    assert_eq!(v["unreadCount"], 2, "{v}");
    let read: Vec<bool> = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["readAt"].is_i64())
        .collect();
    assert_eq!(read, [false, true, false], "newest first: {v}");
    let r = notify("four").await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["notifications"][0]["id"], 4, "ids go on: {v}");
    dana.recv_where("the count after the fourth", |f| {
        f["type"] == "notification:unread-count" && f["count"] == 3
    })
    .await;
}
