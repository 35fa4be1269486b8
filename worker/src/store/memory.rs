//! The in-memory store (standalone mode): the same contract as PostgreSQL, in a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jam_shared::hash::Map;

use super::{Batch, Claim, ParticipantChange, RowChange, Store, StoreError};
use crate::model::{
    Attendance, ChatMessage, ConnRef, ContactsChange, DirectMessage, InboxChange, Notification,
    OnlineUser, ParticipantRecord, SessionRecord, SessionStatus,
};

type Key = (String, String);
/// (tenant, one user, the other), the two users in order: one conversation.
type Conversation = (String, String, String);

fn conversation(tenant: &str, a: &str, b: &str) -> Conversation {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (tenant.to_string(), lo.to_string(), hi.to_string())
}

/// Rows ordered by (seq or time, id), as chat and direct messages are kept.
type Ordered<T> = BTreeMap<(i64, String), T>;

/// The newest `limit` rows below `upper` (a key; with an empty id, below its seq or time)
/// that `keep` accepts, oldest first: a page.
fn newest_below<T: Clone>(
    rows: &Ordered<T>,
    (upper, id): (i64, &str),
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    let mut out: Vec<T> = rows
        .range(..(upper, id.to_string()))
        .rev()
        .map(|(_, m)| m)
        .filter(|m| keep(m))
        .take(limit)
        .cloned()
        .collect();
    out.reverse();
    out
}

/// Store `row` under `key` once (a row committed again stays as it was), then keep the
/// newest `limit` rows (all of them: `None`); how many went.
fn insert_bounded<T: Clone>(
    rows: &mut Ordered<T>,
    key: (i64, String),
    row: &T,
    limit: Option<usize>,
) -> u64 {
    rows.entry(key).or_insert_with(|| row.clone());
    let Some(limit) = limit else {
        return 0;
    };
    let mut n = 0;
    while rows.len() > limit {
        rows.pop_first();
        n += 1;
    }
    n
}

/// Drop the rows `keep` refuses, and the groups left empty; how many went.
fn purge<K: Eq + std::hash::Hash, T>(
    groups: &mut Map<K, Ordered<T>>,
    keep: impl Fn(&T) -> bool,
) -> u64 {
    let mut n = 0u64;
    for rows in groups.values_mut() {
        let len = rows.len();
        rows.retain(|_, m| keep(m));
        n += (len - rows.len()) as u64;
    }
    groups.retain(|_, rows| !rows.is_empty());
    n
}

#[derive(Default)]
struct State {
    /// Unit tests only: a group holding a chat message with this text is refused for its
    /// data, as PostgreSQL refuses a constraint's violation.
    #[cfg(test)]
    refuse_text: Option<String>,
    /// Messages kept per session and per conversation: memory, unlike PostgreSQL's disk,
    /// would otherwise grow with every message until the retention purge.
    history_limit: Option<usize>,
    /// Session → (partition, record).
    sessions: Map<Key, (i64, SessionRecord)>,
    /// Session → its participants' rows by user (a table of its own, as in PostgreSQL).
    participants: Map<Key, BTreeMap<String, ParticipantRecord>>,
    /// Messages by session, ordered by (seq, id): messages outlive their session.
    messages: Map<Key, Ordered<ChatMessage>>,
    /// Direct messages by conversation, ordered by (time, id) as PostgreSQL pages them:
    /// a message is found, stored once and paged without a scan of every other.
    direct: Map<Conversation, Ordered<DirectMessage>>,
    /// Session → its attendance rows, first check-in first.
    attendance: Map<Key, Vec<Attendance>>,
    /// (tenant, user) → notifications by id.
    inbox: Map<Key, BTreeMap<i64, Notification>>,
    /// (tenant, user) → (partition, the user's connections): who is online. The key holds
    /// the user's ids and watchers are looked up when loaded, so one entry per online user
    /// (every idle connection has one) holds no copy of either.
    online: Map<Key, (i64, Vec<ConnRef>)>,
    /// (tenant, user, contact, source): `user` watches `contact`.
    contacts: BTreeSet<(String, String, String, &'static str)>,
    /// Partition → (fence, applied).
    partitions: Map<u32, (i64, Option<String>)>,
}

impl State {
    fn apply_participants(&mut self, changes: &[ParticipantChange]) {
        let upserted: BTreeSet<(&str, &str, &str)> = changes
            .iter()
            .filter_map(|c| match &c.row {
                RowChange::Upsert(p) => {
                    Some((c.tenant.as_str(), c.session_id.as_str(), p.id.as_str()))
                }
                _ => None,
            })
            .collect();
        // A session leaves the map when a change empties it (never by a scan of every
        // session on every commit: that was most of this function's time in rooms).
        for c in changes {
            let key = (c.tenant.clone(), c.session_id.clone());
            match &c.row {
                RowChange::Upsert(p) => {
                    let rows = self.participants.entry(key).or_default();
                    rows.insert(p.id.clone(), (**p).clone());
                }
                RowChange::Delete(user_id) => {
                    if let Some(rows) = self.participants.get_mut(&key) {
                        rows.remove(user_id);
                        if rows.is_empty() {
                            self.participants.remove(&key);
                        }
                    }
                }
                RowChange::Clear => {
                    if let Some(rows) = self.participants.get_mut(&key) {
                        let (t, sid) = (c.tenant.as_str(), c.session_id.as_str());
                        rows.retain(|u, _| upserted.contains(&(t, sid, u)));
                        if rows.is_empty() {
                            self.participants.remove(&key);
                        }
                    }
                }
            }
        }
    }

