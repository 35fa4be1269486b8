//! Session state as the worker keeps and persists it, and the public views clients see.

use serde::{Deserialize, Serialize};

use jam_shared::hash::Map;
use jam_shared::protocol::sync::{CorrectionState, ParticipantPlayback, Playback, Track};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Participant,
}

/// One live connection of a participant, and the gateway that holds it. The engine
/// shares one copy of each gateway's name among its connections (`engine::gateways`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRef {
    pub conn: String,
    #[serde(with = "shared_str")]
    pub gateway: std::sync::Arc<str>,
}

/// An `Arc<str>` as a plain string (serde's own impl needs its `rc` feature, which
/// would rebuild every crate that uses serde for one field).
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Arc<str>, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub joined_at: i64,
    pub connections: Vec<ConnRef>,
    /// When the host's last connection went away (host grace).
    #[serde(default)]
    pub offline_since: Option<i64>,
    /// Manual offset (ms) added to the host's position for this participant.
    #[serde(default)]
    pub offset_ms: f64,
    /// Declared on join: the client can play at a commanded rate.
    #[serde(default)]
    pub can_rate: bool,
    #[serde(default)]
    pub playback: Option<ParticipantPlayback>,
    #[serde(default)]
    pub correction: CorrectionState,
    #[serde(default)]
    pub last_sync: Option<i64>,
    /// Changed since its row was last written (not stored). Set by
    /// [`SessionRecord::participant_mut`], [`SessionRecord::participants_mut`] and
    /// [`ParticipantRecord::new`]; the engine's batch writes and clears it.
    #[serde(skip)]
    pub dirty: bool,
}

impl ParticipantRecord {
    pub fn new(
        id: &str,
        name: &str,
        role: Role,
        joined_at: i64,
        connections: Vec<ConnRef>,
    ) -> Self {
        Self {
            id: id.to_string(),
            name: name.to_string(),
            role,
            joined_at,
            connections,
            offline_since: None,
            offset_ms: 0.0,
            can_rate: false,
            playback: None,
            correction: CorrectionState::default(),
            last_sync: None,
            dirty: true,
        }
    }

    pub fn is_online(&self) -> bool {
        !self.connections.is_empty()
    }

