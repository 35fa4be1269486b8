//! Contacts' presence and direct typing (ws-chat-server.md), on the user's partition.
//! A user is online while any of their connections is open (in a session or not); the
//! first one tells every watcher `user_online`, the last one `user_offline`. Watchers are
//! the users whose contacts include them (direct-message partners both ways, and the lists
//! the backend sets); they are loaded before the command applies (the partition's
//! prefetch) and kept while the user is online. Who is online is committed, so the next
//! owner of the partition drops the connections of dead gateways and announces them.

use crate::model::{ConnRef, ContactsChange, OnlineUser};
use jam_shared::hash::Map;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::{Action, Command, Envelope};
use serde_json::json;

use super::{Effects, Engine, Query};

pub type UserKey = (String, String);

/// How long a direct typing indicator lasts without a new `typing_start`.
pub const DIRECT_TYPING_TTL_MS: i64 = 5_000;

/// An online user's ids in one allocation: the map below has an entry per online user,
/// so every idle connection pays for its key (two `String`s were 48 bytes in the table,
/// times its spare capacity, and two allocations).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct OnlineKey {
    ids: Box<str>,
    tenant_len: u32,
}

impl OnlineKey {
    fn of((tenant, user): &UserKey) -> Self {
        Self {
            ids: format!("{tenant}{user}").into_boxed_str(),
            tenant_len: tenant.len() as u32,
        }
    }

    fn tenant(&self) -> &str {
        &self.ids[..self.tenant_len as usize]
    }

    fn user_id(&self) -> &str {
        &self.ids[self.tenant_len as usize..]
    }

    fn pair(&self) -> UserKey {
        (self.tenant().to_string(), self.user_id().to_string())
    }
}

/// An online user's connections and watchers, as exact-size slices (one or two
/// connections each, changed when one opens or closes: a `Vec`'s capacity word is waste).
#[derive(Default)]
pub(super) struct Online {
    conns: Box<[ConnRef]>,
    watchers: Box<[String]>,
}

impl Online {
    fn user(&self, key: &OnlineKey) -> OnlineUser {
        OnlineUser {
            tenant: key.tenant().to_string(),
            user_id: key.user_id().to_string(),
            conns: self.conns.to_vec(),
            watchers: self.watchers.to_vec(),
        }
    }

    fn add_conn(&mut self, c: ConnRef) {
        edit(&mut self.conns, |conns| conns.push(c));
    }

    fn drop_conn(&mut self, conn: &str) {
        if self.conns.iter().any(|c| c.conn == conn) {
            edit(&mut self.conns, |conns| conns.retain(|c| c.conn != conn));
        }
    }

    fn add_watcher(&mut self, w: &str) {
        if !self.watchers.iter().any(|x| x == w) {
            edit(&mut self.watchers, |ws| ws.push(w.to_string()));
        }
    }
}

/// Change an exact-size slice as a `Vec`, and make it exact again.
fn edit<T>(slice: &mut Box<[T]>, f: impl FnOnce(&mut Vec<T>)) {
    let mut v = std::mem::take(slice).into_vec();
    f(&mut v);
    *slice = v.into_boxed_slice();
}

#[derive(Default)]
pub struct People {
    pub(super) online: Map<OnlineKey, Online>,
    /// Watchers loaded for this batch's online/offline commands.
    watchers: Map<UserKey, Vec<String>>,
    /// (tenant, typist, friend) → when the indicator clears (ms).
    typing: Map<(String, String, String), i64>,
    /// Users the tick found offline (their gateway died), announced at the end of the next
    /// batch with watchers loaded fresh (a cached list may miss a newer contact).
    pending_offline: Vec<OnlineUser>,
}

/// Whether a command needs its user's watchers loaded before it applies.
pub fn needs_watchers(a: &Action) -> bool {
    matches!(a, Action::UserOnline {} | Action::UserOffline {})
}

