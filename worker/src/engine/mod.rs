//! The session engine: the single writer of every session it owns. Commands are applied
//! one at a time in stream order; each produces [`Effects`] that the consumer commits,
//! then publishes, then acknowledges.

mod chat;
mod contacts;
mod deadlines;
mod direct;
pub mod effects;
mod gateways;
mod notifications;
mod playback;
mod presence;
#[cfg(test)]
mod proptests;
mod queue;
mod recent;
mod recovery;
mod registered;
mod relay;
mod sessions;
#[cfg(test)]
mod tests;
mod timers;

use std::time::Duration;

use jam_shared::hash::Map;

use crate::model::SessionRecord;
use crate::store::{Batch, ParticipantChange, RowChange, Store, StoreError};
use bytes::Bytes;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Action, Command};

pub use effects::{Effects, Page, Query, SessionKey};
use recovery::EventLog;
pub use timers::GatewayLiveness;

/// Knobs the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub history_limit: usize,
    /// Participants above which presence goes out as coalesced counts.
    pub large_room: usize,
    /// Room events kept per session for reconnect recovery (`sinceSeq`).
    pub recovery_events: usize,
    pub session_timeout: Duration,
    pub host_grace: Duration,
    pub gateway_dead_after: Duration,
    pub sync_interval: Duration,
    pub sync: crate::sync::SyncParams,
}

