//! Presence, typing, history, direct messages and server-side publish across two gateway
//! processes, a worker, a private Redis and a fresh database; and tenants kept apart.

use std::time::Duration;

use jam_tests::cluster::Cluster;
use jam_tests::scenario::{create, join, say};
use jam_tests::{bearer, token, Client};
use serde_json::{json, Value};

const API_KEY: &str = "test-api-key";

async fn cluster() -> Cluster {
    let gateway_env = [("JAM_API_KEY", API_KEY), ("JAM_HEARTBEAT_MS", "1000")];
    Cluster::start(&[("JAM_GATEWAY_DEAD_AFTER_MS", "10000")], &gateway_env).await
}

fn active(v: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = v["activeUsers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["userId"].as_str().unwrap().to_string(),
                u["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn presence_counts_a_user_once_across_gateways() {
    let c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "presence"})).await;
    let mut bob_a = Client::connect(&c.a.ws_url(), &token("bob", "Bob", None)).await;
    let mut bob_b = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    join(&mut bob_a, &sid, None).await;
    let snap = bob_a.recv_type("active_users").await;
    assert_eq!(active(&snap), [("alice".into(), 1), ("bob".into(), 1)]);
    let uj = alice.recv_type("user_joined").await;
    assert_eq!(
        (uj["userId"].as_str(), uj["count"].as_u64()),
        (Some("bob"), Some(2))
    );
    join(&mut bob_b, &sid, None).await;
    bob_b.recv_type("active_users").await;
    // The second connection is no new participant.
    assert!(
        alice
            .none_of_type("user_joined", Duration::from_millis(400))
            .await
    );

    let r = alice
        .request(json!({"type": "get_active_users", "sessionId": sid}))
        .await;
    assert_eq!(r["type"], "active_users");
    assert_eq!(r["count"], 2);
    assert_eq!(active(&r), [("alice".into(), 1), ("bob".into(), 2)]);

    // Both of bob's sockets receive room events.
    say(&mut alice, &sid, "to both").await;
    bob_a.recv_type("new_message").await;
    bob_b.recv_type("new_message").await;

    // One connection goes: bob is still there.
    drop(bob_a);
    assert!(
        alice
            .none_of_type("user_offline", Duration::from_millis(800))
            .await
    );
    let r = alice
        .request(json!({"type": "get_active_users", "sessionId": sid}))
        .await;
    assert_eq!(active(&r), [("alice".into(), 1), ("bob".into(), 1)]);
    // The last one goes: offline, then left, with the new count.
    drop(bob_b);
    let off = alice.recv_type("user_offline").await;
    assert_eq!(
        (off["userId"].as_str(), off["count"].as_u64()),
        (Some("bob"), Some(1))
    );
    let left = alice.recv_type("user_left").await;
    assert_eq!(
        (left["userId"].as_str(), left["count"].as_u64()),
        (Some("bob"), Some(1))
    );
    let r = alice
        .request(json!({"type": "get_active_users", "sessionId": sid}))
        .await;
    assert_eq!(active(&r), [("alice".into(), 1)]);
    // Non-members cannot look.
    let mut eve = Client::connect(&c.b.ws_url(), &token("eve", "Eve", None)).await;
    let r = eve
        .request(json!({"type": "get_active_users", "sessionId": sid}))
        .await;
    assert_eq!(r["code"], "NOT_IN_SESSION");
}