impl Engine {
    /// The users whose watchers `cmds` need.
    pub fn watchers_needed(&self, cmds: &[Command]) -> Vec<UserKey> {
        let mut out: Vec<UserKey> = Vec::new();
        let pending = self
            .people
            .pending_offline
            .iter()
            .map(|u| (u.tenant.clone(), u.user_id.clone()));
        let asked = cmds
            .iter()
            .filter(|c| needs_watchers(&c.action))
            .map(|c| (c.tenant.clone(), c.user_id.clone()));
        for key in pending.chain(asked) {
            if !self.people.watchers.contains_key(&key) && !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }

    pub fn add_watchers(&mut self, key: UserKey, watchers: Vec<String>) {
        self.people.watchers.insert(key, watchers);
    }

    /// Announce the tick's offline users to their freshly loaded watchers, then forget the
    /// batch's prefetched watchers (the next batch loads them fresh).
    pub fn end_batch(&mut self, fx: &mut Effects) {
        for mut user in std::mem::take(&mut self.people.pending_offline) {
            let key = (user.tenant.clone(), user.user_id.clone());
            if self.people.online.contains_key(&OnlineKey::of(&key)) {
                continue; // back online meanwhile: nothing to say
            }
            if let Some(w) = self.people.watchers.get(&key) {
                user.watchers = w.clone();
            }
            announce(fx, &user, "user_offline", "");
        }
        self.people.watchers.clear();
    }

    /// Who was online on this partition when it was claimed.
    pub fn load_online(&mut self, users: Vec<OnlineUser>) {
        for mut u in users {
            for c in u.conns.iter_mut() {
                c.gateway = self.gateways.intern(&c.gateway);
            }
            let online = Online {
                conns: u.conns.into(),
                watchers: u.watchers.into(),
            };
            let key = OnlineKey::of(&(u.tenant, u.user_id));
            self.people.online.insert(key, online);
        }
    }

    pub(super) fn user_online(&mut self, cmd: &Command, fx: &mut Effects) {
        let key = (cmd.tenant.clone(), cmd.user_id.clone());
        let fresh = self.people.watchers.get(&key).cloned();
        let mine = self.conn_ref(cmd);
        let okey = OnlineKey::of(&key);
        let user = self.people.online.entry(okey.clone()).or_default();
        if let Some(w) = fresh {
            user.watchers = w.into();
        }
        let first = user.conns.is_empty();
        if !user.conns.iter().any(|c| c.conn == cmd.conn) {
            user.add_conn(mine);
        }
        let user = user.user(&okey);
        if first {
            announce(fx, &user, "user_online", &cmd.user_name);
        }
        fx.online(user);
    }

    pub(super) fn user_offline(&mut self, cmd: &Command, fx: &mut Effects) {
        let key = (cmd.tenant.clone(), cmd.user_id.clone());
        if let Some(w) = self.people.watchers.get(&key).cloned() {
            if let Some(u) = self.people.online.get_mut(&OnlineKey::of(&key)) {
                u.watchers = w.into();
            }
        }
        if let Some(user) = self.drop_user_conn(&key, &cmd.conn, fx) {
            announce(fx, &user, "user_offline", "");
        }
    }

    /// One connection of an online user is gone; the user when that was the last one.
    fn drop_user_conn(
        &mut self,
        key: &UserKey,
        conn: &str,
        fx: &mut Effects,
    ) -> Option<OnlineUser> {
        let okey = OnlineKey::of(key);
        let online = self.people.online.get_mut(&okey)?;
        online.drop_conn(conn);
        let user = online.user(&okey);
        if user.conns.is_empty() {
            self.people.online.remove(&okey);
            fx.online(user.clone());
            Some(user)
        } else {
            fx.online(user);
            None
        }
    }

    /// Connections of gateways that stopped heartbeating (the tick).
    pub(super) fn drop_dead_user_conns(&mut self, alive: &dyn Fn(&str) -> bool, fx: &mut Effects) {
        let dead: Vec<(UserKey, String)> = self
            .people
            .online
            .iter()
            .flat_map(|(k, u)| {
                u.conns
                    .iter()
                    .filter(|c| !alive(&c.gateway))
                    .map(move |c| (k.pair(), c.conn.clone()))
            })
            .collect();
        for (key, conn) in dead {
            if let Some(user) = self.drop_user_conn(&key, &conn, fx) {
                self.people.pending_offline.push(user);
            }
        }
    }

    /// `typing_start` / `typing_stop` to one user: `typing {userId, isTyping}` on every
    /// connection of the friend; a start clears by itself after 5 s.
    pub(super) fn typing_to(
        &mut self,
        cmd: &Command,
        friend: &str,
        is_typing: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        if friend == cmd.user_id {
            return;
        }
        let key = (cmd.tenant.clone(), cmd.user_id.clone(), friend.to_string());
        let was = if is_typing {
            self.people
                .typing
                .insert(key, now + DIRECT_TYPING_TTL_MS)
                .is_some()
        } else {
            self.people.typing.remove(&key).is_some()
        };
        // A repeated start only extends the indicator; a stop nobody saw start says nothing.
        if is_typing != was {
            typing_frame(fx, &cmd.tenant, &cmd.user_id, friend, is_typing);
        }
    }

    /// Direct typing indicators past their 5 s (the tick).
    pub(super) fn expire_direct_typing(&mut self, now: i64, fx: &mut Effects) {
        let due: Vec<_> = self
            .people
            .typing
            .iter()
            .filter(|(_, until)| now >= **until)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.people.typing.remove(&k);
            typing_frame(fx, &k.0, &k.1, &k.2, false);
        }
    }

