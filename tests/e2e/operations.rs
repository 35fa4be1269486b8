//! Running jam for real: metrics move by the right amounts, SIGTERM drains without losing
//! anything acknowledged, readiness follows Redis.

use std::time::{Duration, Instant};

use jam_tests::metrics::{scrape, sum};
use jam_tests::scenario::{create, history_texts, join, say};
use jam_tests::services::{PrivateRedis, TcpGate, TestDb};
use jam_tests::{procs, token, Client};
use serde_json::json;

#[tokio::test]
async fn metrics_count_what_happened() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let worker = procs::worker(&redis.url(), &db.url, &[]).await;
    let gw = procs::gateway(&redis.url(), "gw-m", &[]).await;
    let g0 = scrape(&gw.http("/metrics")).await;
    let w0 = scrape(&worker.http("/metrics")).await;

    let mut alice = Client::connect(&gw.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&gw.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "metered"})).await;
    join(&mut bob, &sid, None).await;
    for i in 0..3 {
        say(&mut alice, &sid, &format!("m{i}")).await;
    }
    for _ in 0..3 {
        bob.recv_type("new_message").await;
    }
    alice.send_text("{broken".into()).await;
    assert_eq!(alice.recv_type("error").await["code"], "BAD_REQUEST");

    let g1 = scrape(&gw.http("/metrics")).await;
    let w1 = scrape(&worker.http("/metrics")).await;
    let d = |a: &str, b: &str, n: &str, l: &[(&str, &str)]| sum(b, n, l) - sum(a, n, l);
    assert_eq!(d(&g0, &g1, "jam_connections_opened_total", &[]), 2.0);
    assert_eq!(sum(&g1, "jam_connections_open", &[]), 2.0);
    assert_eq!(
        d(&g0, &g1, "jam_frames_in_total", &[("type", "send_message")]),
        3.0
    );
    assert_eq!(
        d(&g0, &g1, "jam_frames_in_total", &[("type", "join_session")]),
        1.0
    );
    assert_eq!(
        d(&g0, &g1, "jam_errors_total", &[("code", "BAD_REQUEST")]),
        1.0
    );
    // 3 messages to 2 members.
    assert_eq!(
        d(&g0, &g1, "jam_frames_out_total", &[("type", "new_message")]),
        6.0
    );
    assert!(d(&g0, &g1, "jam_bytes_out_total", &[]) > 0.0);
    assert!(d(&g0, &g1, "jam_delivery_latency_seconds_count", &[]) >= 5.0);
    // One room plus two user channels.
    assert_eq!(sum(&g1, "jam_room_subscriptions", &[]), 3.0);
    assert!(g1.contains("jam_delivery_latency_seconds_bucket"));

    assert_eq!(
        d(&w0, &w1, "jam_commands_total", &[("type", "send_message")]),
        3.0
    );
    assert_eq!(
        d(
            &w0,
            &w1,
            "jam_commands_total",
            &[("type", "create_session")]
        ),
        1.0
    );
    assert_eq!(sum(&w1, "jam_sessions_active", &[]), 1.0);
    assert!(
        d(
            &w0,
            &w1,
            "jam_pg_query_duration_seconds_count",
            &[("op", "commit")]
        ) >= 3.0
    );
    assert!(d(&w0, &w1, "jam_command_lag_seconds_count", &[]) >= 5.0);
    assert!(d(&w0, &w1, "jam_events_published_total", &[]) >= 5.0);

    drop(alice);
    drop(bob);
    // Both conditions, each from its own scrape's view: one render reads the counters before
    // the gauges, so a connection that ends during it can show in the gauge and not yet in
    // the counter (a series created meanwhile is missing from that render).
    let t = Instant::now();
    loop {
        let g2 = scrape(&gw.http("/metrics")).await;
        let closed = d(
            &g0,
            &g2,
            "jam_connections_closed_total",
            &[("reason", "client")],
        );
        let open = sum(&g2, "jam_connections_open", &[]);
        if open == 0.0 && closed >= 2.0 {
            assert_eq!(closed, 2.0);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "connections never counted closed: open {open}, closed by the client {closed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_a_gateway_without_losing_acknowledged_messages() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let _worker = procs::worker(&redis.url(), &db.url, &[]).await;
    let mut a = procs::gateway(&redis.url(), "gw-a", &[("JAM_DRAIN_GRACE_SECS", "5")]).await;
    let b = procs::gateway(&redis.url(), "gw-b", &[]).await;
    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "drain"})).await;
    join(&mut bob, &sid, None).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let text = format!("before drain {i}");
        say(&mut alice, &sid, &text).await;
        acked.push(text);
    }

    // Watch /ready while the gateway drains.
    let ready_url = a.http("/ready");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut first = Some(first_tx);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            match reqwest::get(&ready_url).await {
                Ok(r) => {
                    seen.push(Some(r.status().as_u16()));
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                }
                Err(_) => {
                    seen.push(None);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    // SIGTERM once the watcher has seen the gateway ready.
    tokio::time::timeout(Duration::from_secs(5), first_rx)
        .await
        .unwrap()
        .unwrap();
    a.signal("TERM");
    assert_eq!(
        alice.closed(Duration::from_secs(5)).await,
        Some(1012),
        "service restart close code"
    );
    assert!(
        a.wait_exit(Duration::from_secs(10)).await,
        "the gateway exits within its grace"
    );
    let seen = watcher.await.unwrap();
    let first_503 = seen
        .iter()
        .position(|s| *s == Some(503))
        .expect("/ready turned 503");
    assert!(seen[..first_503].iter().all(|s| *s == Some(200)));
    assert_eq!(
        seen.last(),
        Some(&None),
        "then the listener closed: {seen:?}"
    );

    // alice reconnects to the other gateway and finds every acknowledged message.
    let mut alice = Client::connect(&b.ws_url(), &token("alice", "Alice", None)).await;
    let back = join(&mut alice, &sid, None).await;
    assert_eq!(back["type"], "session_update", "{back}");
    let hist = alice.recv_type("message_history").await;
    assert_eq!(history_texts(&hist), acked);
    say(&mut alice, &sid, "after drain").await;
    let m = bob
        .recv_where("post-drain message", |v| {
            v["type"] == "new_message" && v["message"] == "after drain"
        })
        .await;
    assert_eq!(m["userId"], "alice");
}

async fn status(url: &str) -> Option<u16> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    c.get(url).send().await.ok().map(|r| r.status().as_u16())
}

