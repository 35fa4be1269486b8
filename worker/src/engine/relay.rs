//! The reference server's sync relay (jam-server-reference.md): `sync_request` from a
//! member reaches the host, the host's `sync_response` reaches the asker (or the session).
//! Relayed as the seed does, but with the sender's identity from its token and only
//! between members of the same session; beside jam's own server-side sync.

use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::{Map, Value};

use super::effects::Effects;
use super::Engine;

impl Engine {
    pub(super) fn sync_relay(
        &mut self,
        cmd: &Command,
        sid: &str,
        response: bool,
        to: Option<&str>,
        data: &Map<String, Value>,
        fx: &mut Effects,
    ) {
        let Some(rec) = self.member_session(cmd, sid, fx) else {
            return;
        };
        let host = rec.host_id.clone();
        if response && cmd.user_id != host {
            fx.error(
                cmd,
                ErrorCode::Forbidden,
                "Only the host answers sync requests",
            );
            return;
        }
        if let Some(to) = to.filter(|t| !rec.is_member(t)) {
            tracing::debug!(to, "sync_response to a non-member dropped");
            fx.error(
                cmd,
                ErrorCode::NotInSession,
                "That user is not in the session",
            );
            return;
        }
        let mut body = data.clone();
        body.insert("sessionId".into(), Value::from(sid));
        body.insert("userId".into(), Value::from(cmd.user_id.as_str()));
        body.insert("userName".into(), Value::from(cmd.user_name.as_str()));
        let key = (cmd.tenant.clone(), sid.to_string());
        if response {
            let f = frame("sync_response", &Value::Object(body));
            match to {
                Some(to) => fx.user(&cmd.tenant, to, Envelope::default(), vec![f]),
                None => {
                    let env = Envelope {
                        except_user: Some(cmd.user_id.clone()),
                        ..Default::default()
                    };
                    fx.room(&key, env, vec![f]);
                }
            }
            return;
        }
        if cmd.user_id != host {
            let f = frame("sync_request", &Value::Object(body));
            fx.user(&cmd.tenant, &host, Envelope::default(), vec![f]);
        }
        // And jam's own answer, as for `request_sync`.
        self.request_sync(cmd, sid, fx);
    }
}