#[tokio::test]
async fn typing_reaches_others_only_and_clears_itself() {
    let c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "typing"})).await;
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    join(&mut bob, &sid, None).await;
    bob.send(json!({"type": "typing", "sessionId": sid, "isTyping": true}))
        .await;
    let t = alice.recv_type("user_typing").await;
    assert_eq!(
        (
            t["userId"].as_str(),
            t["userName"].as_str(),
            t["isTyping"].as_bool()
        ),
        (Some("bob"), Some("Bob"), Some(true))
    );
    assert!(
        bob.none_of_type("user_typing", Duration::from_millis(500))
            .await,
        "never to the sender"
    );
    // Not renewed: cleared after ~5 s.
    let started = std::time::Instant::now();
    let t = alice
        .recv_where("typing cleared", |v| v["type"] == "user_typing")
        .await;
    assert_eq!(t["isTyping"], false);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    // An explicit stop goes out at once.
    bob.send(json!({"type": "typing", "sessionId": sid, "isTyping": true}))
        .await;
    assert_eq!(alice.recv_type("user_typing").await["isTyping"], true);
    bob.send(json!({"type": "typing", "sessionId": sid, "isTyping": false}))
        .await;
    assert_eq!(alice.recv_type("user_typing").await["isTyping"], false);
    // Outsiders cannot type into a room.
    let mut eve = Client::connect(&c.a.ws_url(), &token("eve", "Eve", None)).await;
    let r = eve
        .request(json!({"type": "typing", "sessionId": sid, "isTyping": true}))
        .await;
    assert_eq!(r["code"], "NOT_IN_SESSION");
}

#[tokio::test]
async fn a_killed_gateways_users_go_offline() {
    let mut c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "crash"})).await;
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    join(&mut bob, &sid, None).await;
    alice.recv_type("user_joined").await;
    let t = std::time::Instant::now();
    c.b.kill(); // SIGKILL: no goodbye, no disconnect commands.
    let deadline = Duration::from_secs(15);
    let off = alice
        .recv_where_within("bob offline", deadline, |v| v["type"] == "user_offline")
        .await;
    assert_eq!(off["userId"], "bob");
    let left = alice.recv_type("user_left").await;
    assert_eq!(left["count"], 1);
    assert!(t.elapsed() < deadline, "{:?}", t.elapsed());
}

