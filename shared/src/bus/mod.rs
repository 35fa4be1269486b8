//! The bus seam: commands gateway → worker on partitioned streams (at-least-once,
//! acknowledged), events worker → gateways on pub/sub channels (at-most-once).
//! [`redis::RedisBus`] is the real one; [`memory::MemoryBus`] runs standalone.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("bus closed")]
    Closed,
}

/// One message received on a subscribed channel.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub channel: Arc<str>,
    pub payload: Bytes,
}

/// One entry read from a command stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub stream: String,
    pub id: String,
    pub payload: Bytes,
}

/// A set of channel subscriptions feeding one receiver. A gateway holds one for all of
/// its rooms and users: one bus connection, however many sockets.
#[async_trait]
pub trait Subscription: Send + Sync {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError>;
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

    /// Create the consumer group on each stream if missing.
    async fn ensure_group(&self, streams: &[String], group: &str) -> Result<(), BusError>;

    /// Read new entries for `consumer`, waiting at most `block_ms`.
    async fn read_group(
        &self,
        streams: &[String],
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
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

    /// Readiness probe.
    async fn ping(&self) -> Result<(), BusError>;
}
