//! A session's recent messages in memory: what a joiner gets as history, and the window in
//! which a retried message (same idempotency key, hence the same id) is recognised. The
//! ids are indexed by hash, so a message costs O(1) to check rather than a scan of the
//! window comparing ids (3 % of the standalone's CPU in the rooms benchmark).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use jam_shared::hash::{Map, State};

use crate::model::ChatMessage;

#[derive(Default)]
pub(super) struct Recent {
    msgs: VecDeque<ChatMessage>,
    /// Hash of an id → how many messages in the window have it (two ids may collide).
    ids: Map<u64, u32>,
    /// The ids' hasher (seeded: a client cannot pick ids that collide on purpose).
    seed: State,
}

impl Recent {
    /// The message with this id, if it is in the window.
    pub fn find(&self, id: &str) -> Option<&ChatMessage> {
        if !self.ids.contains_key(&self.seed.hash_one(id)) {
            return None;
        }
        self.msgs.iter().rev().find(|m| m.id == id)
    }

    /// Append, dropping the oldest beyond `keep`.
    pub fn push(&mut self, msg: ChatMessage, keep: usize) {
        *self.ids.entry(self.seed.hash_one(&msg.id)).or_default() += 1;
        self.msgs.push_back(msg);
        while self.msgs.len() > keep {
            let Some(old) = self.msgs.pop_front() else {
                break;
            };
            let h = self.seed.hash_one(&old.id);
            if let Some(n) = self.ids.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    self.ids.remove(&h);
                }
            }
        }
    }

    /// The last `n` messages, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &ChatMessage> {
        self.msgs.iter().skip(self.msgs.len().saturating_sub(n))
    }
}

impl From<Vec<ChatMessage>> for Recent {
    fn from(msgs: Vec<ChatMessage>) -> Self {
        let mut r = Recent::default();
        let n = msgs.len();
        for m in msgs {
            r.push(m, n);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> ChatMessage {
        ChatMessage {
            id: id.into(),
            tenant: "t".into(),
            session_id: "s".into(),
            user_id: "u".into(),
            user_name: "U".into(),
            message: "hi".into(),
            created_at: 0,
            seq: 0,
        }
    }

    #[test]
    fn finds_what_is_in_the_window_and_forgets_what_left_it() {
        let mut r = Recent::default();
        for i in 0..10 {
            r.push(msg(&format!("m{i}")), 4);
        }
        assert!(r.find("m5").is_none(), "left the window");
        assert_eq!(r.find("m9").map(|m| m.id.as_str()), Some("m9"));
        assert_eq!(r.find("m6").map(|m| m.id.as_str()), Some("m6"));
        assert!(r.find("nope").is_none());
        let last: Vec<_> = r.last(2).map(|m| m.id.clone()).collect();
        assert_eq!(last, ["m8", "m9"]);
        assert_eq!(r.ids.len(), 4, "the index holds the window only");
    }

    #[test]
    fn a_repeated_id_stays_findable_until_its_last_copy_leaves() {
        let mut r = Recent::default();
        r.push(msg("a"), 3);
        r.push(msg("a"), 3);
        r.push(msg("b"), 3);
        r.push(msg("c"), 3); // the first "a" leaves
        assert!(r.find("a").is_some());
        r.push(msg("d"), 3); // the second leaves
        assert!(r.find("a").is_none());
    }
}
