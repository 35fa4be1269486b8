//! The sync engine end to end over real Redis and PostgreSQL: host authority, track
//! changes, seeks, offsets over REST, the queue, and restart-safe timers.

use std::time::{Duration, Instant};

use jam_tests::cluster::Cluster;
use jam_tests::scenario::{create, join};
use jam_tests::services::{PrivateRedis, TestDb};
use jam_tests::{bearer, procs, token, Client};
use serde_json::{json, Value};

fn sync_cmd(action: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["type"] == "sync_command" && v["action"] == action
}

#[tokio::test]
async fn host_changes_reach_everyone_and_drift_is_corrected() {
    let mut c = Cluster::start(&[], &[]).await;
    let (a, b) = (&c.a, &c.b);
    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let mut carol = Client::connect(&a.ws_url(), &token("carol", "Carol", None)).await;
    let sid = create(&mut alice, json!({"name": "sync"})).await;
    join(&mut bob, &sid, None).await;
    join(&mut carol, &sid, None).await;

    // Only the host drives playback.
    let r = bob.request(json!({"type": "playback_state", "sessionId": sid, "trackUri": "t:1", "position": 0, "isPlaying": true})).await;
    assert_eq!(r["code"], "FORBIDDEN");
    let r = bob
        .request(json!({"type": "track_change", "sessionId": sid, "trackUri": "t:9"}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");
    let r = alice.request(json!({"type": "playback_state", "sessionId": sid, "trackUri": "t:1", "position": "x", "isPlaying": true})).await;
    assert_eq!(r["code"], "BAD_REQUEST");

    // A track change reaches every participant as switch_track, not the host.
    alice.send(json!({"type": "track_change", "sessionId": sid, "track": {"uri": "t:2", "name": "Two", "artist": "A", "durationMs": 200000}})).await;
    for c in [&mut bob, &mut carol] {
        let cmd = c.recv_where("switch_track", sync_cmd("switch_track")).await;
        assert_eq!(cmd["trackUri"], "t:2");
        assert!(cmd["position"].as_f64().unwrap() < 1000.0);
        assert!(cmd["timestamp"].as_i64().unwrap() > 0);
        assert_eq!(c.recv_type("track_change").await["track"]["name"], "Two");
    }
    assert!(
        alice
            .none_of_type("sync_command", Duration::from_millis(300))
            .await
    );

    // The host seeks to 60 s: everyone is told.
    alice.send(json!({"type": "playback_state", "sessionId": sid, "trackUri": "t:2", "position": 60000, "isPlaying": true})).await;
    let t_host = Instant::now();
    let seek = bob.recv_where("host seek", sync_cmd("seek")).await;
    assert!(
        (seek["position"].as_f64().unwrap() - 60000.0).abs() < 1000.0,
        "{seek}"
    );
    carol.recv_where("host seek", sync_cmd("seek")).await;

    // A participant 3 s behind gets a seek to where the host is.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let host_now = 60000.0 + t_host.elapsed().as_millis() as f64;
    bob.send(json!({"type": "playback_report", "sessionId": sid, "trackUri": "t:2", "position": host_now - 3000.0, "isPlaying": true})).await;
    let cmd = bob.recv_where("catch-up seek", sync_cmd("seek")).await;
    let pos = cmd["position"].as_f64().unwrap();
    assert!(
        (pos - host_now).abs() < 500.0,
        "seek to {pos}, host near {host_now}"
    );
    let status = bob.recv_type("sync_status").await;
    assert!(status["drift"].as_f64().unwrap() < -2500.0, "{status}");
    assert_eq!(status["quality"], "poor");

    // A participant in sync gets only a status.
    let host_now = 60000.0 + t_host.elapsed().as_millis() as f64;
    carol.send(json!({"type": "playback_report", "sessionId": sid, "trackUri": "t:2", "position": host_now, "isPlaying": true})).await;
    let status = carol.recv_type("sync_status").await;
    assert!(status["drift"].as_f64().unwrap().abs() < 300.0, "{status}");
    assert!(
        carol
            .none_of_type("sync_command", Duration::from_millis(300))
            .await
    );

    // An offset set over REST changes the next command at once.
    let http = reqwest::Client::new();
    let r = http
        .patch(a.http(&format!("/api/sessions/{sid}/offset")))
        .header("authorization", bearer("carol", "Carol"))
        .json(&json!({"offsetMs": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["offsetMs"], 5000.0);
    let cmd = carol.recv_where("offset seek", sync_cmd("seek")).await;
    let host_now = 60000.0 + t_host.elapsed().as_millis() as f64;
    let pos = cmd["position"].as_f64().unwrap();
    assert!(
        (pos - (host_now + 5000.0)).abs() < 500.0,
        "seek to {pos}, expected near {}",
        host_now + 5000.0
    );
    // Over WebSocket too; a request_sync always answers with the target.
    let r = carol
        .request(json!({"type": "set_offset", "sessionId": sid, "offsetMs": 0}))
        .await;
    assert_eq!(r["type"], "offset_updated");
    carol.clear();
    carol
        .send(json!({"type": "request_sync", "sessionId": sid}))
        .await;
    let cmd = carol.recv_where("requested sync", sync_cmd("seek")).await;
    let host_now = 60000.0 + t_host.elapsed().as_millis() as f64;
    assert!(
        (cmd["position"].as_f64().unwrap() - host_now).abs() < 500.0,
        "{cmd}"
    );

    // Pause goes to everyone.
    alice.send(json!({"type": "playback_state", "sessionId": sid, "trackUri": "t:2", "position": 70000, "isPlaying": false})).await;
    let p = bob.recv_where("pause", sync_cmd("pause")).await;
    assert_eq!(p["isPlaying"], false);

    // The queue: anyone adds, the adder or the host removes.
    let added = bob.request(json!({"type": "add_track", "sessionId": sid, "track": {"uri": "t:3", "name": "Three"}})).await;
    assert_eq!(added["type"], "track_added");
    let track_id = added["track"]["id"].as_str().unwrap().to_string();
    assert_eq!(alice.recv_type("track_added").await["track"]["uri"], "t:3");
    let r = carol
        .request(json!({"type": "remove_track", "sessionId": sid, "trackId": track_id}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");
    bob.request(json!({"type": "add_track", "sessionId": sid, "track": {"uri": "t:4"}}))
        .await;

    // Queue, current track and offsets survive a worker restart.
    c.worker.signal("KILL");
    assert!(c.worker.wait_exit(Duration::from_secs(5)).await);
    c.worker.restart().await;
    let r = http
        .get(b.http(&format!("/api/sessions/{sid}/state")))
        .header("authorization", bearer("carol", "Carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["host"]["userId"], "alice");
    assert_eq!(state["currentTrack"]["uri"], "t:2");
    assert_eq!(state["currentTrack"]["isPlaying"], false);
    assert_eq!(state["currentTrack"]["position"], 70000.0);
    let uris: Vec<&str> = state["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["t:3", "t:4"]);
    let r = alice
        .request(json!({"type": "remove_track", "sessionId": sid, "trackId": track_id}))
        .await;
    assert_eq!(r["type"], "track_removed");
    // A queued track played by the host leaves the queue.
    alice
        .send(json!({"type": "track_change", "sessionId": sid, "trackUri": "t:4"}))
        .await;
    let cmd = bob
        .recv_where("switch to t:4", |v| {
            v["type"] == "sync_command" && v["trackUri"] == "t:4"
        })
        .await;
    assert_eq!(cmd["action"], "switch_track");
    let joined = join(&mut bob, &sid, None).await;
    assert_eq!(joined["session"]["queue"], json!([]));
    assert_eq!(joined["session"]["currentTrack"]["uri"], "t:4");
}

#[tokio::test]
async fn session_expiry_fires_across_a_worker_restart() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    // 3 seconds.
    let cfg = [("JAM_SESSION_TIMEOUT_HOURS", "0.000833")];
    let mut worker = procs::worker(&redis.url(), &db.url, &cfg).await;
    let a = procs::gateway(&redis.url(), "gw-a", &[]).await;
    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&a.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "short"})).await;
    let joined = join(&mut bob, &sid, None).await;
    let expires = joined["session"]["expiresAt"].as_i64().unwrap();
    let created = joined["session"]["createdAt"].as_i64().unwrap();
    assert!((expires - created - 3000).abs() < 50, "{expires} {created}");
    // The worker dies before the deadline and is back after it.
    worker.signal("KILL");
    assert!(worker.wait_exit(Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    worker.restart().await;
    for c in [&mut alice, &mut bob] {
        let e = c.recv_type("session_ended").await;
        assert_eq!(e["reason"], "session_expired");
        assert_eq!(e["sessionId"], sid.as_str());
    }
    assert_eq!(
        join(&mut bob, &sid, None).await["code"],
        "SESSION_NOT_FOUND"
    );
}

#[tokio::test]
async fn host_grace_keeps_a_returning_host_and_ends_for_a_vanished_one() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let _worker = procs::worker(&redis.url(), &db.url, &[("JAM_HOST_GRACE_SECS", "2")]).await;
    let a = procs::gateway(&redis.url(), "gw-a", &[]).await;
    let b = procs::gateway(&redis.url(), "gw-b", &[]).await;
    let mut alice = Client::connect(&a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "grace"})).await;
    join(&mut bob, &sid, None).await;

    // The host drops and comes back (through the other gateway) inside the grace.
    drop(alice);
    assert_eq!(bob.recv_type("user_offline").await["userId"], "alice");
    let mut alice = Client::connect(&b.ws_url(), &token("alice", "Alice", None)).await;
    let back = join(&mut alice, &sid, None).await;
    assert_eq!(back["type"], "session_update");
    assert_eq!(back["session"]["hostId"], "alice");
    assert_eq!(bob.recv_type("user_online").await["userId"], "alice");
    assert!(
        bob.none_of_type("session_ended", Duration::from_secs(3))
            .await,
        "the returning host keeps the session"
    );

    // The host drops for good: the session ends after the grace.
    drop(alice);
    let t = Instant::now();
    let e = bob.recv_type("session_ended").await;
    assert_eq!(e["reason"], "host_disconnected");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test]
async fn rest_changes_are_announced_like_websocket_ones() {
    let c = Cluster::start(&[], &[]).await;
    let (a, b) = (&c.a, &c.b);
    let http = reqwest::Client::new();
    let bearer = |u: &str| format!("Bearer {}", token(u, &u.to_uppercase(), None));

    // Create over REST (201), then the host's socket joins.
    let r = http
        .post(a.http("/api/sessions"))
        .header("authorization", bearer("alice"))
        .json(&json!({"name": "rest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["role"], "host");
    let sid = created["sessionId"].as_str().unwrap().to_string();
    assert!(created["expiresAt"].as_i64().unwrap() > created["createdAt"].as_i64().unwrap());
    // spotify-sync's body: no name, a userId and userName that are not trusted.
    let r = http
        .post(a.http("/api/sessions"))
        .header("authorization", bearer("carol"))
        .json(&json!({"userId": "mallory", "userName": "Mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let seeded: Value = r.json().await.unwrap();
    assert_eq!(seeded["role"], "host");
    assert_eq!(seeded["session"]["name"], "CAROL's session");
    assert_eq!(seeded["session"]["hostId"], "carol", "{seeded}");
    let mut alice = Client::connect(&b.ws_url(), &token("alice", "ALICE", None)).await;
    assert_eq!(join(&mut alice, &sid, None).await["type"], "session_update");

    // Listed over REST.
    let r = http
        .get(b.http("/api/sessions"))
        .header("authorization", bearer("zed"))
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert!(list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == sid.as_str()));

    // A REST join reaches the room as user_joined.
    let r = http
        .post(a.http(&format!("/api/sessions/{sid}/join")))
        .header("authorization", bearer("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let joined: Value = r.json().await.unwrap();
    assert_eq!(
        (joined["role"].as_str(), joined["hostName"].as_str()),
        (Some("client"), Some("ALICE"))
    );
    let uj = alice.recv_type("user_joined").await;
    assert_eq!(uj["userId"], "bob");
    let r = http
        .post(a.http("/api/sessions/NOPE77/join"))
        .header("authorization", bearer("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "SESSION_NOT_FOUND"
    );

    // DELETE: host only; the room hears session_ended.
    let r = http
        .delete(a.http(&format!("/api/sessions/{sid}")))
        .header("authorization", bearer("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .delete(a.http(&format!("/api/sessions/{sid}")))
        .header("authorization", bearer("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let e = alice.recv_type("session_ended").await;
    assert_eq!(e["reason"], "host_ended");
    // Bad bodies and tokens.
    let r = http
        .post(a.http("/api/sessions"))
        .header("authorization", bearer("alice"))
        .json(&json!({"name": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(a.http("/api/sessions"))
        .header("authorization", "Bearer nope")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(a.http("/api/openapi.json")).send().await.unwrap();
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
}

/// jam-server-reference.md's `sync_request` / `sync_response`, relayed across gateways:
/// the member's question reaches the host with the member's real identity, the host's
/// answer reaches the asker; nobody else answers for the host.
#[tokio::test]
async fn sync_requests_reach_the_host_and_answers_the_asker() {
    let c = Cluster::start(&[], &[]).await;
    let mut alice = Client::connect(&c.a.ws_url(), &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(&c.b.ws_url(), &token("bob", "Bob", None)).await;
    let mut carol = Client::connect(&c.b.ws_url(), &token("carol", "Carol", None)).await;
    let sid = create(&mut alice, json!({"name": "relay"})).await;
    join(&mut bob, &sid, None).await;
    join(&mut carol, &sid, None).await;

    bob.send(
        json!({"type": "sync_request", "sessionId": sid, "userId": "mallory", "position": 41000}),
    )
    .await;
    let q = alice
        .recv_where("the relayed request", |v| v["type"] == "sync_request")
        .await;
    assert_eq!(
        (q["userId"].as_str(), q["userName"].as_str()),
        (Some("bob"), Some("Bob"))
    );
    assert_eq!(q["position"], 41000);
    // The asker also gets jam's own answer.
    bob.recv_type("sync_status").await;

    alice
        .send(json!({"type": "sync_response", "sessionId": sid, "toUserId": "bob", "position": 42000}))
        .await;
    let a = bob
        .recv_where("the host's answer", |v| v["type"] == "sync_response")
        .await;
    assert_eq!(
        (a["userId"].as_str(), a["position"].as_i64()),
        (Some("alice"), Some(42000))
    );
    assert!(
        carol
            .none_of_type("sync_response", Duration::from_millis(300))
            .await,
        "an answer to bob reaches bob only"
    );
    assert!(
        carol
            .none_of_type("sync_request", Duration::from_millis(100))
            .await
    );

    // Only the host answers.
    let r = bob
        .request(json!({"type": "sync_response", "sessionId": sid, "position": 1}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    assert!(
        alice
            .none_of_type("sync_response", Duration::from_millis(300))
            .await
    );
}
