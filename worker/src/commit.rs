//! The second half of a partition's pipeline: commit a batch (fenced), then publish its
//! events, then acknowledge its stream entries, one batch after the other. While batch N
//! is here, the reader already reads and applies batch N+1.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Batch, Store, StoreError};
use bytes::Bytes;
use jam_shared::bus::Bus;
use jam_shared::keys::WORKER_GROUP;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::Query;
use crate::Health;

/// What one applied batch left to do.
pub struct Work {
    pub batch: Batch,
    pub publishes: Vec<(String, Bytes)>,
    pub queries: Vec<Query>,
    /// (stream, entry id) to acknowledge once the events are out.
    pub acks: Vec<(String, String)>,
}

const PUBLISH_ATTEMPTS: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Committer {
    pub partition: u32,
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub health: Arc<Health>,
    /// Bounds concurrent store reads answering queries.
    pub queries: Arc<Semaphore>,
}

impl Committer {
    /// Run until the queue closes or `abort` fires. `Err(Fenced)` when another worker
    /// claimed the partition: nothing of this owner may be written any more.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Work>,
        abort: CancellationToken,
    ) -> Result<(), StoreError> {
        while let Some(w) = rx.recv().await {
            let Some(()) = self.commit(&w.batch, &abort).await? else {
                return Ok(()); // aborted: not acknowledged, so the next owner re-reads it
            };
            self.publish(w.publishes).await;
            for q in w.queries {
                let Ok(permit) = self.queries.clone().acquire_owned().await else {
                    break;
                };
                let (store, bus) = (self.store.clone(), self.bus.clone());
                tokio::spawn(async move {
                    crate::queries::answer(store, bus, q).await;
                    drop(permit);
                });
            }
            if !w.acks.is_empty() {
                if let Err(e) = self.bus.ack(WORKER_GROUP, &w.acks).await {
                    // Unacknowledged entries come back and are skipped by the high-water mark.
                    tracing::warn!(error = %e, "acknowledging commands failed");
                }
            }
        }
        Ok(())
    }

    /// Commit, retrying an outage with back-off for as long as it lasts (readiness false
    /// meanwhile). `Ok(None)` when aborted first.
    async fn commit(
        &self,
        batch: &Batch,
        abort: &CancellationToken,
    ) -> Result<Option<()>, StoreError> {
        let mut delay = Duration::from_millis(50);
        loop {
            let t = std::time::Instant::now();
            match self.store.commit(batch).await {
                Ok(()) => {
                    metrics::histogram!("jam_commit_seconds").record(t.elapsed().as_secs_f64());
                    self.health.store_ok(self.partition, true);
                    return Ok(Some(()));
                }
                Err(e @ StoreError::Fenced(_)) => return Err(e),
                Err(e) => {
                    metrics::counter!("jam_commit_errors_total", "retryable" => e.retryable().to_string())
                        .increment(1);
                    tracing::warn!(partition = self.partition, error = %e, retry_in_ms = delay.as_millis() as u64, "commit failed; retrying");
                    self.health.store_ok(self.partition, false);
                    tokio::select! {
                        _ = abort.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Publish committed events, retrying with back-off. A batch that still cannot go
    /// out is dropped with a metric: its events are in the store, and clients that
    /// notice the seq gap recover them.
    async fn publish(&self, msgs: Vec<(String, Bytes)>) {
        if msgs.is_empty() {
            return;
        }
        let n = msgs.len();
        let mut delay = Duration::from_millis(20);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.bus.publish_many(msgs.clone()).await {
                Ok(()) => {
                    metrics::counter!("jam_events_published_total").increment(n as u64);
                    return;
                }
                Err(e) if attempt < PUBLISH_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "publishing events failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    metrics::counter!("jam_publish_errors_total").increment(1);
                    tracing::error!(error = %e, events = n, "publishing events failed; giving up");
                }
            }
        }
    }
}