async fn wait_status(url: &str, want: u16, within: Duration) {
    let t = Instant::now();
    loop {
        let s = status(url).await;
        if s == Some(want) {
            return;
        }
        assert!(t.elapsed() < within, "{url} stayed {s:?}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readiness_follows_redis_without_a_restart() {
    let mut redis = PrivateRedis::start();
    let db = TestDb::create().await;
    // Gateways judged dead after 3 s of silence: a worker that stopped listening to the
    // heartbeats after the reconnect would drop the gateway's members within the test.
    let dead_after = [("JAM_GATEWAY_DEAD_AFTER_MS", "3000")];
    let worker = procs::worker(&redis.url(), &db.url, &dead_after).await;
    let gw = procs::gateway(&redis.url(), "gw-r", &[("JAM_HEARTBEAT_MS", "500")]).await;
    wait_status(&gw.http("/ready"), 200, Duration::from_secs(5)).await;
    wait_status(&worker.http("/ready"), 200, Duration::from_secs(5)).await;

    // A client connected through the outage.
    let mut early = Client::connect(&gw.ws_url(), &token("early", "Early", None)).await;
    redis.stop();
    wait_status(&gw.http("/ready"), 503, Duration::from_secs(15)).await;
    wait_status(&worker.http("/ready"), 503, Duration::from_secs(15)).await;
    assert_eq!(
        status(&gw.http("/health")).await,
        Some(200),
        "alive while not ready"
    );

    redis.restart();
    wait_status(&gw.http("/ready"), 200, Duration::from_secs(30)).await;
    wait_status(&worker.http("/ready"), 200, Duration::from_secs(30)).await;
    // It may have missed events: it is asked to reconnect, and gets fresh snapshots then.
    assert_eq!(early.closed(Duration::from_secs(15)).await, Some(1012));
    // And it works again end to end (streams, groups and subscriptions came back).
    let t = Instant::now();
    let mut alice = Client::connect(&gw.ws_url(), &token("alice", "Alice", None)).await;
    let sid = loop {
        let r = alice
            .request(json!({"type": "create_session", "name": "after outage"}))
            .await;
        if r["type"] == "session_created" {
            break r["session"]["id"].as_str().expect("session id").to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut bob = Client::connect(&gw.ws_url(), &token("bob", "Bob", None)).await;
    let joined = bob
        .request(json!({"type": "join_session", "sessionId": sid}))
        .await;
    assert_eq!(joined["type"], "session_update", "{joined}");
    // Heartbeats still reach the worker (its subscription was made again): after twice
    // the dead-after time, bob is still in the session and his message reaches alice.
    assert!(
        alice
            .none_of_type("user_left", Duration::from_secs(6))
            .await,
        "the worker judged the gateway dead after the reconnect"
    );
    let sent = bob
        .request(json!({"type": "send_message", "sessionId": sid, "message": "still here"}))
        .await;
    assert_eq!(sent["type"], "new_message", "{sent}");
    let seen = alice
        .recv_where("bob's message", |f| f["type"] == "new_message")
        .await;
    assert_eq!(seen["message"], "still here", "{seen}");
}

/// SIGTERM while Redis is away: the worker abandons the reads Redis never answers (what
/// they delivered stays pending for the next owner), gives up releasing its leases after a
/// short wait (they expire) and exits within a bound. It used to wait out each read's 30 s
/// slack and each release's command timeout: 40 s.
#[tokio::test]
async fn a_worker_stops_within_a_bound_while_redis_is_away() {
    let mut redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let mut worker = procs::worker(&redis.url(), &db.url, &[]).await;
    wait_status(&worker.http("/ready"), 200, Duration::from_secs(10)).await;
    redis.stop();
    wait_status(&worker.http("/ready"), 503, Duration::from_secs(15)).await;
    let t = Instant::now();
    worker.signal("TERM");
    assert!(
        worker.wait_exit(Duration::from_secs(12)).await,
        "the worker did not exit within 12 s of SIGTERM with Redis away"
    );
    eprintln!("worker exited {:?} after SIGTERM", t.elapsed());
}

/// A worker whose consumer group vanishes while it takes its partitions over (a Redis
/// that restarted empty between the group's creation and the takeover of what was
/// pending) creates the group again and serves every partition once the group stays.
#[tokio::test]
async fn a_group_lost_during_the_takeover_is_created_again() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let streams = (0..16).map(jam_shared::keys::command_stream).collect();
    let destroyer = redis.keep_destroying_groups(
        jam_shared::keys::WORKER_GROUP,
        streams,
        Duration::from_secs(3),
    );
    let worker = procs::worker(&redis.url(), &db.url, &[("JAM_PARTITIONS", "16")]).await;
    let gw = procs::gateway(&redis.url(), "gw-g", &[]).await;
    destroyer.join().unwrap();
    wait_status(&worker.http("/ready"), 200, Duration::from_secs(10)).await;
    // A session on every partition is created: none of the partitions is stuck retrying
    // a takeover from a group that no longer exists.
    // Session ids are random: create until each partition holds one (a connection may be
    // in 20 rooms at most, so 16 per user).
    let mut served = std::collections::BTreeSet::new();
    for u in 0..20 {
        let name = format!("u{u}");
        let mut c = Client::connect(&gw.ws_url(), &token(&name, &name, None)).await;
        for i in 0..16 {
            let sid = create(&mut c, json!({"name": format!("s{i}")})).await;
            served.insert(jam_shared::keys::partition_of(&sid, 16));
        }
        if served.len() == 16 {
            break;
        }
    }
    assert_eq!(served.len(), 16, "sessions on every partition: {served:?}");
}

/// A client within its frame rate whose frames wait behind a stall (Redis paused, so the
/// gateway's XADD of the first one waits) is not refused afterwards: frames are counted
/// when they arrive, not when the stall lets the connection handle them.
#[tokio::test]
async fn frames_held_up_by_a_stall_are_not_rate_limited() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let _worker = procs::worker(&redis.url(), &db.url, &[]).await;
    let limit = [
        ("JAM_RATE_LIMIT_PER_SEC", "2"),
        ("JAM_RATE_LIMIT_STRIKES", "1000"),
    ];
    let gw = procs::gateway(&redis.url(), "gw-s", &limit).await;
    let mut alice = Client::connect(&gw.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "stalled"})).await;
    // A full bucket again: 4 frames (twice the rate) at once are allowed, not more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.pause(4000);
    // 1.8 frames a second, under the limit: 7 of them arrive during the pause. Counted
    // when handled after it, they would be a burst of 7 against a bucket of 4.
    let n = 9;
    for i in 0..n {
        let frame = json!({"type": "send_message", "sessionId": sid, "message": format!("m{i}"), "ref": format!("m{i}")});
        alice.send(frame).await;
        tokio::time::sleep(Duration::from_millis(555)).await;
    }
    for i in 0..n {
        let r = format!("m{i}");
        let reply = alice
            .recv_where(&format!("reply to {r}"), |f| f["ref"] == r.as_str())
            .await;
        assert_eq!(reply["type"], "new_message", "{reply}");
    }
}