pub struct Engine {
    cfg: EngineConfig,
    sessions: Map<SessionKey, SessionRecord>,
    /// The last messages per session ([`Engine::kept_messages`]): a joiner's history
    /// without a query, and the window in which a retried message (same idempotency key)
    /// is recognised.
    recent: Map<SessionKey, recent::Recent>,
    /// The last room events per session, for members that rejoin with `sinceSeq`.
    log: Map<SessionKey, EventLog>,
    /// Who is typing where, until when (ms). Ephemeral: never stored.
    typing: Map<(SessionKey, String), i64>,
    /// Large rooms' presence changes since the last `presence_diff`: (joined, left).
    presence: Map<SessionKey, (usize, usize)>,
    last_presence_flush: i64,
    /// Users' notification inboxes touched on this partition.
    inboxes: notifications::Inboxes,
    /// Who is online, who watches them, direct typing.
    people: contacts::People,
    /// The gateways that connections name, one copy each.
    gateways: gateways::Gateways,
    /// Session expiry, host grace and drift checks, by time.
    deadlines: deadlines::Deadlines,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            sessions: Map::default(),
            recent: Map::default(),
            log: Map::default(),
            typing: Map::default(),
            presence: Map::default(),
            last_presence_flush: 0,
            inboxes: Default::default(),
            gateways: Default::default(),
            deadlines: Default::default(),
            people: Default::default(),
        }
    }

    /// Load the active sessions of one partition and their recent messages (claim).
    pub async fn load(
        &mut self,
        store: &dyn Store,
        partition: u32,
        partitions: u32,
    ) -> Result<(), StoreError> {
        for mut rec in store.load_sessions(partition).await? {
            if jam_shared::keys::partition_of(&rec.id, partitions) != partition {
                continue;
            }
            // Participant reports are not persisted as they arrive; whatever the row holds
            // is stale. The next report of each participant starts over.
            for p in rec.participants.iter_mut() {
                p.playback = None;
                for c in p.connections.iter_mut() {
                    c.gateway = self.gateways.intern(&c.gateway);
                }
            }
            rec.reindex();
            let key = (rec.tenant.clone(), rec.id.clone());
            self.arm(&key, &rec);
            let msgs = store
                .history(
                    &rec.tenant,
                    &rec.id,
                    rec.created_at,
                    None,
                    self.kept_messages(),
                )
                .await?;
            let log = EventLog::from_messages(rec.last_seq, &msgs, |m| frame("new_message", m));
            self.log.insert(key.clone(), log);
            self.recent.insert(key.clone(), msgs.into());
            self.sessions.insert(key, rec);
        }
        metrics::gauge!("jam_sessions_active").increment(self.sessions.len() as f64);
        self.load_online(store.load_online(partition).await?);
        tracing::info!(
            partition,
            sessions = self.sessions.len(),
            "partition loaded"
        );
        Ok(())
    }

    /// How many recent messages a session keeps in memory: a joiner's history, and at
    /// least the recovery window, so a retry is recognised as long as it could be recovered.
    pub(super) fn kept_messages(&self) -> usize {
        self.cfg.history_limit.max(self.cfg.recovery_events)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The stored hash a command must be verified against before it applies: a join of a
    /// non-member to a session with a password. Verification runs off the engine's
    /// thread; its outcome comes back through [`Engine::apply_verified`].
    pub fn password_needed(&self, cmd: &Command) -> Option<String> {
        let Action::JoinSession { session_id, .. } = &cmd.action else {
            return None;
        };
        let rec = self
            .sessions
            .get(&(cmd.tenant.clone(), session_id.clone()))?;
        if rec.is_member(&cmd.user_id) {
            return None;
        }
        rec.password_hash.clone()
    }

    /// Apply a join whose password was checked (`ok`) off the engine's thread.
    pub fn apply_verified(&mut self, cmd: &Command, ok: bool, fx: &mut Effects) {
        if let Action::JoinSession {
            session_id,
            capabilities,
            ..
        } = &cmd.action
        {
            metrics::counter!("jam_commands_total", "type" => "join_session").increment(1);
            let can_rate = capabilities.is_some_and(|c| c.rate);
            self.join_session(cmd, session_id, Some(ok), can_rate, fx);
        }
    }

    pub fn session(&self, tenant: &str, id: &str) -> Option<&SessionRecord> {
        self.sessions.get(&(tenant.to_string(), id.to_string()))
    }

    /// Apply one command. Never fails: bad commands become error replies. Synchronous:
    /// a join that needs its password checked goes through [`Engine::password_needed`].
    pub fn apply(&mut self, cmd: &Command, fx: &mut Effects) {
        let kind = action_name(&cmd.action);
        jam_shared::telemetry::count("jam_commands_total", Some(("type", kind)), 1);
        match &cmd.action {
            Action::CreateSession { .. } => self.create_session(cmd, fx),
            Action::JoinSession {
                session_id,
                capabilities,
                ..
            } => {
                let can_rate = capabilities.is_some_and(|c| c.rate);
                self.join_session(cmd, session_id, None, can_rate, fx)
            }
            Action::LeaveSession { session_id } => self.leave_session(cmd, session_id, fx),
            Action::GetSessions {
                before,
                before_id,
                limit,
            } => fx.queries.push(Query::Sessions {
                cmd: cmd.clone(),
                page: Page::new(*before, before_id, page(*limit)),
            }),
            Action::EndSession { session_id } => self.end_session(cmd, session_id, fx),
            Action::SendMessage {
                session_id,
                message,
            } => self.send_message(cmd, session_id, message, fx),
            Action::GetActiveUsers {
                session_id,
                offset,
                limit,
            } => self.get_active_users(cmd, session_id, *offset, *limit, fx),
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
                before_id,
                limit,
            } => fx.queries.push(Query::Direct {
                cmd: cmd.clone(),
                with: with.clone(),
                page: Page::new(*before, before_id, page(*limit)),
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
            Action::SyncRelay {
                session_id,
                response,
                to_user_id,
                data,
            } => self.sync_relay(cmd, session_id, *response, to_user_id.as_deref(), data, fx),
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
            Action::RegisterSession { .. } => self.register_session(cmd, fx),
            Action::Notify { .. } => self.notify(cmd, fx),
            Action::NotificationRead { notification_id } => {
                self.notification_read(cmd, *notification_id, fx)
            }
            Action::NotificationReadAll {} => self.notification_read_all(cmd, fx),
            Action::NotificationDelete { notification_id } => {
                self.notification_delete(cmd, *notification_id, fx)
            }
            Action::LoadNotifications {
                before,
                limit,
                unread,
            } => self.load_notifications(cmd, *before, *limit, unread.unwrap_or(false), fx),
            Action::UserOnline {} => self.user_online(cmd, fx),
            Action::UserOffline {} => self.user_offline(cmd, fx),
            Action::TypingTo {
                friend_id,
                is_typing,
            } => self.typing_to(cmd, friend_id, *is_typing, jam_shared::clock::now_ms(), fx),
            Action::GetPresence { user_ids } => self.get_presence(cmd, user_ids, fx),
            Action::SetContacts { contacts } => self.set_contacts(cmd, contacts, fx),
            Action::GetAttendance {
                session_id,
                backend,
                after,
                after_user_id,
                limit,
            } => {
                let most = jam_shared::protocol::action::MAX_ATTENDANCE_PAGE;
                let page = Page::new(*after, after_user_id, limit.unwrap_or(most) as usize);
                self.get_attendance(cmd, session_id, *backend, page, fx)
            }
        }
    }

    /// Turn the effects' dirty set into the batch to commit.
    pub fn batch(&mut self, fx: &mut Effects) -> Batch {
        let mut batch = Batch {
            messages: std::mem::take(&mut fx.messages),
            direct: std::mem::take(&mut fx.direct),
            attendance: std::mem::take(&mut fx.attendance),
            inbox: std::mem::take(&mut fx.inbox),
            contacts: std::mem::take(&mut fx.contacts),
            online: fx.online.drain().map(|(_, u)| u).collect(),
            ..Default::default()
        };
        for (key, deleted) in fx.dirty.drain() {
            let change = |row| ParticipantChange {
                tenant: key.0.clone(),
                session_id: key.1.clone(),
                row,
            };
            let Some(rec) = self.sessions.get_mut(&key).filter(|_| !deleted) else {
                batch.participants.push(change(RowChange::Clear));
                batch.deletes.push(key);
                continue;
            };
            let c = rec.take_changes();
            if c.fresh {
                batch.participants.push(change(RowChange::Clear));
            }
            let gone = c.removed.into_iter().map(RowChange::Delete);
            let changed = c
                .changed
                .into_iter()
                .map(|p| RowChange::Upsert(Box::new(p)));
            batch.participants.extend(gone.chain(changed).map(change));
            batch.upserts.push(c.row);
        }
        // Messages stay when their session ends: only the retention purge deletes them.
        batch
    }

    /// Keep a room event (number `seq`) for members that rejoin with `sinceSeq`.
    fn keep(&mut self, key: &SessionKey, seq: i64, frame: &Bytes) {
        let cap = self.cfg.recovery_events;
        self.log
            .entry(key.clone())
            .or_default()
            .push(seq, frame.clone(), cap);
    }

    fn remove_session(&mut self, key: &SessionKey, fx: &mut Effects) {
        if let Some(rec) = self.sessions.remove(key) {
            self.deadlines
                .cancel(rec.expires_at, deadlines::Due::Expiry, key);
            metrics::gauge!("jam_sessions_active").decrement(1.0);
        }
        self.recent.remove(key);
        self.log.remove(key);
        fx.delete(key);
    }
}

/// A partition handed over takes its sessions off this process's gauge.
impl Drop for Engine {
    fn drop(&mut self) {
        metrics::gauge!("jam_sessions_active").decrement(self.sessions.len() as f64);
    }
}

pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::CreateSession { .. } => "create_session",
        Action::JoinSession { .. } => "join_session",
        Action::LeaveSession { .. } => "leave_session",
        Action::GetSessions { .. } => "get_sessions",
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
        Action::SyncRelay {
            response: false, ..
        } => "sync_request",
        Action::SyncRelay { response: true, .. } => "sync_response",
        Action::SetOffset { .. } => "set_offset",
        Action::AddTrack { .. } => "add_track",
        Action::RemoveTrack { .. } => "remove_track",
        Action::GetState { .. } => "get_state",
        Action::Disconnect { .. } => "disconnect",
        Action::RegisterSession { .. } => "register_session",
        Action::Notify { .. } => "notify",
        Action::NotificationRead { .. } => "notification_read",
        Action::NotificationReadAll {} => "notification_read_all",
        Action::NotificationDelete { .. } => "notification_delete",
        Action::LoadNotifications { .. } => "load_notifications",
        Action::UserOnline {} => "user_online",
        Action::UserOffline {} => "user_offline",
        Action::TypingTo { .. } => "typing_to",
        Action::GetPresence { .. } => "get_presence",
        Action::SetContacts { .. } => "set_contacts",
        Action::GetAttendance { .. } => "get_attendance",
    }
}

/// A page size from a client's `limit` (validated ≤ 100 at the gateway).
pub fn page(limit: Option<u32>) -> usize {
    limit
        .unwrap_or(jam_shared::protocol::action::DEFAULT_HISTORY_PAGE)
        .min(jam_shared::protocol::action::MAX_HISTORY_PAGE) as usize
}