    /// Two users exchanged a direct message: contacts both ways from now on; the sender's
    /// own watchers (kept while online) learn the receiver at once.
    pub(super) fn direct_contacts(&mut self, cmd: &Command, receiver: &str, fx: &mut Effects) {
        fx.contacts.push(ContactsChange::Direct {
            tenant: cmd.tenant.clone(),
            a: cmd.user_id.clone(),
            b: receiver.to_string(),
        });
        let key = (cmd.tenant.clone(), cmd.user_id.clone());
        if let Some(u) = self.people.online.get_mut(&OnlineKey::of(&key)) {
            u.add_watcher(receiver);
        }
    }

    pub(super) fn set_contacts(&mut self, cmd: &Command, contacts: &[String], fx: &mut Effects) {
        let mut list: Vec<String> = contacts
            .iter()
            .filter(|c| **c != cmd.user_id)
            .cloned()
            .collect();
        list.sort();
        list.dedup();
        let n = list.len();
        fx.contacts.push(ContactsChange::Set {
            tenant: cmd.tenant.clone(),
            user_id: cmd.user_id.clone(),
            contacts: list,
        });
        fx.reply(
            cmd,
            vec![frame(
                "contacts_set",
                &json!({"userId": cmd.user_id, "contacts": n}),
            )],
        );
    }

    pub(super) fn get_presence(&mut self, cmd: &Command, ids: &[String], fx: &mut Effects) {
        fx.queries.push(Query::Presence {
            cmd: cmd.clone(),
            user_ids: ids.to_vec(),
        });
    }
}

fn announce(fx: &mut Effects, user: &OnlineUser, what: &str, name: &str) {
    if user.watchers.is_empty() {
        return;
    }
    let mut body = json!({ "userId": user.user_id });
    if !name.is_empty() {
        body["userName"] = json!(name);
    }
    let f = frame(what, &body);
    for w in &user.watchers {
        fx.user(&user.tenant, w, Envelope::default(), vec![f.clone()]);
    }
    metrics::counter!("jam_contact_presence_total", "change" => what.to_string()).increment(1);
}

fn typing_frame(fx: &mut Effects, tenant: &str, typist: &str, friend: &str, is_typing: bool) {
    let f = frame("typing", &json!({"userId": typist, "isTyping": is_typing}));
    fx.user(tenant, friend, Envelope::default(), vec![f]);
}

#[cfg(test)]
mod tests {
    use super::OnlineKey;

    #[test]
    fn an_online_key_keeps_tenant_and_user_apart() {
        let k = |t: &str, u: &str| OnlineKey::of(&(t.to_string(), u.to_string()));
        assert!(k("ab", "c") != k("a", "bc"), "same bytes, other ids");
        let key = k("acme", "u1");
        assert_eq!((key.tenant(), key.user_id()), ("acme", "u1"));
        assert_eq!(key.pair(), ("acme".to_string(), "u1".to_string()));
    }
}
