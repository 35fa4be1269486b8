//! The in-memory store (standalone mode): the same contract as PostgreSQL, in a mutex.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Batch, Store, StoreError};
use crate::protocol::model::{ChatMessage, DirectMessage, SessionRecord};

type Key = (String, String);

#[derive(Default)]
struct State {
    sessions: HashMap<Key, SessionRecord>,
    messages: HashMap<Key, BTreeMap<i64, ChatMessage>>,
    /// Applied command id → when (ms).
    commands: HashMap<String, i64>,
    direct: Vec<DirectMessage>,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .sessions
            .values()
            .cloned()
            .collect())
    }

    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        // Check everything before changing anything: a batch commits whole or not at all.
        for m in &batch.messages {
            let key = (m.tenant.clone(), m.session_id.clone());
            if s.messages
                .get(&key)
                .is_some_and(|msgs| msgs.contains_key(&m.seq))
            {
                return Err(StoreError::Db(format!(
                    "duplicate seq {} in {}",
                    m.seq, m.session_id
                )));
            }
        }
        for r in &batch.upserts {
            s.sessions
                .insert((r.tenant.clone(), r.id.clone()), r.clone());
        }
        for m in &batch.messages {
            let key = (m.tenant.clone(), m.session_id.clone());
            s.messages.entry(key).or_default().insert(m.seq, m.clone());
        }
        for key in &batch.deletes {
            s.sessions.remove(key);
            s.messages.remove(key);
        }
        s.direct.extend(batch.direct.iter().cloned());
        let now = crate::clock::now_ms();
        s.commands
            .extend(batch.command_ids.iter().map(|id| (id.clone(), now)));
        Ok(())
    }

    async fn seen_commands(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(ids
            .iter()
            .filter(|i| s.commands.contains_key(*i))
            .cloned()
            .collect())
    }

    async fn history(
        &self,
        tenant: &str,
        session_id: &str,
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
        let mut out: Vec<ChatMessage> = msgs
            .range(..upper)
            .rev()
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn direct_history(
        &self,
        tenant: &str,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DirectMessage>, StoreError> {
        let s = self.state.lock().unwrap();
        let upper = before.unwrap_or(i64::MAX);
        let mut out: Vec<DirectMessage> = s
            .direct
            .iter()
            .rev()
            .filter(|m| m.tenant == tenant && m.created_at < upper)
            .filter(|m| {
                (m.sender_id == a && m.receiver_id == b) || (m.sender_id == b && m.receiver_id == a)
            })
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn prune_commands(&self, before: i64) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap()
            .commands
            .retain(|_, at| *at >= before);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
