//! The in-memory bus: real pub/sub and streams inside one process (standalone mode).
//! Streams keep unacknowledged entries only until read: in one process a crash loses
//! the consumer and the entries together, so there is nothing to redeliver to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::lag::Dropped;
use super::{Bus, BusError, BusMessage, LeaseOp, Payload, ReadFrom, StreamEntry, Subscription};
use crate::hash::{Map, Set};
use crate::protocol::Command;

/// Entries a stream holds before XADD is refused (the Redis bus trims at the same size).
pub const STREAM_CAP: usize = 100_000;

#[derive(Default)]
struct State {
    subs: Map<u64, Sub>,
    next_sub: u64,
    streams: Map<String, Stream>,
    next_id: u64,
    /// Lease key → (owner, expiry).
    leases: Map<String, (String, Instant)>,
    /// Window counters: key → (count, end of window).
    counters: Map<String, (u64, Instant)>,
    /// Registry → member → expiry.
    members: Map<String, Map<String, Instant>>,
}

/// A subscriber: its receiver, its channels, and what it lost since it was last told.
struct Sub {
    tx: mpsc::Sender<BusMessage>,
    channels: Set<String>,
    /// Not empty while a [`BUS_LAGGED`](crate::keys::BUS_LAGGED) notice waits for room in
    /// `tx`: messages that come meanwhile are dropped too (and named in it), so that the
    /// notice comes before anything published after the loss.
    dropped: Dropped,
}

impl Sub {
    /// Hand `msg` over, or drop it and have the owner told as soon as it has room.
    fn offer(&mut self, id: u64, state: &Arc<Mutex<State>>, msg: BusMessage) {
        let lagging = !self.dropped.is_empty();
        self.dropped.offer(&self.tx, msg);
        if lagging || self.dropped.is_empty() {
            return;
        }
        // This drop began a loss: the notice goes out as soon as the owner has room.
        let tx = self.tx.clone();
        let state = Arc::downgrade(state);
        tokio::spawn(async move {
            // Ends when the receiver goes (the owner stopped) or the notice is sent.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            let Some(state) = state.upgrade() else {
                return;
            };
            let mut s = state.lock().unwrap();
            if let Some(sub) = s.subs.get_mut(&id) {
                permit.send(sub.dropped.take_notice());
            }
        });
    }
}

/// A stream's entries, and the readers waiting for its next one: an entry wakes only the
/// readers of its own stream (one wake-up for all of them woke every partition's reader
/// for every command, 16 in the standalone: docs/benchmarks.md).
#[derive(Default)]
struct Stream {
    entries: VecDeque<(u64, Payload)>,
    ready: Arc<Notify>,
}

#[derive(Clone, Default)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn append(&self, stream: &str, payload: Payload) -> Result<String, BusError> {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        if !s.streams.contains_key(stream) {
            s.streams.insert(stream.to_string(), Stream::default());
        }
        let q = s.streams.get_mut(stream).expect("just made sure");
        if q.entries.len() >= STREAM_CAP {
            return Err(BusError::Redis("stream full".into()));
        }
        q.entries.push_back((id, payload));
        // Readers register before they look (see `read_group`): none misses this.
        q.ready.notify_waiters();
        Ok(entry_id(id))
    }

    /// Up to `count` entries of `streams`, oldest first across them (as one consumer
    /// reading all partitions would), taken out of their streams.
    fn take_oldest(&self, streams: &[String], count: usize) -> Vec<StreamEntry> {
        let mut s = self.state.lock().unwrap();
        let mut out = Vec::new();
        while out.len() < count {
            let oldest = streams
                .iter()
                .filter_map(|st| {
                    s.streams
                        .get(st)
                        .and_then(|q| q.entries.front())
                        .map(|(id, _)| (*id, st))
                })
                .min_by_key(|(id, _)| *id);
            let Some((_, st)) = oldest else { break };
            let q = s.streams.get_mut(st).expect("just found");
            let (id, payload) = q.entries.pop_front().expect("just found");
            out.push(StreamEntry {
                stream: st.clone(),
                id: entry_id(id),
                payload,
            });
        }
        out
    }
}

/// A stream entry's id, as Redis writes one (`<n>-0`).
fn entry_id(n: u64) -> String {
    [itoa::Buffer::new().format(n), "-0"].concat()
}

struct MemorySubscription {
    id: u64,
    state: Arc<Mutex<State>>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let mut s = self.state.lock().unwrap();
        let sub = s.subs.get_mut(&self.id).ok_or(BusError::Closed)?;
        sub.channels.insert(channel.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        let mut s = self.state.lock().unwrap();
        if let Some(sub) = s.subs.get_mut(&self.id) {
            sub.channels.remove(channel);
        }
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.subs.remove(&self.id);
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        let mut s = self.state.lock().unwrap();
        let channel: Arc<str> = Arc::from(channel);
        for (id, sub) in s.subs.iter_mut() {
            if !sub.channels.contains(&*channel) {
                continue;
            }
            // At-most-once, like Redis pub/sub: a subscriber that cannot keep up loses messages.
            let msg = BusMessage {
                channel: channel.clone(),
                payload: payload.clone(),
            };
            sub.offer(*id, &self.state, msg);
        }
        Ok(())
    }

