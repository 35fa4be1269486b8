//! The store seam: what must survive a worker restart. [`postgres::PgStore`] is the
//! real one; [`memory::MemoryStore`] runs standalone. Writes arrive as one [`Batch`]
//! per group of commands and commit in one transaction (group commit).

pub mod memory;
pub mod postgres;

use async_trait::async_trait;

use crate::model::{
    Attendance, ChatMessage, ContactsChange, DirectMessage, InboxChange, Notification, OnlineUser,
    ParticipantRecord, SessionRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", chain(.0))]
    Db(#[source] tokio_postgres::Error),
    /// PostgreSQL refused the statement for what it carries (SQLSTATE classes 22, data
    /// exception, and 23, integrity constraint violation): the same statement will fail
    /// again however long one waits.
    #[error("database refused the data ({code}): {}", refusal(.source))]
    Refused {
        code: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("pool: {}", chain(.0.as_ref()))]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another worker claimed the partition since this one did: it must stop writing.
    #[error("partition {0} was claimed by another worker")]
    Fenced(u32),
}

/// An error and its sources in one line: tokio-postgres shows "db error" and keeps
/// PostgreSQL's own message in its source, which logs must show.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// PostgreSQL's message for a refusal and what it names (table, column, constraint),
/// without its `DETAIL`, which shows the refused row: users' text stays out of the log.
fn refusal(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return chain(e);
    };
    let mut out = db.message().to_string();
    let named = [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ];
    for (what, name) in named {
        if let Some(name) = name {
            out.push_str(&format!(", {what} {name}"));
        }
    }
    out
}

impl StoreError {
    /// Whether trying the same operation again can help (an outage) or never will.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Db(_) | StoreError::Pool(_))
    }
}

/// The fencing token of a partition's owner, checked at every commit, and the last
/// stream entry the batch applied (the partition's high-water mark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub partition: u32,
    pub token: i64,
    pub applied: Option<String>,
}

/// What claiming a partition returns: a token newer than every earlier owner's, and
/// the last stream entry applied by anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub token: i64,
    pub applied: Option<String>,
}

/// Everything a group of commands changed, committed at once.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The owner's fence; a batch without one (tests, tools) is not fenced.
    pub fence: Option<Fence>,
    /// Session rows; their participants are written from `participants`, not from here.
    pub upserts: Vec<SessionRecord>,
    /// Participant rows that changed, in order.
    pub participants: Vec<ParticipantChange>,
    /// (tenant, session id)
    pub deletes: Vec<(String, String)>,
    pub messages: Vec<ChatMessage>,
    pub direct: Vec<DirectMessage>,
    /// Check-ins and check-outs, in the order they happened (upserts: see [`Attendance`]).
    pub attendance: Vec<Attendance>,
    pub inbox: Vec<InboxChange>,
    /// Online users to write (`conns` empty: offline, deleted).
    pub online: Vec<OnlineUser>,
    pub contacts: Vec<ContactsChange>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.participants.is_empty()
            && self.deletes.is_empty()
            && self.messages.is_empty()
            && self.direct.is_empty()
            && self.attendance.is_empty()
            && self.inbox.is_empty()
            && self.online.is_empty()
            && self.contacts.is_empty()
            && self.fence.as_ref().is_none_or(|f| f.applied.is_none())
    }
}

/// A change to the participant rows of one session.
#[derive(Debug, Clone)]
pub struct ParticipantChange {
    pub tenant: String,
    pub session_id: String,
    pub row: RowChange,
}

#[derive(Debug, Clone)]
pub enum RowChange {
    Upsert(Box<ParticipantRecord>),
    /// The participant (this user id) left the session.
    Delete(String),
    /// Every row of the session except the ones this batch upserts: the session was
    /// deleted, or made again under the same id.
    Clear,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Become the owner of `partition`: bumps its fencing token, so every earlier owner's
    /// next commit fails with [`StoreError::Fenced`].
    async fn claim_partition(&self, partition: u32) -> Result<Claim, StoreError>;

