//! Session lifecycle: create, join, leave, list, end, and a member's connection going away.

use crate::model::{ConnRef, ParticipantRecord, Role, SessionRecord, SessionStatus};
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Action, Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::json;

use super::deadlines::Due;
use super::registered::attendance;
use super::{Effects, Engine, EventLog, SessionKey};
use jam_shared::protocol::action::DEFAULT_MAX_PARTICIPANTS;

impl Engine {
    pub(super) fn create_session(&mut self, cmd: &Command, fx: &mut Effects) {
        let Action::CreateSession {
            name,
            description,
            is_private,
            max_participants,
            password_hash,
            session_id,
            ..
        } = &cmd.action
        else {
            return;
        };
        let Some(id) = session_id.clone() else {
            return fx.error(cmd, ErrorCode::BadRequest, "sessionId missing");
        };
        let key = (cmd.tenant.clone(), id.clone());
        if self.sessions.contains_key(&key) {
            return fx.error(
                cmd,
                ErrorCode::SessionExists,
                "Session id already in use, try again",
            );
        }
        let now = now_ms();
        let rec = SessionRecord {
            tenant: cmd.tenant.clone(),
            id: id.clone(),
            name: name.trim().to_string(),
            description: description.clone().unwrap_or_default(),
            host_id: cmd.user_id.clone(),
            is_private: is_private.unwrap_or(false) || password_hash.is_some(),
            // Only hashes this server made (the gateway hashes; anything else never verifies).
            password_hash: password_hash
                .clone()
                .filter(|h| jam_shared::password::is_own_hash(h)),
            max_participants: max_participants.unwrap_or(DEFAULT_MAX_PARTICIPANTS),
            participants: vec![ParticipantRecord::new(
                &cmd.user_id,
                &cmd.user_name,
                Role::Host,
                now,
                self.conn_refs(cmd),
            )],
            removed: Vec::new(),
            fresh: true,
            status: SessionStatus::Active,
            created_at: now,
            expires_at: now + self.cfg.session_timeout.as_millis() as i64,
            last_seq: 0,
            playback: None,
            current_track: None,
            queue: Vec::new(),
            last_check_at: now,
            managed: false,
            index: Default::default(),
            online: 0,
        };
        let mut rec = rec;
        rec.reindex();
        let created = frame("session_created", &json!({ "session": rec.view() }));
        fx.attendance
            .push(attendance(&key, &rec.host_id, &rec.participants[0], None));
        self.arm(&key, &rec);
        self.sessions.insert(key.clone(), rec);
        metrics::gauge!("jam_sessions_active").increment(1.0);
        self.recent.insert(key.clone(), Default::default());
        self.log.insert(key.clone(), EventLog::starting_at(0));
        fx.touch(&key);
        answer_joiner(cmd, &key, vec![created], fx);
        tracing::info!(session = %id, host = %cmd.user_id, "session created");
    }

    /// `password_ok`: the outcome of the off-thread password check, when there was one.
    pub(super) fn join_session(
        &mut self,
        cmd: &Command,
        sid: &str,
        password_ok: Option<bool>,
        can_rate: bool,
        fx: &mut Effects,
    ) {
        let key = (cmd.tenant.clone(), sid.to_string());
        let Some(rec) = self.sessions.get(&key) else {
            let what = match &cmd.action {
                Action::JoinSession { show: true, .. } => "Show not found",
                _ => "Session not found",
            };
            return fx.error(cmd, ErrorCode::SessionNotFound, what);
        };
        let already = rec.is_member(&cmd.user_id);
        if !already {
            if rec.password_hash.is_some() && password_ok != Some(true) {
                return fx.error(cmd, ErrorCode::InvalidPassword, "Invalid password");
            }
            if rec.participants.len() >= rec.max_participants as usize {
                return fx.error(cmd, ErrorCode::SessionFull, "Session is full");
            }
        }
        let large = rec.participants.len() >= self.cfg.large_room;
        let seated = if already {
            self.seat_again(cmd, &key, can_rate, large)
        } else {
            self.seat_new(cmd, &key, can_rate, large, fx)
        };
        if let (Some(seq), Some(f)) = (seated.joined, &seated.delta) {
            let cap = self.cfg.recovery_events;
            let log = self.log.entry(key.clone()).or_default();
            log.push(seq, f.clone(), cap);
        }
        if let Some(f) = seated.delta {
            fx.room(&key, Envelope::default(), vec![f]);
        }
        let mut frames = self.joiner_frames(cmd, &key);
        if seated.coalesced {
            self.coalesce(&key, usize::from(!already), 0);
        }
        // A joiner starts where the host is (a join is a sync trigger).
        if let Some(f) = self.joiner_sync_frame(&key, &cmd.user_id) {
            frames.push(f);
        }
        fx.touch(&key);
        answer_joiner(cmd, &key, frames, fx);
    }

