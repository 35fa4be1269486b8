//! The engine as a pure state machine: commands in, effects out, no bus or store.

use std::time::Duration;

use bytes::Bytes;
use jam_shared::protocol::{Action, Command, Envelope};
use serde_json::Value;

use super::presence::JOINER_MEMBERS;
use super::{Effects, Engine, EngineConfig};

fn engine() -> Engine {
    Engine::new(EngineConfig {
        history_limit: 50,
        large_room: 100,
        recovery_events: 256,
        session_timeout: Duration::from_secs(3600),
        host_grace: Duration::from_secs(30),
        gateway_dead_after: Duration::from_secs(10),
        sync_interval: Duration::from_secs(120),
        sync: Default::default(),
    })
}

fn cmd(user: &str, conn: &str, action: Action) -> Command {
    Command {
        id: jam_shared::ids::unique(),
        tenant: "_".into(),
        user_id: user.into(),
        user_name: user.to_uppercase(),
        conn: conn.into(),
        gateway: "gw".into(),
        r#ref: Some(Value::from(1)),
        received_at: jam_shared::clock::now_ms(),
        ephemeral: false,
        rtt_ms: None,
        action,
    }
}

/// Every published (channel, envelope, frames).
fn published(fx: &Effects) -> Vec<(String, Envelope, Vec<Value>)> {
    fx.publishes
        .iter()
        .map(|(c, p): &(String, Bytes)| {
            let (env, frames) = Envelope::decode(p).unwrap();
            (
                c.clone(),
                env,
                frames
                    .iter()
                    .map(|f| serde_json::from_slice(f).unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn frames_of(fx: &Effects, ty: &str) -> Vec<Value> {
    published(fx)
        .into_iter()
        .flat_map(|(_, _, f)| f)
        .filter(|f| f["type"] == ty)
        .collect()
}

async fn session_with(e: &mut Engine, users: &[&str]) -> String {
    let mut fx = Effects::default();
    let create = Action::CreateSession {
        name: "s".into(),
        description: None,
        is_private: None,
        max_participants: Some(3),
        password_hash: None,
        session_id: Some("ABCDEF".into()),
    };
    e.apply(&cmd(users[0], &format!("c-{}", users[0]), create), &mut fx);
    for u in &users[1..] {
        let join = Action::JoinSession {
            session_id: "ABCDEF".into(),
            password: None,
            capabilities: None,
            since_seq: None,
            show: false,
        };
        e.apply(&cmd(u, &format!("c-{u}"), join), &mut fx);
    }
    "ABCDEF".into()
}

#[tokio::test]
async fn join_sends_a_delta_to_the_room_and_a_snapshot_to_the_joiner() {
    let mut e = engine();
    session_with(&mut e, &["alice"]).await;
    let mut fx = Effects::default();
    let join = Action::JoinSession {
        session_id: "ABCDEF".into(),
        password: None,
        capabilities: None,
        since_seq: None,
        show: false,
    };
    e.apply(&cmd("bob", "c-bob", join), &mut fx);
    let p = published(&fx);
    assert_eq!(p.len(), 2);
    let (_, delta_env, delta) = &p[0];
    assert_eq!(delta_env.conn, None, "the delta goes to the whole room");
    assert_eq!(delta[0]["type"], "user_joined");
    assert_eq!(delta[0]["count"], 2);
    assert_eq!(delta[0]["seq"], 1);
    let (_, snap_env, snap) = &p[1];
    assert_eq!(snap_env.join_conn.as_deref(), Some("c-bob"));
    assert_eq!(snap_env.conn.as_deref(), Some("c-bob"));
    let types: Vec<&str> = snap.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["session_update", "message_history", "active_users"]);
    assert!(fx
        .dirty
        .contains_key(&("_".to_string(), "ABCDEF".to_string())));
}

#[tokio::test]
async fn full_sessions_and_strangers_are_refused() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob", "carol"]).await;
    let mut fx = Effects::default();
    let join = Action::JoinSession {
        session_id: "ABCDEF".into(),
        password: None,
        capabilities: None,
        since_seq: None,
        show: false,
    };
    e.apply(&cmd("dave", "c-dave", join), &mut fx);
    assert_eq!(frames_of(&fx, "error")[0]["code"], "SESSION_FULL");
    let mut fx = Effects::default();
    let say = Action::SendMessage {
        session_id: "ABCDEF".into(),
        message: "hi".into(),
    };
    e.apply(&cmd("dave", "c-dave", say), &mut fx);
    assert_eq!(frames_of(&fx, "error")[0]["code"], "NOT_IN_SESSION");
    assert!(fx.messages.is_empty());
}

#[tokio::test]
async fn messages_get_increasing_seq_and_are_written() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let mut fx = Effects::default();
    for i in 0..3 {
        let say = Action::SendMessage {
            session_id: "ABCDEF".into(),
            message: format!("m{i}"),
        };
        e.apply(&cmd("bob", "c-bob", say), &mut fx);
    }
    let seqs: Vec<i64> = fx.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3, 4], "after the join's seq 1");
    let (_, env, _) = &published(&fx)[0];
    assert_eq!(env.ref_conn.as_deref(), Some("c-bob"));
    let batch = e.batch(&mut fx);
    assert_eq!(batch.messages.len(), 3);
    // Appended only: chat never rewrites the session row (its seq comes from the messages).
    assert!(batch.upserts.is_empty());
}

