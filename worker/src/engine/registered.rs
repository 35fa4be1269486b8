//! Rooms the application names (show-chat-socketio.md): the backend registers a room under
//! its own id with the API key; it has no host and no expiry and stays when the last member
//! leaves. And attendance (the seed's ShowCheckin): every session records who checked in and
//! out, committed with the batch, kept after the session ends.

use crate::model::{Attendance, ParticipantRecord, SessionRecord, SessionStatus};
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Action, Command};
use jam_shared::ErrorCode;
use serde_json::json;

use super::{Effects, Engine, EventLog, Page, Query, SessionKey};
use jam_shared::protocol::action::DEFAULT_MAX_PARTICIPANTS;

impl Engine {
    /// Create the backend's room `id`, or update its name, description and limits.
    pub(super) fn register_session(&mut self, cmd: &Command, fx: &mut Effects) {
        let Action::RegisterSession {
            session_id,
            name,
            description,
            is_private,
            max_participants,
        } = &cmd.action
        else {
            return;
        };
        let key = (cmd.tenant.clone(), session_id.clone());
        let created = match self.sessions.get_mut(&key) {
            Some(rec) if !rec.managed => {
                return fx.error(
                    cmd,
                    ErrorCode::SessionExists,
                    "a session with this id exists and was not registered by the backend",
                )
            }
            Some(rec) => {
                rec.name = name.trim().to_string();
                if let Some(d) = description {
                    rec.description = d.clone();
                }
                if let Some(p) = is_private {
                    rec.is_private = *p;
                }
                if let Some(m) = max_participants {
                    rec.max_participants = *m;
                }
                false
            }
            None => {
                let rec = managed_record(&key, name, description, *is_private, *max_participants);
                self.sessions.insert(key.clone(), rec);
                metrics::gauge!("jam_sessions_active").increment(1.0);
                self.recent.insert(key.clone(), Default::default());
                self.log.insert(key.clone(), EventLog::starting_at(0));
                tracing::info!(session = %key.1, tenant = %key.0, "room registered by the backend");
                true
            }
        };
        fx.touch(&key);
        let view = self.sessions[&key].view();
        fx.reply(
            cmd,
            vec![frame(
                "session_registered",
                &json!({"session": view, "created": created}),
            )],
        );
    }

    /// The attendance list: the host's (while the session lives, or of an ended session
    /// they hosted) or the backend's; read off the engine's thread.
    pub(super) fn get_attendance(
        &mut self,
        cmd: &Command,
        sid: &str,
        backend: bool,
        page: Page,
        fx: &mut Effects,
    ) {
        let key = (cmd.tenant.clone(), sid.to_string());
        let require_host = match self.sessions.get(&key) {
            _ if backend => None,
            Some(rec) if rec.host_id == cmd.user_id => None,
            Some(_) => {
                return fx.error(
                    cmd,
                    ErrorCode::Forbidden,
                    "only the host can see who attended",
                )
            }
            // Ended (or never there): the rows say whether the caller hosted it.
            None => Some(cmd.user_id.clone()),
        };
        fx.queries.push(Query::Attendance {
            cmd: cmd.clone(),
            session_id: sid.to_string(),
            require_host,
            live: self.sessions.contains_key(&key),
            page,
        });
    }
}

fn managed_record(
    key: &SessionKey,
    name: &str,
    description: &Option<String>,
    is_private: Option<bool>,
    max_participants: Option<u32>,
) -> SessionRecord {
    let now = now_ms();
    SessionRecord {
        tenant: key.0.clone(),
        id: key.1.clone(),
        name: name.trim().to_string(),
        description: description.clone().unwrap_or_default(),
        host_id: String::new(),
        is_private: is_private.unwrap_or(false),
        password_hash: None,
        max_participants: max_participants.unwrap_or(DEFAULT_MAX_PARTICIPANTS),
        participants: Vec::new(),
        removed: Vec::new(),
        fresh: true,
        status: SessionStatus::Active,
        created_at: now,
        expires_at: i64::MAX,
        last_seq: 0,
        playback: None,
        current_track: None,
        queue: Vec::new(),
        last_check_at: now,
        managed: true,
        index: Default::default(),
        online: 0,
    }
}

/// `p` checked into (`out` = `None`) or out of session `key`.
pub(super) fn attendance(
    key: &SessionKey,
    host_id: &str,
    p: &ParticipantRecord,
    out: Option<i64>,
) -> Attendance {
    Attendance {
        tenant: key.0.clone(),
        session_id: key.1.clone(),
        user_id: p.id.clone(),
        user_name: p.name.clone(),
        host: p.id == host_id,
        checked_in_at: p.joined_at,
        checked_out_at: out,
    }
}