    /// The session's participants, as the engine keeps them: in the order they joined.
    fn participants_of(&self, key: &Key) -> Vec<ParticipantRecord> {
        let mut ps: Vec<ParticipantRecord> = self
            .participants
            .get(key)
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default();
        ps.sort_by(|a, b| (a.joined_at, &a.id).cmp(&(b.joined_at, &b.id)));
        ps
    }

    /// Write one batch whose fence was checked.
    fn apply(&mut self, batch: &Batch) {
        let s = self;
        let part = match &batch.fence {
            Some(f) => {
                let p = s.partitions.entry(f.partition).or_insert((0, None));
                if f.applied.is_some() {
                    p.1 = f.applied.clone();
                }
                f.partition as i64
            }
            None => -1,
        };
        for r in &batch.upserts {
            let row = SessionRecord {
                participants: Vec::new(),
                ..r.clone()
            };
            s.sessions
                .insert((r.tenant.clone(), r.id.clone()), (part, row));
        }
        s.apply_participants(&batch.participants);
        let mut dropped = 0;
        for m in &batch.messages {
            let key = (m.tenant.clone(), m.session_id.clone());
            let rows = s.messages.entry(key).or_default();
            dropped += insert_bounded(rows, (m.seq, m.id.clone()), m, s.history_limit);
        }
        for key in &batch.deletes {
            s.sessions.remove(key);
        }
        for d in &batch.direct {
            let rows = s
                .direct
                .entry(conversation(&d.tenant, &d.sender_id, &d.receiver_id))
                .or_default();
            dropped += insert_bounded(rows, (d.created_at, d.id.clone()), d, s.history_limit);
        }
        if dropped > 0 {
            jam_shared::telemetry::count("jam_memory_history_dropped_total", None, dropped);
        }
        for change in &batch.attendance {
            apply_attendance(&mut s.attendance, change);
        }
        for change in &batch.inbox {
            apply_inbox(&mut s.inbox, change);
        }
        for u in &batch.online {
            let key = (u.tenant.clone(), u.user_id.clone());
            if u.conns.is_empty() {
                s.online.remove(&key);
            } else {
                s.online.insert(key, (part, u.conns.clone()));
            }
        }
        for c in &batch.contacts {
            match c {
                ContactsChange::Direct { tenant, a, b } => {
                    s.contacts
                        .insert((tenant.clone(), a.clone(), b.clone(), "dm"));
                    s.contacts
                        .insert((tenant.clone(), b.clone(), a.clone(), "dm"));
                }
                ContactsChange::Set {
                    tenant,
                    user_id,
                    contacts,
                } => {
                    s.contacts.retain(|(t, u, _, src)| {
                        !(t == tenant && u == user_id && *src == "backend")
                    });
                    for c in contacts {
                        s.contacts
                            .insert((tenant.clone(), user_id.clone(), c.clone(), "backend"));
                    }
                }
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// A store that keeps every message until the retention purge.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that keeps the newest `limit` messages of each session and of each
    /// conversation (`JAM_MEMORY_HISTORY`; `None`: all of them).
    pub fn with_history_limit(limit: Option<usize>) -> Self {
        Self::of(State {
            history_limit: limit,
            ..State::default()
        })
    }

    /// Unit tests only: a store that refuses any group holding a chat message with `text`.
    #[cfg(test)]
    pub(crate) fn refusing(text: &str) -> Self {
        Self::of(State {
            refuse_text: Some(text.to_string()),
            ..State::default()
        })
    }

    fn of(state: State) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim_partition(&self, partition: u32) -> Result<Claim, StoreError> {
        let mut s = self.state.lock().unwrap();
        let p = s.partitions.entry(partition).or_insert((0, None));
        p.0 += 1;
        Ok(Claim {
            token: p.0,
            applied: p.1.clone(),
        })
    }

    async fn load_sessions(&self, partition: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.sessions
            .iter()
            .filter(|(_, (part, _))| *part == partition as i64 || *part < 0)
            .map(|(key, (_, rec))| {
                let mut rec = rec.clone();
                rec.participants = s.participants_of(key);
                let max_seq = s.messages.get(key).and_then(|m| {
                    m.values()
                        .filter(|m| m.created_at >= rec.created_at)
                        .map(|m| m.seq)
                        .max()
                });
                rec.last_seq = rec.last_seq.max(max_seq.unwrap_or(0));
                rec
            })
            .collect())
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(SessionRecord, usize)>, StoreError> {
        let s = self.state.lock().unwrap();
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let mut listed: Vec<_> = s
            .sessions
            .iter()
            .filter(|(_, (_, r))| {
                r.tenant == tenant
                    && !r.is_private
                    && r.status == SessionStatus::Active
                    && (r.created_at, r.id.as_str()) < (at, id)
            })
            .collect();
        listed.sort_by(|(_, (_, a)), (_, (_, b))| {
            (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str()))
        });
        Ok(listed
            .into_iter()
            .take(limit)
            .map(|(key, (_, r))| {
                let n = s.participants.get(key).map_or(0, BTreeMap::len);
                (r.clone(), n)
            })
            .collect())
    }

    async fn commit_group(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        #[cfg(test)]
        if let Some(t) = &s.refuse_text {
            if batches
                .iter()
                .any(|b| b.messages.iter().any(|m| &m.message == t))
            {
                return Err(StoreError::Corrupt(format!("refused for the test: {t}")));
            }
        }
        // Check every fence before changing anything: the group commits whole or not at all.
        for f in batches.iter().filter_map(|b| b.fence.as_ref()) {
            let token = s.partitions.get(&f.partition).map_or(0, |p| p.0);
            if token != f.token {
                return Err(StoreError::Fenced(f.partition));
            }
        }
        for batch in batches {
            s.apply(batch);
        }
        Ok(())
    }

    async fn load_online(&self, partition: u32) -> Result<Vec<OnlineUser>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.online
            .iter()
            .filter(|(_, (p, _))| *p == partition as i64)
            .map(|((tenant, user_id), (_, conns))| OnlineUser {
                watchers: watchers_of(&s.contacts, tenant, user_id),
                tenant: tenant.clone(),
                user_id: user_id.clone(),
                conns: conns.clone(),
            })
            .collect())
    }

