//! What a gateway asks the worker to do on a client's behalf: the internal command that
//! travels inside [`super::Command`] on the bus. Clients never write it: their frames parse
//! into the gateway's own wire types, which hold only what a client may set.

use serde::{Deserialize, Serialize};

use super::sync::{Capabilities, TrackInput};
use crate::ErrorCode;

pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Most users one `get_presence` may ask about.
pub const MAX_PRESENCE_QUERY: usize = 100;
/// Most contacts a backend may set for one user.
pub const MAX_CONTACTS: usize = 1000;
/// A notification's `priority`; the seed sends `HIGH`.
pub const NOTIFICATION_PRIORITIES: [&str; 4] = ["LOW", "NORMAL", "HIGH", "URGENT"];
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
pub const MAX_PASSWORD_CHARS: usize = 128;
pub const MAX_PARTICIPANTS_LIMIT: u32 = 10_000;
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 50;
pub const MAX_HISTORY_PAGE: u32 = 100;
/// The longest message id a page cursor may name (`beforeId`).
pub const MAX_CURSOR_ID: usize = 256;
/// The largest page of an attendance list (and its default).
pub const MAX_ATTENDANCE_PAGE: u32 = 1000;
pub const DEFAULT_HISTORY_PAGE: u32 = 50;
pub const MAX_OFFSET_MS: f64 = 3_600_000.0;
/// Positions beyond ten days are not a track.
pub const MAX_POSITION_MS: f64 = 864_000_000.0;

type Checked = Result<(), (ErrorCode, String)>;

fn valid_uri(u: &str) -> Checked {
    if u.trim().is_empty() || u.len() > 256 {
        return Err((
            ErrorCode::BadRequest,
            "trackUri must be 1 to 256 characters".into(),
        ));
    }
    Ok(())
}

fn valid_position(p: f64) -> Checked {
    if !p.is_finite() || p.abs() > MAX_POSITION_MS {
        return Err((
            ErrorCode::BadRequest,
            "position must be a number of milliseconds".into(),
        ));
    }
    Ok(())
}

