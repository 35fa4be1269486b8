//! The routing table: which local connections sit in which channel (room or user), and
//! the one bus subscription per channel that has local members.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use jam_shared::bus::{BusError, Subscription};
use jam_shared::hash::{Map, Set};
use tokio::sync::{mpsc, Notify};

use crate::ws::framing::OutFrame;
use crate::ws::outbox::{DrainError, Outbox, Pushed};

/// What the table needs to reach one connection (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct ConnHandle(Arc<Conn>);

pub struct Conn {
    pub id: Arc<str>,
    pub user_id: Arc<str>,
    out: Out,
    /// Fired to close the connection with `close_code`.
    pub kill: Kill,
    pub close_code: AtomicU16,
}

/// A one-shot signal that closes a connection, held in the connection's own allocation
/// (a `CancellationToken` allocates a tree node of 112 bytes per connection, for children
/// a connection never has).
#[derive(Default)]
pub struct Kill {
    fired: AtomicBool,
    notify: Notify,
    /// The connection's own task, waiting in [`Kill::cancelled_here`].
    owner: AtomicWaker,
}

impl Kill {
    pub fn cancel(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.owner.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Ready once [`cancel`](Self::cancel) was called, before or after this.
    pub async fn cancelled(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a cancel in between still wakes it.
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    /// The same, for one waiter only: the WebSocket connection's own task. One pointer
    /// (`Notify`'s waiter is 96 bytes in every idle connection's task, see
    /// docs/benchmarks.md); a second task waiting here at the same time would steal the
    /// first one's wake-up, so everyone else uses [`cancelled`](Self::cancelled).
    pub fn cancelled_here(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_cancelled() {
                return Poll::Ready(());
            }
            // Registered before the flag is read again: a cancel in between wakes it.
            self.owner.register(cx.waker());
            if self.is_cancelled() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Where a connection's frames go.
enum Out {
    /// A WebSocket: written by whoever has a frame (see [`Outbox`]).
    Socket(Outbox),
    /// A task that reads them (a REST call's reply slot, a Socket.IO connection).
    Queue(mpsc::Sender<OutFrame>),
}

impl std::ops::Deref for ConnHandle {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl ConnHandle {
    /// A connection whose frames go to `tx`.
    pub fn new(id: &str, user_id: &str, tx: mpsc::Sender<OutFrame>) -> Self {
        Self::with(id, user_id, Out::Queue(tx))
    }

    /// A WebSocket connection whose frames go to the socket through `out`.
    pub fn socket(id: &str, user_id: &str, out: Outbox) -> Self {
        Self::with(id, user_id, Out::Socket(out))
    }

    fn with(id: &str, user_id: &str, out: Out) -> Self {
        Self(Arc::new(Conn {
            id: Arc::from(id),
            user_id: Arc::from(user_id),
            out,
            kill: Kill::default(),
            close_code: AtomicU16::new(0),
        }))
    }

    /// The same connection (one allocation), without reading its id.
    pub fn same(&self, other: &ConnHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn is_socket(&self) -> bool {
        matches!(self.out, Out::Socket(_))
    }

    /// Close with `code`, unless a code was set already; true when this call set it.
    pub fn close(&self, code: u16) -> bool {
        let first = self
            .close_code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        self.kill.cancel();
        first
    }

    /// Send or queue a frame; a full queue closes the connection rather than slow anyone
    /// else. False when the frame was not taken.
    pub fn push(&self, frame: OutFrame) -> bool {
        let out = match &self.out {
            Out::Queue(tx) => {
                return match tx.try_send(frame) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.slow_consumer();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            }
            Out::Socket(out) => out,
        };
        match out.push(frame) {
            Pushed::Sent | Pushed::Queued => true,
            Pushed::NeedsDrain => {
                self.spawn_drain();
                true
            }
            Pushed::Full => {
                self.slow_consumer();
                false
            }
            Pushed::Failed => {
                self.close(crate::ws::close::GONE);
                false
            }
            Pushed::Closed => false,
        }
    }

    /// Counted once per connection (a drain still running after the close may stall too).
    fn slow_consumer(&self) {
        if self.close(crate::ws::close::SLOW_CONSUMER) {
            metrics::counter!("jam_slow_consumers_total").increment(1);
        }
    }

    /// The socket is full: a task sends the queue as the peer reads (and ends with it).
    fn spawn_drain(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let Out::Socket(out) = &me.out else { return };
            match out.drain().await {
                Ok(()) => {}
                Err(DrainError::Stalled) => me.slow_consumer(),
                Err(DrainError::Failed) => {
                    me.close(crate::ws::close::GONE);
                }
            }
        });
    }

    /// Queue serialized JSON as a text frame of its own.
    pub fn push_json(&self, json: &[u8]) -> bool {
        self.push(OutFrame::text(json))
    }

    /// A WebSocket's end: the close frame with the code set on the handle (1000 if none)
    /// after what is queued, waiting at most `grace` for the peer to take it, then the end
    /// of the stream. Frames pushed after this are dropped.
    pub async fn finish(&self, grace: std::time::Duration) {
        let Out::Socket(out) = &self.out else { return };
        let c = match self.close_code.load(Ordering::SeqCst) {
            0 => crate::ws::close::NORMAL,
            c => c,
        };
        let close = OutFrame::close(c, crate::ws::close::describe(c).0);
        let sent = async {
            match out.push_last(close) {
                Pushed::NeedsDrain => {
                    let _ = out.drain().await;
                }
                Pushed::Queued => out.idle().await,
                _ => {}
            }
        };
        let _ = tokio::time::timeout(grace, sent).await;
        out.shutdown();
    }
}

#[derive(Default)]
pub(crate) struct Channel {
    pub members: Members,
    /// Joins sent to the worker, not yet answered: subscribed, but not delivered to.
    pub pending: Pending,
    pub subscribed: bool,
}

/// A channel's members, as handles: a delivery walks them without looking each id up in
/// the connection table (hashing an id reads its bytes, one more cache miss per recipient
/// of a fan-out). A user channel (one per connection) nearly always has one, kept inline: a
/// set of one allocates four slots, about 96 bytes for every idle connection.
#[derive(Default)]
pub(crate) enum Members {
    #[default]
    None,
    One(ConnHandle),
    Many(Set<Member>),
}

/// A connection in a channel's set, hashed and compared by its id (so the set is looked
/// up by id as before).
pub(crate) struct Member(ConnHandle);

impl std::hash::Hash for Member {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self.0.id).hash(state)
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Member {}

impl std::borrow::Borrow<str> for Member {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl Members {
    /// Add `handle`; false if it was a member already.
    pub fn insert(&mut self, handle: ConnHandle) -> bool {
        match self {
            Members::None => *self = Members::One(handle),
            Members::One(x) if x.id == handle.id => return false,
            Members::One(x) => {
                let first = Member(x.clone());
                *self = Members::Many([first, Member(handle)].into_iter().collect());
            }
            Members::Many(set) => return set.insert(Member(handle)),
        }
        true
    }

    /// The member whose id is `id`.
    pub fn get(&self, id: &str) -> Option<&ConnHandle> {
        match self {
            Members::None => None,
            Members::One(x) => (&*x.id == id).then_some(x),
            Members::Many(set) => set.get(id).map(|m| &m.0),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    pub fn remove(&mut self, id: &str) {
        match self {
            Members::One(x) if &*x.id == id => *self = Members::None,
            Members::Many(set) => {
                set.remove(id);
                if set.is_empty() {
                    *self = Members::None;
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Members::None)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConnHandle> {
        let (one, many) = match self {
            Members::None => (None, None),
            Members::One(x) => (Some(x), None),
            Members::Many(set) => (None, Some(set.iter().map(|m| &m.0))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// A channel's pending joins: usually none, so boxed when there are (a user channel, one
/// per connection, never has any): 8 bytes in every channel's slot, not the set's 40.
#[derive(Default)]
pub(crate) struct Pending(Option<Box<Set<Arc<str>>>>);

impl Pending {
    pub fn insert(&mut self, id: Arc<str>) {
        self.0.get_or_insert_with(Box::default).insert(id);
    }

    pub fn take(&mut self, id: &str) -> Option<Arc<str>> {
        let set = self.0.as_mut()?;
        let taken = set.take(id);
        if set.is_empty() {
            self.0 = None;
        }
        taken
    }

    pub fn remove(&mut self, id: &str) {
        self.take(id);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl Channel {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

pub(crate) struct ConnEntry {
    pub handle: ConnHandle,
    /// The channels it is in or joining: a few (its user channel, at most a limit of
    /// rooms), each name shared with the channel's key in [`State::channels`].
    pub channels: Vec<Arc<str>>,
}

impl ConnEntry {
    pub fn leave(&mut self, channel: &str) {
        self.channels.retain(|c| &**c != channel);
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub conns: Map<Arc<str>, ConnEntry>,
    pub channels: Map<Arc<str>, Channel>,
    /// Set by [`Table::close_all`]: a connection registered afterwards is closed with
    /// this code as it is added.
    closing: Option<u16>,
}

impl State {
    fn close_if_closing(&self, handle: &ConnHandle) {
        if let Some(code) = self.closing {
            handle.close(code);
        }
    }

    /// The channel named `name` (created empty when new) and its shared name.
    fn channel(&mut self, name: &str) -> (Arc<str>, &mut Channel) {
        let key = match self.channels.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(name);
                self.channels.insert(k.clone(), Channel::default());
                k
            }
        };
        let ch = self.channels.get_mut(name).expect("just made sure");
        (key, ch)
    }
}

/// A REST call's reply slot in the table, taken out when this is dropped: also when the
/// call's future is (its HTTP client hung up before the worker answered), so no slot
/// outlives its call.
#[must_use = "the slot leaves the table when this is dropped"]
pub struct Direct {
    table: Arc<Table>,
    id: Arc<str>,
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.table.unregister(&self.id);
    }
}

pub struct Table {
    pub(crate) state: Mutex<State>,
    /// This gateway's node id and the inbox channel replies to its connections come on.
    node: String,
    pub(crate) inbox: String,
    sub: Arc<dyn Subscription>,
    /// Serializes SUBSCRIBE/UNSUBSCRIBE so a join and a last-leave cannot interleave.
    sub_lock: tokio::sync::Mutex<()>,
}

impl Table {
    /// A table for gateway node `node`, subscribed to its inbox.
    pub async fn new(sub: Arc<dyn Subscription>, node: String) -> Result<Arc<Self>, BusError> {
        let inbox = jam_shared::keys::gateway_inbox(&node);
        sub.subscribe(&inbox).await?;
        Ok(Arc::new(Self {
            state: Mutex::default(),
            node,
            inbox,
            sub,
            sub_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Subscribe again, after the bus reconnected, to the inbox and to every channel
    /// this table holds (the subscription keeps no list of its own). Holding the
    /// subscribe lock, no join or last leave interleaves; retries back off for a few
    /// seconds, then the channels wait for the next reconnect (the clients are asked to
    /// reconnect anyway).
    pub async fn resubscribe_all(&self) {
        let _g = self.sub_lock.lock().await;
        let mut channels = vec![self.inbox.clone()];
        {
            let s = self.state.lock().unwrap();
            channels.extend(
                s.channels
                    .iter()
                    .filter(|(_, ch)| ch.subscribed)
                    .map(|(name, _)| name.to_string()),
            );
        }
        let mut wait = std::time::Duration::from_millis(50);
        for attempt in 1..=8 {
            match self.sub.subscribe_many(channels.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, channels = channels.len(), "re-subscribing failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Add a connection that only gets frames addressed to it (a REST call's reply slot),
    /// held while the returned [`Direct`] lives.
    pub fn register_direct(self: &Arc<Self>, handle: ConnHandle) -> Direct {
        let id = handle.id.clone();
        let mut s = self.state.lock().unwrap();
        s.close_if_closing(&handle);
        s.conns.insert(
            handle.id.clone(),
            ConnEntry {
                handle,
                channels: Vec::new(),
            },
        );
        Direct {
            table: self.clone(),
            id,
        }
    }

    /// Add a connection and make it a member of its user channel.
    pub async fn register(&self, handle: ConnHandle, user_channel: String) -> Result<(), BusError> {
        let _g = self.sub_lock.lock().await;
        let need_sub = {
            let mut s = self.state.lock().unwrap();
            s.close_if_closing(&handle);
            let id = handle.id.clone();
            let (name, ch) = s.channel(&user_channel);
            ch.members.insert(handle.clone());
            let need_sub = !ch.subscribed;
            let channels = vec![name];
            s.conns.insert(id, ConnEntry { handle, channels });
            need_sub
        };
        if need_sub {
            self.subscribe(&user_channel).await?;
        }
        Ok(())
    }

    /// Make `conn` a pending member of `channel`, subscribing first if needed: once this
    /// returns, every event the worker publishes on the channel reaches this gateway.
    pub async fn add_pending(&self, conn: &str, channel: &str) -> Result<(), BusError> {
        let _g = self.sub_lock.lock().await;
        let need_sub = {
            let mut s = self.state.lock().unwrap();
            let Some(id) = s.conns.get(conn).map(|e| e.handle.id.clone()) else {
                return Ok(());
            };
            let (name, ch) = s.channel(channel);
            if !ch.members.contains(&id) {
                ch.pending.insert(id.clone());
            }
            let need_sub = !ch.subscribed;
            let entry = s.conns.get_mut(&id).expect("checked above");
            if !entry.channels.contains(&name) {
                entry.channels.push(name);
            }
            need_sub
        };
        if need_sub {
            self.subscribe(channel).await?;
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        self.sub.subscribe(channel).await?;
        let mut s = self.state.lock().unwrap();
        if let Some(ch) = s.channels.get_mut(channel) {
            ch.subscribed = true;
        }
        metrics::gauge!("jam_room_subscriptions").increment(1.0);
        Ok(())
    }

    /// Remove a connection everywhere; returns the channels it was in (member or pending).
    pub fn unregister(self: &Arc<Self>, conn: &str) -> Vec<String> {
        let mut empty = Vec::new();
        let channels = {
            let mut s = self.state.lock().unwrap();
            let Some(entry) = s.conns.remove(conn) else {
                return Vec::new();
            };
            for c in &entry.channels {
                if let Some(ch) = s.channels.get_mut(c) {
                    ch.members.remove(conn);
                    ch.pending.remove(conn);
                    if ch.is_empty() {
                        empty.push(c.to_string());
                    }
                }
            }
            entry.channels.iter().map(|c| c.to_string()).collect()
        };
        self.release(empty);
        channels
    }

    /// Unsubscribe from channels that lost their last local member (in the background:
    /// this is called on the delivery path).
    pub(crate) fn release(self: &Arc<Self>, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _g = me.sub_lock.lock().await;
            for c in channels {
                let still_empty = {
                    let mut s = me.state.lock().unwrap();
                    match s.channels.get(c.as_str()) {
                        Some(ch) if ch.is_empty() => {
                            let was = ch.subscribed;
                            s.channels.remove(c.as_str());
                            was
                        }
                        _ => false,
                    }
                };
                if still_empty {
                    metrics::gauge!("jam_room_subscriptions").decrement(1.0);
                    if let Err(e) = me.sub.unsubscribe(&c).await {
                        tracing::warn!(channel = %c, error = %e, "unsubscribe failed");
                    }
                }
            }
        });
    }

    /// Whether `conn` is in `channel` (a member, or joining).
    pub fn is_in(&self, conn: &str, channel: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.conns
            .get(conn)
            .is_some_and(|e| e.channels.iter().any(|c| &**c == channel))
    }

    /// The rooms `conn` is in or joining.
    pub fn room_count(&self, conn: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.conns.get(conn).map_or(0, |e| {
            e.channels
                .iter()
                .filter(|c| jam_shared::keys::room_of(c).is_some())
                .count()
        })
    }

    /// The handle of connection `conn`, while it is registered.
    pub fn handle(&self, conn: &str) -> Option<ConnHandle> {
        let s = self.state.lock().unwrap();
        s.conns.get(conn).map(|e| e.handle.clone())
    }

    /// Close every connection with `code`, and every one registered from now on (the
    /// drain): a connection greeted just before the drain but not yet in the table is not
    /// missed. Returns how many were open.
    pub fn close_all(&self, code: u16) -> usize {
        let conns: Vec<ConnHandle> = {
            let mut s = self.state.lock().unwrap();
            s.closing = Some(code);
            s.conns.values().map(|e| e.handle.clone()).collect()
        };
        for c in &conns {
            c.close(code);
        }
        conns.len()
    }

    pub fn connections(&self) -> Vec<ConnHandle> {
        self.state
            .lock()
            .unwrap()
            .conns
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }

    /// The connections in one of `slices` fixed slices (by their id), so that a task
    /// visiting one slice at a time reaches each connection once per round.
    pub fn connections_in_slice(&self, slice: u32, slices: u32) -> Vec<ConnHandle> {
        self.state
            .lock()
            .unwrap()
            .conns
            .iter()
            .filter(|(id, _)| slice_of(id, slices) == slice)
            .map(|(_, e)| e.handle.clone())
            .collect()
    }
}

/// Which of `slices` slices a connection id falls in: the same for an id all the process
/// long (the ids are the server's own, so an unseeded hash is safe here).
pub fn slice_of(id: &str, slices: u32) -> u32 {
    let fx = std::hash::BuildHasherDefault::<rustc_hash::FxHasher>::default();
    let h = std::hash::BuildHasher::hash_one(&fx, id);
    (h % u64::from(slices.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_kill_reaches_who_waits_and_who_comes_later() {
        use futures_util::FutureExt;
        let kill = Kill::default();
        let mut waiting = std::pin::pin!(kill.cancelled());
        // Polled once: registered and waiting, nothing fired yet.
        assert!((&mut waiting).now_or_never().is_none(), "nothing fired yet");
        kill.cancel();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiter wakes");
        // After the fact: ready at once.
        tokio::time::timeout(Duration::from_millis(100), kill.cancelled())
            .await
            .expect("already fired");
        assert!(kill.is_cancelled());
    }

    #[tokio::test]
    async fn a_kill_reaches_the_owner_and_the_others_at_once() {
        use futures_util::FutureExt;
        let kill = Kill::default();
        let mut owner = std::pin::pin!(kill.cancelled_here());
        let mut other = std::pin::pin!(kill.cancelled());
        assert!((&mut owner).now_or_never().is_none(), "nothing fired yet");
        assert!((&mut other).now_or_never().is_none());
        kill.cancel();
        let both = futures_util::future::join(owner, other);
        tokio::time::timeout(Duration::from_secs(1), both)
            .await
            .expect("both wake");
        tokio::time::timeout(Duration::from_millis(100), kill.cancelled_here())
            .await
            .expect("already fired");
    }

    #[tokio::test]
    async fn a_connection_registered_after_close_all_is_closed_too() {
        use jam_shared::bus::{memory::MemoryBus, Bus};
        let (sub, _rx) = MemoryBus::new().subscription(8).await.unwrap();
        let table = Table::new(sub, "gw-test".into()).await.unwrap();
        let code = |c: &ConnHandle| c.close_code.load(Ordering::SeqCst);
        let before = ConnHandle::new("before", "u", mpsc::channel(1).0);
        table
            .register(before.clone(), "user:u".into())
            .await
            .unwrap();
        let direct = ConnHandle::new("direct", "u", mpsc::channel(1).0);
        assert_eq!(code(&before), 0, "nothing closed yet");

        assert_eq!(table.close_all(1012), 1, "one was open");
        assert_eq!(code(&before), 1012);
        assert!(before.kill.is_cancelled());

        // Greeted before the drain, in the table after its sweep: closed as it is added.
        let late = ConnHandle::new("late", "v", mpsc::channel(1).0);
        table.register(late.clone(), "user:v".into()).await.unwrap();
        let _slot = table.register_direct(direct.clone());
        for c in [&late, &direct] {
            assert_eq!(code(c), 1012, "{}", c.id);
            assert!(c.kill.is_cancelled(), "{}", c.id);
        }
    }

    #[test]
    fn connection_slices_cover_every_id_once_and_evenly() {
        let ids: Vec<String> = (0..10_000).map(|_| jam_shared::ids::unique()).collect();
        let mut per_slice = [0usize; 10];
        for id in &ids {
            let s = slice_of(id, 10);
            assert_eq!(s, slice_of(id, 10), "an id stays in its slice");
            per_slice[s as usize] += 1;
        }
        assert_eq!(per_slice.iter().sum::<usize>(), ids.len());
        assert!(
            per_slice.iter().all(|n| (800..1200).contains(n)),
            "{per_slice:?}"
        );
        assert_eq!(slice_of("x", 1), 0);
        assert_eq!(slice_of("x", 0), 0, "no slices is one slice");
    }

    #[test]
    fn members_kept_inline_or_in_a_set_behave_as_one_set() {
        let conns: Vec<ConnHandle> = ["a", "b", "c"]
            .into_iter()
            .map(|id| ConnHandle::new(id, "u", mpsc::channel(1).0))
            .collect();
        let mut m = Members::default();
        assert!(m.is_empty() && m.get("a").is_none());
        assert!(m.insert(conns[0].clone()));
        assert!(!m.insert(conns[0].clone()), "a member is added once");
        assert!(matches!(m, Members::One(_)), "one member is inline");
        assert!(m.insert(conns[1].clone()) && m.insert(conns[2].clone()));
        assert!(!m.insert(conns[1].clone()));
        let mut all: Vec<&str> = m.iter().map(|x| &*x.id).collect();
        all.sort_unstable();
        assert_eq!(all, ["a", "b", "c"]);
        // The connection itself comes back, not a copy.
        assert!(m.get("b").unwrap().same(&conns[1]));
        m.remove("b");
        m.remove("zz");
        assert!(!m.contains("b") && m.contains("a") && m.contains("c"));
        m.remove("a");
        m.remove("c");
        assert!(m.is_empty() && m.iter().next().is_none());
        let mut one = Members::default();
        one.insert(conns[2].clone());
        one.remove("a");
        assert!(
            one.contains("c"),
            "removing a stranger keeps the one member"
        );
        one.remove("c");
        assert!(one.is_empty());
    }
}
