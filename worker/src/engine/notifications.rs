//! Notification inboxes (dj-system-socketio.md): per user and tenant, on the user's
//! partition. The engine keeps each touched inbox's ids and read state, so the unread count
//! is kept, never recounted; the state is loaded before the first command that needs it
//! (`Partition` prefetches, so `apply` stays synchronous). Every change goes to all of the
//! user's connections, on any gateway, through the user channel.

use std::collections::BTreeSet;

use jam_shared::hash::Map;

use crate::model::{InboxChange, Notification};
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Action, Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::json;

use super::{Effects, Engine, Query};

/// Inboxes kept in memory before the least recently used ones are let go.
const INBOXES_KEPT: usize = 50_000;
/// An inbox untouched for this many batches handed to the committer has had its changes
/// committed (at most 3 batches are in flight: 2 queued, 1 committing), so it can be let
/// go and loaded again.
const SETTLED_AFTER: u64 = 8;

pub type InboxKey = (String, String);

/// What the engine knows of one user's inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    last_id: i64,
    unread: BTreeSet<i64>,
    read: BTreeSet<i64>,
    touched: u64,
}

#[derive(Default)]
pub struct Inboxes {
    map: Map<InboxKey, Inbox>,
    batch: u64,
}

/// Whether a command works on its sender's inbox (and needs it loaded).
pub fn uses_inbox(a: &Action) -> bool {
    matches!(
        a,
        Action::Notify { .. }
            | Action::NotificationRead { .. }
            | Action::NotificationReadAll {}
            | Action::NotificationDelete { .. }
            | Action::LoadNotifications { .. }
    )
}