    /// A member joins again (another socket, or back from offline): its connections are
    /// added, and the room hears it is online if it was not.
    fn seat_again(
        &mut self,
        cmd: &Command,
        key: &SessionKey,
        can_rate: bool,
        large: bool,
    ) -> Seated {
        let mine = self.conn_refs(cmd);
        let rec = self.sessions.get_mut(key).expect("checked by the caller");
        let mut seated = Seated::default();
        let p = rec.participant_mut(&cmd.user_id).expect("member");
        let was_offline = !p.is_online();
        // A REST join changes nothing about the member's sockets.
        if !cmd.ephemeral {
            p.can_rate = can_rate;
            p.offline_since = None;
            rec.with_conns(&cmd.user_id, |conns| {
                if !conns.iter().any(|c| c.conn == cmd.conn) {
                    conns.extend(mine);
                }
            });
        }
        let online = rec.participant(&cmd.user_id).is_some_and(|p| p.is_online());
        if was_offline && online {
            if large {
                seated.coalesced = true;
            } else {
                let count = rec.online_count();
                seated.delta = Some(frame(
                    "user_online",
                    &json!({"sessionId": key.1, "userId": cmd.user_id, "count": count}),
                ));
            }
        }
        seated
    }
    /// A new participant takes a seat (checked-in for attendance), announced with its
    /// `seq`, or counted in the room's next `presence_diff` when the room is large.
    fn seat_new(
        &mut self,
        cmd: &Command,
        key: &SessionKey,
        can_rate: bool,
        large: bool,
        fx: &mut Effects,
    ) -> Seated {
        let mine = self.conn_refs(cmd);
        let rec = self.sessions.get_mut(key).expect("checked by the caller");
        let mut seated = Seated::default();
        let mut p = ParticipantRecord::new(
            &cmd.user_id,
            &cmd.user_name,
            Role::Participant,
            now_ms(),
            mine,
        );
        p.can_rate = can_rate;
        let view = p.view();
        fx.attendance.push(attendance(key, &rec.host_id, &p, None));
        rec.join(p);
        if large {
            seated.coalesced = true;
        } else {
            let seq = rec.next_seq();
            seated.joined = Some(seq);
            seated.delta = Some(frame(
                "user_joined",
                &json!({
                    "sessionId": key.1, "userId": cmd.user_id, "userName": cmd.user_name,
                    "participant": view, "count": rec.online_count(), "seq": seq,
                }),
            ));
        }
        seated
    }

    /// What the joiner gets: the session (with the events it missed since `sinceSeq` when
    /// all are still kept, or the recent history), then the members.
    fn joiner_frames(&self, cmd: &Command, key: &SessionKey) -> Vec<bytes::Bytes> {
        let rec = &self.sessions[key];
        let since_seq = match &cmd.action {
            Action::JoinSession { since_seq, .. } => *since_seq,
            _ => None,
        };
        let missed =
            since_seq.map(|s| self.log.get(key).and_then(|log| log.since(s, rec.last_seq)));
        let mut body = json!({ "session": rec.view_for(self.cfg.large_room) });
        if let Some(m) = &missed {
            body["recovered"] = json!(m.is_some());
            let outcome = if m.is_some() { "true" } else { "false" };
            metrics::counter!("jam_recoveries_total", "recovered" => outcome).increment(1);
        }
        let snapshot = frame("session_update", &body);
        let mut frames = match missed {
            // The missed events travel inside the reply, in order: `session` is the state
            // after the last of them.
            Some(Some(events)) => vec![super::recovery::with_missed(&snapshot, &events)],
            _ => vec![snapshot, self.history_frame(key)],
        };
        frames.push(self.members_frame(rec));
        frames
    }