/// A worker started while PostgreSQL is unreachable waits for it instead of exiting, and
/// applies commands as soon as it is there.
#[tokio::test]
async fn a_worker_started_before_postgres_waits_for_it() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let (pg, late_url) = gated(&db.url);
    let mut worker = procs::worker_starting(&redis.url(), &late_url, "w-late", &[]);
    let gw = procs::gateway(&redis.url(), "gw-a", &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.running(),
        "the worker waits for PostgreSQL, it does not exit"
    );
    assert_eq!(
        status(&gw.http("/ready")).await,
        Some(503),
        "no worker applies commands"
    );
    pg.open().await;
    let worker = worker.ready().await;
    worker.wait_path("/ready").await;
    wait_status(&gw.http("/ready"), 200, Duration::from_secs(10)).await;
    let mut alice = Client::connect(&gw.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "late"})).await;
    say(&mut alice, &sid, "made it").await;
}

/// `url` with its server behind a closed [`TcpGate`].
fn gated(url: &str) -> (TcpGate, String) {
    let (auth, rest) = url.split_once('@').unwrap();
    let (server, path) = rest.split_once('/').unwrap();
    let gate = TcpGate::closed(server);
    let url = format!("{auth}@127.0.0.1:{}/{path}", gate.port);
    (gate, url)
}