impl Engine {
    /// The inboxes `cmds` need that are not loaded yet.
    pub fn inboxes_needed(&self, cmds: &[Command]) -> Vec<InboxKey> {
        let mut out: Vec<InboxKey> = Vec::new();
        for c in cmds.iter().filter(|c| uses_inbox(&c.action)) {
            let key = (c.tenant.clone(), c.user_id.clone());
            if !self.inboxes.map.contains_key(&key) && !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }

    /// A loaded inbox: every id and whether it was read.
    pub fn add_inbox(&mut self, key: InboxKey, rows: Vec<(i64, bool)>) {
        let mut inbox = Inbox {
            touched: self.inboxes.batch,
            ..Default::default()
        };
        for (id, read) in rows {
            inbox.last_id = inbox.last_id.max(id);
            if read {
                inbox.read.insert(id);
            } else {
                inbox.unread.insert(id);
            }
        }
        self.inboxes.map.insert(key, inbox);
    }

    /// Called once per batch handed to the committer: lets go of settled inboxes when too
    /// many are kept.
    pub fn settle_inboxes(&mut self) {
        let inboxes = &mut self.inboxes;
        inboxes.batch += 1;
        if inboxes.map.len() > INBOXES_KEPT {
            let now = inboxes.batch;
            inboxes.map.retain(|_, i| i.touched + SETTLED_AFTER > now);
        }
    }

    fn inbox(&mut self, cmd: &Command, fx: &mut Effects) -> Option<&mut Inbox> {
        let batch = self.inboxes.batch;
        let key = (cmd.tenant.clone(), cmd.user_id.clone());
        match self.inboxes.map.get_mut(&key) {
            Some(i) => {
                i.touched = batch;
                Some(i)
            }
            None => {
                // The partition loads it before applying: only a bug gets here.
                fx.error(cmd, ErrorCode::Unavailable, "inbox not loaded, try again");
                None
            }
        }
    }

    pub(super) fn notify(&mut self, cmd: &Command, fx: &mut Effects) {
        let Action::Notify {
            kind,
            priority,
            title,
            message,
            data,
        } = &cmd.action
        else {
            return;
        };
        let Some(inbox) = self.inbox(cmd, fx) else {
            return;
        };
        inbox.last_id += 1;
        inbox.unread.insert(inbox.last_id);
        let n = Notification {
            id: inbox.last_id,
            tenant: cmd.tenant.clone(),
            user_id: cmd.user_id.clone(),
            kind: kind.clone(),
            priority: priority.clone(),
            title: title.clone(),
            message: message.clone(),
            data: if data.is_null() {
                json!({})
            } else {
                data.clone()
            },
            created_at: now_ms(),
            read_at: None,
        };
        let count = inbox.unread.len();
        // Nested: the notification's own `type` is not the frame's.
        let new = frame("notification:new", &json!({ "notification": n }));
        fx.user(
            &cmd.tenant,
            &cmd.user_id,
            Envelope::default(),
            vec![new, unread_count(count)],
        );
        fx.reply(
            cmd,
            vec![frame(
                "notification_created",
                &json!({"userId": cmd.user_id, "id": n.id}),
            )],
        );
        fx.inbox.push(InboxChange::Insert(n));
        metrics::counter!("jam_notifications_total").increment(1);
    }

    pub(super) fn notification_read(&mut self, cmd: &Command, id: i64, fx: &mut Effects) {
        let Some(inbox) = self.inbox(cmd, fx) else {
            return;
        };
        if !inbox.unread.contains(&id) && !inbox.read.contains(&id) {
            return fx.error(cmd, ErrorCode::BadRequest, "no such notification");
        }
        let changed = inbox.unread.remove(&id);
        inbox.read.insert(id);
        let count = inbox.unread.len();
        let mut frames = vec![frame(
            "notification:marked-read",
            &json!({"notificationId": id, "unreadCount": count}),
        )];
        if changed {
            frames.push(unread_count(count));
            let at = now_ms();
            if !fold_into_insert(fx, cmd, id, |n| n.read_at = Some(at)) {
                fx.inbox.push(InboxChange::Read {
                    tenant: cmd.tenant.clone(),
                    user_id: cmd.user_id.clone(),
                    id,
                    at,
                });
            }
        }
        to_every_connection(fx, cmd, frames);
    }

    pub(super) fn notification_read_all(&mut self, cmd: &Command, fx: &mut Effects) {
        let Some(inbox) = self.inbox(cmd, fx) else {
            return;
        };
        let marked = inbox.unread.len();
        let ids = std::mem::take(&mut inbox.unread);
        inbox.read.extend(ids);
        let frames = vec![
            frame(
                "notification:marked-read",
                &json!({"all": true, "marked": marked, "unreadCount": 0}),
            ),
            unread_count(0),
        ];
        if marked > 0 {
            let at = now_ms();
            for c in fx.inbox.iter_mut() {
                if let InboxChange::Insert(n) = c {
                    if n.tenant == cmd.tenant && n.user_id == cmd.user_id {
                        n.read_at.get_or_insert(at);
                    }
                }
            }
            fx.inbox.push(InboxChange::ReadAll {
                tenant: cmd.tenant.clone(),
                user_id: cmd.user_id.clone(),
                at,
            });
        }
        to_every_connection(fx, cmd, frames);
    }

    pub(super) fn notification_delete(&mut self, cmd: &Command, id: i64, fx: &mut Effects) {
        let Some(inbox) = self.inbox(cmd, fx) else {
            return;
        };
        let was_unread = inbox.unread.remove(&id);
        if !was_unread && !inbox.read.remove(&id) {
            return fx.error(cmd, ErrorCode::BadRequest, "no such notification");
        }
        let count = inbox.unread.len();
        let mut frames = vec![frame(
            "notification:deleted",
            &json!({"notificationId": id, "unreadCount": count}),
        )];
        if was_unread {
            frames.push(unread_count(count));
        }
        let before = fx.inbox.len();
        fx.inbox.retain(|c| {
            !matches!(c, InboxChange::Insert(n)
                if n.id == id && n.tenant == cmd.tenant && n.user_id == cmd.user_id)
        });
        if fx.inbox.len() == before {
            fx.inbox.push(InboxChange::Delete {
                tenant: cmd.tenant.clone(),
                user_id: cmd.user_id.clone(),
                id,
            });
        }
        to_every_connection(fx, cmd, frames);
    }

    /// A page of the caller's inbox, read after the commit, with the count kept here.
    pub(super) fn load_notifications(
        &mut self,
        cmd: &Command,
        before: Option<i64>,
        limit: Option<u32>,
        unread: bool,
        fx: &mut Effects,
    ) {
        let Some(inbox) = self.inbox(cmd, fx) else {
            return;
        };
        let unread_count = inbox.unread.len();
        fx.queries.push(Query::Notifications {
            cmd: cmd.clone(),
            before,
            limit: super::page(limit),
            unread_only: unread,
            unread_count,
        });
    }
}

fn unread_count(count: usize) -> bytes::Bytes {
    frame("notification:unread-count", &json!({ "count": count }))
}

/// Frames to every connection of the sender (any gateway); the sender's copy carries the
/// command's `ref`, a REST caller gets its own.
fn to_every_connection(fx: &mut Effects, cmd: &Command, frames: Vec<bytes::Bytes>) {
    if cmd.ephemeral {
        fx.reply(cmd, frames.iter().take(1).cloned().collect());
    }
    let env = Envelope {
        ref_conn: Some(cmd.conn.clone()),
        r#ref: cmd.r#ref.clone(),
        ..Default::default()
    };
    fx.user(&cmd.tenant, &cmd.user_id, env, frames);
}

/// Apply `change` to the notification `id` when it is created in this same batch.
fn fold_into_insert(
    fx: &mut Effects,
    cmd: &Command,
    id: i64,
    change: impl FnOnce(&mut Notification),
) -> bool {
    for c in fx.inbox.iter_mut() {
        if let InboxChange::Insert(n) = c {
            if n.id == id && n.tenant == cmd.tenant && n.user_id == cmd.user_id {
                change(n);
                return true;
            }
        }
    }
    false
}