#[tokio::test]
async fn the_host_leaving_hands_over_and_the_last_out_deletes() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let mut fx = Effects::default();
    e.apply(
        &cmd(
            "alice",
            "c-alice",
            Action::LeaveSession {
                session_id: "ABCDEF".into(),
            },
        ),
        &mut fx,
    );
    assert_eq!(frames_of(&fx, "user_left")[0]["count"], 1);
    assert_eq!(
        frames_of(&fx, "session_update")[0]["session"]["hostId"],
        "bob"
    );
    let mut fx = Effects::default();
    e.apply(
        &cmd(
            "bob",
            "c-bob",
            Action::LeaveSession {
                session_id: "ABCDEF".into(),
            },
        ),
        &mut fx,
    );
    assert!(e.session("_", "ABCDEF").is_none());
    let batch = e.batch(&mut fx);
    assert_eq!(batch.deletes, [("_".to_string(), "ABCDEF".to_string())]);
}

#[tokio::test]
async fn a_host_that_vanishes_ends_the_session_after_the_grace() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let key = ("_".to_string(), "ABCDEF".to_string());
    let mut fx = Effects::default();
    e.drop_connection(&key, "alice", "c-alice", &mut fx);
    assert_eq!(frames_of(&fx, "user_offline")[0]["userId"], "alice");
    assert!(
        frames_of(&fx, "user_left").is_empty(),
        "the host keeps its place"
    );
    let now = jam_shared::clock::now_ms();
    let mut fx = Effects::default();
    e.tick(now + 29_000, &|_| true, &mut fx);
    assert!(frames_of(&fx, "session_ended").is_empty());
    e.tick(now + 31_000, &|_| true, &mut fx);
    assert_eq!(
        frames_of(&fx, "session_ended")[0]["reason"],
        "host_disconnected"
    );
}

