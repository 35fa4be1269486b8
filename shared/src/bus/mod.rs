//! The bus seam: commands gateway → worker on partitioned streams (at-least-once,
//! acknowledged), events worker → gateways on pub/sub channels (at-most-once).
//! [`redis::RedisBus`] is the real one; [`memory::MemoryBus`] runs standalone.

pub mod lag;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::Command;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("bus closed")]
    Closed,
    /// The caller's own bound ran out before Redis answered.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl BusError {
    /// `fut`, or [`BusError::Timeout`] once `bound` has passed without an answer.
    pub async fn within<T>(
        bound: std::time::Duration,
        fut: impl std::future::Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        tokio::time::timeout(bound, fut)
            .await
            .unwrap_or(Err(BusError::Timeout(bound)))
    }

    /// Whether trying again later can help (a lost connection) or not (a closed bus).
    pub fn retryable(&self) -> bool {
        matches!(self, BusError::Redis(_) | BusError::Timeout(_))
    }
}

/// Where a consumer-group read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries already delivered to this consumer and not acknowledged, after the id
    /// `after`: read first, at start and after every read error, so a stream applies in
    /// order.
    Pending { after: String },
    /// Entries never delivered to anyone (`>`).
    New,
}

/// What to do with a lease (a key with an owner and a time to live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// Take it when free, already ours, or held by an earlier boot of our instance
    /// (owner ids are `<instance>#<boot>`): a restarted process takes its leases back at once.
    Acquire,
    /// Extend it if still ours.
    Renew,
    /// Give it up if ours.
    Release,
}

/// One message received on a subscribed channel.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub channel: Arc<str>,
    pub payload: Bytes,
}

/// What a stream entry carries: a command's JSON (from Redis, or appended as bytes), or, on
/// the in-process bus, the command itself, never encoded.
#[derive(Debug, Clone)]
pub enum Payload {
    Bytes(Bytes),
    Command(Box<Command>),
}

/// One entry read from a command stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub stream: String,
    pub id: String,
    pub payload: Payload,
}

impl StreamEntry {
    /// An entry whose command is in `payload`'s bytes.
    pub fn encoded(stream: String, id: String, payload: Bytes) -> Self {
        Self {
            stream,
            id,
            payload: Payload::Bytes(payload),
        }
    }

    /// The command this entry carries, decoded from its bytes when it has no value.
    pub fn into_command(self) -> Result<Command, serde_json::Error> {
        match self.payload {
            Payload::Command(c) => Ok(*c),
            Payload::Bytes(b) => serde_json::from_slice(&b),
        }
    }
}

/// A set of channel subscriptions feeding one receiver. A gateway holds one for all of
/// its rooms and users: one bus connection, however many sockets.
///
/// The subscription does not remember its channels: after a reconnect (a
/// [`keys::BUS_RESET`](crate::keys::BUS_RESET) message) its owner subscribes again to
/// what it still needs, from its own table (one copy of every channel name, not two).
#[async_trait]
pub trait Subscription: Send + Sync {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError>;

    /// Subscribe to several channels at once (the Redis bus sends them in chunks).
    async fn subscribe_many(&self, channels: Vec<String>) -> Result<(), BusError> {
        for c in channels {
            self.subscribe(&c).await?;
        }
        Ok(())
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError>;

    /// Publish several messages; the Redis bus pipelines them.
    async fn publish_many(&self, msgs: Vec<(String, Bytes)>) -> Result<(), BusError> {
        for (c, p) in msgs {
            self.publish(&c, p).await?;
        }
        Ok(())
    }

    /// A new subscription set; messages arrive on the receiver (bounded by `capacity`).
    async fn subscription(
        &self,
        capacity: usize,
    ) -> Result<(Arc<dyn Subscription>, mpsc::Receiver<BusMessage>), BusError>;

    /// Append a command to a stream; returns its id.
    async fn xadd(&self, stream: &str, payload: Bytes) -> Result<String, BusError>;

    /// Append `cmd` to a stream: as JSON ([`xadd`](Self::xadd)) on a bus between processes;
    /// the in-process bus hands the value itself to its reader (no encoding and decoding of
    /// every command inside one process: about 5 % of the standalone's CPU in rooms).
    async fn xadd_command(&self, stream: &str, cmd: Command) -> Result<String, BusError> {
        let payload = serde_json::to_vec(&cmd).expect("command serializes");
        self.xadd(stream, payload.into()).await
    }

    /// Create the consumer group on each stream if missing.
    async fn ensure_group(&self, streams: &[String], group: &str) -> Result<(), BusError>;

    /// Read entries for `consumer`: its pending ones, or new ones waiting at most `block_ms`.
    async fn read_group(
        &self,
        streams: &[String],
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
        from: ReadFrom,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// Take over entries other consumers read but never acknowledged for `min_idle_ms`.
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// Acknowledge (and delete) processed entries.
    async fn ack(&self, group: &str, entries: &[(String, String)]) -> Result<(), BusError>;

    /// Publish `msgs`, then acknowledge `entries`: the Redis bus sends both in one
    /// pipeline, one round trip. The publishes go first; the acknowledgements are
    /// idempotent, so a failed call can be repeated whole.
    async fn publish_and_ack(
        &self,
        msgs: Vec<(String, Bytes)>,
        group: &str,
        entries: &[(String, String)],
    ) -> Result<(), BusError> {
        self.publish_many(msgs).await?;
        self.ack(group, entries).await
    }

    /// Apply `op` to the lease `key` for `owner`; true when `owner` holds it afterwards
    /// (for `Release`: when it was released).
    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        op: LeaseOp,
    ) -> Result<bool, BusError>;

    /// Announce `member` in the registry `set` for `ttl_ms`; returns how many members are
    /// live (workers use it to take a fair share of the partitions). An earlier boot of
    /// the same instance (`<instance>#<boot>`) is forgotten at once.
    async fn register_member(
        &self,
        set: &str,
        member: &str,
        ttl_ms: u64,
    ) -> Result<usize, BusError>;

    /// How many members of the registry `set` are live (registered and not expired).
    async fn live_members(&self, set: &str) -> Result<usize, BusError>;

    /// Take `member` out of the registry `set` now, before its registration expires (a
    /// worker that stops: the others count it gone at once).
    async fn leave_member(&self, set: &str, member: &str) -> Result<(), BusError>;

    /// Count one more event under `key` in a window of `window_ms` that starts with the
    /// first; returns the count so far (rate limits shared by every gateway).
    async fn count_in_window(&self, key: &str, window_ms: u64) -> Result<u64, BusError>;

    /// Readiness probe.
    async fn ping(&self) -> Result<(), BusError>;
}
