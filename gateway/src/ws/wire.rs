//! What a client may send: the frames it writes, parsed into types that hold only what a
//! client may set. Identity, connection, tenant, a new session's id and password hashes are
//! the server's: the gateway adds them when it turns a frame into an internal
//! [`Action`] (see [`ClientFrame::into_action`]). Internal actions (`disconnect`) have no
//! client frame. Unknown fields are ignored (docs/protocol.md).

use jam_shared::protocol::sync::{Capabilities, TrackInput};
use jam_shared::protocol::Action;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    #[serde(rename_all = "camelCase")]
    CreateSession {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        is_private: Option<bool>,
        /// Plain text: the gateway hashes it; only the hash goes on.
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        max_participants: Option<u32>,
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
    },
    #[serde(rename_all = "camelCase")]
    LeaveSession { session_id: String },
    #[serde(rename_all = "camelCase")]
    GetSessions {
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
        before_id: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    EndSession { session_id: String },
    #[serde(rename_all = "camelCase")]
    SendMessage {
        #[serde(alias = "show_id", deserialize_with = "id_or_number")]
        session_id: String,
        message: String,
    },
    #[serde(rename_all = "camelCase")]
    GetActiveUsers {
        #[serde(alias = "show_id", deserialize_with = "id_or_number")]
        session_id: String,
        /// Paging for large rooms: members from `offset`, at most `limit` (≤ 500).
        #[serde(default)]
        offset: Option<u32>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    Typing {
        #[serde(alias = "show_id", deserialize_with = "id_or_number")]
        session_id: String,
        #[serde(alias = "is_typing")]
        is_typing: bool,
    },
    /// show-chat-socketio.md: join the room the application registered under its show id.
    JoinShow {
        #[serde(deserialize_with = "id_or_number")]
        show_id: String,
    },
    LeaveShow {
        #[serde(deserialize_with = "id_or_number")]
        show_id: String,
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
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
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
    RequestSync { session_id: String },
    /// jam-server-reference.md's relay: a member asks the host (and gets jam's own
    /// `sync_command` as `request_sync` would); the other fields go along.
    #[serde(rename_all = "camelCase")]
    SyncRequest {
        session_id: String,
        #[serde(flatten)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// The host's answer to a `sync_request`: to `toUserId` when given, else the session.
    #[serde(rename_all = "camelCase")]
    SyncResponse {
        session_id: String,
        #[serde(default)]
        to_user_id: Option<String>,
        #[serde(flatten)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    #[serde(rename_all = "camelCase")]
    SetOffset { session_id: String, offset_ms: f64 },
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
    GetState { session_id: String },
    /// ws-chat-server.md: typing in a direct conversation with `friendId`.
    #[serde(rename_all = "camelCase")]
    TypingStart { friend_id: String },
    #[serde(rename_all = "camelCase")]
    TypingStop { friend_id: String },
    /// ws-chat-server.md's `message`: a direct message (`messageType` is ignored).
    #[serde(rename = "message", rename_all = "camelCase")]
    ChatMessage {
        receiver_id: String,
        content: String,
    },
    /// Whether some of your contacts are online.
    #[serde(rename_all = "camelCase")]
    GetPresence { user_ids: Vec<String> },
    /// dj-system-socketio.md's inbox.
    #[serde(rename = "notification:read", rename_all = "camelCase")]
    NotificationRead { notification_id: i64 },
    #[serde(rename = "notification:read-all")]
    NotificationReadAll {},
    #[serde(rename = "notification:delete", rename_all = "camelCase")]
    NotificationDelete { notification_id: i64 },
    /// A page of the inbox (REST `GET /api/notifications`).
    #[serde(rename = "notification:list")]
    LoadNotifications {
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        unread: Option<bool>,
    },
}

/// An id sent as a string or as a number (show-chat sends `show_id: 123`).
fn id_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Text(t) => t,
        Id::Number(n) => n.to_string(),
    })
}

/// What the server adds to a `create_session`: the new session's id and the password's hash.
#[derive(Debug, Clone, Default)]
pub struct Created {
    pub session_id: String,
    pub password_hash: Option<String>,
}

impl ClientFrame {
    /// The password of a `create_session`, which only the gateway turns into a hash.
    pub fn create_password(&self) -> Option<&str> {
        match self {
            ClientFrame::CreateSession { password, .. } => {
                password.as_deref().filter(|p| !p.is_empty())
            }
            _ => None,
        }
    }

    /// The internal action; `created` fills in what the server decides for a new session.
    pub fn into_action(self, created: Created) -> Action {
        match self {
            ClientFrame::CreateSession {
                name,
                description,
                is_private,
                max_participants,
                password: _,
            } => Action::CreateSession {
                name,
                description,
                is_private,
                max_participants,
                password_hash: created.password_hash,
                session_id: Some(created.session_id),
            },
            ClientFrame::JoinSession {
                session_id,
                password,
                capabilities,
                since_seq,
            } => Action::JoinSession {
                session_id,
                password,
                capabilities,
                since_seq,
                show: false,
            },
            ClientFrame::JoinShow { show_id } => Action::JoinSession {
                session_id: show_id,
                password: None,
                capabilities: None,
                since_seq: None,
                show: true,
            },
            ClientFrame::LeaveShow { show_id } => Action::LeaveSession {
                session_id: show_id,
            },
            ClientFrame::TypingStart { friend_id } => Action::TypingTo {
                friend_id,
                is_typing: true,
            },
            ClientFrame::TypingStop { friend_id } => Action::TypingTo {
                friend_id,
                is_typing: false,
            },
            ClientFrame::ChatMessage {
                receiver_id,
                content,
            } => Action::DirectMessage {
                receiver_id,
                content,
            },
            ClientFrame::GetPresence { user_ids } => Action::GetPresence { user_ids },
            ClientFrame::NotificationRead { notification_id } => {
                Action::NotificationRead { notification_id }
            }
            ClientFrame::NotificationReadAll {} => Action::NotificationReadAll {},
            ClientFrame::NotificationDelete { notification_id } => {
                Action::NotificationDelete { notification_id }
            }
            ClientFrame::LoadNotifications {
                before,
                limit,
                unread,
            } => Action::LoadNotifications {
                before,
                limit,
                unread,
            },
            ClientFrame::LeaveSession { session_id } => Action::LeaveSession { session_id },
            ClientFrame::GetSessions {
                before,
                before_id,
                limit,
            } => Action::GetSessions {
                before,
                before_id,
                limit,
            },
            ClientFrame::EndSession { session_id } => Action::EndSession { session_id },
            ClientFrame::SendMessage {
                session_id,
                message,
            } => Action::SendMessage {
                session_id,
                message,
            },
            ClientFrame::GetActiveUsers {
                session_id,
                offset,
                limit,
            } => Action::GetActiveUsers {
                session_id,
                offset,
                limit,
            },
            ClientFrame::Typing {
                session_id,
                is_typing,
            } => Action::Typing {
                session_id,
                is_typing,
            },
            ClientFrame::LoadHistory {
                session_id,
                before,
                limit,
            } => Action::LoadHistory {
                session_id,
                before,
                limit,
            },
            ClientFrame::DirectMessage {
                receiver_id,
                content,
            } => Action::DirectMessage {
                receiver_id,
                content,
            },
            ClientFrame::LoadDirect {
                with,
                before,
                before_id,
                limit,
            } => Action::LoadDirect {
                with,
                before,
                before_id,
                limit,
            },
            ClientFrame::PlaybackState {
                session_id,
                track_uri,
                position,
                is_playing,
                timestamp,
            } => Action::PlaybackState {
                session_id,
                track_uri,
                position,
                is_playing,
                timestamp,
            },
            ClientFrame::PlaybackReport {
                session_id,
                track_uri,
                position,
                is_playing,
            } => Action::PlaybackReport {
                session_id,
                track_uri,
                position,
                is_playing,
            },
            ClientFrame::TrackChange {
                session_id,
                track_uri,
                track,
                position,
            } => Action::TrackChange {
                session_id,
                track_uri,
                track,
                position,
            },
            ClientFrame::RequestSync { session_id } => Action::RequestSync { session_id },
            ClientFrame::SyncRequest { session_id, data } => Action::SyncRelay {
                session_id,
                response: false,
                to_user_id: None,
                data: relayed(data),
            },
            ClientFrame::SyncResponse {
                session_id,
                to_user_id,
                data,
            } => Action::SyncRelay {
                session_id,
                response: true,
                to_user_id,
                data: relayed(data),
            },
            ClientFrame::SetOffset {
                session_id,
                offset_ms,
            } => Action::SetOffset {
                session_id,
                offset_ms,
            },
            ClientFrame::AddTrack { session_id, track } => Action::AddTrack { session_id, track },
            ClientFrame::RemoveTrack {
                session_id,
                track_id,
            } => Action::RemoveTrack {
                session_id,
                track_id,
            },
            ClientFrame::GetState { session_id } => Action::GetState { session_id },
        }
    }
}

/// What a relayed frame carries of the client's fields: everything but what the server
/// sets (identity, type, session) or reads itself (`ref`, `idempotencyKey`).
fn relayed(
    mut data: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    for k in [
        "type",
        "sessionId",
        "userId",
        "userName",
        "ref",
        "idempotencyKey",
        "tenant",
    ] {
        data.remove(k);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ClientFrame, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn parses_client_frames() {
        let a = parse(json!({"type":"join_session","sessionId":"ABC234","password":"pw","ref":1}))
            .unwrap();
        assert_eq!(
            a,
            ClientFrame::JoinSession {
                session_id: "ABC234".into(),
                password: Some("pw".into()),
                capabilities: None,
                since_seq: None,
            }
        );
        let a = parse(
            json!({"type":"sync_request","sessionId":"ABC234","userId":"mallory","position":5}),
        )
        .unwrap();
        let ClientFrame::SyncRequest { session_id, data } = a.clone() else {
            panic!("{a:?}");
        };
        assert_eq!(session_id, "ABC234");
        let relayed = super::relayed(data);
        assert_eq!(relayed.get("position"), Some(&json!(5)));
        assert!(
            relayed.get("userId").is_none(),
            "a client's userId is never relayed"
        );
        let a =
            parse(json!({"type":"join_session","sessionId":"ABC234","capabilities":{"rate":true}}))
                .unwrap();
        assert!(matches!(a, ClientFrame::JoinSession { capabilities: Some(c), .. } if c.rate));
        assert!(matches!(
            parse(json!({"type":"get_sessions"})).unwrap(),
            ClientFrame::GetSessions {
                before: None,
                before_id: None,
                limit: None
            }
        ));
    }

    #[test]
    fn parses_show_chat_frames() {
        let a = parse(json!({"type":"join_show","show_id":123})).unwrap();
        assert_eq!(
            a.into_action(Created::default()),
            Action::JoinSession {
                session_id: "123".into(),
                password: None,
                capabilities: None,
                since_seq: None,
                show: true,
            }
        );
        let a = parse(json!({"type":"send_message","show_id":123,"message":"hi"})).unwrap();
        assert_eq!(
            a,
            ClientFrame::SendMessage {
                session_id: "123".into(),
                message: "hi".into()
            }
        );
        let a = parse(json!({"type":"typing","show_id":"123","is_typing":true})).unwrap();
        assert!(matches!(
            a,
            ClientFrame::Typing {
                is_typing: true,
                ..
            }
        ));
        assert!(parse(json!({"type":"join_show","show_id":-1})).is_err());
        assert!(parse(json!({"type":"join_show","show_id":{"a":1}})).is_err());
    }

    #[test]
    fn rejects_unknown_missing_and_internal() {
        assert!(parse(json!({"type":"nope"})).is_err());
        assert!(parse(json!({"type":"send_message","sessionId":"A"})).is_err());
        assert!(parse(json!({"sessionId":"A"})).is_err());
        assert!(parse(json!({"type":"disconnect","sessionId":"ABCDEF"})).is_err());
    }

    #[test]
    fn server_fields_cannot_be_set() {
        let f = parse(json!({
            "type": "create_session", "name": "n", "password": "pw",
            "passwordHash": "$argon2id$v=19$m=4194304,t=100,p=1$c2FsdA$aGFzaA",
            "sessionId": "ZZZZZZ", "userId": "alice", "tenant": "acme", "conn": "c1",
        }))
        .unwrap();
        assert_eq!(f.create_password(), Some("pw"));
        let a = f.into_action(Created {
            session_id: "ABC234".into(),
            password_hash: None,
        });
        let Action::CreateSession {
            session_id,
            password_hash,
            ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(session_id.as_deref(), Some("ABC234"), "the server's id");
        assert_eq!(password_hash, None, "the client's hash never gets through");
    }
}