    /// The last messages of a session, as a joiner gets them.
    fn history_frame(&self, key: &SessionKey) -> bytes::Bytes {
        let limit = self.cfg.history_limit;
        let history: Vec<_> = self
            .recent
            .get(key)
            .map(|q| q.last(limit).cloned().collect())
            .unwrap_or_default();
        // A full window may have older messages behind it (load_history pages them).
        let has_more = history.len() >= self.cfg.history_limit;
        frame(
            "message_history",
            &json!({"sessionId": key.1, "messages": history, "hasMore": has_more}),
        )
    }

    pub(super) fn leave_session(&mut self, cmd: &Command, sid: &str, fx: &mut Effects) {
        let key = (cmd.tenant.clone(), sid.to_string());
        let Some(rec) = self.sessions.get(&key) else {
            return fx.error(cmd, ErrorCode::SessionNotFound, "Session not found");
        };
        if !rec.is_member(&cmd.user_id) {
            return fx.error(cmd, ErrorCode::NotInSession, "Not in session");
        }
        fx.reply(cmd, vec![frame("left_session", &json!({"sessionId": sid}))]);
        self.remove_participant(&key, &cmd.user_id, fx);
    }

    pub(super) fn end_session(&mut self, cmd: &Command, sid: &str, fx: &mut Effects) {
        let key = (cmd.tenant.clone(), sid.to_string());
        let Some(rec) = self.sessions.get(&key) else {
            return fx.error(cmd, ErrorCode::SessionNotFound, "Session not found");
        };
        if rec.host_id != cmd.user_id {
            return fx.error(
                cmd,
                ErrorCode::Forbidden,
                "Only the host can end the session",
            );
        }
        self.end(&key, "host_ended", Some(cmd), fx);
    }

    /// End a session for `reason`: everyone is told, then it is gone.
    pub(super) fn end(
        &mut self,
        key: &SessionKey,
        reason: &str,
        by: Option<&Command>,
        fx: &mut Effects,
    ) {
        let ended = frame(
            "session_ended",
            &json!({"sessionId": key.1, "reason": reason}),
        );
        let env = Envelope {
            close_room: true,
            ..Default::default()
        };
        match by {
            Some(cmd) => fx.room_acked(key, cmd, env, vec![ended]),
            None => fx.room(key, env, vec![ended]),
        }
        if let Some(rec) = self.sessions.get(key) {
            let now = now_ms();
            for p in &rec.participants {
                fx.attendance
                    .push(attendance(key, &rec.host_id, p, Some(now)));
            }
        }
        self.remove_session(key, fx);
        metrics::counter!("jam_sessions_ended_total", "reason" => reason.to_string()).increment(1);
        tracing::info!(session = %key.1, reason, "session ended");
    }

    /// A participant is gone for good: tell the others, hand the host role on, and
    /// delete the session when nobody is left.
    pub(super) fn remove_participant(&mut self, key: &SessionKey, user_id: &str, fx: &mut Effects) {
        self.stop_typing(key, user_id, fx);
        let Some(rec) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(idx) = rec.position_of(user_id) else {
            return;
        };
        let large = rec.participants.len() > self.cfg.large_room;
        let large_room = self.cfg.large_room;
        let gone = rec.remove_at(idx);
        fx.attendance
            .push(attendance(key, &rec.host_id, &gone, Some(now_ms())));
        if rec.participants.is_empty() {
            let env = Envelope {
                leave_user: Some(user_id.to_string()),
                close_room: true,
                ..Default::default()
            };
            fx.room(key, env, vec![]);
            // A room the backend registered waits for its next member.
            if rec.managed {
                fx.touch(key);
            } else {
                self.remove_session(key, fx);
            }
            return;
        }
        let mut frames = Vec::new();
        let mut kept = Vec::new();
        if !large {
            let seq = rec.next_seq();
            let f = frame(
                "user_left",
                &json!({"sessionId": key.1, "userId": gone.id, "userName": gone.name, "count": rec.online_count(), "seq": seq}),
            );
            kept.push((seq, f.clone()));
            frames.push(f);
        }
        if rec.host_id == user_id {
            // The longest-present online participant becomes host; else the longest-present.
            let next = rec
                .participants
                .iter()
                .filter(|p| p.is_online())
                .min_by_key(|p| p.joined_at)
                .or_else(|| rec.participants.iter().min_by_key(|p| p.joined_at))
                .map(|p| p.id.clone())
                .expect("not empty");
            rec.host_id = next.clone();
            for p in rec.participants_mut() {
                p.role = if p.id == next {
                    Role::Host
                } else {
                    Role::Participant
                };
            }
            let seq = rec.next_seq();
            let f = frame(
                "session_update",
                &json!({ "session": rec.view_for(large_room) }),
            );
            kept.push((seq, f.clone()));
            frames.push(f);
        }
        for (seq, f) in kept {
            self.keep(key, seq, &f);
        }
        let env = Envelope {
            leave_user: Some(user_id.to_string()),
            ..Default::default()
        };
        fx.room(key, env, frames);
        fx.touch(key);
        if large {
            self.coalesce(key, 0, 1);
        }
    }