fn valid_track(t: &TrackInput) -> Checked {
    valid_uri(&t.uri)?;
    let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.chars().count() > 200);
    if long(&t.name) || long(&t.artist) {
        return Err((
            ErrorCode::BadRequest,
            "track name and artist must be at most 200 characters".into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    #[serde(rename_all = "camelCase")]
    CreateSession {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        is_private: Option<bool>,
        #[serde(default)]
        max_participants: Option<u32>,
        /// Made by the gateway from the client's password (its own argon2 parameters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_hash: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    JoinSession {
        session_id: String,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        capabilities: Option<Capabilities>,
        /// The last room `seq` the client saw: rejoin with the events missed since.
        #[serde(default)]
        since_seq: Option<i64>,
        /// Sent as show-chat's `join_show`: an unknown id is "Show not found".
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        show: bool,
    },
    #[serde(rename_all = "camelCase")]
    LeaveSession {
        session_id: String,
    },
    /// A page of the tenant's public, active sessions, newest first.
    #[serde(rename_all = "camelCase")]
    GetSessions {
        /// Older than this `createdAt` (ms), or with `before_id` than that session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    EndSession {
        session_id: String,
    },
    #[serde(rename_all = "camelCase")]
    SendMessage {
        session_id: String,
        message: String,
    },
    #[serde(rename_all = "camelCase")]
    GetActiveUsers {
        session_id: String,
        /// Paging for large rooms: members from `offset`, at most `limit` (≤ 500).
        #[serde(default)]
        offset: Option<u32>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    Typing {
        session_id: String,
        is_typing: bool,
    },
    #[serde(rename_all = "camelCase")]
    LoadHistory {
        session_id: String,
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    DirectMessage {
        receiver_id: String,
        content: String,
    },
    /// The direct-message conversation with one user (REST `GET /api/messages/direct`).
    #[serde(rename_all = "camelCase")]
    LoadDirect {
        with: String,
        /// Older than this `createdAt` (ms)...
        #[serde(default)]
        before: Option<i64>,
        /// ...or, with it, than the message of this `createdAt` and id: the first message
        /// of the previous page, so that a page boundary inside a millisecond loses nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_id: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Host only: where the host's player is.
    #[serde(rename_all = "camelCase")]
    PlaybackState {
        session_id: String,
        track_uri: String,
        position: f64,
        is_playing: bool,
        /// The client's own clock: kept for compatibility, never trusted.
        #[serde(default)]
        timestamp: Option<f64>,
    },
    /// A participant's own position.
    #[serde(rename_all = "camelCase")]
    PlaybackReport {
        session_id: String,
        track_uri: String,
        position: f64,
        is_playing: bool,
    },
    /// Host only: play another track (from the queue when its uri is queued).
    #[serde(rename_all = "camelCase")]
    TrackChange {
        session_id: String,
        #[serde(default)]
        track_uri: Option<String>,
        #[serde(default)]
        track: Option<TrackInput>,
        #[serde(default)]
        position: Option<f64>,
    },
    #[serde(rename_all = "camelCase")]
    RequestSync {
        session_id: String,
    },
    /// `sync_request` (a member to the host) or `sync_response` (the host to `to_user_id`,
    /// or the session), relayed with the sender's identity; `data` is the client's other
    /// fields, already stripped of server-set ones by the gateway.
    #[serde(rename_all = "camelCase")]
    SyncRelay {
        session_id: String,
        response: bool,
        #[serde(default)]
        to_user_id: Option<String>,
        #[serde(default)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    #[serde(rename_all = "camelCase")]
    SetOffset {
        session_id: String,
        offset_ms: f64,
    },
    #[serde(rename_all = "camelCase")]
    AddTrack {
        session_id: String,
        track: TrackInput,
    },
    #[serde(rename_all = "camelCase")]
    RemoveTrack {
        session_id: String,
        track_id: String,
    },
    /// The sync view of a session (REST `GET /api/sessions/{id}/state`).
    #[serde(rename_all = "camelCase")]
    GetState {
        session_id: String,
    },
    /// Internal: one connection of a member went away (sent by its gateway, per session).
    #[serde(rename_all = "camelCase")]
    Disconnect {
        session_id: String,
    },
    /// The application's backend (API key) creates or updates a room under its own id
    /// (a show's chat): no host, no expiry, kept when empty.
    #[serde(rename_all = "camelCase")]
    RegisterSession {
        session_id: String,
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        is_private: Option<bool>,
        #[serde(default)]
        max_participants: Option<u32>,
    },
    /// The application's backend (API key) puts a notification in the command's user's
    /// inbox (dj-system-socketio.md); the server numbers it.
    #[serde(rename_all = "camelCase")]
    Notify {
        kind: String,
        priority: String,
        title: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        data: serde_json::Value,
    },
    #[serde(rename_all = "camelCase")]
    NotificationRead {
        notification_id: i64,
    },
    NotificationReadAll {},
    #[serde(rename_all = "camelCase")]
    NotificationDelete {
        notification_id: i64,
    },
    /// A page of the caller's inbox, newest first: ids below `before`, unread ones only
    /// with `unread`.
    #[serde(rename_all = "camelCase")]
    LoadNotifications {
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        unread: Option<bool>,
    },
    /// Internal: a connection of the command's user opened (sent by its gateway). The
    /// user's first connection anywhere makes them online to the people who watch them.
    UserOnline {},
    /// Internal: that connection closed; the last one makes them offline.
    UserOffline {},
    /// ws-chat-server.md's `typing_start` / `typing_stop` to one user; cleared by the
    /// server after 5 s.
    #[serde(rename_all = "camelCase")]
    TypingTo {
        friend_id: String,
        is_typing: bool,
    },
    /// Whether some of the caller's contacts are online (at most 100 asked).
    #[serde(rename_all = "camelCase")]
    GetPresence {
        user_ids: Vec<String>,
    },
    /// The application's backend (API key) sets the people the command's user watches.
    SetContacts {
        contacts: Vec<String>,
    },
    /// Who checked in and out of a session; the host's or, with `backend`, the API key's.
    #[serde(rename_all = "camelCase")]
    GetAttendance {
        session_id: String,
        /// Set by the gateway for a call with the API key, never by a client.
        #[serde(default)]
        backend: bool,
        /// Checked in after this time (ms), or with `after_user_id` after that row.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_user_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
}

impl Action {
    /// The session this action is about, which decides its partition.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Action::CreateSession { session_id, .. } => session_id.as_deref(),
            Action::JoinSession { session_id, .. }
            | Action::LeaveSession { session_id }
            | Action::EndSession { session_id }
            | Action::SendMessage { session_id, .. }
            | Action::GetActiveUsers { session_id, .. }
            | Action::Typing { session_id, .. }
            | Action::LoadHistory { session_id, .. }
            | Action::PlaybackState { session_id, .. }
            | Action::PlaybackReport { session_id, .. }
            | Action::TrackChange { session_id, .. }
            | Action::RequestSync { session_id }
            | Action::SyncRelay { session_id, .. }
            | Action::SetOffset { session_id, .. }
            | Action::AddTrack { session_id, .. }
            | Action::RemoveTrack { session_id, .. }
            | Action::GetState { session_id }
            | Action::Disconnect { session_id }
            | Action::RegisterSession { session_id, .. }
            | Action::GetAttendance { session_id, .. } => Some(session_id),
            Action::GetSessions { .. }
            | Action::DirectMessage { .. }
            | Action::LoadDirect { .. }
            | Action::Notify { .. }
            | Action::NotificationRead { .. }
            | Action::NotificationReadAll {}
            | Action::NotificationDelete { .. }
            | Action::LoadNotifications { .. }
            | Action::UserOnline {}
            | Action::UserOffline {}
            | Action::TypingTo { .. }
            | Action::GetPresence { .. }
            | Action::SetContacts { .. } => None,
        }
    }

    /// Field checks that need no state: done by the gateway before anything reaches the bus.
    pub fn validate(&self) -> Result<(), (ErrorCode, String)> {
        let bad = |m: &str| Err((ErrorCode::BadRequest, m.to_string()));
        if let Some(id) = self.session_id() {
            if !crate::ids::is_valid_session_id(id) {
                if let Action::RegisterSession { .. } = self {
                    return bad("the id must be 1 to 32 letters and digits");
                }
                let what = match self {
                    Action::JoinSession { show: true, .. } => "Show not found",
                    _ => "Session not found",
                };
                return Err((ErrorCode::SessionNotFound, what.into()));
            }
        }
        match self {
            Action::CreateSession {
                name,
                description,
                max_participants,
                ..
            }
            | Action::RegisterSession {
                name,
                description,
                max_participants,
                ..
            } => {
                if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
                    return bad("name must be 1 to 100 characters");
                }
                if description
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
                {
                    return bad("description must be at most 500 characters");
                }
                if max_participants.is_some_and(|m| m == 0 || m > MAX_PARTICIPANTS_LIMIT) {
                    return bad("maxParticipants must be 1 to 10000");
                }
                Ok(())
            }
            Action::SendMessage { message, .. } => {
                if message.trim().is_empty() {
                    return bad("message must not be empty");
                }
                if message.chars().count() > MAX_MESSAGE_CHARS {
                    return bad("message must be at most 2000 characters");
                }
                Ok(())
            }
            Action::DirectMessage {
                receiver_id,
                content,
            } => {
                if receiver_id.is_empty() || receiver_id.len() > 128 {
                    return bad("receiverId must be 1 to 128 characters");
                }
                if content.trim().is_empty() || content.chars().count() > MAX_MESSAGE_CHARS {
                    return bad("content must be 1 to 2000 characters");
                }
                Ok(())
            }
            Action::PlaybackState {
                track_uri,
                position,
                ..
            }
            | Action::PlaybackReport {
                track_uri,
                position,
                ..
            } => {
                valid_uri(track_uri)?;
                valid_position(*position)
            }
            Action::TrackChange {
                track_uri,
                track,
                position,
                ..
            } => {
                match (track_uri, track) {
                    (Some(u), _) => valid_uri(u)?,
                    (None, Some(t)) => valid_track(t)?,
                    (None, None) => return bad("trackUri or track is required"),
                }
                if let Some(t) = track {
                    valid_track(t)?;
                }
                position.map(valid_position).unwrap_or(Ok(()))
            }
            Action::SetOffset { offset_ms, .. } => {
                if !offset_ms.is_finite() || offset_ms.abs() > MAX_OFFSET_MS {
                    return bad("offsetMs must be within ±3600000");
                }
                Ok(())
            }
            Action::AddTrack { track, .. } => valid_track(track),
            Action::RemoveTrack { track_id, .. } => {
                if track_id.is_empty() || track_id.len() > 64 {
                    return bad("trackId must be 1 to 64 characters");
                }
                Ok(())
            }
            Action::Notify {
                kind,
                priority,
                title,
                message,
                ..
            } => {
                let word = |w: &str| {
                    !w.is_empty()
                        && w.len() <= 64
                        && w.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
                };
                if !word(kind) {
                    return bad("type must be 1-64 characters of [A-Za-z0-9_:.-]");
                }
                if !NOTIFICATION_PRIORITIES.contains(&priority.as_str()) {
                    return bad("priority must be LOW, NORMAL, HIGH or URGENT");
                }
                if title.trim().is_empty() || title.chars().count() > MAX_NAME_CHARS * 2 {
                    return bad("title must be 1 to 200 characters");
                }
                if message.chars().count() > MAX_MESSAGE_CHARS {
                    return bad("message must be at most 2000 characters");
                }
                Ok(())
            }
            Action::TypingTo { friend_id, .. } if friend_id.is_empty() || friend_id.len() > 256 => {
                bad("friendId must be 1 to 256 characters")
            }
            Action::GetPresence { user_ids }
                if user_ids.is_empty() || user_ids.len() > MAX_PRESENCE_QUERY =>
            {
                bad("userIds: 1 to 100 users")
            }
            Action::SetContacts { contacts }
                if contacts.len() > MAX_CONTACTS
                    || contacts.iter().any(|c| c.is_empty() || c.len() > 256) =>
            {
                bad("contacts: at most 1000 user ids of 1 to 256 characters")
            }
            Action::NotificationRead { notification_id }
            | Action::NotificationDelete { notification_id }
                if *notification_id < 1 =>
            {
                bad("notificationId must be a positive number")
            }
            Action::LoadDirect {
                before, before_id, ..
            }
            | Action::GetSessions {
                before, before_id, ..
            } if bad_cursor(before, before_id) => {
                bad("beforeId: at most 256 characters, and only with before")
            }
            Action::GetAttendance {
                after,
                after_user_id,
                limit,
                ..
            } => {
                if limit.is_some_and(|l| l == 0 || l > MAX_ATTENDANCE_PAGE) {
                    return bad("limit must be 1 to 1000");
                }
                if bad_cursor(after, after_user_id) {
                    return bad("afterUserId: at most 256 characters, and only with after");
                }
                Ok(())
            }
            Action::LoadNotifications { limit, .. }
            | Action::LoadHistory { limit, .. }
            | Action::LoadDirect { limit, .. }
            | Action::GetSessions { limit, .. } => {
                if limit.is_some_and(|l| l == 0 || l > MAX_HISTORY_PAGE) {
                    return bad("limit must be 1 to 100");
                }
                Ok(())
            }
            Action::JoinSession { password, .. } => {
                if password
                    .as_ref()
                    .is_some_and(|p| p.chars().count() > MAX_PASSWORD_CHARS)
                {
                    return bad("password must be at most 128 characters");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A page cursor's id given without its time, or too long to be an id.
fn bad_cursor(at: &Option<i64>, id: &Option<String>) -> bool {
    id.as_ref()
        .is_some_and(|id| at.is_none() || id.chars().count() > MAX_CURSOR_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let msg = |m: &str| Action::SendMessage {
            session_id: "ABCDEF".into(),
            message: m.into(),
        };
        assert!(msg("hi").validate().is_ok());
        assert_eq!(msg("  ").validate().unwrap_err().0, ErrorCode::BadRequest);
        assert!(msg(&"x".repeat(2000)).validate().is_ok());
        assert!(msg(&"x".repeat(2001)).validate().is_err());
        let join = Action::JoinSession {
            session_id: "bad:id".into(),
            password: None,
            capabilities: None,
            since_seq: None,
            show: false,
        };
        let pos = |p: f64| Action::PlaybackState {
            session_id: "ABCDEF".into(),
            track_uri: "spotify:track:1".into(),
            position: p,
            is_playing: true,
            timestamp: None,
        };
        assert!(pos(1000.0).validate().is_ok());
        assert!(pos(f64::NAN).validate().is_err());
        assert!(pos(1e12).validate().is_err());
        let off = |o: f64| Action::SetOffset {
            session_id: "ABCDEF".into(),
            offset_ms: o,
        };
        assert!(off(-150.0).validate().is_ok());
        assert!(off(1e9).validate().is_err());
        assert_eq!(join.validate().unwrap_err().0, ErrorCode::SessionNotFound);
        let create = |m| Action::CreateSession {
            name: "n".into(),
            description: None,
            is_private: None,
            max_participants: m,
            password_hash: None,
            session_id: None,
        };
        assert!(create(Some(0)).validate().is_err());
        assert!(create(Some(10)).validate().is_ok());
        let direct = |before: Option<i64>, id: Option<String>| Action::LoadDirect {
            with: "bob".into(),
            before,
            before_id: id,
            limit: None,
        };
        assert!(direct(Some(5), Some("x".into())).validate().is_ok());
        assert!(direct(Some(5), None).validate().is_ok());
        assert!(direct(None, Some("x".into())).validate().is_err());
        let long = Some("x".repeat(MAX_CURSOR_ID + 1));
        assert!(direct(Some(5), long).validate().is_err());
    }
}