/// A worker and a gateway on a PostgreSQL behind a gate, and alice in a session where she
/// said "before".
struct GatedStack {
    redis: PrivateRedis,
    _db: TestDb,
    pg: TcpGate,
    pg_url: String,
    worker: jam_tests::procs::Proc,
    gw: jam_tests::procs::Proc,
    alice: Client,
    sid: String,
}

async fn gated_stack(worker_env: &[(&str, &str)]) -> GatedStack {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let (pg, pg_url) = gated(&db.url);
    pg.open().await;
    let worker = procs::worker(&redis.url(), &pg_url, worker_env).await;
    let gw = procs::gateway(&redis.url(), "gw-a", &[]).await;
    wait_status(&gw.http("/ready"), 200, Duration::from_secs(10)).await;
    let mut alice = Client::connect(&gw.ws_url(), &token("alice", "Alice", None)).await;
    let sid = create(&mut alice, json!({"name": "outage"})).await;
    say(&mut alice, &sid, "before").await;
    GatedStack {
        redis,
        _db: db,
        pg,
        pg_url,
        worker,
        gw,
        alice,
        sid,
    }
}

impl GatedStack {
    /// The texts of the session's stored history, oldest first.
    async fn history(&mut self) -> Vec<String> {
        let hist = self
            .alice
            .request(json!({"type": "load_history", "sessionId": self.sid}))
            .await;
        history_texts(&hist)
    }
}