    /// Every active session of a partition (claim), with `last_seq` at least the highest
    /// seq of its stored messages (chat does not rewrite the session row). May include
    /// sessions stored before partitions were recorded: callers filter by partition.
    async fn load_sessions(&self, partition: u32) -> Result<Vec<SessionRecord>, StoreError>;

    /// A tenant's public, active sessions, every partition (listings): the newest `limit`
    /// that sort before `before` (`(createdAt, id)`, as [`Store::direct_history`]), newest
    /// first, each row (no participants) with how many participants it has.
    async fn list_sessions(
        &self,
        tenant: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(SessionRecord, usize)>, StoreError>;

    /// Commit a batch atomically; with a fence, only while that fence is current.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit_group(&[batch]).await
    }

    /// Commit batches of several partitions in one transaction (the worker's group
    /// commit): all of them or none. When a fence is stale, nothing is written and the
    /// error names that partition, so the caller can commit the others without it.
    /// Batches of one partition must not share a group (their order is not kept).
    async fn commit_group(&self, batches: &[&Batch]) -> Result<(), StoreError>;

    /// Messages of a session created at or after `since` (ms: the session's creation, so
    /// an old session under the same id stays out) with `seq < before` (all when `None`),
    /// newest `limit`, oldest first.
    async fn history(
        &self,
        tenant: &str,
        session_id: &str,
        since: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Direct messages between `a` and `b` that sort before `before` (`(createdAt, id)`, ids
    /// compared bytewise; an empty id: every message of that millisecond and later is left
    /// out; all when `None`), newest `limit`, oldest first, in `(createdAt, id)` order.
    async fn direct_history(
        &self,
        tenant: &str,
        a: &str,
        b: &str,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<DirectMessage>, StoreError>;

    /// Who attended a session (live or ended), first check-in first (`(checkedInAt,
    /// userId)`, ids compared bytewise): the first `limit` after `after` (an empty user id:
    /// after that millisecond).
    async fn attendance(
        &self,
        tenant: &str,
        session_id: &str,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Attendance>, StoreError>;

    /// Whether `user_id` checked into the session as its host.
    async fn hosted(
        &self,
        tenant: &str,
        session_id: &str,
        user_id: &str,
    ) -> Result<bool, StoreError>;

    /// Every notification id of each user (tenant, user) and whether it was read, in the
    /// order asked: the engine's inbox state, loaded when a user's first inbox command of
    /// an ownership arrives. One read for all the users of a batch.
    async fn inboxes(
        &self,
        users: &[(String, String)],
    ) -> Result<Vec<Vec<(i64, bool)>>, StoreError>;

    /// A page of a user's notifications, newest first: ids below `before`, at most `limit`,
    /// unread ones only with `unread_only`.
    async fn notifications(
        &self,
        tenant: &str,
        user_id: &str,
        before: Option<i64>,
        limit: usize,
        unread_only: bool,
    ) -> Result<Vec<Notification>, StoreError>;

    /// The online users of a partition (claim), with their watchers.
    async fn load_online(&self, partition: u32) -> Result<Vec<OnlineUser>, StoreError>;

    /// The users who watch each user (tenant, user): whose contacts include it, sorted, in
    /// the order asked. One read for all the online and offline commands of a batch.
    async fn watchers(&self, users: &[(String, String)]) -> Result<Vec<Vec<String>>, StoreError>;

    /// Which of `ids` are contacts of `user_id`, and whether each is online.
    async fn contacts_online(
        &self,
        tenant: &str,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, bool)>, StoreError>;

    /// Delete chat and direct messages created before `before` (ms): the retention purge.
    /// Nothing else ever deletes a message. Returns how many went.
    async fn purge_messages(&self, before: i64) -> Result<u64, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}
