//! Direct messages between two users of one tenant: committed, then delivered to every
//! connection of the receiver (whatever gateway) and acknowledged to the sender.

use crate::model::DirectMessage;
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;

use super::{Effects, Engine};

impl Engine {
    pub(super) fn direct_message(
        &mut self,
        cmd: &Command,
        receiver: &str,
        content: &str,
        fx: &mut Effects,
    ) {
        if receiver == cmd.user_id {
            return fx.error(
                cmd,
                ErrorCode::BadRequest,
                "cannot send a direct message to yourself",
            );
        }
        let dm = DirectMessage {
            id: cmd.id.clone(),
            tenant: cmd.tenant.clone(),
            sender_id: cmd.user_id.clone(),
            sender_name: cmd.user_name.clone(),
            receiver_id: receiver.to_string(),
            content: content.to_string(),
            created_at: now_ms(),
        };
        let f = frame("direct_message", &dm);
        fx.user(&cmd.tenant, receiver, Envelope::default(), vec![f.clone()]);
        fx.reply(cmd, vec![f]);
        fx.direct.push(dm);
        self.direct_contacts(cmd, receiver, fx);
        metrics::counter!("jam_direct_messages_total").increment(1);
    }
}
