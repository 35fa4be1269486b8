//! The store seam: what must survive a worker restart. [`postgres::PgStore`] is the
//! real one; [`memory::MemoryStore`] runs standalone. Writes arrive as one [`Batch`]
//! per group of commands and commit in one transaction (group commit).

pub mod memory;
pub mod postgres;

use std::collections::HashSet;

use async_trait::async_trait;

use crate::protocol::model::{ChatMessage, DirectMessage, SessionRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("pool: {0}")]
    Pool(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Everything a group of commands changed, committed at once.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub upserts: Vec<SessionRecord>,
    /// (tenant, session id)
    pub deletes: Vec<(String, String)>,
    pub messages: Vec<ChatMessage>,
    pub direct: Vec<DirectMessage>,
    pub command_ids: Vec<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.deletes.is_empty()
            && self.messages.is_empty()
            && self.command_ids.is_empty()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every session still active (worker start and takeover).
    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;

    /// Commit a batch atomically.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Which of these command ids were already applied.
    async fn seen_commands(&self, ids: &[String]) -> Result<HashSet<String>, StoreError>;

    /// Messages of a session with `seq < before` (all when `None`), newest `limit`, oldest first.
    async fn history(
        &self,
        tenant: &str,
        session_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Direct messages between `a` and `b` created before `before` (ms; all when `None`),
    /// newest `limit`, oldest first.
    async fn direct_history(
        &self,
        tenant: &str,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DirectMessage>, StoreError>;

    /// Forget applied command ids recorded before `before` (ms).
    async fn prune_commands(&self, before: i64) -> Result<(), StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}