    /// One connection of `user_id` in this session went away. The last one going makes a
    /// participant leave; a host goes offline and has the grace period to come back.
    pub(crate) fn drop_connection(
        &mut self,
        key: &SessionKey,
        user_id: &str,
        conn: &str,
        fx: &mut Effects,
    ) {
        let Some(rec) = self.sessions.get_mut(key) else {
            return;
        };
        let is_host = rec.host_id == user_id;
        let dropped = rec.with_conns(user_id, |conns| {
            let before = conns.len();
            conns.retain(|c| c.conn != conn);
            (conns.len() != before, conns.is_empty())
        });
        let Some((true, none_left)) = dropped else {
            return;
        };
        if !none_left {
            // Still online through another connection: only this socket leaves the room.
            let env = Envelope {
                leave_conn: Some(conn.to_string()),
                ..Default::default()
            };
            fx.room(key, env, vec![]);
            fx.touch(key);
            return;
        }
        if let Some(p) = rec.participant_mut(user_id).filter(|_| is_host) {
            let now = now_ms();
            p.offline_since = Some(now);
            let grace = self.cfg.host_grace.as_millis() as i64;
            self.deadlines.at(now + grace, Due::HostGrace, key);
        }
        let count = rec.online_count();
        let large = rec.participants.len() > self.cfg.large_room;
        let env = Envelope {
            leave_conn: Some(conn.to_string()),
            ..Default::default()
        };
        let offline = frame(
            "user_offline",
            &json!({"sessionId": key.1, "userId": user_id, "count": count}),
        );
        if large {
            // A host going offline still matters to everyone; anyone else is a count.
            fx.room(key, env, if is_host { vec![offline] } else { vec![] });
            self.coalesce(key, 0, 0);
        } else {
            fx.room(key, env, vec![offline]);
        }
        fx.touch(key);
        self.stop_typing(key, user_id, fx);
        // A host keeps its place for the grace period; anyone else has left.
        if !is_host {
            self.remove_participant(key, user_id, fx);
        }
    }
}

/// What seating a joiner changed for the room.
#[derive(Default)]
struct Seated {
    /// The frame for the room (`user_joined` or `user_online`), when it is small.
    delta: Option<bytes::Bytes>,
    /// The `seq` of a new member's `user_joined` (kept for recovery).
    joined: Option<i64>,
    /// A large room hears of it in the next `presence_diff` instead.
    coalesced: bool,
}

/// The joiner's snapshot: through the room channel for a socket (which becomes a member
/// on the way), straight to the caller for REST.
fn answer_joiner(cmd: &Command, key: &SessionKey, frames: Vec<bytes::Bytes>, fx: &mut Effects) {
    if cmd.ephemeral {
        fx.reply(cmd, frames);
    } else {
        fx.room(key, to_conn_joining(cmd), frames);
    }
}

/// Room envelope for frames meant only for the sender, who becomes a member first.
fn to_conn_joining(cmd: &Command) -> Envelope {
    Envelope {
        conn: Some(cmd.conn.clone()),
        join_conn: Some(cmd.conn.clone()),
        ref_conn: Some(cmd.conn.clone()),
        r#ref: cmd.r#ref.clone(),
        ..Default::default()
    }
}

impl Engine {
    /// The command's connection, for a socket; none for a REST caller, which is not a
    /// connection of the session.
    fn conn_refs(&mut self, cmd: &Command) -> Vec<ConnRef> {
        if cmd.ephemeral {
            Vec::new()
        } else {
            vec![self.conn_ref(cmd)]
        }
    }

    pub(super) fn conn_ref(&mut self, cmd: &Command) -> ConnRef {
        ConnRef {
            conn: cmd.conn.clone(),
            gateway: self.gateways.intern(&cmd.gateway),
        }
    }
}