    pub fn view(&self) -> ParticipantView {
        ParticipantView {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            joined_at: self.joined_at,
            is_online: self.is_online(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Ended,
}

/// Everything the worker knows about a session; persisted as one row for the session and
/// one per participant (`jam_participants`), each written when it changed: a join in a
/// room of a thousand writes one participant row, not the thousand.
/// Holds the password hash and connection ids, so it is never sent to clients: see [`SessionView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub tenant: String,
    pub id: String,
    pub name: String,
    pub description: String,
    pub host_id: String,
    pub is_private: bool,
    pub password_hash: Option<String>,
    pub max_participants: u32,
    /// Rows of their own: never in the session's row (read from one written before
    /// they had theirs). Change them through [`SessionRecord::participant_mut`],
    /// [`SessionRecord::participants_mut`], [`SessionRecord::join`] and
    /// [`SessionRecord::remove_at`], which record what to write.
    #[serde(default, skip_serializing)]
    pub participants: Vec<ParticipantRecord>,
    /// Participants removed since the last write (not stored).
    #[serde(skip)]
    pub removed: Vec<String>,
    /// Made (again) under this id since the last write: rows of an earlier session of
    /// the same id go (not stored).
    #[serde(skip)]
    pub fresh: bool,
    /// Who is a member, and where in `participants` (not stored: [`SessionRecord::reindex`]
    /// builds it for a record made or loaded whole). Membership in O(1).
    #[serde(skip)]
    pub index: Map<String, usize>,
    /// How many participants are online, kept by [`SessionRecord::with_conns`], `join` and
    /// `remove_at` (not stored).
    #[serde(skip)]
    pub online: usize,
    pub status: SessionStatus,
    pub created_at: i64,
    pub expires_at: i64,
    /// The last sequence number handed to a room event.
    pub last_seq: i64,
    #[serde(default)]
    pub playback: Option<Playback>,
    #[serde(default)]
    pub current_track: Option<Track>,
    #[serde(default)]
    pub queue: Vec<Track>,
    /// Last periodic sync check (ms); the next is due one interval later.
    #[serde(default)]
    pub last_check_at: i64,
    /// Registered by the application's backend under its own id (a show's room): no host,
    /// no expiry, kept when the last member leaves; only the backend ends it.
    #[serde(default)]
    pub managed: bool,
}

impl SessionRecord {
    /// A member, found through the index; a record built whole without [`reindex`]
    /// (tests, tools) is searched instead.
    ///
    /// [`reindex`]: SessionRecord::reindex
    pub fn participant(&self, user_id: &str) -> Option<&ParticipantRecord> {
        self.position_of(user_id).map(|i| &self.participants[i])
    }

    pub fn position_of(&self, user_id: &str) -> Option<usize> {
        if self.index.len() != self.participants.len() {
            return self.participants.iter().position(|p| p.id == user_id);
        }
        let i = *self.index.get(user_id)?;
        debug_assert_eq!(self.participants[i].id, user_id, "index out of step");
        Some(i)
    }

    /// The index and the online count from `participants` (made or loaded whole).
    pub fn reindex(&mut self) {
        self.index = (self.participants.iter().enumerate())
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        self.online = self.participants.iter().filter(|p| p.is_online()).count();
    }

    /// How many participants are online, in O(1).
    pub fn online_count(&self) -> usize {
        if self.index.len() != self.participants.len() {
            return self.participants.iter().filter(|p| p.is_online()).count();
        }
        debug_assert_eq!(
            self.online,
            self.participants.iter().filter(|p| p.is_online()).count(),
            "online count out of step"
        );
        self.online
    }

    /// Change a member's connections (the online count follows).
    pub fn with_conns<R>(
        &mut self,
        user_id: &str,
        f: impl FnOnce(&mut Vec<ConnRef>) -> R,
    ) -> Option<R> {
        let p = self.participant_mut(user_id)?;
        let was = p.is_online();
        let r = f(&mut p.connections);
        let now = p.is_online();
        match (was, now) {
            (false, true) => self.online += 1,
            (true, false) => self.online -= 1,
            _ => {}
        }
        Some(r)
    }

    /// A participant to change: its row is written with the session's next write.
    /// Connections change through [`SessionRecord::with_conns`], not here.
    pub fn participant_mut(&mut self, user_id: &str) -> Option<&mut ParticipantRecord> {
        let i = self.position_of(user_id)?;
        let p = &mut self.participants[i];
        p.dirty = true;
        Some(p)
    }

    /// Every participant, to change (each row is written).
    pub fn participants_mut(&mut self) -> impl Iterator<Item = &mut ParticipantRecord> {
        for p in &mut self.participants {
            p.dirty = true;
        }
        self.participants.iter_mut()
    }

    pub fn join(&mut self, p: ParticipantRecord) {
        self.removed.retain(|id| *id != p.id);
        if self.index.len() == self.participants.len() {
            self.index.insert(p.id.clone(), self.participants.len());
        }
        self.online += usize::from(p.is_online());
        self.participants
            .push(ParticipantRecord { dirty: true, ..p });
    }

    /// O(participants after it): the join order is kept.
    pub fn remove_at(&mut self, idx: usize) -> ParticipantRecord {
        let indexed = self.index.len() == self.participants.len();
        let gone = self.participants.remove(idx);
        if indexed {
            self.index.remove(&gone.id);
            for (i, p) in self.participants.iter().enumerate().skip(idx) {
                self.index.insert(p.id.clone(), i);
            }
        }
        self.online = self.online.saturating_sub(usize::from(gone.is_online()));
        self.removed.push(gone.id.clone());
        gone
    }

    /// What to write since the last time: the session's row (participants left out),
    /// the participants that changed, the ones removed, and whether rows of an earlier
    /// session under this id must go. Clears what it reports.
    pub fn take_changes(&mut self) -> SessionChanges {
        let participants = std::mem::take(&mut self.participants);
        let removed = std::mem::take(&mut self.removed);
        let fresh = std::mem::replace(&mut self.fresh, false);
        let index = std::mem::take(&mut self.index);
        let row = self.clone();
        self.participants = participants;
        self.index = index;
        let changed = self
            .participants
            .iter_mut()
            .filter(|p| p.dirty)
            .map(|p| {
                p.dirty = false;
                p.clone()
            })
            .collect();
        SessionChanges {
            row,
            changed,
            removed,
            fresh,
        }
    }

    pub fn is_member(&self, user_id: &str) -> bool {
        self.participant(user_id).is_some()
    }

    pub fn next_seq(&mut self) -> i64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The view for a room of this size: above `members_max` participants, the member
    /// list is left out (counts only; members page through `get_active_users`).
    pub fn view_for(&self, members_max: usize) -> SessionView {
        let mut v = self.view();
        if self.participants.len() > members_max {
            v.participants = Vec::new();
            v.members_omitted = true;
        }
        v
    }

    pub fn view(&self) -> SessionView {
        SessionView {
            members_omitted: false,
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            host_id: self.host_id.clone(),
            is_private: self.is_private,
            max_participants: self.max_participants,
            participants: self
                .participants
                .iter()
                .map(ParticipantRecord::view)
                .collect(),
            participant_count: self.participants.len(),
            status: self.status,
            created_at: self.created_at,
            managed: self.managed,
            expires_at: (!self.managed).then_some(self.expires_at),
            seq: self.last_seq,
            current_track: self.current_track.clone(),
            queue: self.queue.clone(),
            playback: self.playback.as_ref().map(|p| PlaybackView {
                track_uri: p.track_uri.clone(),
                position: p.report.position,
                is_playing: p.report.is_playing,
                reported_at: p.report.received_at,
            }),
        }
    }

    /// The listing entry: no participant list, only its size.
    pub fn summary(&self) -> SessionSummary {
        SessionSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            host_id: self.host_id.clone(),
            is_private: self.is_private,
            max_participants: self.max_participants,
            participant_count: self.participants.len(),
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub joined_at: i64,
    pub is_online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub host_id: String,
    pub is_private: bool,
    pub max_participants: u32,
    pub participants: Vec<ParticipantView>,
    pub participant_count: usize,
    /// A large room: `participants` is empty; ask `get_active_users` for pages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub members_omitted: bool,
    /// Registered by the application's backend: no host, no expiry (`expiresAt` null).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed: bool,
    pub status: SessionStatus,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub seq: i64,
    pub current_track: Option<Track>,
    pub queue: Vec<Track>,
    pub playback: Option<PlaybackView>,
}

/// The host's last report: `position` held at `reportedAt` (server clock, ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaybackView {
    pub track_uri: String,
    pub position: f64,
    pub is_playing: bool,
    pub reported_at: i64,
}

/// What [`SessionRecord::take_changes`] found.
pub struct SessionChanges {
    pub row: SessionRecord,
    pub changed: Vec<ParticipantRecord>,
    pub removed: Vec<String>,
    pub fresh: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    pub id: String,
    pub name: String,
    pub description: String,
    pub host_id: String,
    pub is_private: bool,
    pub max_participants: u32,
    pub participant_count: usize,
    pub created_at: i64,
}

/// A committed chat message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub session_id: String,
    pub user_id: String,
    pub user_name: String,
    pub message: String,
    pub created_at: i64,
    pub seq: i64,
}

/// One user's presence in one session: checked in at the first join, checked out when
/// they leave or the session ends (show-chat-socketio.md's ShowCheckin). Outlives the
/// session. Written as an upsert: the first check-in (time, role) stays, the check-out is
/// the latest (`None` again when they come back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attendance {
    #[serde(skip)]
    pub tenant: String,
    #[serde(skip)]
    pub session_id: String,
    pub user_id: String,
    pub user_name: String,
    /// Whether they checked in as the session's host.
    pub host: bool,
    pub checked_in_at: i64,
    pub checked_out_at: Option<i64>,
}

