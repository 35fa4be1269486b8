//! Protocol scenarios that run unchanged against the standalone binary and against a
//! cluster of separate gateways and workers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{token, Client};

/// Create a session as `c`; returns its id.
pub async fn create(c: &mut Client, body: Value) -> String {
    let mut frame = json!({"type": "create_session"});
    for (k, v) in body.as_object().unwrap() {
        frame[k] = v.clone();
    }
    let r = c.request(frame).await;
    assert_eq!(r["type"], "session_created", "{r}");
    r["session"]["id"].as_str().unwrap().to_string()
}

pub async fn join(c: &mut Client, sid: &str, password: Option<&str>) -> Value {
    let mut f = json!({"type": "join_session", "sessionId": sid});
    if let Some(p) = password {
        f["password"] = json!(p);
    }
    c.request(f).await
}

pub async fn say(c: &mut Client, sid: &str, text: &str) -> Value {
    let r = c
        .request(json!({"type": "send_message", "sessionId": sid, "message": text}))
        .await;
    assert_eq!(r["type"], "new_message", "{r}");
    r
}

/// Sessions, joins, private passwords, chat with seq, leave, end: a walk through the
/// whole session protocol with clients spread over `url_a` and `url_b`.
pub async fn sessions_and_chat(url_a: &str, url_b: &str) {
    let mut alice = Client::connect(url_a, &token("alice", "Alice", None)).await;
    let mut bob = Client::connect(url_b, &token("bob", "Bob", None)).await;

    let sid = create(&mut alice, json!({"name": "Friday mix", "isPrivate": true, "password": "s3cret", "maxParticipants": 3})).await;
    assert_eq!(sid.len(), 6);

    let wrong = join(&mut bob, &sid, Some("nope")).await;
    assert_eq!(wrong["type"], "error");
    assert_eq!(wrong["code"], "INVALID_PASSWORD");
    let missing = join(&mut bob, "ZZZZZZ", None).await;
    assert_eq!(missing["code"], "SESSION_NOT_FOUND");
    // Not a member yet: chat is refused.
    let r = bob
        .request(json!({"type":"send_message","sessionId": sid, "message":"hi"}))
        .await;
    assert_eq!(r["code"], "NOT_IN_SESSION");

    let joined = join(&mut bob, &sid, Some("s3cret")).await;
    assert_eq!(joined["type"], "session_update", "{joined}");
    let session = &joined["session"];
    assert_eq!(session["participants"].as_array().unwrap().len(), 2);
    assert_eq!(session["hostId"], "alice");
    let text = joined.to_string();
    assert!(
        !text.contains("s3cret")
            && !text.contains("argon2")
            && !text.to_lowercase().contains("password\""),
        "{text}"
    );
    let hist = bob.recv_type("message_history").await;
    assert_eq!(hist["messages"], json!([]));
    let uj = alice.recv_type("user_joined").await;
    assert_eq!(uj["userId"], "bob");
    assert_eq!(uj["count"], 2);
    // The joiner gets no full-list broadcast echo, the host no snapshot.
    assert!(
        alice
            .none_of_type("session_update", Duration::from_millis(300))
            .await
    );

    // Joining twice is harmless.
    let again = join(&mut bob, &sid, Some("s3cret")).await;
    assert_eq!(again["type"], "session_update");
    assert_eq!(
        again["session"]["participants"].as_array().unwrap().len(),
        2
    );
    bob.recv_type("message_history").await;

    let m1 = say(&mut alice, &sid, "hello bob").await;
    let seen = bob
        .recv_where("alice's message", |v| {
            v["type"] == "new_message" && v["userId"] == "alice"
        })
        .await;
    assert_eq!(seen["message"], "hello bob");
    assert!(
        seen.get("ref").is_none(),
        "only the sender's copy carries the ref"
    );
    let m2 = say(&mut bob, &sid, "hi alice").await;
    let seen = alice
        .recv_where("bob's message", |v| {
            v["type"] == "new_message" && v["userId"] == "bob"
        })
        .await;
    assert_eq!(seen["seq"], m2["seq"]);
    assert!(m2["seq"].as_i64().unwrap() > m1["seq"].as_i64().unwrap());
    assert_eq!(m2["userName"], "Bob");

    // Validation.
    let r = alice
        .request(json!({"type":"send_message","sessionId": sid, "message": ""}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST");
    let r = alice
        .request(json!({"type":"send_message","sessionId": sid, "message": "x".repeat(2001)}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST");

    // Only the host ends a session.
    let r = bob
        .request(json!({"type":"end_session","sessionId": sid}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");

    // Full.
    let mut carol = Client::connect(url_a, &token("carol", "Carol", None)).await;
    let mut dave = Client::connect(url_b, &token("dave", "Dave", None)).await;
    assert_eq!(
        join(&mut carol, &sid, Some("s3cret")).await["type"],
        "session_update"
    );
    assert_eq!(
        join(&mut dave, &sid, Some("s3cret")).await["code"],
        "SESSION_FULL"
    );

    // Private sessions are not listed; public ones are.
    let pub_sid = create(&mut dave, json!({"name": "Open room"})).await;
    let list = alice.request(json!({"type": "get_sessions"})).await;
    assert_eq!(list["type"], "sessions_list");
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&pub_sid.as_str()) && !ids.contains(&sid.as_str()),
        "{list}"
    );

    // Leave: the others get a delta.
    let r = carol
        .request(json!({"type": "leave_session", "sessionId": sid}))
        .await;
    assert_eq!(r["type"], "left_session");
    let ul = alice
        .recv_where("carol left", |v| {
            v["type"] == "user_left" && v["userId"] == "carol"
        })
        .await;
    assert_eq!(ul["count"], 2);
    let r = carol
        .request(json!({"type":"send_message","sessionId": sid, "message":"still here?"}))
        .await;
    assert_eq!(r["code"], "NOT_IN_SESSION");

    // End: everyone hears it.
    let r = alice
        .request(json!({"type": "end_session", "sessionId": sid}))
        .await;
    assert_eq!(r["type"], "session_ended");
    assert_eq!(r["reason"], "host_ended");
    let e = bob.recv_type("session_ended").await;
    assert_eq!(e["sessionId"], sid.as_str());
    assert_eq!(
        join(&mut bob, &sid, Some("s3cret")).await["code"],
        "SESSION_NOT_FOUND"
    );

    // The last one out deletes the session.
    let r = dave
        .request(json!({"type": "leave_session", "sessionId": pub_sid}))
        .await;
    assert_eq!(r["type"], "left_session");
    assert_eq!(
        join(&mut alice, &pub_sid, None).await["code"],
        "SESSION_NOT_FOUND"
    );
}

/// Bad input gets its error, and the connection keeps working.
pub async fn bad_input(url: &str) {
    let mut c = Client::connect(url, &token("mallory", "Mallory", None)).await;
    c.send_text("{not json".into()).await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "BAD_REQUEST");
    alive(&mut c).await;

    let e = c.request(json!({"type": "launch_missiles"})).await;
    assert_eq!(e["code"], "BAD_REQUEST");
    assert!(e["message"].as_str().unwrap().contains("unknown type"));
    alive(&mut c).await;

    let e = c
        .request(json!({"type": "send_message", "sessionId": "ABCDEF"}))
        .await;
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c.request(json!({"sessionId": "ABCDEF"})).await;
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c
        .request(json!({"type": "disconnect", "sessionId": "ABCDEF"}))
        .await;
    assert_eq!(
        e["code"], "BAD_REQUEST",
        "internal actions are not for clients"
    );
    alive(&mut c).await;

    let big =
        json!({"type": "send_message", "sessionId": "ABCDEF", "message": "x".repeat(1 << 20)})
            .to_string();
    c.send_text(big).await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "BAD_REQUEST");
    assert!(e["message"].as_str().unwrap().contains("too large"));
    alive(&mut c).await;
    nul_characters(&mut c).await;

    // Tokens: expired, wrong key, garbage, none within the deadline.
    let jwt = jam_shared::auth::JwtVerifier::new(crate::SECRET);
    let expired = jwt.sign(&jam_shared::auth::claims_for("x", "X", None, -3600));
    let foreign = jam_shared::auth::JwtVerifier::new("another-key")
        .sign(&jam_shared::auth::claims_for("x", "X", None, 3600));
    for bad in [expired.as_str(), foreign.as_str(), "garbage"] {
        let mut c = Client::raw(&format!("{url}?token={bad}")).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "UNAUTHORIZED");
        assert_eq!(c.closed(Duration::from_secs(5)).await, Some(1008));
    }
    // First-frame authentication.
    let mut c = Client::raw(url).await;
    c.send(json!({"type": "authenticate", "token": token("frank", "Frank", None)}))
        .await;
    let a = c.recv().await;
    assert_eq!(a["type"], "authenticated");
    assert_eq!(a["userId"], "frank");
    let mut c = Client::raw(url).await;
    c.send(json!({"type": "authenticate", "token": expired}))
        .await;
    assert_eq!(c.recv().await["code"], "UNAUTHORIZED");
    assert_eq!(c.closed(Duration::from_secs(5)).await, Some(1008));
}

/// U+0000 in any text a client sends is refused with its error and stores nothing
/// (PostgreSQL's text and jsonb cannot hold it: a commit carrying one would fail on every
/// retry), while the six characters `\u0000` typed as text are kept as they are.
async fn nul_characters(c: &mut Client) {
    let sid = create(c, json!({"name": "nul"})).await;
    let before = say(c, &sid, "before").await["seq"].as_i64().unwrap();
    let refused = [
        json!({"type": "send_message", "sessionId": sid, "message": "a\u{0}b"}),
        json!({"type": "direct_message", "receiverId": "nobody", "content": "\u{0}"}),
        json!({"type": "create_session", "name": "x\u{0}"}),
        json!({"type": "add_track", "sessionId": sid, "track": {"uri": "spotify:track:1", "name": "t\u{0}"}}),
    ];
    for f in refused {
        let e = c.request(f.clone()).await;
        assert_eq!(e["code"], "BAD_REQUEST", "{f} -> {e}");
        assert!(e["message"].as_str().unwrap().contains("U+0000"), "{e}");
    }
    // The session's next event is this message: nothing above was stored, and its
    // partition commits on.
    let typed = "\\u0000 is how JSON writes it";
    let r = say(c, &sid, typed).await;
    let got = (r["seq"].as_i64(), r["message"].as_str());
    assert_eq!(got, (Some(before + 1), Some(typed)), "{r}");
}

/// Tenants never see each other's sessions.
pub async fn tenants(url_a: &str, url_b: &str) {
    let mut a = Client::connect(url_a, &token("ann", "Ann", Some("acme"))).await;
    let mut b = Client::connect(url_b, &token("ben", "Ben", Some("globex"))).await;
    let sid = create(&mut a, json!({"name": "acme only"})).await;
    let list = b.request(json!({"type": "get_sessions"})).await;
    assert!(!list.to_string().contains(&sid), "{list}");
    let list = a.request(json!({"type": "get_sessions"})).await;
    assert!(list.to_string().contains(&sid), "{list}");
    assert_eq!(join(&mut b, &sid, None).await["code"], "SESSION_NOT_FOUND");
    // Same user id in another tenant is another user.
    let mut a2 = Client::connect(url_b, &token("ann", "Other Ann", Some("globex"))).await;
    assert_eq!(join(&mut a2, &sid, None).await["code"], "SESSION_NOT_FOUND");
    let r = a2
        .request(json!({"type":"send_message","sessionId": sid, "message":"hi"}))
        .await;
    assert_eq!(r["code"], "SESSION_NOT_FOUND");
    lobby_pages(url_a, url_b).await;
}

/// A tenant's lobby in pages: public, active sessions only, newest first; each page from
/// the last session of the one before (its createdAt and id), every session once.
async fn lobby_pages(url_a: &str, url_b: &str) {
    let mut host = Client::connect(url_a, &token("lobby-host", "Host", Some("lobby"))).await;
    let mut guest = Client::connect(url_b, &token("lobby-guest", "Guest", Some("lobby"))).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create(&mut host, json!({"name": format!("open {i}")})).await);
    }
    let private = create(&mut host, json!({"name": "closed", "isPrivate": true})).await;
    let (mut seen, mut times): (Vec<String>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut page = guest
        .request(json!({"type": "get_sessions", "limit": 2}))
        .await;
    loop {
        let list = page["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"));
        assert!(list.len() <= 2, "{page}");
        seen.extend(list.iter().map(|s| s["id"].as_str().unwrap().to_string()));
        times.extend(list.iter().map(|s| s["createdAt"].as_i64().unwrap()));
        assert!(seen.len() <= made.len(), "the pages do not end: {seen:?}");
        if page["hasMore"] != true {
            break;
        }
        let last = list.last().unwrap();
        page = guest
            .request(json!({"type": "get_sessions", "limit": 2,
                "before": last["createdAt"], "beforeId": last["id"]}))
            .await;
    }
    assert!(!seen.contains(&private), "{seen:?}");
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    made.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, made, "every public session once: {seen:?}");
    let e = guest
        .request(json!({"type": "get_sessions", "limit": 101}))
        .await;
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");
}

