//! What applying commands produces: frames to publish after the commit, and the
//! sessions and messages the commit must write.

use crate::model::{
    Attendance, ChatMessage, ContactsChange, DirectMessage, InboxChange, OnlineUser,
};
use bytes::Bytes;
use jam_shared::hash::Map;
use jam_shared::keys;
use jam_shared::protocol::event;
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;

pub type SessionKey = (String, String);

#[derive(Default)]
pub struct Effects {
    pub publishes: Vec<(String, Bytes)>,
    /// Sessions to write: `true` = deleted.
    pub dirty: Map<SessionKey, bool>,
    pub messages: Vec<ChatMessage>,
    pub direct: Vec<DirectMessage>,
    pub attendance: Vec<Attendance>,
    pub inbox: Vec<InboxChange>,
    /// Online users whose connections changed: each user's last state in the batch.
    pub online: Map<(String, String), OnlineUser>,
    pub contacts: Vec<ContactsChange>,
    /// Reads answered after the commit, off the engine's thread.
    pub queries: Vec<Query>,
}

/// A read the engine allowed (membership checked) and the consumer runs against the store.
#[derive(Debug, Clone)]
pub enum Query {
    History {
        cmd: Command,
        session_id: String,
        /// The session's creation (ms): older messages under the same id are not its own.
        since: i64,
        before: Option<i64>,
        limit: usize,
    },
    Direct {
        cmd: Command,
        with: String,
        /// Older than the cursor.
        page: Page,
    },
    /// The public sessions of the caller's tenant, across every partition.
    Sessions {
        cmd: Command,
        /// Older than the cursor.
        page: Page,
    },
    /// A page of the caller's notifications; `unread_count` as the engine keeps it.
    Notifications {
        cmd: Command,
        before: Option<i64>,
        limit: usize,
        unread_only: bool,
        unread_count: usize,
    },
    /// Which of `user_ids` are the caller's contacts, and online.
    Presence { cmd: Command, user_ids: Vec<String> },
    /// Who attended a session; with `require_host`, only if that user checked in as host.
    Attendance {
        cmd: Command,
        session_id: String,
        require_host: Option<String>,
        /// The session is live (an empty list is then an answer, not "not found").
        live: bool,
        /// Checked in after the cursor.
        page: Page,
    },
}

/// A page of a list kept in `(time, id)` order: at most `limit` rows past `cursor` in the
/// list's direction (an empty id: past the whole millisecond); from the start without one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub cursor: Option<(i64, String)>,
    pub limit: usize,
}

impl Page {
    /// The page a request names: its cursor's time and id (the id only with a time).
    pub fn new(at: Option<i64>, id: &Option<String>, limit: usize) -> Self {
        let cursor = at.map(|at| (at, id.clone().unwrap_or_default()));
        Page { cursor, limit }
    }

    /// The cursor as the store takes it.
    pub fn cursor(&self) -> Option<(i64, &str)> {
        self.cursor.as_ref().map(|(at, id)| (*at, id.as_str()))
    }
}

/// The envelope for frames to the one connection that sent `cmd`, the first carrying its `ref`.
fn to_sender(cmd: &Command) -> Envelope {
    Envelope {
        conn: Some(cmd.conn.clone()),
        ref_conn: Some(cmd.conn.clone()),
        r#ref: cmd.r#ref.clone(),
        ts: jam_shared::clock::now_us(),
        ..Default::default()
    }
}

/// The channel and payload for frames to the one connection that sent `cmd`: the inbox
/// of the gateway node holding it, so no other gateway decodes them.
pub fn reply_to(cmd: &Command, frames: &[Bytes]) -> (String, Bytes) {
    (
        keys::gateway_inbox(&cmd.gateway),
        to_sender(cmd).encode(frames),
    )
}

impl Effects {
    /// `user`'s connections changed (none left: offline).
    pub fn online(&mut self, user: OnlineUser) {
        self.online
            .insert((user.tenant.clone(), user.user_id.clone()), user);
    }

    pub fn touch(&mut self, key: &SessionKey) {
        self.dirty.insert(key.clone(), false);
    }

    pub fn delete(&mut self, key: &SessionKey) {
        self.dirty.insert(key.clone(), true);
    }

    /// Frames for one connection of the command's sender, the first carrying its `ref`.
    pub fn reply(&mut self, cmd: &Command, frames: Vec<Bytes>) {
        self.publishes.push(reply_to(cmd, &frames));
    }

    pub fn error(&mut self, cmd: &Command, code: ErrorCode, message: &str) {
        metrics::counter!("jam_command_errors_total", "code" => code.as_str()).increment(1);
        let mut env = to_sender(cmd);
        // A failed join leaves the gateway holding a pending membership: release it.
        if let Some(sid) = cmd.action.session_id() {
            env.drop_pending = Some(keys::room_channel(&cmd.tenant, sid));
        }
        self.publishes.push((
            keys::gateway_inbox(&cmd.gateway),
            env.encode(&[event::error(code, message)]),
        ));
    }

    /// A room event whose copy for the sender carries the command's `ref`. A REST caller
    /// is no member of the room, so it gets its copy on its own channel.
    pub fn room_acked(
        &mut self,
        key: &SessionKey,
        cmd: &Command,
        env: Envelope,
        frames: Vec<Bytes>,
    ) {
        if cmd.ephemeral {
            self.reply(cmd, frames.iter().take(1).cloned().collect());
        }
        let env = Envelope {
            ref_conn: Some(cmd.conn.clone()),
            r#ref: cmd.r#ref.clone(),
            ..env
        };
        self.room(key, env, frames);
    }

    pub fn room(&mut self, key: &SessionKey, env: Envelope, frames: Vec<Bytes>) {
        let env = Envelope {
            ts: jam_shared::clock::now_us(),
            ..env
        };
        self.publishes
            .push((keys::room_channel(&key.0, &key.1), env.encode(&frames)));
    }

    pub fn user(&mut self, tenant: &str, user_id: &str, env: Envelope, frames: Vec<Bytes>) {
        let env = Envelope {
            ts: jam_shared::clock::now_us(),
            ..env
        };
        self.publishes
            .push((keys::user_channel(tenant, user_id), env.encode(&frames)));
    }
}