/// One notification in a user's inbox (dj-system-socketio.md). `id` counts per user from 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: i64,
    #[serde(skip)]
    pub tenant: String,
    #[serde(skip)]
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: String,
    pub title: String,
    pub message: String,
    pub data: serde_json::Value,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

/// A change to an inbox, committed with its batch. The engine folds changes to a
/// notification created in the same batch into its insert, so the kinds commute.
#[derive(Debug, Clone, PartialEq)]
pub enum InboxChange {
    Insert(Notification),
    Read {
        tenant: String,
        user_id: String,
        id: i64,
        at: i64,
    },
    ReadAll {
        tenant: String,
        user_id: String,
        at: i64,
    },
    Delete {
        tenant: String,
        user_id: String,
        id: i64,
    },
}

/// A user with at least one open connection (any session or none), and who watches them:
/// persisted so that a partition's next owner announces them offline when their gateway dies.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineUser {
    pub tenant: String,
    pub user_id: String,
    pub conns: Vec<ConnRef>,
    /// The users whose contacts include this one (told of its online/offline changes).
    pub watchers: Vec<String>,
}

/// A change to who watches whom, committed with its batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactsChange {
    /// Two users exchanged a direct message: each is the other's contact from now on.
    Direct {
        tenant: String,
        a: String,
        b: String,
    },
    /// The backend's list of the people `user_id` watches (replaces the earlier list).
    Set {
        tenant: String,
        user_id: String,
        contacts: Vec<String>,
    },
}