    async fn subscription(
        &self,
        capacity: usize,
    ) -> Result<(Arc<dyn Subscription>, mpsc::Receiver<BusMessage>), BusError> {
        let (tx, rx) = mpsc::channel(capacity);
        let mut s = self.state.lock().unwrap();
        s.next_sub += 1;
        let id = s.next_sub;
        s.subs.insert(
            id,
            Sub {
                tx,
                channels: Set::default(),
                dropped: Dropped::default(),
            },
        );
        Ok((
            Arc::new(MemorySubscription {
                id,
                state: self.state.clone(),
            }),
            rx,
        ))
    }

    async fn xadd(&self, stream: &str, payload: Bytes) -> Result<String, BusError> {
        self.append(stream, Payload::Bytes(payload))
    }

    async fn xadd_command(&self, stream: &str, cmd: Command) -> Result<String, BusError> {
        self.append(stream, Payload::Command(Box::new(cmd)))
    }

    async fn ensure_group(&self, _streams: &[String], _group: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn read_group(
        &self,
        streams: &[String],
        _group: &str,
        _consumer: &str,
        count: usize,
        block_ms: u64,
        from: ReadFrom,
    ) -> Result<Vec<StreamEntry>, BusError> {
        // Entries leave the in-memory stream as they are read: nothing is ever pending.
        if matches!(from, ReadFrom::Pending { .. }) {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(block_ms);
        let readies: Vec<Arc<Notify>> = {
            let mut s = self.state.lock().unwrap();
            streams
                .iter()
                .map(|st| s.streams.entry(st.clone()).or_default().ready.clone())
                .collect()
        };
        loop {
            let mut waits: Vec<_> = readies.iter().map(|r| Box::pin(r.notified())).collect();
            // Registered before looking: an entry added after the look wakes this reader.
            for w in &mut waits {
                w.as_mut().enable();
            }
            let out = self.take_oldest(streams, count);
            if !out.is_empty() {
                return Ok(out);
            }
            let any = futures::future::select_all(waits);
            if tokio::time::timeout_at(deadline, any).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn claim_stale(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: u64,
        _: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        Ok(Vec::new())
    }

    async fn ack(&self, _group: &str, _entries: &[(String, String)]) -> Result<(), BusError> {
        Ok(())
    }

    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        op: LeaseOp,
    ) -> Result<bool, BusError> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let held_by_owner = matches!(s.leases.get(key), Some((o, exp)) if o == owner && *exp > now);
        let prefix = format!("{}#", crate::keys::node_instance(owner));
        // Free, or held by an earlier boot of the same instance (it died).
        let free =
            !matches!(s.leases.get(key), Some((o, exp)) if *exp > now && !o.starts_with(&prefix));
        let until = now + Duration::from_millis(ttl_ms);
        Ok(match op {
            LeaseOp::Acquire | LeaseOp::Renew
                if held_by_owner || (op == LeaseOp::Acquire && free) =>
            {
                s.leases.insert(key.to_string(), (owner.to_string(), until));
                true
            }
            LeaseOp::Release if held_by_owner => {
                s.leases.remove(key);
                true
            }
            _ => false,
        })
    }

    async fn register_member(
        &self,
        set: &str,
        member: &str,
        ttl_ms: u64,
    ) -> Result<usize, BusError> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let m = s.members.entry(set.to_string()).or_default();
        let prefix = format!("{}#", crate::keys::node_instance(member));
        m.retain(|k, _| k == member || !k.starts_with(&prefix));
        m.insert(member.to_string(), now + Duration::from_millis(ttl_ms));
        m.retain(|_, exp| *exp > now);
        Ok(m.len())
    }

    async fn live_members(&self, set: &str) -> Result<usize, BusError> {
        let s = self.state.lock().unwrap();
        let now = Instant::now();
        Ok(s.members
            .get(set)
            .map_or(0, |m| m.values().filter(|exp| **exp > now).count()))
    }

    async fn leave_member(&self, set: &str, member: &str) -> Result<(), BusError> {
        if let Some(m) = self.state.lock().unwrap().members.get_mut(set) {
            m.remove(member);
        }
        Ok(())
    }

    async fn count_in_window(&self, key: &str, window_ms: u64) -> Result<u64, BusError> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if s.counters.len() > 100_000 {
            s.counters.retain(|_, (_, end)| *end > now);
        }
        let e = s
            .counters
            .entry(key.to_string())
            .or_insert((0, now + Duration::from_millis(window_ms)));
        if e.1 <= now {
            *e = (0, now + Duration::from_millis(window_ms));
        }
        e.0 += 1;
        Ok(e.0)
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}