#[tokio::test]
async fn expiry_and_silent_gateways_fire_from_the_tick() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let now = jam_shared::clock::now_ms();
    let mut fx = Effects::default();
    // bob's gateway went silent: bob goes offline then leaves.
    e.tick(now, &|g| g != "gw", &mut fx);
    let types: Vec<String> = published(&fx)
        .iter()
        .flat_map(|(_, _, f)| f.iter().map(|x| x["type"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        types.contains(&"user_offline".to_string()) && types.contains(&"user_left".to_string()),
        "{types:?}"
    );
    let mut fx = Effects::default();
    e.tick(now + 3_601_000, &|_| true, &mut fx);
    assert_eq!(
        frames_of(&fx, "session_ended")[0]["reason"],
        "session_expired"
    );
}

#[tokio::test]
async fn typing_expires_and_skips_the_typist() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let mut fx = Effects::default();
    let typing = |t| Action::Typing {
        session_id: "ABCDEF".into(),
        is_typing: t,
    };
    e.apply(&cmd("bob", "c-bob", typing(true)), &mut fx);
    let (_, env, f) = &published(&fx)[0];
    assert_eq!(env.except_user.as_deref(), Some("bob"));
    assert_eq!(f[0]["isTyping"], true);
    // A renewal is not re-broadcast.
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob", typing(true)), &mut fx);
    assert!(frames_of(&fx, "user_typing").is_empty());
    let mut fx = Effects::default();
    e.tick(jam_shared::clock::now_ms() + 6_000, &|_| true, &mut fx);
    assert_eq!(frames_of(&fx, "user_typing")[0]["isTyping"], false);
}

/// An engine whose rooms are large above 3 participants, with session ABCDEF created by
/// "host" and joined by u0..u{n-1}; the effects of all of it.
fn large_room_of(n: usize) -> (Engine, Effects) {
    let mut e = Engine::new(EngineConfig {
        large_room: 3,
        ..engine().cfg.clone()
    });
    let mut fx = Effects::default();
    let create = Action::CreateSession {
        name: "big".into(),
        description: None,
        is_private: None,
        max_participants: Some(1000),
        password_hash: None,
        session_id: Some("ABCDEF".into()),
    };
    e.apply(&cmd("host", "c-host", create), &mut fx);
    for i in 0..n {
        let join = Action::JoinSession {
            session_id: "ABCDEF".into(),
            password: None,
            capabilities: None,
            since_seq: None,
            show: false,
        };
        e.apply(&cmd(&format!("u{i}"), &format!("c-u{i}"), join), &mut fx);
    }
    (e, fx)
}

#[tokio::test]
async fn large_rooms_get_coalesced_counts_not_a_frame_per_join() {
    let (mut e, mut fx) = large_room_of(10);
    // Small while ≤ 3 participants: one user_joined each (u0, u1); then counts only.
    assert_eq!(frames_of(&fx, "user_joined").len(), 2);

    let last = frames_of(&fx, "session_update").pop().unwrap();
    assert_eq!(last["session"]["participants"].as_array().unwrap().len(), 0);
    assert_eq!(last["session"]["membersOmitted"], true);
    assert_eq!(last["session"]["participantCount"], 11);
    assert!(
        frames_of(&fx, "presence_diff").is_empty(),
        "not before the flush"
    );
    e.flush_presence(jam_shared::clock::now_ms(), &mut fx);
    let diffs = frames_of(&fx, "presence_diff");
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0]["joined"], 8);
    assert_eq!(diffs[0]["count"], 11);
    // Nothing pending: no second diff.
    e.flush_presence(jam_shared::clock::now_ms() + 1000, &mut fx);
    assert_eq!(frames_of(&fx, "presence_diff").len(), 1);
    // Members page through get_active_users.
    let mut fx = Effects::default();
    let page = Action::GetActiveUsers {
        session_id: "ABCDEF".into(),
        offset: Some(4),
        limit: Some(5),
    };
    e.apply(&cmd("u0", "c-u0", page), &mut fx);
    let p = frames_of(&fx, "active_users").pop().unwrap();
    assert_eq!(p["activeUsers"].as_array().unwrap().len(), 5);
    assert_eq!(p["count"], 11);
    assert_eq!(p["hasMore"], true);
}