    async fn watchers(&self, users: &[(String, String)]) -> Result<Vec<Vec<String>>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(users
            .iter()
            .map(|(tenant, user_id)| watchers_of(&s.contacts, tenant, user_id))
            .collect())
    }

    async fn contacts_online(
        &self,
        tenant: &str,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let s = self.state.lock().unwrap();
        let mut out: Vec<(String, bool)> = ids
            .iter()
            .filter(|id| {
                s.contacts
                    .iter()
                    .any(|(t, u, c, _)| t == tenant && u == user_id && c == *id)
            })
            .map(|id| {
                let on = s.online.contains_key(&(tenant.to_string(), id.clone()));
                (id.clone(), on)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn inboxes(
        &self,
        users: &[(String, String)],
    ) -> Result<Vec<Vec<(i64, bool)>>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(users
            .iter()
            .map(|key| {
                s.inbox
                    .get(key)
                    .map(|m| m.values().map(|n| (n.id, n.read_at.is_some())).collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn notifications(
        &self,
        tenant: &str,
        user_id: &str,
        before: Option<i64>,
        limit: usize,
        unread_only: bool,
    ) -> Result<Vec<Notification>, StoreError> {
        let s = self.state.lock().unwrap();
        let Some(m) = s.inbox.get(&(tenant.to_string(), user_id.to_string())) else {
            return Ok(Vec::new());
        };
        Ok(m.range(..before.unwrap_or(i64::MAX))
            .rev()
            .map(|(_, n)| n)
            .filter(|n| !unread_only || n.read_at.is_none())
            .take(limit)
            .cloned()
            .collect())
    }

    async fn attendance(
        &self,
        tenant: &str,
        session_id: &str,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Attendance>, StoreError> {
        let s = self.state.lock().unwrap();
        let key = (tenant.to_string(), session_id.to_string());
        let Some(rows) = s.attendance.get(&key) else {
            return Ok(Vec::new());
        };
        let (at, user) = after.unwrap_or((i64::MIN, ""));
        let mut page: Vec<&Attendance> = rows
            .iter()
            .filter(|r| (r.checked_in_at, r.user_id.as_str()) > (at, user))
            .collect();
        page.sort_by(|a, b| {
            (a.checked_in_at, a.user_id.as_str()).cmp(&(b.checked_in_at, b.user_id.as_str()))
        });
        Ok(page.into_iter().take(limit).cloned().collect())
    }

    async fn hosted(
        &self,
        tenant: &str,
        session_id: &str,
        user_id: &str,
    ) -> Result<bool, StoreError> {
        let s = self.state.lock().unwrap();
        let key = (tenant.to_string(), session_id.to_string());
        Ok(s.attendance
            .get(&key)
            .is_some_and(|rows| rows.iter().any(|r| r.user_id == user_id && r.host)))
    }

    async fn history(
        &self,
        tenant: &str,
        session_id: &str,
        since: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let s = self.state.lock().unwrap();
        let Some(msgs) = s
            .messages
            .get(&(tenant.to_string(), session_id.to_string()))
        else {
            return Ok(Vec::new());
        };
        let upper = before.unwrap_or(i64::MAX);
        Ok(newest_below(msgs, (upper, ""), limit, |m| {
            m.created_at >= since
        }))
    }

    async fn direct_history(
        &self,
        tenant: &str,
        a: &str,
        b: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<DirectMessage>, StoreError> {
        let s = self.state.lock().unwrap();
        let Some(msgs) = s.direct.get(&conversation(tenant, a, b)) else {
            return Ok(Vec::new());
        };
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        Ok(newest_below(msgs, (at, id), limit, |_| true))
    }

    async fn purge_messages(&self, before: i64) -> Result<u64, StoreError> {
        let mut s = self.state.lock().unwrap();
        let chat = purge(&mut s.messages, |m| m.created_at >= before);
        Ok(chat + purge(&mut s.direct, |m| m.created_at >= before))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn apply_attendance(rows: &mut Map<Key, Vec<Attendance>>, a: &Attendance) {
    let list = rows
        .entry((a.tenant.clone(), a.session_id.clone()))
        .or_default();
    match list.iter_mut().find(|r| r.user_id == a.user_id) {
        Some(r) => {
            r.checked_out_at = a.checked_out_at;
            r.user_name = a.user_name.clone();
        }
        None => list.push(a.clone()),
    }
}

fn apply_inbox(inbox: &mut Map<Key, BTreeMap<i64, Notification>>, change: &InboxChange) {
    match change {
        InboxChange::Insert(n) => {
            inbox
                .entry((n.tenant.clone(), n.user_id.clone()))
                .or_default()
                .entry(n.id)
                .or_insert_with(|| n.clone());
        }
        InboxChange::Read {
            tenant,
            user_id,
            id,
            at,
        } => {
            if let Some(n) = inbox
                .get_mut(&(tenant.clone(), user_id.clone()))
                .and_then(|m| m.get_mut(id))
            {
                n.read_at.get_or_insert(*at);
            }
        }
        InboxChange::ReadAll {
            tenant,
            user_id,
            at,
        } => {
            for n in inbox
                .get_mut(&(tenant.clone(), user_id.clone()))
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                n.read_at.get_or_insert(*at);
            }
        }
        InboxChange::Delete {
            tenant,
            user_id,
            id,
        } => {
            if let Some(m) = inbox.get_mut(&(tenant.clone(), user_id.clone())) {
                m.remove(id);
            }
        }
    }
}

fn watchers_of(
    contacts: &BTreeSet<(String, String, String, &'static str)>,
    tenant: &str,
    user_id: &str,
) -> Vec<String> {
    let mut out: Vec<String> = contacts
        .iter()
        .filter(|(t, _, c, _)| t == tenant && c == user_id)
        .map(|(_, u, _, _)| u.clone())
        .collect();
    out.dedup();
    out
}