/// A committed direct message between two users of one tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirectMessage {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub sender_id: String,
    pub sender_name: String,
    pub receiver_id: String,
    pub content: String,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SessionRecord {
        SessionRecord {
            tenant: "_".into(),
            id: "ABCDEF".into(),
            name: "n".into(),
            description: String::new(),
            host_id: "alice".into(),
            is_private: true,
            password_hash: Some("$argon2id$secret".into()),
            max_participants: 10,
            participants: vec![ParticipantRecord {
                id: "alice".into(),
                name: "Alice".into(),
                role: Role::Host,
                joined_at: 1,
                connections: vec![ConnRef {
                    conn: "c1".into(),
                    gateway: "g".into(),
                }],
                offset_ms: 0.0,
                can_rate: false,
                playback: None,
                correction: Default::default(),
                last_sync: None,
                offline_since: None,
                dirty: false,
            }],
            removed: Vec::new(),
            fresh: false,
            status: SessionStatus::Active,
            created_at: 1,
            expires_at: 2,
            last_seq: 0,
            playback: None,
            current_track: None,
            queue: Vec::new(),
            last_check_at: 0,
            managed: false,
            index: Default::default(),
            online: 0,
        }
    }

    #[test]
    fn view_never_carries_password_or_connections() {
        let json = serde_json::to_string(&record().view()).unwrap();
        assert!(!json.contains("argon2") && !json.contains("password") && !json.contains("c1"));
        assert!(json.contains("\"hostId\":\"alice\"") && json.contains("\"isOnline\":true"));
        let json = serde_json::to_string(&record().summary()).unwrap();
        assert!(!json.contains("argon2") && !json.contains("participants\""));
    }

    /// Only what changed is written: a session's row never holds its participants, a
    /// participant's row is written when it changed, a removal once.
    #[test]
    fn changes_name_only_what_changed() {
        let mut r = record();
        let c = r.take_changes();
        assert!(c.changed.is_empty() && c.removed.is_empty() && !c.fresh);
        assert!(c.row.participants.is_empty() && r.participants.len() == 1);
        let row = serde_json::to_value(&c.row).unwrap();
        assert!(row.get("participants").is_none(), "{row}");
        r.join(ParticipantRecord::new(
            "bob",
            "Bob",
            Role::Participant,
            2,
            vec![],
        ));
        r.join(ParticipantRecord::new(
            "carol",
            "Carol",
            Role::Participant,
            3,
            vec![],
        ));
        let c = r.take_changes();
        let ids: Vec<&str> = c.changed.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["bob", "carol"]);
        r.participant_mut("carol").unwrap().offset_ms = 5.0;
        let idx = r.participants.iter().position(|p| p.id == "bob").unwrap();
        r.remove_at(idx);
        let c = r.take_changes();
        assert_eq!(c.changed.len(), 1);
        assert_eq!(c.changed[0].offset_ms, 5.0);
        assert_eq!(c.removed, ["bob"]);
        assert!(r.take_changes().changed.is_empty(), "reported once");
        // Gone and back in one batch: written, not removed.
        r.remove_at(0);
        r.join(ParticipantRecord::new(
            "alice",
            "Alice",
            Role::Host,
            4,
            vec![],
        ));
        let c = r.take_changes();
        assert!(c.removed.is_empty());
        assert_eq!(c.changed[0].id, "alice");
    }

    /// Membership and the online count come from the index and the counter, and stay
    /// equal to what a scan finds through joins, leaves and connections coming and going.
    #[test]
    fn membership_and_online_count_stay_in_step() {
        let conn = |c: &str| ConnRef {
            conn: c.into(),
            gateway: "g".into(),
        };
        let mut r = record();
        r.reindex();
        assert_eq!((r.online_count(), r.index.len()), (1, 1));
        for (i, u) in ["b", "c", "d"].into_iter().enumerate() {
            let conns = if i == 1 { vec![] } else { vec![conn(u)] };
            r.join(ParticipantRecord::new(u, u, Role::Participant, 2, conns));
        }
        assert_eq!(r.online_count(), 3, "c has no connection");
        r.with_conns("c", |cs| cs.push(conn("c1")));
        r.with_conns("alice", |cs| cs.clear());
        assert_eq!(r.online_count(), 3);
        let b = r.position_of("b").unwrap();
        r.remove_at(b);
        assert_eq!(r.online_count(), 2);
        for (i, p) in r.participants.iter().enumerate() {
            assert_eq!(r.index[&p.id], i, "{} moved", p.id);
        }
        assert!(r.participant("b").is_none() && r.participant("d").is_some());
        let scan = r.participants.iter().filter(|p| p.is_online()).count();
        assert_eq!(r.online_count(), scan);
        // A record built whole and never indexed is searched instead.
        let whole = record();
        assert!(whole.is_member("alice") && whole.online_count() == 1);
    }

    #[test]
    fn seq_increases() {
        let mut r = record();
        assert_eq!(r.next_seq(), 1);
        assert_eq!(r.next_seq(), 2);
    }
}