#[tokio::test]
async fn a_retried_message_is_stored_once_and_acknowledged_again() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let say = || Action::SendMessage {
        session_id: "ABCDEF".into(),
        message: "once".into(),
    };
    let mut first = cmd("bob", "c-bob", say());
    first.id = "k:bob:m1".into();
    let mut fx = Effects::default();
    e.apply(&first, &mut fx);
    let seq = fx.messages[0].seq;
    // The same key again (a resend after a lost acknowledgement, maybe from a new socket).
    let mut again = cmd("bob", "c-bob-2", say());
    again.id = "k:bob:m1".into();
    let mut fx = Effects::default();
    e.apply(&again, &mut fx);
    assert!(fx.messages.is_empty(), "nothing stored twice");
    let acks = frames_of(&fx, "new_message");
    assert_eq!(acks.len(), 1, "only the sender is answered");
    assert_eq!(acks[0]["seq"], seq);
    let (_, env, _) = &published(&fx)[0];
    assert_eq!(env.conn.as_deref(), Some("c-bob-2"));

    // Still recognised after many newer messages (beyond the joiner's history page), as
    // long as it is inside the recovery window.
    let mut fx = Effects::default();
    for i in 0..200 {
        let other = Action::SendMessage {
            session_id: "ABCDEF".into(),
            message: format!("m{i}"),
        };
        e.apply(&cmd("alice", "c-alice", other), &mut fx);
    }
    let mut late = cmd("bob", "c-bob-3", say());
    late.id = "k:bob:m1".into();
    let mut fx = Effects::default();
    e.apply(&late, &mut fx);
    assert!(fx.messages.is_empty(), "a late retry is not stored again");
    assert_eq!(frames_of(&fx, "new_message")[0]["seq"], seq);
}

fn rejoin(since_seq: Option<i64>) -> Action {
    Action::JoinSession {
        session_id: "ABCDEF".into(),
        password: None,
        capabilities: None,
        since_seq,
        show: false,
    }
}

fn say(text: &str) -> Action {
    Action::SendMessage {
        session_id: "ABCDEF".into(),
        message: text.into(),
    }
}

/// The joiner's reply: the first frame sent to its connection.
fn reply_of(fx: &Effects, conn: &str) -> Vec<Value> {
    published(fx)
        .into_iter()
        .find(|(_, env, _)| env.join_conn.as_deref() == Some(conn))
        .map(|(_, _, f)| f)
        .expect("a reply to the joiner")
}

#[tokio::test]
async fn a_rejoin_with_since_seq_gets_exactly_the_missed_events() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let mut fx = Effects::default();
    for i in 0..5 {
        e.apply(&cmd("alice", "c-alice", say(&format!("m{i}"))), &mut fx);
    }
    // bob saw up to seq 3 (his join was 1, then m0 = 2, m1 = 3); his socket went away.
    e.drop_connection(&("_".into(), "ABCDEF".into()), "bob", "c-bob", &mut fx);
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob2", rejoin(Some(3))), &mut fx);
    let reply = reply_of(&fx, "c-bob2");
    let types: Vec<&str> = reply.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["session_update", "active_users"],
        "no history page when recovered"
    );
    let snap = &reply[0];
    assert_eq!(snap["recovered"], true);
    let missed: Vec<(i64, String)> = snap["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["seq"].as_i64().unwrap(),
                f["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect: Vec<(i64, String)> = [
        (4, "new_message"),
        (5, "new_message"),
        (6, "new_message"),
        (7, "user_left"),
        (8, "user_joined"),
    ]
    .iter()
    .map(|(s, t)| (*s, t.to_string()))
    .collect();
    assert_eq!(missed, expect);
    assert_eq!(
        snap["session"]["seq"], 8,
        "the snapshot is the state after them"
    );
    assert_eq!(snap["missed"][0]["message"], "m2");
}

