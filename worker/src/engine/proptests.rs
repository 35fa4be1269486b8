//! Property tests: random sequences of commands from several users of two tenants never
//! panic the engine and keep its invariants after every step.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::Role;
use jam_shared::protocol::{Action, Command, Envelope};
use proptest::prelude::*;
use serde_json::Value;

use super::{Effects, Engine, EngineConfig};

const TENANTS: [&str; 2] = ["acme", "globex"];
const SESSIONS: [&str; 3] = ["AAAAAA", "BBBBBB", "CCCCCC"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];

#[derive(Debug, Clone)]
enum Op {
    Create,
    Join { conn: u8 },
    Leave,
    Say,
    End,
    Typing,
    Drop { conn: u8 },
    Track,
    Tick { ms: u16 },
}

#[derive(Debug, Clone)]
struct Step {
    tenant: usize,
    user: usize,
    session: usize,
    op: Op,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        2 => Just(Op::Create),
        4 => (0u8..2).prop_map(|conn| Op::Join { conn }),
        1 => Just(Op::Leave),
        4 => Just(Op::Say),
        1 => Just(Op::End),
        1 => Just(Op::Typing),
        2 => (0u8..2).prop_map(|conn| Op::Drop { conn }),
        1 => Just(Op::Track),
        1 => (0u16..5000).prop_map(|ms| Op::Tick { ms }),
    ];
    (0..TENANTS.len(), 0..USERS.len(), 0..SESSIONS.len(), op).prop_map(
        |(tenant, user, session, op)| Step {
            tenant,
            user,
            session,
            op,
        },
    )
}

fn command(s: &Step, conn: u8, action: Action) -> Command {
    Command {
        id: jam_shared::ids::unique(),
        tenant: TENANTS[s.tenant].into(),
        user_id: USERS[s.user].into(),
        user_name: USERS[s.user].to_uppercase(),
        conn: format!("{}-{}-c{conn}", TENANTS[s.tenant], USERS[s.user]),
        gateway: "gw#1".into(),
        r#ref: None,
        received_at: jam_shared::clock::now_ms(),
        ephemeral: false,
        rtt_ms: None,
        action,
    }
}

fn engine() -> Engine {
    Engine::new(EngineConfig {
        history_limit: 10,
        large_room: 3,
        recovery_events: 8,
        session_timeout: Duration::from_secs(3600),
        host_grace: Duration::from_secs(30),
        gateway_dead_after: Duration::from_secs(10),
        sync_interval: Duration::from_secs(120),
        sync: Default::default(),
    })
}

/// The seqs of the room events published, per room channel, in order.
fn seqs(fx: &Effects, out: &mut HashMap<String, Vec<i64>>) {
    for (channel, payload) in &fx.publishes {
        let Ok((env, frames)) = Envelope::decode(payload) else {
            panic!("undecodable envelope on {channel}");
        };
        // Room events go to everyone; a joiner's snapshot (to one connection) repeats a seq.
        if jam_shared::keys::room_of(channel).is_none() || env.conn.is_some() {
            continue;
        }
        for f in frames {
            let v: Value = serde_json::from_slice(&f).expect("frames are JSON");
            let seq = v["seq"].as_i64().or_else(|| {
                (v["type"] == "session_update")
                    .then(|| v["session"]["seq"].as_i64())
                    .flatten()
            });
            if let (Some(seq), true) = (seq, v["type"] != "session_created") {
                out.entry(channel.clone()).or_default().push(seq);
            }
        }
    }
}

fn apply(e: &mut Engine, s: &Step, fx: &mut Effects, now: &mut i64) {
    let sid = SESSIONS[s.session].to_string();
    let action = match &s.op {
        Op::Create => Action::CreateSession {
            name: "room".into(),
            description: None,
            is_private: None,
            max_participants: Some(3),
            password_hash: None,
            session_id: Some(sid),
        },
        Op::Join { conn } => {
            let join = Action::JoinSession {
                session_id: sid,
                password: None,
                capabilities: None,
                since_seq: None,
                show: false,
            };
            return e.apply(&command(s, *conn, join), fx);
        }
        Op::Leave => Action::LeaveSession { session_id: sid },
        Op::Say => Action::SendMessage {
            session_id: sid,
            message: "hi".into(),
        },
        Op::End => Action::EndSession { session_id: sid },
        Op::Typing => Action::Typing {
            session_id: sid,
            is_typing: true,
        },
        Op::Drop { conn } => {
            let d = Action::Disconnect { session_id: sid };
            return e.apply(&command(s, *conn, d), fx);
        }
        Op::Track => Action::AddTrack {
            session_id: sid,
            track: jam_shared::protocol::sync::TrackInput {
                uri: "spotify:track:x".into(),
                name: None,
                artist: None,
                duration_ms: None,
            },
        },
        Op::Tick { ms } => {
            *now += i64::from(*ms);
            e.flush_presence(*now, fx);
            return;
        }
    };
    e.apply(&command(s, 0, action), fx);
}

fn check(e: &Engine) {
    for tenant in TENANTS {
        for sid in SESSIONS {
            let Some(rec) = e.session(tenant, sid) else {
                continue;
            };
            assert_eq!(rec.tenant, tenant, "a session lives in its own tenant");
            assert!(!rec.participants.is_empty(), "an empty session is deleted");
            let hosts: Vec<_> = rec
                .participants
                .iter()
                .filter(|p| p.role == Role::Host)
                .collect();
            assert_eq!(hosts.len(), 1, "one host in {sid}: {:?}", rec.participants);
            assert_eq!(hosts[0].id, rec.host_id);
            assert!(rec.participants.len() <= rec.max_participants as usize);
            let mut ids: Vec<_> = rec.participants.iter().map(|p| &p.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), rec.participants.len(), "a member once");
            // Members joined through their own tenant's connections only.
            for p in &rec.participants {
                for c in &p.connections {
                    assert!(c.conn.starts_with(&format!("{tenant}-{}-", p.id)), "{c:?}");
                }
            }
            let view = rec.view();
            assert_eq!(view.participant_count, rec.participants.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_commands_keep_the_invariants(steps in proptest::collection::vec(step(), 1..80)) {
        let mut e = engine();
        let mut now = jam_shared::clock::now_ms();
        let mut published: HashMap<String, Vec<i64>> = HashMap::new();
        for s in &steps {
            let mut fx = Effects::default();
            apply(&mut e, s, &mut fx, &mut now);
            seqs(&fx, &mut published);
            // The commit's view of the same effects must build too.
            let batch = e.batch(&mut fx);
            prop_assert!(batch.upserts.iter().all(|r| TENANTS.contains(&r.tenant.as_str())));
            check(&e);
        }
        for (channel, s) in published {
            // A room id can be ended and created again: seq restarts only with a new room.
            let mut last = 0;
            for seq in s {
                prop_assert!(seq > last || seq == 1, "seq {seq} after {last} on {channel}");
                last = seq;
            }
        }
    }
}
