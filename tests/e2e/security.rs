//! One test per attack (docs/security.md): each asserts the refusal and that other users
//! are unaffected. Against the standalone binary; the limits that span gateways are counted
//! on the bus and covered by the cluster suite's Redis bus contract.

use std::time::Duration;

use jam_shared::auth::{claims_for, JwtVerifier};
use jam_tests::scenario::{create, join, say};
use jam_tests::{procs, token, Client, SECRET};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn token_for(sub: &str, ttl_secs: i64) -> String {
    JwtVerifier::new(SECRET).sign(&claims_for(sub, sub, None, ttl_secs))
}

/// The HTTP status of a WebSocket handshake with these headers (101 when it upgrades).
async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn cookie_auth_is_refused_from_foreign_origins() {
    let jam = procs::standalone(&[("JAM_ALLOWED_ORIGINS", "https://app.example")]).await;
    let url = jam.ws_url();
    let cookie = format!("access_token_cookie={}", token("alice", "Alice", None));
    let host = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let evil = upgrade_status(
        &url,
        &[("cookie", &cookie), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(evil, 403, "cross-site WebSocket hijacking");
    let ok = upgrade_status(
        &url,
        &[("cookie", &cookie), ("origin", "https://app.example")],
    )
    .await;
    assert_eq!(ok, 101);
    let own = format!("http://{host}");
    assert_eq!(
        upgrade_status(&url, &[("cookie", &cookie), ("origin", &own)]).await,
        101
    );
    // A token in the query is not sent by the browser on its own: no origin rule.
    let q = format!("{url}?token={}", token("alice", "Alice", None));
    assert_eq!(
        upgrade_status(&q, &[("origin", "https://evil.example")]).await,
        101
    );

    // REST: the cookie from a foreign origin is refused; CORS answers the allowed one only.
    let http = reqwest::Client::new();
    let r = http
        .get(jam.http("/api/sessions"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = http
        .get(jam.http("/api/sessions"))
        .header("cookie", &cookie)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
}

#[tokio::test]
async fn forged_internal_frames_change_nothing() {
    let jam = procs::standalone(&[]).await;
    let url = jam.ws_url();
    let mut alice = Client::connect(&url, &token("alice", "Alice", None)).await;
    let mut mallory = Client::connect(&url, &token("mallory", "Mallory", None)).await;
    let sid = create(&mut alice, json!({"name": "mine"})).await;
    // A forged Disconnect (the gateway's internal command) for alice's session.
    let r = mallory
        .request(json!({"type": "disconnect", "sessionId": sid, "userId": "alice"}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST", "{r}");
    // Fields only the server sets are ignored: tenant, user, hash, connection.
    let r = mallory
        .request(json!({"type": "create_session", "name": "x", "passwordHash": "$argon2id$v=19$m=4194304,t=100,p=1$c2FsdA$aGFzaA", "tenant": "acme", "userId": "alice", "conn": "c1"}))
        .await;
    assert_eq!(r["type"], "session_created", "{r}");
    assert_eq!(r["session"]["hostId"], "mallory");
    assert_eq!(r["session"]["isPrivate"], false, "no password was set");
    // alice is still there and online, her session untouched.
    say(&mut alice, &sid, "still here").await;
    let users = alice
        .request(json!({"type": "get_active_users", "sessionId": sid}))
        .await;
    assert_eq!(users["count"], 1, "{users}");
}

#[tokio::test]
async fn a_token_expiring_on_a_live_socket_is_warned_then_closed_unless_refreshed() {
    let jam = procs::standalone(&[("JAM_TOKEN_EXPIRY_WARNING_SECS", "2")]).await;
    let url = jam.ws_url();
    // Short tokens: 4 s (the verifier allows 5 s of leeway at connect, none on the socket).
    let mut short = Client::connect(&url, &token_for("alice", 4)).await;
    let warn = short.recv_type("token_expiring").await;
    assert!(warn["expiresAt"].as_i64().is_some(), "{warn}");
    assert_eq!(short.closed(Duration::from_secs(6)).await, Some(4001));

    let mut kept = Client::connect(&url, &token_for("bob", 4)).await;
    kept.recv_type("token_expiring").await;
    // Someone else's token is refused and changes nothing.
    let r = kept
        .request(json!({"type": "refresh_token", "token": token_for("carol", 3600)}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    let r = kept
        .request(json!({"type": "refresh_token", "token": token_for("bob", 3600)}))
        .await;
    assert_eq!(r["type"], "token_refreshed", "{r}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pong = kept.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "alive past the first token's exp");
}

#[tokio::test]
async fn limits_refuse_the_excess_and_spare_everyone_else() {
    let jam = procs::standalone(&[
        ("JAM_MAX_SESSIONS_PER_HOUR", "3"),
        ("JAM_MAX_ROOMS_PER_CONNECTION", "4"),
        ("JAM_MAX_CONNECTIONS_PER_USER", "2"),
        ("JAM_DM_RATE_PER_SEC", "1"),
    ])
    .await;
    let url = jam.ws_url();
    let mut alice = Client::connect(&url, &token("alice", "Alice", None)).await;
    for i in 0..3 {
        create(&mut alice, json!({"name": format!("s{i}")})).await;
    }
    // The 4th session this hour.
    let r = alice
        .request(json!({"type": "create_session", "name": "one too many"}))
        .await;
    assert_eq!(r["code"], "LIMIT_EXCEEDED", "{r}");
    assert!(r["ref"].is_string());
    let mut bob = Client::connect(&url, &token("bob", "Bob", None)).await;
    let bobs = create(&mut bob, json!({"name": "bob's"})).await;

    // Rooms per connection: alice is in 3; a 4th is fine, a 5th is not.
    join(&mut alice, &bobs, None).await;
    let mut carol = Client::connect(&url, &token("carol", "Carol", None)).await;
    let carols = create(&mut carol, json!({"name": "carol's"})).await;
    let r = join(&mut alice, &carols, None).await;
    assert_eq!(r["code"], "LIMIT_EXCEEDED", "{r}");
    // Joining a room she is in again is not one more.
    assert_eq!(
        join(&mut alice, &bobs, None).await["type"],
        "session_update"
    );

    // Connections per user (this gateway): the 3rd is told why and closed.
    let _second = Client::connect(&url, &token("alice", "Alice", None)).await;
    let mut third = Client::raw(&format!("{url}?token={}", token("alice", "Alice", None))).await;
    assert_eq!(third.recv().await["code"], "LIMIT_EXCEEDED");
    assert_eq!(third.closed(Duration::from_secs(5)).await, Some(4009));
    Client::connect(&url, &token("dave", "Dave", None)).await;

    // DMs per second: a burst of 2 passes, the rest is refused with its ref.
    let mut refused = 0;
    for i in 0..6 {
        let r = alice
            .request(
                json!({"type": "direct_message", "receiverId": "bob", "content": format!("dm{i}")}),
            )
            .await;
        if r["code"] == "RATE_LIMITED" {
            refused += 1;
        }
    }
    assert!(refused >= 3, "{refused} of 6 refused");
    say(&mut bob, &bobs, "bob is unaffected").await;
}

#[tokio::test]
async fn a_flood_is_closed_and_rest_is_limited_per_token() {
    let jam = procs::standalone(&[
        ("JAM_RATE_LIMIT_PER_SEC", "5"),
        ("JAM_RATE_LIMIT_STRIKES", "20"),
        ("JAM_REST_RATE_PER_SEC", "2"),
        ("JAM_MAX_BODY_BYTES", "4096"),
    ])
    .await;
    let url = jam.ws_url();
    let mut flood = Client::connect(&url, &token("mallory", "Mallory", None)).await;
    let mut calm = Client::connect(&url, &token("alice", "Alice", None)).await;
    for i in 0..200 {
        if !flood.try_send(json!({"type": "ping", "ref": i})).await {
            break;
        }
    }
    assert_eq!(flood.closed(Duration::from_secs(5)).await, Some(4029));
    assert_eq!(calm.request(json!({"type": "ping"})).await["type"], "pong");

    let http = reqwest::Client::new();
    let alice = token("alice", "Alice", None);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = http
            .get(jam.http("/api/sessions"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let bob = token("bob", "Bob", None);
    let r = http
        .get(jam.http("/api/sessions"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "another token has its own budget");
    let big = json!({"name": "x".repeat(10_000)});
    let r = http
        .post(jam.http("/api/sessions"))
        .bearer_auth(token("carol", "Carol", None))
        .json(&big)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 413, "{:?}", r.text().await);
}

#[tokio::test]
async fn another_tenants_session_is_not_found_at_every_entry_point() {
    let jam = procs::standalone(&[]).await;
    let url = jam.ws_url();
    let mut ann = Client::connect(&url, &token("ann", "Ann", Some("acme"))).await;
    let sid = create(&mut ann, json!({"name": "acme only"})).await;
    say(&mut ann, &sid, "secret").await;
    let mut ben = Client::connect(&url, &token("ben", "Ben", Some("globex"))).await;
    let frames: Vec<Value> = vec![
        json!({"type": "join_session", "sessionId": sid}),
        json!({"type": "leave_session", "sessionId": sid}),
        json!({"type": "end_session", "sessionId": sid}),
        json!({"type": "send_message", "sessionId": sid, "message": "hi"}),
        json!({"type": "get_active_users", "sessionId": sid}),
        json!({"type": "typing", "sessionId": sid, "isTyping": true}),
        json!({"type": "load_history", "sessionId": sid}),
        json!({"type": "playback_state", "sessionId": sid, "trackUri": "spotify:track:x", "position": 0, "isPlaying": true}),
        json!({"type": "playback_report", "sessionId": sid, "trackUri": "spotify:track:x", "position": 0, "isPlaying": true}),
        json!({"type": "track_change", "sessionId": sid, "trackUri": "spotify:track:x"}),
        json!({"type": "request_sync", "sessionId": sid}),
        json!({"type": "set_offset", "sessionId": sid, "offsetMs": 10}),
        json!({"type": "add_track", "sessionId": sid, "track": {"uri": "spotify:track:x"}}),
        json!({"type": "remove_track", "sessionId": sid, "trackId": "t"}),
        json!({"type": "get_state", "sessionId": sid}),
    ];
    for f in frames {
        let r = ben.request(f.clone()).await;
        assert_eq!(r["code"], "SESSION_NOT_FOUND", "{f} -> {r}");
    }
    let http = reqwest::Client::new();
    let t = token("ben", "Ben", Some("globex"));
    let calls = [
        http.post(jam.http(&format!("/api/sessions/{sid}/join"))),
        http.get(jam.http(&format!("/api/sessions/{sid}/messages"))),
        http.get(jam.http(&format!("/api/sessions/{sid}/state"))),
        http.patch(jam.http(&format!("/api/sessions/{sid}/offset")))
            .json(&json!({"offsetMs": 5})),
        http.delete(jam.http(&format!("/api/sessions/{sid}"))),
    ];
    for c in calls {
        let r = c.bearer_auth(&t).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "SESSION_NOT_FOUND");
    }
    // Nothing changed for ann.
    let hist = ann
        .request(json!({"type": "load_history", "sessionId": sid}))
        .await;
    assert_eq!(jam_tests::scenario::history_texts(&hist), ["secret"]);
    assert!(
        ann.none_of_type("user_typing", Duration::from_millis(300))
            .await
    );
}

#[tokio::test]
async fn connections_per_peer_ip_when_configured() {
    let jam = procs::standalone(&[("JAM_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let url = jam.ws_url();
    let a = Client::connect(&url, &token("a", "A", None)).await;
    let _b = Client::connect(&url, &token("b", "B", None)).await;
    let q = format!("{url}?token={}", token("c", "C", None));
    assert_eq!(upgrade_status(&q, &[]).await, 429);
    drop(a);
    // The slot comes back when the connection has gone.
    let mut status = 0;
    for _ in 0..50 {
        status = upgrade_status(&q, &[]).await;
        if status == 101 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 101);
}

/// Read until the server closes the connection; false when it stayed open until `deadline`.
async fn closed_by(s: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a response, read past
        }
    }
}

#[tokio::test]
async fn a_request_head_that_never_comes_closes_its_connection() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    let jam = procs::standalone(&[("JAM_HTTP_HEAD_TIMEOUT_MS", "500")]).await;
    let addr = jam.addr.clone();
    let opened = Instant::now();
    // Slowloris: nothing at all; half a head; a whole request, then nothing more on the
    // kept-alive connection.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: jam\r\n")
        .await
        .unwrap();
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: jam\r\n\r\n")
        .await
        .unwrap();
    // A WebSocket as idle as they are stays open: it left HTTP at its upgrade.
    let mut ws = Client::connect(&jam.ws_url(), &token("idle", "Idle", None)).await;
    // Still open well before the deadline, closed well after it.
    let early = opened + Duration::from_millis(250);
    let late = opened + Duration::from_secs(10);
    for (what, s) in [
        ("no bytes", &mut silent),
        ("half a head", &mut half),
        ("idle after a response", &mut kept),
    ] {
        assert!(
            !closed_by(s, early).await,
            "{what}: closed before its deadline"
        );
    }
    for (what, s) in [
        ("no bytes", &mut silent),
        ("half a head", &mut half),
        ("idle after a response", &mut kept),
    ] {
        assert!(closed_by(s, late).await, "{what}: still open after 10 s");
    }
    // The WebSocket, idle for more than twice the deadline, still answers.
    tokio::time::sleep_until(opened + Duration::from_millis(1200)).await;
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    // And a new request is served as before.
    let health = reqwest::get(jam.http("/health")).await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test]
async fn a_request_body_sent_too_slowly_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    let jam = procs::standalone(&[
        ("JAM_HTTP_REQUEST_TIMEOUT_MS", "500"),
        ("JAM_API_KEY", "backend-key"),
    ])
    .await;
    let addr = jam.addr.clone();
    let sent = Instant::now();
    // The head in full, then a tenth of the body it announced.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = "POST /api/publish HTTP/1.1\r\nHost: jam\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"target\":";
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let took = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(400),
        "answered early ({took:?})"
    );
    // A request that sends its body in time is served as before.
    let ok = reqwest::Client::new()
        .post(jam.http("/api/publish"))
        .header("x-api-key", "backend-key")
        .json(&json!({"target": {"userId": "nobody"}, "event": "ping", "data": {}}))
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
}