#[tokio::test]
async fn a_rejoin_too_far_back_gets_a_fresh_snapshot() {
    let mut e = Engine::new(EngineConfig {
        recovery_events: 3,
        ..engine().cfg.clone()
    });
    session_with(&mut e, &["alice", "bob"]).await;
    let mut fx = Effects::default();
    for i in 0..5 {
        e.apply(&cmd("alice", "c-alice", say(&format!("m{i}"))), &mut fx);
    }
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob2", rejoin(Some(2))), &mut fx);
    let reply = reply_of(&fx, "c-bob2");
    assert_eq!(reply[0]["recovered"], false);
    assert!(reply[0].get("missed").is_none());
    assert_eq!(reply[1]["type"], "message_history");
    assert_eq!(reply[1]["messages"].as_array().unwrap().len(), 5);
    // Within the window it still works; a seq from the future does not.
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob3", rejoin(Some(3))), &mut fx);
    assert_eq!(
        reply_of(&fx, "c-bob3")[0]["missed"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob4", rejoin(Some(99))), &mut fx);
    assert_eq!(reply_of(&fx, "c-bob4")[0]["recovered"], false);
    // A join without sinceSeq is the plain snapshot, as before.
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob5", rejoin(None)), &mut fx);
    assert!(reply_of(&fx, "c-bob5")[0].get("recovered").is_none());
}

#[test]
fn a_large_rooms_joiner_sees_a_short_page_of_members_and_the_count() {
    let n = JOINER_MEMBERS + 10;
    let (_, fx) = large_room_of(n);
    let joiner = frames_of(&fx, "active_users").pop().unwrap();
    assert_eq!(
        joiner["activeUsers"].as_array().unwrap().len(),
        JOINER_MEMBERS
    );
    assert_eq!(joiner["count"], n + 1);
    assert_eq!(joiner["hasMore"], true);
}

#[test]
fn a_registered_room_has_no_host_never_expires_and_stays_when_empty() {
    let mut e = engine();
    let mut fx = Effects::default();
    let register = Action::RegisterSession {
        session_id: "123".into(),
        name: "show".into(),
        description: None,
        is_private: None,
        max_participants: None,
    };
    e.apply(&cmd("@backend", "rest-1", register.clone()), &mut fx);
    assert_eq!(frames_of(&fx, "session_registered")[0]["created"], true);
    let join = Action::JoinSession {
        session_id: "123".into(),
        password: None,
        capabilities: None,
        since_seq: None,
        show: true,
    };
    e.apply(&cmd("ann", "c1", join), &mut fx);
    let rec = e.session("_", "123").unwrap();
    assert_eq!(rec.host_id, "", "the first fan is no host");
    assert_eq!(fx.attendance.len(), 1, "ann checked in");
    e.apply(
        &cmd(
            "ann",
            "c1",
            Action::LeaveSession {
                session_id: "123".into(),
            },
        ),
        &mut fx,
    );
    assert!(e.session("_", "123").is_some(), "empty, and still there");
    assert!(fx.attendance[1].checked_out_at.is_some(), "ann checked out");
    // A day later, nothing has ended it.
    let mut fx = Effects::default();
    e.tick(jam_shared::clock::now_ms() + 86_400_000, &|_| true, &mut fx);
    assert!(e.session("_", "123").is_some());
    // Registering again updates; an unknown show is "Show not found".
    e.apply(&cmd("@backend", "rest-2", register), &mut fx);
    assert_eq!(frames_of(&fx, "session_registered")[0]["created"], false);
    let mut fx = Effects::default();
    let unknown = Action::JoinSession {
        session_id: "999".into(),
        password: None,
        capabilities: None,
        since_seq: None,
        show: true,
    };
    e.apply(&cmd("ann", "c1", unknown), &mut fx);
    assert_eq!(frames_of(&fx, "error")[0]["message"], "Show not found");
}

#[tokio::test]
async fn a_session_id_that_was_not_registered_cannot_be_taken_over() {
    let mut e = engine();
    let sid = session_with(&mut e, &["alice"]).await;
    let mut fx = Effects::default();
    let register = Action::RegisterSession {
        session_id: sid.clone(),
        name: "mine now".into(),
        description: None,
        is_private: None,
        max_participants: None,
    };
    e.apply(&cmd("@backend", "rest-1", register), &mut fx);
    assert_eq!(frames_of(&fx, "error")[0]["code"], "SESSION_EXISTS");
    assert_eq!(e.session("_", &sid).unwrap().name, "s");
}

#[test]
fn inbox_changes_in_one_batch_fold_into_the_insert() {
    use crate::model::InboxChange;
    let mut e = engine();
    let notify = Action::Notify {
        kind: "t".into(),
        priority: "NORMAL".into(),
        title: "x".into(),
        message: String::new(),
        data: Value::Null,
    };
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c1", notify.clone()), &mut fx);
    assert_eq!(
        frames_of(&fx, "error")[0]["code"],
        "UNAVAILABLE",
        "not loaded: refused"
    );
    e.add_inbox(("_".into(), "bob".into()), vec![(1, true), (2, false)]);
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c1", notify.clone()), &mut fx);
    e.apply(&cmd("bob", "c1", notify), &mut fx);
    e.apply(
        &cmd("bob", "c1", Action::NotificationRead { notification_id: 3 }),
        &mut fx,
    );
    e.apply(
        &cmd(
            "bob",
            "c1",
            Action::NotificationDelete { notification_id: 4 },
        ),
        &mut fx,
    );
    e.apply(
        &cmd("bob", "c1", Action::NotificationRead { notification_id: 2 }),
        &mut fx,
    );
    let counts: Vec<i64> = frames_of(&fx, "notification:unread-count")
        .iter()
        .map(|f| f["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [2, 3, 2, 1, 0]);
    match fx.inbox.as_slice() {
        [InboxChange::Insert(n), InboxChange::Read { id: 2, .. }] => {
            assert_eq!(n.id, 3);
            assert!(n.read_at.is_some(), "read in the batch that made it");
        }
        other => panic!("{other:?}"),
    }
}

/// A partition loaded by the next owner arms its deadlines from the records, and the
/// gateway names of its loaded connections are interned (otherwise the tick, which looks at
/// connections only for the dead gateways it knows of, would never drop them).
#[tokio::test]
async fn a_loaded_partition_rearms_its_deadlines_and_knows_its_gateways() {
    use crate::store::{memory::MemoryStore, Store};
    let store = MemoryStore::new();
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let key = ("_".to_string(), "ABCDEF".to_string());
    let mut fx = Effects::default();
    e.apply(&cmd("bob", "c-bob", Action::UserOnline {}), &mut fx);
    fx.touch(&key);
    let claim = store.claim_partition(0).await.unwrap();
    let mut batch = e.batch(&mut fx);
    batch.fence = Some(crate::store::Fence {
        partition: 0,
        token: claim.token,
        applied: None,
    });
    store.commit(&batch).await.unwrap();

    let load = || async {
        let mut next = engine();
        next.load(&store, 0, 1).await.unwrap();
        next
    };
    let now = jam_shared::clock::now_ms();
    let mut next = load().await;
    let mut fx = Effects::default();
    next.tick(now, &|_| true, &mut fx);
    assert!(published(&fx).is_empty(), "nothing is due yet");
    next.tick(now + 3_601_000, &|_| true, &mut fx);
    assert_eq!(
        frames_of(&fx, "session_ended")[0]["reason"],
        "session_expired"
    );

    let mut next = load().await;
    let mut fx = Effects::default();
    next.tick(now, &|g| g != "gw", &mut fx);
    let left: Vec<_> = frames_of(&fx, "user_left")
        .iter()
        .map(|f| f["userId"].clone())
        .collect();
    assert_eq!(left, ["bob"], "the silent gateway's participant leaves");
    let bob = &fx.online[&("_".to_string(), "bob".to_string())];
    assert!(bob.conns.is_empty(), "bob is offline as a contact too");
}

/// A playing session is checked once per sync interval from its deadline, and armed again
/// for the next one; a session that never played is never looked at.
#[tokio::test]
async fn a_playing_session_is_checked_every_interval() {
    let mut e = engine();
    session_with(&mut e, &["alice", "bob"]).await;
    let checked = |e: &Engine| e.session("_", "ABCDEF").expect("session").last_check_at;
    let created = checked(&e);
    let now = jam_shared::clock::now_ms();
    let mut fx = Effects::default();
    e.tick(now + 121_000, &|_| true, &mut fx);
    assert_eq!(checked(&e), created, "not playing: no check");
    let play = Action::TrackChange {
        session_id: "ABCDEF".into(),
        track_uri: Some("spotify:track:1".into()),
        track: None,
        position: Some(0.0),
    };
    e.apply(&cmd("alice", "c-alice", play), &mut fx);
    let report = Action::PlaybackReport {
        session_id: "ABCDEF".into(),
        track_uri: "spotify:track:1".into(),
        position: 0.0,
        is_playing: true,
    };
    e.apply(&cmd("bob", "c-bob", report), &mut fx);
    // The session was created more than an interval before this tick: due at once.
    e.tick(now + 121_500, &|_| true, &mut fx);
    assert_eq!(checked(&e), now + 121_500);
    e.tick(now + 200_000, &|_| true, &mut fx);
    assert_eq!(checked(&e), now + 121_500, "not due again yet");
    e.tick(now + 241_500, &|_| true, &mut fx);
    assert_eq!(checked(&e), now + 241_500, "armed again after the check");
}

/// A join writes the joiner's row and the session's (without its participants): not
/// every participant again. A leave deletes one row.
#[tokio::test]
async fn a_join_writes_one_participant_row_not_the_room() {
    use crate::store::RowChange;
    let mut e = engine();
    let mut fx = Effects::default();
    let create = Action::CreateSession {
        name: "s".into(),
        description: None,
        is_private: None,
        max_participants: Some(100),
        password_hash: None,
        session_id: Some("ABCDEF".into()),
    };
    e.apply(&cmd("host", "c-host", create), &mut fx);
    let join = || Action::JoinSession {
        session_id: "ABCDEF".into(),
        password: None,
        capabilities: None,
        since_seq: None,
        show: false,
    };
    for i in 0..50 {
        e.apply(&cmd(&format!("u{i}"), &format!("c-u{i}"), join()), &mut fx);
    }
    let first = e.batch(&mut fx);
    let upserted = |b: &crate::store::Batch| {
        b.participants
            .iter()
            .filter(|c| matches!(c.row, RowChange::Upsert(_)))
            .count()
    };
    assert_eq!(
        upserted(&first),
        51,
        "a new session writes all of its rows once"
    );
    assert!(matches!(first.participants[0].row, RowChange::Clear));

    let mut fx = Effects::default();
    e.apply(&cmd("late", "c-late", join()), &mut fx);
    let batch = e.batch(&mut fx);
    assert_eq!(upserted(&batch), 1, "{:?}", batch.participants);
    assert_eq!(batch.upserts.len(), 1);
    assert!(
        batch.upserts[0].participants.is_empty(),
        "the row carries none"
    );
    assert_eq!(e.session("_", "ABCDEF").unwrap().participants.len(), 52);

    let mut fx = Effects::default();
    let leave = Action::LeaveSession {
        session_id: "ABCDEF".into(),
    };
    e.apply(&cmd("u7", "c-u7", leave), &mut fx);
    let batch = e.batch(&mut fx);
    let deleted: Vec<&str> = batch
        .participants
        .iter()
        .filter_map(|c| match &c.row {
            RowChange::Delete(user_id) => Some(user_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["u7"]);
    assert_eq!(upserted(&batch), 0);
}
