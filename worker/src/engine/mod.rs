//! The session engine: the single writer of every session it owns. Commands are applied
//! one at a time in stream order; each produces [`Effects`] that the consumer commits,
//! then publishes, then acknowledges.

mod chat;
mod direct;
pub mod effects;
mod playback;
mod presence;
mod queue;
mod sessions;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use jam_shared::protocol::model::{ChatMessage, SessionRecord};
use jam_shared::protocol::{Action, Command};
use jam_shared::store::{Batch, Store, StoreError};

pub use effects::{Effects, Query, SessionKey};
pub use timers::GatewayLiveness;

/// Knobs the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub history_limit: usize,
    pub session_timeout: Duration,
    pub host_grace: Duration,
    pub gateway_dead_after: Duration,
    pub sync_interval: Duration,
    pub sync: crate::sync::SyncParams,
}

pub struct Engine {
    cfg: EngineConfig,
    sessions: HashMap<SessionKey, SessionRecord>,
    /// The last `history_limit` messages per session: a joiner's history without a query.
    recent: HashMap<SessionKey, VecDeque<ChatMessage>>,
    /// Who is typing where, until when (ms). Ephemeral: never stored.
    typing: HashMap<(SessionKey, String), i64>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            recent: HashMap::new(),
            typing: HashMap::new(),
        }
    }

    /// Load every active session and its recent messages (start or takeover).
    pub async fn load(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        for mut rec in store.load_sessions().await? {
            // Participant reports are not persisted as they arrive; whatever the row holds
            // is stale. The next report of each participant starts over.
            for p in rec.participants.iter_mut() {
                p.playback = None;
            }
            let key = (rec.tenant.clone(), rec.id.clone());
            let msgs = store
                .history(&rec.tenant, &rec.id, None, self.cfg.history_limit)
                .await?;
            self.recent.insert(key.clone(), msgs.into());
            self.sessions.insert(key, rec);
        }
        metrics::gauge!("jam_sessions_active").set(self.sessions.len() as f64);
        tracing::info!(sessions = self.sessions.len(), "engine loaded");
        Ok(())
    }

    pub fn session(&self, tenant: &str, id: &str) -> Option<&SessionRecord> {
        self.sessions.get(&(tenant.to_string(), id.to_string()))
    }

    /// Apply one command. Never fails: bad commands become error replies.
    pub async fn apply(&mut self, cmd: &Command, fx: &mut Effects) {
        let kind = action_name(&cmd.action);
        metrics::counter!("jam_commands_total", "type" => kind).increment(1);
        match &cmd.action {
            Action::CreateSession { .. } => self.create_session(cmd, fx),
            Action::JoinSession {
                session_id,
                password,
                capabilities,
            } => {
                let can_rate = capabilities.is_some_and(|c| c.rate);
                self.join_session(cmd, session_id, password.as_deref(), can_rate, fx)
                    .await
            }
            Action::LeaveSession { session_id } => self.leave_session(cmd, session_id, fx),
            Action::GetSessions {} => self.get_sessions(cmd, fx),
            Action::EndSession { session_id } => self.end_session(cmd, session_id, fx),
            Action::SendMessage {
                session_id,
                message,
            } => self.send_message(cmd, session_id, message, fx),
            Action::GetActiveUsers { session_id } => self.get_active_users(cmd, session_id, fx),
            Action::Typing {
                session_id,
                is_typing,
            } => self.typing(cmd, session_id, *is_typing, fx),
            Action::LoadHistory {
                session_id,
                before,
                limit,
            } => self.load_history(cmd, session_id, *before, *limit, fx),
            Action::DirectMessage {
                receiver_id,
                content,
            } => self.direct_message(cmd, receiver_id, content, fx),
            Action::LoadDirect {
                with,
                before,
                limit,
            } => fx.queries.push(Query::Direct {
                cmd: cmd.clone(),
                with: with.clone(),
                before: *before,
                limit: page(*limit),
            }),
            Action::PlaybackState {
                session_id,
                track_uri,
                position,
                is_playing,
                ..
            } => self.playback_state(cmd, session_id, track_uri, *position, *is_playing, fx),
            Action::PlaybackReport {
                session_id,
                track_uri,
                position,
                is_playing,
            } => self.playback_report(cmd, session_id, track_uri, *position, *is_playing, fx),
            Action::TrackChange {
                session_id,
                track_uri,
                track,
                position,
            } => self.track_change(
                cmd,
                session_id,
                track_uri.as_deref(),
                track.as_ref(),
                *position,
                fx,
            ),
            Action::RequestSync { session_id } => self.request_sync(cmd, session_id, fx),
            Action::SetOffset {
                session_id,
                offset_ms,
            } => self.set_offset(cmd, session_id, *offset_ms, fx),
            Action::AddTrack { session_id, track } => self.add_track(cmd, session_id, track, fx),
            Action::RemoveTrack {
                session_id,
                track_id,
            } => self.remove_track(cmd, session_id, track_id, fx),
            Action::GetState { session_id } => self.get_state(cmd, session_id, fx),
            Action::Disconnect { session_id } => {
                let key = (cmd.tenant.clone(), session_id.clone());
                self.drop_connection(&key, &cmd.user_id, &cmd.conn, fx);
            }
        }
        fx.command_ids.push(cmd.id.clone());
    }

    /// Turn the effects' dirty set into the batch to commit.
    pub fn batch(&self, fx: &mut Effects) -> Batch {
        let mut batch = Batch {
            messages: std::mem::take(&mut fx.messages),
            direct: std::mem::take(&mut fx.direct),
            command_ids: std::mem::take(&mut fx.command_ids),
            ..Default::default()
        };
        for (key, deleted) in fx.dirty.drain() {
            match (deleted, self.sessions.get(&key)) {
                (false, Some(rec)) => batch.upserts.push(rec.clone()),
                _ => batch.deletes.push(key),
            }
        }
        // Messages of a session deleted in this batch go with it.
        let deleted: HashSet<&SessionKey> = batch.deletes.iter().collect();
        batch
            .messages
            .retain(|m| !deleted.contains(&(m.tenant.clone(), m.session_id.clone())));
        metrics::gauge!("jam_sessions_active").set(self.sessions.len() as f64);
        batch
    }

    fn remove_session(&mut self, key: &SessionKey, fx: &mut Effects) {
        self.sessions.remove(key);
        self.recent.remove(key);
        fx.delete(key);
    }
}

pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::CreateSession { .. } => "create_session",
        Action::JoinSession { .. } => "join_session",
        Action::LeaveSession { .. } => "leave_session",
        Action::GetSessions {} => "get_sessions",
        Action::EndSession { .. } => "end_session",
        Action::SendMessage { .. } => "send_message",
        Action::GetActiveUsers { .. } => "get_active_users",
        Action::Typing { .. } => "typing",
        Action::LoadHistory { .. } => "load_history",
        Action::DirectMessage { .. } => "direct_message",
        Action::LoadDirect { .. } => "load_direct",
        Action::PlaybackState { .. } => "playback_state",
        Action::PlaybackReport { .. } => "playback_report",
        Action::TrackChange { .. } => "track_change",
        Action::RequestSync { .. } => "request_sync",
        Action::SetOffset { .. } => "set_offset",
        Action::AddTrack { .. } => "add_track",
        Action::RemoveTrack { .. } => "remove_track",
        Action::GetState { .. } => "get_state",
        Action::Disconnect { .. } => "disconnect",
    }
}

/// A page size from a client's `limit` (validated ≤ 100 at the gateway).
pub fn page(limit: Option<u32>) -> usize {
    limit
        .unwrap_or(jam_shared::protocol::action::DEFAULT_HISTORY_PAGE)
        .min(jam_shared::protocol::action::MAX_HISTORY_PAGE) as usize
}
