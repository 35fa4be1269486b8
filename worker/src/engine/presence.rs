//! Presence inside a session: who is online (has a connection in the room), how many
//! connections each has, and who is typing. Snapshots go to one asker; changes go out as
//! deltas, so nobody receives the whole list on every change.

use crate::model::SessionRecord;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::{json, Value};

use super::{Effects, Engine, SessionKey};

/// A typing indicator not renewed within this clears itself.
pub const TYPING_TTL_MS: i64 = 5_000;

/// Large rooms' presence changes are coalesced over this long into one `presence_diff`.
pub const PRESENCE_COALESCE_MS: i64 = 100;

/// Members per `active_users` page: the default and the most a client may ask for.
pub const MEMBERS_PAGE: u32 = 100;
pub const MEMBERS_PAGE_MAX: u32 = 500;
/// Members a joiner of a large room is shown before it asks for more: a first page of 100
/// made 6 of the 9 MB of seating 1000 listeners (`jam-load --join-storm`).
pub const JOINER_MEMBERS: usize = 20;

/// Participants with at least one connection in the room.
pub fn online_count(rec: &SessionRecord) -> usize {
    rec.online_count()
}

pub fn active_users(rec: &SessionRecord) -> Value {
    active_users_page(rec, 0, usize::MAX)
}

/// Online members from `offset`, at most `limit`, with the total count.
pub fn active_users_page(rec: &SessionRecord, offset: usize, limit: usize) -> Value {
    let online = rec.participants.iter().filter(|p| p.is_online());
    let count = online.clone().count();
    let users: Vec<Value> = online
        .skip(offset)
        .take(limit)
        .map(|p| json!({"userId": p.id, "userName": p.name, "connections": p.connections.len()}))
        .collect();
    let has_more = offset + users.len() < count;
    let mut v = json!({"sessionId": rec.id, "activeUsers": users, "count": count});
    if offset > 0 || has_more {
        v["offset"] = json!(offset);
        v["hasMore"] = json!(has_more);
    }
    v
}

impl Engine {
    pub(super) fn get_active_users(
        &mut self,
        cmd: &Command,
        sid: &str,
        offset: Option<u32>,
        limit: Option<u32>,
        fx: &mut Effects,
    ) {
        let Some(rec) = self.member_session(cmd, sid, fx) else {
            return;
        };
        let limit = limit.unwrap_or(MEMBERS_PAGE).clamp(1, MEMBERS_PAGE_MAX) as usize;
        let page = active_users_page(rec, offset.unwrap_or(0) as usize, limit);
        fx.reply(cmd, vec![frame("active_users", &page)]);
    }

    /// Whether a room is large: presence goes out as coalesced counts.
    pub(super) fn is_large(&self, rec: &SessionRecord) -> bool {
        rec.participants.len() > self.cfg.large_room
    }

    /// What the room is told about its members: the full snapshot for a small room,
    /// the count and the first page for a large one.
    pub(super) fn members_frame(&self, rec: &SessionRecord) -> bytes::Bytes {
        if self.is_large(rec) {
            frame("active_users", &active_users_page(rec, 0, JOINER_MEMBERS))
        } else {
            frame("active_users", &active_users(rec))
        }
    }

    /// Count a large room's join (`joined`) or leave for the next `presence_diff`.
    pub(super) fn coalesce(&mut self, key: &SessionKey, joined: usize, left: usize) {
        let e = self.presence.entry(key.clone()).or_default();
        e.0 += joined;
        e.1 += left;
    }

    /// One `presence_diff` {joined, left, count, participantCount, seq} per large room that
    /// changed, at most every [`PRESENCE_COALESCE_MS`]: seating a thousand listeners costs a
    /// few frames per member, not one per join.
    pub fn flush_presence(&mut self, now: i64, fx: &mut Effects) {
        if self.presence.is_empty() || now - self.last_presence_flush < PRESENCE_COALESCE_MS {
            return;
        }
        self.last_presence_flush = now;
        for (key, (joined, left)) in std::mem::take(&mut self.presence) {
            let Some(rec) = self.sessions.get_mut(&key) else {
                continue;
            };
            let seq = rec.next_seq();
            let f = frame(
                "presence_diff",
                &json!({
                    "sessionId": key.1, "joined": joined, "left": left,
                    "count": online_count(rec), "participantCount": rec.participants.len(),
                    "seq": seq,
                }),
            );
            self.keep(&key, seq, &f);
            fx.room(&key, Envelope::default(), vec![f]);
            fx.touch(&key);
        }
    }

    pub(super) fn typing(&mut self, cmd: &Command, sid: &str, is_typing: bool, fx: &mut Effects) {
        if self.member_session(cmd, sid, fx).is_none() {
            return;
        }
        let key = (cmd.tenant.clone(), sid.to_string());
        let slot = (key.clone(), cmd.user_id.clone());
        let was = self.typing.contains_key(&slot);
        if is_typing {
            self.typing
                .insert(slot, jam_shared::clock::now_ms() + TYPING_TTL_MS);
            // Renewals inside the window are not re-broadcast.
            if was {
                return;
            }
        } else if self.typing.remove(&slot).is_none() {
            return;
        }
        typing_frame(&key, &cmd.user_id, &cmd.user_name, is_typing, fx);
    }

    /// Clear typing indicators that were not renewed (called from the tick).
    pub(super) fn expire_typing(&mut self, now: i64, fx: &mut Effects) {
        let due: Vec<(SessionKey, String)> = self
            .typing
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for slot in due {
            self.stop_typing(&slot.0, &slot.1, fx);
        }
    }

    /// The user stopped typing (expiry, leaving, last connection gone).
    pub(super) fn stop_typing(&mut self, key: &SessionKey, user_id: &str, fx: &mut Effects) {
        if self
            .typing
            .remove(&(key.clone(), user_id.to_string()))
            .is_none()
        {
            return;
        }
        let name = self
            .sessions
            .get(key)
            .and_then(|r| r.participant(user_id))
            .map(|p| p.name.clone())
            .unwrap_or_else(|| user_id.to_string());
        typing_frame(key, user_id, &name, false, fx);
    }

    /// [`member_session`](Self::member_session), for changing it.
    pub(super) fn member_session_mut(
        &mut self,
        cmd: &Command,
        sid: &str,
        fx: &mut Effects,
    ) -> Option<(SessionKey, &mut SessionRecord)> {
        self.member_session(cmd, sid, fx)?;
        let key = (cmd.tenant.clone(), sid.to_string());
        let rec = self.sessions.get_mut(&key)?;
        Some((key, rec))
    }

    /// The session if it exists and the sender is a member; else the error is sent.
    pub(super) fn member_session(
        &self,
        cmd: &Command,
        sid: &str,
        fx: &mut Effects,
    ) -> Option<&SessionRecord> {
        let Some(rec) = self.sessions.get(&(cmd.tenant.clone(), sid.to_string())) else {
            fx.error(cmd, ErrorCode::SessionNotFound, "Session not found");
            return None;
        };
        if !rec.is_member(&cmd.user_id) {
            fx.error(cmd, ErrorCode::NotInSession, "Not in session");
            return None;
        }
        Some(rec)
    }
}

fn typing_frame(key: &SessionKey, user_id: &str, name: &str, is_typing: bool, fx: &mut Effects) {
    let f = frame(
        "user_typing",
        &json!({"sessionId": key.1, "userId": user_id, "userName": name, "isTyping": is_typing}),
    );
    let env = Envelope {
        except_user: Some(user_id.to_string()),
        ..Default::default()
    };
    fx.room(key, env, vec![f]);
}