#[tokio::test]
async fn history_pages_return_every_message_once() {
    let c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "history"})).await;
    let mut sent = Vec::new();
    for i in 0..57 {
        let m = say(&mut alice, &sid, &format!("m{i}")).await;
        sent.push(m["seq"].as_i64().unwrap());
    }
    // The joiner gets the newest 50.
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    join(&mut bob, &sid, None).await;
    let h = bob.recv_type("message_history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 50);
    assert_eq!(h["hasMore"], true);

    // Over WebSocket, pages of 10 backwards.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut f = json!({"type": "load_history", "sessionId": sid, "limit": 10});
        if let Some(b) = before {
            f["before"] = json!(b);
        }
        let page = bob.request(f).await;
        assert_eq!(page["type"], "message_history", "{page}");
        let msgs = page["messages"].as_array().unwrap();
        let seqs: Vec<i64> = msgs.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        seen.splice(0..0, seqs.iter().copied());
        if page["hasMore"] == false {
            break;
        }
        before = seqs.first().copied();
    }
    assert_eq!(seen, sent);

    // Over REST, the same with pages of 25.
    let http = reqwest::Client::new();
    let as_bob = bearer("bob", "Bob");
    let mut rest_seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut url = format!(
            "{}?limit=25",
            c.a.http(&format!("/api/sessions/{sid}/messages"))
        );
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let r = http
            .get(&url)
            .header("authorization", &as_bob)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let seqs: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        rest_seen.splice(0..0, seqs.iter().copied());
        if page["hasMore"] == false {
            break;
        }
        before = seqs.first().copied();
    }
    assert_eq!(rest_seen, sent);
    let bad = http
        .get(format!(
            "{}?limit=500",
            c.a.http(&format!("/api/sessions/{sid}/messages"))
        ))
        .header("authorization", &as_bob)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Outsiders: 403 NOT_IN_SESSION; no token: 401.
    let eve = bearer("eve", "Eve");
    let r = http
        .get(c.a.http(&format!("/api/sessions/{sid}/messages")))
        .header("authorization", eve)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "NOT_IN_SESSION");
    let r = http
        .get(c.a.http(&format!("/api/sessions/{sid}/messages")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn direct_messages_reach_every_connection_and_persist() {
    let c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob_a = Client::connect(&c.a.ws_url(), &token("bob", "Bob", None)).await;
    let mut bob_b = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    let ack = alice
        .request(json!({"type": "direct_message", "receiverId": "bob", "content": "psst"}))
        .await;
    assert_eq!(ack["type"], "direct_message", "{ack}");
    assert_eq!(ack["senderId"], "alice");
    for bob in [&mut bob_a, &mut bob_b] {
        let dm = bob.recv_type("direct_message").await;
        assert_eq!(
            (
                dm["senderId"].as_str(),
                dm["senderName"].as_str(),
                dm["content"].as_str()
            ),
            (Some("alice"), Some("Alice"), Some("psst"))
        );
        assert_eq!(dm["id"], ack["id"]);
        assert!(dm.get("ref").is_none());
    }
    let r = alice
        .request(json!({"type": "direct_message", "receiverId": "bob", "content": ""}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST");
    let r = alice
        .request(json!({"type": "direct_message", "receiverId": "alice", "content": "me"}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST");
    // An offline receiver reads it later over REST.
    alice.request(json!({"type": "direct_message", "receiverId": "carol", "content": "while you were out"})).await;
    let http = reqwest::Client::new();
    let r = http
        .get(c.b.http("/api/messages/direct?with=alice"))
        .header("authorization", bearer("carol", "Carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["content"], "while you were out");
    // bob's conversation with alice holds only bob's message.
    let r = http
        .get(c.b.http("/api/messages/direct?with=alice"))
        .header("authorization", bearer("bob", "Bob"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["messages"][0]["content"], "psst");
    // The cursor's two halves as protocol.md names them (`before`, `beforeId`): without
    // `before`, `beforeId` is an error; with it, it moves the bound within that
    // millisecond (an empty id leaves the whole millisecond out; "~" sorts after every id).
    let page = |q: String| {
        http.get(c.b.http(&format!("/api/messages/direct?with=alice{q}")))
            .header("authorization", bearer("bob", "Bob"))
            .send()
    };
    let r = page("&beforeId=x".into()).await.unwrap();
    assert_eq!(r.status(), 400, "beforeId is read");
    let at = v["messages"][0]["createdAt"].as_i64().unwrap();
    let count = |r: reqwest::Response| async move {
        let v: Value = r.json().await.unwrap();
        v["messages"].as_array().map(Vec::len)
    };
    let r = page(format!("&before={at}")).await.unwrap();
    assert_eq!(count(r).await, Some(0));
    let r = page(format!("&before={at}&beforeId=~")).await.unwrap();
    assert_eq!(count(r).await, Some(1), "beforeId moves the bound");
    // A query string that does not parse is the caller's error, with the reason.
    let r = http
        .get(c.b.http("/api/messages/direct?with=alice&limit=many"))
        .header("authorization", bearer("bob", "Bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "BAD_REQUEST");
    assert!(
        v["error"].as_str().unwrap().contains("limit"),
        "the reason names the field: {v}"
    );
}

#[tokio::test]
async fn server_side_publish_by_api_key() {
    let c = cluster().await;
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "notify"})).await;
    let http = reqwest::Client::new();
    let publish = |key: &'static str, body: Value| {
        let http = http.clone();
        let url = c.a.http("/api/publish");
        async move {
            http.post(url)
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // To a user connected to the other gateway.
    let r = publish(API_KEY, json!({"target": {"userId": "bob"}, "event": "job:assigned", "data": {"jobId": 7, "type": "spoof"}})).await;
    assert_eq!(r.status(), 202);
    let ev = bob.recv_type("job:assigned").await;
    assert_eq!(ev["jobId"], 7);
    // To a session's members.
    let r = publish(
        API_KEY,
        json!({"target": {"sessionId": sid}, "event": "announcement", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(alice.recv_type("announcement").await["text"], "hi");
    assert!(
        bob.none_of_type("announcement", Duration::from_millis(300))
            .await
    );
    // Wrong key, bad bodies.
    let r = publish("wrong", json!({"target": {"userId": "bob"}, "event": "x"})).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "UNAUTHORIZED");
    assert!(bob.none_of_type("x", Duration::from_millis(300)).await);
    let r = publish(API_KEY, json!({"target": {}, "event": "x"})).await;
    assert_eq!(r.status(), 400);
    let r = publish(
        API_KEY,
        json!({"target": {"userId": "bob"}, "event": "bad event"}),
    )
    .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_second_tenant_sees_nothing_of_the_first() {
    let c = cluster().await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", Some("acme"))).await;
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", Some("acme"))).await;
    // Same user ids in tenant globex.
    let mut g_alice =
        Client::connect(&c.b.ws_url(), &token("alice", "G-Alice", Some("globex"))).await;
    let mut g_bob = Client::connect(&c.a.ws_url(), &token("bob", "G-Bob", Some("globex"))).await;
    let sid = create(&mut alice, json!({"name": "acme room"})).await;
    join(&mut bob, &sid, None).await;
    say(&mut alice, &sid, "acme secret").await;

    // get_sessions and join.
    let list = g_alice.request(json!({"type": "get_sessions"})).await;
    assert_eq!(list["sessions"], json!([]));
    assert_eq!(
        join(&mut g_bob, &sid, None).await["code"],
        "SESSION_NOT_FOUND"
    );
    // history.
    let r = g_bob
        .request(json!({"type": "load_history", "sessionId": sid}))
        .await;
    assert_eq!(r["code"], "SESSION_NOT_FOUND");
    let r = reqwest::Client::new()
        .get(c.a.http(&format!("/api/sessions/{sid}/messages")))
        .header(
            "authorization",
            format!("Bearer {}", token("alice", "G-Alice", Some("globex"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // direct_message: globex's alice → "bob" reaches globex's bob only.
    g_alice
        .request(json!({"type": "direct_message", "receiverId": "bob", "content": "globex only"}))
        .await;
    assert_eq!(
        g_bob.recv_type("direct_message").await["content"],
        "globex only"
    );
    assert!(
        bob.none_of_type("direct_message", Duration::from_millis(500))
            .await
    );
    // publish with a tenant reaches that tenant only.
    let r = reqwest::Client::new()
        .post(c.b.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .json(&json!({"tenant": "globex", "target": {"userId": "alice"}, "event": "friend_request", "data": {"from": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(g_alice.recv_type("friend_request").await["from"], "x");
    assert!(
        alice
            .none_of_type("friend_request", Duration::from_millis(500))
            .await
    );
    // And globex's sockets never saw acme's room traffic.
    assert!(
        g_alice
            .none_of_type("new_message", Duration::from_millis(200))
            .await
    );
    assert!(
        g_bob
            .none_of_type("new_message", Duration::from_millis(200))
            .await
    );
}

/// Contacts' presence survives a gateway's death: the worker drops its connections when it
/// stops heartbeating and tells the watchers, on the other gateway.
#[tokio::test]
async fn a_killed_gateways_users_go_offline_to_their_contacts() {
    let mut c = cluster().await;
    let mut ann = Client::connect(&c.a.ws_url(), &token("ann", "Ann", None)).await;
    let mut ben = Client::connect(&c.b.ws_url(), &token("ben", "Ben", None)).await;
    // Ann writes to Ben while Ben is online: Ben's partition learns of it only from the
    // store, when it has something to announce.
    let r = ann
        .request(json!({"type": "direct_message", "receiverId": "ben", "content": "hey"}))
        .await;
    assert_eq!(r["type"], "direct_message", "{r}");
    ben.recv_type("direct_message").await;
    let t = std::time::Instant::now();
    c.b.kill();
    let off = ann
        .recv_where_within("ben offline", Duration::from_secs(15), |v| {
            v["type"] == "user_offline" && v["userId"] == "ben"
        })
        .await;
    assert!(off.get("sessionId").is_none(), "{off}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}
