//! Chat: a message becomes durable in the batch commit, and only then is it published
//! (the sender's copy, with its `ref`, is the acknowledgement).

use crate::model::ChatMessage;
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;

use super::{page, Effects, Engine, Query};

impl Engine {
    pub(super) fn send_message(&mut self, cmd: &Command, sid: &str, text: &str, fx: &mut Effects) {
        let key = (cmd.tenant.clone(), sid.to_string());
        let Some(rec) = self.sessions.get_mut(&key) else {
            return fx.error(cmd, ErrorCode::SessionNotFound, "Session not found");
        };
        if !rec.is_member(&cmd.user_id) {
            return fx.error(cmd, ErrorCode::NotInSession, "Not in session");
        }
        // A retry (same idempotency key, hence same id) of a message already stored:
        // acknowledge it again, as it was, and store nothing.
        if let Some(done) = self.recent.get(&key).and_then(|q| q.find(&cmd.id)) {
            metrics::counter!("jam_commands_deduplicated_total").increment(1);
            let again = frame("new_message", done);
            return fx.reply(cmd, vec![again]);
        }
        let msg = ChatMessage {
            id: cmd.id.clone(),
            tenant: cmd.tenant.clone(),
            session_id: sid.to_string(),
            user_id: cmd.user_id.clone(),
            user_name: cmd.user_name.clone(),
            message: text.to_string(),
            created_at: now_ms(),
            seq: rec.next_seq(),
        };
        let out = frame("new_message", &msg);
        let seq = msg.seq;
        let keep = self.kept_messages();
        self.recent
            .entry(key.clone())
            .or_default()
            .push(msg.clone(), keep);
        // Appended, never a rewrite of the session: its seq is recovered from the messages.
        fx.messages.push(msg);
        self.keep(&key, seq, &out);
        fx.room_acked(&key, cmd, Envelope::default(), vec![out]);
    }

    pub(super) fn load_history(
        &mut self,
        cmd: &Command,
        sid: &str,
        before: Option<i64>,
        limit: Option<u32>,
        fx: &mut Effects,
    ) {
        let Some(since) = self.member_session(cmd, sid, fx).map(|r| r.created_at) else {
            return;
        };
        fx.queries.push(Query::History {
            cmd: cmd.clone(),
            session_id: sid.to_string(),
            since,
            before,
            limit: page(limit),
        });
    }
}