async fn alive(c: &mut Client) {
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
}

/// The seqs of a `message_history` frame, in the order given.
pub fn history_seqs(hist: &Value) -> Vec<i64> {
    hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// The texts of a `message_history` frame, oldest first.
pub fn history_texts(hist: &Value) -> Vec<String> {
    hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect()
}

/// A room as a client keeps it by the protocol's rule: apply an event whose `seq` is the
/// next one, skip one already applied, and never accept a gap.
#[derive(Debug, Default)]
pub struct RoomView {
    pub seq: i64,
    pub texts: Vec<String>,
}

impl RoomView {
    /// Start from a join reply; a recovered one carries the missed events inside.
    pub fn rejoined(&mut self, reply: &Value) {
        assert_eq!(reply["type"], "session_update", "{reply}");
        if reply["recovered"] == true {
            for e in reply["missed"].as_array().unwrap() {
                self.apply(e);
            }
        }
        let now = reply["session"]["seq"].as_i64().unwrap();
        assert!(
            reply["recovered"] != true || self.seq == now,
            "after the missed events the room is at {now}, the client at {}",
            self.seq
        );
        self.seq = now;
    }

    /// Apply one room event; panics on a gap.
    pub fn apply(&mut self, f: &Value) {
        assert!(self.try_apply(f), "a gap before {f} (at {})", self.seq);
    }

    /// Apply one room event; false (and nothing applied) when events are missing before it.
    pub fn try_apply(&mut self, f: &Value) -> bool {
        let Some(seq) = f["seq"].as_i64().or_else(|| f["session"]["seq"].as_i64()) else {
            return true;
        };
        if seq <= self.seq {
            return true;
        }
        if seq != self.seq + 1 {
            return false;
        }
        self.seq = seq;
        if f["type"] == "new_message" {
            self.texts.push(f["message"].as_str().unwrap().to_string());
        }
        true
    }
}

/// A member whose socket drops in the middle of 100 chat messages rejoins through the
/// other gateway with the last `seq` it saw and ends with all 100, exactly once, in order.
pub async fn reconnect_recovery(url_a: &str, url_b: &str) {
    let mut alice = Client::connect(url_a, &token("rec-alice", "Alice", None)).await;
    let mut bob = Client::connect(url_a, &token("rec-bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "recovery"})).await;
    let mut view = RoomView::default();
    view.rejoined(&join(&mut bob, &sid, None).await);
    for i in 0..100 {
        say(&mut alice, &sid, &format!("m{i}")).await;
        if i == 30 {
            // bob reads what reached him so far, then his socket goes away.
            let until = format!("m{i}");
            loop {
                let f = bob.recv_type("new_message").await;
                view.apply(&f);
                if f["message"] == until.as_str() {
                    break;
                }
            }
            drop(bob);
            bob = Client::connect(url_b, &token("rec-bob", "Bob", None)).await;
        }
    }
    let since = view.seq;
    let r = bob
        .request(json!({"type": "join_session", "sessionId": sid, "sinceSeq": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    view.rejoined(&r);
    let want: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(view.texts, want);

    // Live events continue from there without a gap.
    say(&mut alice, &sid, "after").await;
    let f = bob.recv_where("after", |f| f["message"] == "after").await;
    view.apply(&f);
    assert_eq!(view.texts.last().unwrap(), "after");

    // A seq the room never had: a fresh snapshot and history instead.
    let r = bob
        .request(json!({"type": "join_session", "sessionId": sid, "sinceSeq": 1_000_000}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    assert!(r.get("missed").is_none());
    let hist = bob.recv_type("message_history").await;
    assert_eq!(history_texts(&hist).last().unwrap(), "after");
}

/// The API key the show scenario's servers run with (`JAM_API_KEY`).
pub const SHOW_API_KEY: &str = "show-backend-key";

/// show-chat-socketio.md on jam: the backend registers show 123 under its own id; fans join
/// it with `join_show {show_id: 123}` through either gateway, chat and type by `show_id`,
/// leave with `leave_show`; the room stays when empty; attendance records each check-in and
/// check-out and outlives the session; another tenant cannot see the show. `http_a` is
/// gateway A's base URL (`http://host:port`).
pub async fn shows_and_attendance(url_a: &str, url_b: &str, http_a: &str) {
    let http = reqwest::Client::new();
    let put = |body: Value| {
        http.put(format!("{http_a}/api/sessions/123"))
            .header("x-api-key", SHOW_API_KEY)
            .json(&body)
            .send()
    };
    let r = put(json!({"tenant": "venue", "name": "Friday show"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["session"]["id"], "123");
    assert_eq!(v["session"]["managed"], true);
    assert_eq!(v["session"]["hostId"], "", "nobody hosts a show's room");
    assert!(v["session"]["expiresAt"].is_null(), "{v}");
    let r = put(json!({"tenant": "venue", "name": "Friday show (late)"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "registering again updates");
    let wrong = http
        .put(format!("{http_a}/api/sessions/124"))
        .header("x-api-key", "nope")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let fan = |u: &str| token(u, &u.to_uppercase(), Some("venue"));
    let mut ann = Client::connect(url_a, &fan("ann")).await;
    let mut ben = Client::connect(url_b, &fan("ben")).await;
    let missing = ann
        .request(json!({"type": "join_show", "show_id": 999}))
        .await;
    assert_eq!(missing["code"], "SESSION_NOT_FOUND", "{missing}");
    assert_eq!(missing["message"], "Show not found");
    let joined = ann
        .request(json!({"type": "join_show", "show_id": 123}))
        .await;
    assert_eq!(joined["type"], "session_update", "{joined}");
    assert_eq!(joined["session"]["name"], "Friday show (late)");
    ann.recv_type("message_history").await;
    ann.recv_type("active_users").await;
    let joined = ben
        .request(json!({"type": "join_show", "show_id": "123"}))
        .await;
    assert_eq!(joined["type"], "session_update", "{joined}");
    ann.recv_where("ben joined", |f| {
        f["type"] == "user_joined" && f["userId"] == "ben"
    })
    .await;

    // The seed's own field names: show_id and is_typing.
    ben.send(json!({"type": "typing", "show_id": 123, "is_typing": true}))
        .await;
    ann.recv_where("ben typing", |f| {
        f["type"] == "user_typing" && f["isTyping"] == true
    })
    .await;
    let sent = ben
        .request(json!({"type": "send_message", "show_id": 123, "message": "what an opener"}))
        .await;
    assert_eq!(sent["type"], "new_message", "{sent}");
    ann.recv_where("ben's message", |f| {
        f["type"] == "new_message" && f["message"] == "what an opener"
    })
    .await;

    // Another tenant's fan does not find the show.
    let mut eve = Client::connect(url_b, &token("eve", "Eve", Some("other"))).await;
    let r = eve
        .request(json!({"type": "join_show", "show_id": 123}))
        .await;
    assert_eq!(r["message"], "Show not found", "{r}");

    // Both leave: the room stays, with its history.
    for c in [&mut ann, &mut ben] {
        let r = c
            .request(json!({"type": "leave_show", "show_id": 123}))
            .await;
        assert_eq!(r["type"], "left_session", "{r}");
    }
    let mut cy = Client::connect(url_a, &fan("cy")).await;
    let again = cy
        .request(json!({"type": "join_show", "show_id": 123}))
        .await;
    assert_eq!(
        again["type"], "session_update",
        "the empty room is still there: {again}"
    );
    let hist = cy.recv_type("message_history").await;
    assert_eq!(history_texts(&hist), ["what an opener"]);

    // Attendance: ann and ben checked in and out, cy is in; only the backend or the host
    // may read it (a show has no host: the backend).
    let read = |key: Option<&str>, tenant: &str| {
        let mut r = http.get(format!(
            "{http_a}/api/sessions/123/attendance?tenant={tenant}"
        ));
        r = match key {
            Some(k) => r.header("x-api-key", k),
            None => r.bearer_auth(fan("cy")),
        };
        r.send()
    };
    let r = read(Some(SHOW_API_KEY), "venue").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let rows = v["attendance"].as_array().unwrap();
    let row = |u: &str| rows.iter().find(|r| r["userId"] == u).cloned().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    for u in ["ann", "ben"] {
        let r = row(u);
        assert!(
            r["checkedOutAt"].as_i64() >= r["checkedInAt"].as_i64(),
            "{r}"
        );
    }
    assert!(row("cy")["checkedOutAt"].is_null(), "{v}");
    assert_eq!(
        read(None, "venue").await.unwrap().status(),
        403,
        "cy is no host"
    );
    assert_eq!(
        read(Some(SHOW_API_KEY), "other").await.unwrap().status(),
        404,
        "another tenant has no show 123"
    );
    // In pages of one, each from the page's last row: the same three, in check-in order.
    let base = format!("{http_a}/api/sessions/123/attendance?tenant=venue&limit=1");
    let (mut url, mut paged) = (base.clone(), Vec::new());
    loop {
        let r = http.get(&url).header("x-api-key", SHOW_API_KEY).send();
        let v: Value = r.await.unwrap().json().await.unwrap();
        let page = v["attendance"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(page.len(), 1, "{v}");
        paged.push(page[0].clone());
        assert!(paged.len() <= 3, "the pages do not end: {paged:?}");
        if v["hasMore"] != true {
            break;
        }
        let (at, user) = (&page[0]["checkedInAt"], page[0]["userId"].as_str().unwrap());
        url = format!("{base}&after={at}&afterUserId={user}");
    }
    let order: Vec<(i64, &str)> = paged
        .iter()
        .map(|r| {
            (
                r["checkedInAt"].as_i64().unwrap(),
                r["userId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(order.len(), 3, "{order:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");

    // An ordinary session's attendance: its host reads it, and it outlives the session.
    let mut host = Client::connect(url_a, &fan("hana")).await;
    let sid = create(&mut host, json!({"name": "after party"})).await;
    assert_eq!(join(&mut cy, &sid, None).await["type"], "session_update");
    let ended = host
        .request(json!({"type": "end_session", "sessionId": sid}))
        .await;
    assert_eq!(ended["type"], "session_ended", "{ended}");
    let r = http
        .get(format!("{http_a}/api/sessions/{sid}/attendance"))
        .bearer_auth(fan("hana"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the host reads it after the end");
    let v: Value = r.json().await.unwrap();
    let rows = v["attendance"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert!(
        rows.iter().all(|r| r["checkedOutAt"].is_i64()),
        "the end checks everyone out: {v}"
    );
    assert!(
        rows.iter()
            .any(|r| r["userId"] == "hana" && r["host"] == true),
        "{v}"
    );
    let r = http
        .get(format!("{http_a}/api/sessions/{sid}/attendance"))
        .bearer_auth(fan("cy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a guest does not");
}

/// dj-system-socketio.md's inbox: the backend notifies users (API key `SHOW_API_KEY`);
/// each of a user's connections, on either gateway, gets `notification:new` and the unread
/// count; reads, read-all and deletes update every connection; pages over REST and WS;
/// nobody reaches another user's or tenant's inbox.
pub async fn notifications(url_a: &str, url_b: &str, http_a: &str) {
    let http = reqwest::Client::new();
    let notify = |body: Value| {
        http.post(format!("{http_a}/api/notifications"))
            .header("x-api-key", SHOW_API_KEY)
            .json(&body)
            .send()
    };
    let mut bob_a = Client::connect(url_a, &token("nbob", "Bob", None)).await;
    let mut bob_b = Client::connect(url_b, &token("nbob", "Bob", None)).await;
    let mut alice = Client::connect(url_b, &token("nalice", "Alice", None)).await;
    let r = notify(
        json!({"userIds": ["nbob", "ncarol"], "type": "job_assigned", "priority": "HIGH",
                          "title": "Job 5", "message": "You have a job", "data": {"jobId": 5}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["count"], 2);
    for c in [&mut bob_a, &mut bob_b] {
        let n = c.recv_type("notification:new").await["notification"].clone();
        assert_eq!(
            (n["id"].as_i64(), n["data"]["jobId"].as_i64()),
            (Some(1), Some(5)),
            "{n}"
        );
        assert_eq!(n["type"], "job_assigned");
        assert_eq!(n["priority"], "HIGH");
        assert_eq!(c.recv_type("notification:unread-count").await["count"], 1);
    }
    assert!(
        alice
            .none_of_type("notification:new", Duration::from_millis(300))
            .await,
        "only the addressed users"
    );
    // U+0000 anywhere (here a key of `data`, kept as jsonb) is refused; nothing is stored:
    // the next notification is still number 2.
    let r = notify(json!({"userId": "nbob", "type": "nul", "title": "t", "data": {"k\u{0}": 1}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e = r.json::<Value>().await.unwrap();
    assert!(e.to_string().contains("U+0000"), "{e}");
    notify(json!({"userId": "nbob", "type": "job_started", "title": "Job 5 started"}))
        .await
        .unwrap();
    for c in [&mut bob_a, &mut bob_b] {
        assert_eq!(
            c.recv_type("notification:new").await["notification"]["id"],
            2
        );
        assert_eq!(c.recv_type("notification:unread-count").await["count"], 2);
    }

    // A read: answered by ref, and every connection's count follows.
    let r = bob_a
        .request(json!({"type": "notification:read", "notificationId": 1}))
        .await;
    assert_eq!(r["type"], "notification:marked-read", "{r}");
    assert_eq!(
        (r["notificationId"].as_i64(), r["unreadCount"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        bob_b.recv_type("notification:marked-read").await["notificationId"],
        1
    );
    assert_eq!(
        bob_b.recv_type("notification:unread-count").await["count"],
        1
    );
    let again = bob_a
        .request(json!({"type": "notification:read", "notificationId": 1}))
        .await;
    assert_eq!(
        again["unreadCount"], 1,
        "reading twice counts once: {again}"
    );
    let none = bob_a
        .request(json!({"type": "notification:read", "notificationId": 99}))
        .await;
    assert_eq!(none["code"], "BAD_REQUEST", "{none}");

    // Pages over REST: newest first, unread only, by id.
    let page = |q: &str| {
        http.get(format!("{http_a}/api/notifications?{q}"))
            .bearer_auth(token("nbob", "Bob", None))
            .send()
    };
    let v: Value = page("unread=true").await.unwrap().json().await.unwrap();
    let ids = |v: &Value| -> Vec<i64> {
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        (ids(&v), v["unreadCount"].as_i64()),
        (vec![2], Some(1)),
        "{v}"
    );
    let v: Value = page("limit=1").await.unwrap().json().await.unwrap();
    assert_eq!(
        (ids(&v), v["hasMore"].as_bool()),
        (vec![2], Some(true)),
        "{v}"
    );
    let v: Value = page("before=2").await.unwrap().json().await.unwrap();
    assert_eq!(ids(&v), [1]);
    assert!(v["notifications"][0]["readAt"].is_i64(), "{v}");

    // Delete an unread one, then read everything else.
    let d = bob_b
        .request(json!({"type": "notification:delete", "notificationId": 2}))
        .await;
    assert_eq!(
        (d["type"].as_str(), d["unreadCount"].as_i64()),
        (Some("notification:deleted"), Some(0)),
        "{d}"
    );
    // The other connection's count follows (after the earlier counts it was sent).
    bob_a
        .recv_where("unread count 0", |f| {
            f["type"] == "notification:unread-count" && f["count"] == 0
        })
        .await;
    for t in ["a", "b"] {
        notify(json!({"userId": "nbob", "type": "note", "title": t}))
            .await
            .unwrap();
    }
    let all = bob_a
        .request(json!({"type": "notification:read-all"}))
        .await;
    assert_eq!(
        (all["marked"].as_i64(), all["unreadCount"].as_i64()),
        (Some(2), Some(0)),
        "{all}"
    );
    let v = bob_b.request(json!({"type": "notification:list"})).await;
    assert_eq!(ids(&v), [4, 3, 1], "ids keep counting after a delete: {v}");
    assert_eq!(v["unreadCount"], 0);

    // Carol was offline: her inbox waited. Another tenant's nbob has an inbox of his own.
    let mut carol = Client::connect(url_a, &token("ncarol", "Carol", None)).await;
    let v = carol
        .request(json!({"type": "notification:list", "unread": true}))
        .await;
    assert_eq!(
        (ids(&v), v["unreadCount"].as_i64()),
        (vec![1], Some(1)),
        "{v}"
    );
    let mut other = Client::connect(url_a, &token("nbob", "Bob", Some("elsewhere"))).await;
    let v = other.request(json!({"type": "notification:list"})).await;
    assert_eq!(ids(&v), Vec::<i64>::new(), "{v}");
    let r = other
        .request(json!({"type": "notification:read", "notificationId": 1}))
        .await;
    assert_eq!(r["code"], "BAD_REQUEST", "{r}");

    // Bad calls change nothing.
    let bad = |body: Value, key: &'static str| {
        http.post(format!("{http_a}/api/notifications"))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let ok = json!({"userId": "nbob", "type": "t", "title": "x"});
    assert_eq!(bad(ok.clone(), "wrong").await.unwrap().status(), 401);
    let mut p = ok.clone();
    p["priority"] = json!("SHOUTING");
    assert_eq!(bad(p, SHOW_API_KEY).await.unwrap().status(), 400);
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let mut m = ok.clone();
    m.as_object_mut().unwrap().remove("userId");
    m["userIds"] = json!(many);
    assert_eq!(bad(m, SHOW_API_KEY).await.unwrap().status(), 400);
    let v = bob_b.request(json!({"type": "notification:list"})).await;
    assert_eq!(ids(&v), [4, 3, 1], "{v}");
}

/// ws-chat-server.md on jam: people who exchanged direct messages, and the contacts the
/// backend sets (API key `SHOW_API_KEY`), are told `user_online` / `user_offline` about
/// each other on every gateway, without joining a session; `typing_start` / `typing_stop`
/// reach the friend as `typing` and clear by themselves after 5 s; the seed's `data`
/// envelope and `message` frame work; `get_presence` answers for contacts only.
pub async fn contacts_presence(url_a: &str, url_b: &str, http_a: &str) {
    let http = reqwest::Client::new();
    let t = |u: &str| token(u, &u.to_uppercase(), Some("chat"));
    let mut ann = Client::connect(url_a, &t("pann")).await;
    let mut ben = Client::connect(url_b, &t("pben")).await;
    // The seed's envelope and event name: a direct message makes them contacts.
    ann.send(json!({"type": "message", "data": {"receiverId": "pben", "content": "hi", "messageType": "TEXT"}}))
        .await;
    let dm = ben.recv_type("direct_message").await;
    assert_eq!(dm["content"], "hi", "{dm}");
    ann.recv_type("direct_message").await;

    // The backend: ann also watches cy.
    let r = http
        .put(format!("{http_a}/api/users/pann/contacts"))
        .header("x-api-key", SHOW_API_KEY)
        .json(&json!({"tenant": "chat", "contacts": ["pcy"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cy = Client::connect(url_b, &t("pcy")).await;
    let on = ann
        .recv_where("cy online", |f| {
            f["type"] == "user_online" && f["userId"] == "pcy"
        })
        .await;
    assert!(on.get("sessionId").is_none(), "not a room's presence: {on}");
    assert!(
        ben.none_of_type("user_online", Duration::from_millis(300))
            .await,
        "ben does not watch cy"
    );

    // Typing to a friend: the seed's envelope, then the 5 s clear.
    ann.send(json!({"type": "typing_start", "data": {"userId": "pann", "friendId": "pben"}}))
        .await;
    let typing = ben.recv_type("typing").await;
    assert_eq!(
        (typing["userId"].as_str(), typing["isTyping"].as_bool()),
        (Some("pann"), Some(true))
    );
    let t0 = std::time::Instant::now();
    let cleared = ben
        .recv_where_within("typing cleared", Duration::from_secs(8), |f| {
            f["type"] == "typing" && f["isTyping"] == false
        })
        .await;
    assert_eq!(cleared["userId"], "pann");
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    ann.send(json!({"type": "typing_start", "friendId": "pben"}))
        .await;
    ben.recv_where("typing again", |f| {
        f["type"] == "typing" && f["isTyping"] == true
    })
    .await;
    ann.send(json!({"type": "typing_stop", "friendId": "pben"}))
        .await;
    ben.recv_where("stopped", |f| {
        f["type"] == "typing" && f["isTyping"] == false
    })
    .await;

    // Presence on request: contacts only.
    let p = ann
        .request(json!({"type": "get_presence", "userIds": ["pben", "pcy", "pzed"]}))
        .await;
    assert_eq!(
        p["users"],
        json!([{"userId": "pben", "online": true}, {"userId": "pcy", "online": true}]),
        "{p}"
    );

    // Another tenant's watcher of "pann" hears nothing of this tenant's pann.
    let r = http
        .put(format!("{http_a}/api/users/peve/contacts"))
        .header("x-api-key", SHOW_API_KEY)
        .json(&json!({"tenant": "other", "contacts": ["pann"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut eve = Client::connect(url_a, &token("peve", "Eve", Some("other"))).await;

    // A second connection is no news; the last one going is.
    let ben2 = Client::connect(url_a, &t("pben")).await;
    drop(ben2);
    drop(ben);
    let off = ann
        .recv_where("ben offline", |f| {
            f["type"] == "user_offline" && f["userId"] == "pben"
        })
        .await;
    assert!(off.get("sessionId").is_none(), "{off}");
    assert!(
        !ann.backlog_has(|f| f["type"] == "user_online" && f["userId"] == "pben"),
        "ben's second connection was no news"
    );
    let p = ann
        .request(json!({"type": "get_presence", "userIds": ["pben"]}))
        .await;
    assert_eq!(
        p["users"],
        json!([{"userId": "pben", "online": false}]),
        "{p}"
    );
    drop(cy);
    ann.recv_where("cy offline", |f| {
        f["type"] == "user_offline" && f["userId"] == "pcy"
    })
    .await;
    drop(ann);
    assert!(
        eve.none_of_type("user_offline", Duration::from_millis(500))
            .await,
        "tenants apart"
    );
}

/// A connection's first frame is `authenticated`, even while frames stream to its user on
/// that gateway: here, direct messages to another connection of the same user. (Before the
/// greeting went out ahead of registration, a frame on the user's channel could overtake it
/// in the cluster, while the gateway waited to tell the workers about the new connection.)
pub async fn greeting_comes_first(url_a: &str, url_b: &str) {
    let t = |u: &str| token(u, &u.to_uppercase(), Some("greet"));
    let mut sender = Client::connect(url_a, &t("gsender")).await;
    // Keeps the user's channel subscribed on gateway b, so that its frames flow there.
    let mut held = Client::connect(url_b, &t("gtarget")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sender
                    .send(json!({"type": "message", "data": {"receiverId": "gtarget", "content": "x", "messageType": "TEXT"}}))
                    .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        }
    });
    held.recv_type("direct_message").await;
    for _ in 0..80 {
        // `connect` asserts that the first frame is `authenticated`.
        let mut c = Client::connect(url_b, &t("gtarget")).await;
        c.recv_type("direct_message").await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        sending.await.unwrap() > 20,
        "direct messages flowed meanwhile"
    );
}

/// A gateway whose bus buffer overflows tells the members of the rooms that lost events to
/// resync (and no one else); rejoining with the last seq they applied gives them every
/// message, without a gap. A user whose own channel lost direct messages is told too
/// (`"scope": "user"`), and finds them all in the conversation's history. Run against a gateway with `JAM_BUS_BUFFER=4`, a rate limit above 2,000 frames a
/// second (direct messages too) and `JAM_RECOVERY_EVENTS` of 10,000 or more.
pub async fn lagging_subscription(url: &str) {
    let mut alice = Client::connect(url, &token("lag-alice", "Alice", None)).await;
    let mut bob = Client::connect(url, &token("lag-bob", "Bob", None)).await;
    let sid = create(&mut alice, json!({"name": "lag"})).await;
    let mut carol = Client::connect(url, &token("lag-carol", "Carol", None)).await;
    create(&mut carol, json!({"name": "quiet"})).await;
    // In no room: only direct messages reach dave.
    let mut dave = Client::connect(url, &token("lag-dave", "Dave", None)).await;
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
    lagging_user_channel(&mut alice, &mut dave).await;
    // The quiet room and the quiet user lost nothing: carol is left alone.
    let told = carol
        .try_recv_where(Duration::from_millis(500), |f| {
            f["type"] == "resync_required"
        })
        .await;
    assert!(told.is_none(), "{told:?}");
}

/// Bursts of direct messages from `alice` to `dave` (in no room) until dave's channel
/// lags: dave is told `resync_required` for his own channel, and the conversation's history
/// holds every message sent, in order, though fewer came live.
async fn lagging_user_channel(alice: &mut Client, dave: &mut Client) {
    let mut sent: usize = 0;
    let mut notice = None;
    for _ in 0..20 {
        for _ in 0..100 {
            let content = format!("d{sent}");
            alice
                .send(
                    json!({"type": "direct_message", "receiverId": dave.user, "content": content}),
                )
                .await;
            sent += 1;
        }
        notice = dave
            .try_recv_where(Duration::from_secs(2), |f| f["type"] == "resync_required")
            .await;
        if notice.is_some() {
            break;
        }
    }
    let notice = notice.expect("a 4-message bus buffer overflows under bursts of 100");
    assert_eq!(notice["scope"], "user", "{notice}");
    assert!(notice.get("sessionId").is_none(), "{notice}");
    // The newest page shows the last message once everything is committed.
    let last = format!("d{}", sent - 1);
    let mut page = Value::Null;
    for _ in 0..50 {
        page = dave
            .request(json!({"type": "load_direct", "with": alice.user, "limit": 30}))
            .await;
        if page["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| &m["content"])
            == Some(&json!(last))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then page back (30 a page), each page from the first message of the one before (its createdAt
    // and id): many messages share a millisecond, and a page boundary inside one loses none.
    let mut texts: Vec<String> = Vec::new();
    loop {
        let msgs = page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"));
        let older: Vec<String> = msgs
            .iter()
            .filter_map(|m| m["content"].as_str().map(str::to_string))
            .collect();
        texts.splice(0..0, older);
        assert!(texts.len() <= sent, "the pages do not end");
        if page["hasMore"] != true {
            break;
        }
        let first = &msgs[0];
        page = dave
            .request(
                json!({"type": "load_direct", "with": alice.user, "limit": 30,
                "before": first["createdAt"], "beforeId": first["id"]}),
            )
            .await;
    }
    let want: Vec<String> = (0..sent).map(|i| format!("d{i}")).collect();
    assert_eq!(texts, want, "every message once, in the order sent");
    let live = dave
        .take_pending()
        .into_iter()
        .filter(|f| f["type"] == "direct_message")
        .count();
    assert!(
        live < sent,
        "{live} of {sent} came live: something was dropped"
    );
}

/// A Socket.IO client that emits the moment it is connected (`socket.on("connect", () =>
/// socket.emit(...))`, as most do) gets every acknowledgement: socketioxide tells the client
/// it is connected before the gateway has registered the connection (on the cluster, a
/// Redis round trip or two), and what the client emits meanwhile waits for it. Spoken
/// raw (Engine.IO 4 over a WebSocket) so that the event leaves the moment the server's
/// CONNECT arrives; `http` is the gateway's base URL.
pub async fn socketio_emits_at_connect(http: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        http.replacen("http", "ws", 1)
    );
    for i in 0..30 {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let (mut tx, mut rx) = ws.split();
        let mut next = async |what: &str| loop {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.next()).await;
            let m = m.unwrap_or_else(|_| panic!("connection {i}: no {what} within 5 s"));
            match m.expect("open").unwrap() {
                Message::Text(t) => break t.to_string(),
                _ => continue,
            }
        };
        assert!(
            next("open").await.starts_with('0'),
            "Engine.IO's open packet"
        );
        let t = token(&format!("sioe{i}"), "SIOE", None);
        tx.send(Message::text(format!("40{}", json!({ "token": t }))))
            .await
            .unwrap();
        // The server's CONNECT, then at once an event asking for an acknowledgement.
        while !next("CONNECT").await.starts_with("40") {}
        tx.send(Message::text(r#"421["ping",{}]"#)).await.unwrap();
        let ack = loop {
            let p = next("acknowledgement").await;
            if p.starts_with("431") {
                break p;
            }
        };
        assert!(ack.contains("serverTime"), "the pong: {ack}");
        let _ = tx.close().await;
    }
}