/// Send `text` with `r` as its ref, without waiting for the answer.
async fn send_ref(s: &mut GatedStack, text: &str, r: &str) {
    let sid = s.sid.clone();
    s.alice
        .send(json!({"type": "send_message", "sessionId": sid, "message": text, "ref": r}))
        .await;
}

/// The acknowledgement of the message sent with ref `r` (its sender's `new_message`).
async fn acked(alice: &mut Client, r: &str) {
    let ack = alice
        .recv_where_within("the ack after the outage", Duration::from_secs(30), |f| {
            f["ref"] == r
        })
        .await;
    assert_eq!(ack["type"], "new_message", "{ack}");
}

/// PostgreSQL going away under a running worker: the gateways stop being ready (no
/// worker applies commands), a message sent meanwhile waits, and once PostgreSQL is back
/// it is committed and acknowledged: the outage is ridden out, nothing restarts.
#[tokio::test]
async fn a_postgres_outage_is_ridden_out_and_readiness_follows_it() {
    let mut s = gated_stack(&[("JAM_LEASE_TTL_MS", "2000")]).await;
    s.pg.cut();
    send_ref(&mut s, "during", "d").await;
    wait_status(&s.worker.http("/ready"), 503, Duration::from_secs(15)).await;
    wait_status(&s.gw.http("/ready"), 503, Duration::from_secs(15)).await;
    assert!(
        s.alice
            .try_recv_where(Duration::from_secs(1), |f| f["ref"] == "d")
            .await
            .is_none(),
        "not acknowledged while it cannot be stored"
    );

    s.pg.open().await;
    acked(&mut s.alice, "d").await;
    wait_status(&s.gw.http("/ready"), 200, Duration::from_secs(15)).await;
    assert!(s.worker.running(), "the worker rode it out");
    assert_eq!(s.history().await, ["before", "during"]);
}

/// SIGTERM while PostgreSQL is away and batches wait behind a commit that cannot finish:
/// the worker drops what it could not commit (it stays pending in the stream, none of it
/// acknowledged) and exits within a bound; the next worker applies it, once. The partition
/// used to wait for room in the committer's lane for as long as the outage lasted, so the
/// worker never stopped.
#[tokio::test]
async fn a_worker_stops_within_a_bound_while_postgres_is_away() {
    let mut s = gated_stack(&[]).await;
    s.pg.cut();
    // One batch each, the next sent once the worker has read the last: the committer
    // retries the first, the second waits in its queue (two in flight per partition), the
    // third holds the partition's reader, the fourth stays unread in the stream.
    let texts: Vec<String> = (0..4).map(|i| format!("during {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        send_ref(&mut s, text, &format!("d{i}")).await;
        if i < 3 {
            s.redis.wait_read(i + 1).await;
        }
    }
    let t = Instant::now();
    s.worker.signal("TERM");
    assert!(
        s.worker.wait_exit(Duration::from_secs(15)).await,
        "the worker did not exit within 15 s of SIGTERM with PostgreSQL away"
    );
    eprintln!("worker exited {:?} after SIGTERM", t.elapsed());
    assert!(
        s.alice
            .try_recv_where(Duration::from_millis(200), |f| f["type"] == "new_message")
            .await
            .is_none(),
        "nothing was acknowledged while it could not be stored"
    );

    s.pg.open().await;
    let _next = procs::worker(&s.redis.url(), &s.pg_url, &[]).await;
    for i in 0..texts.len() {
        acked(&mut s.alice, &format!("d{i}")).await;
    }
    let mut want = vec!["before".to_string()];
    want.extend(texts);
    assert_eq!(s.history().await, want);
}
