//! The command loop: read a batch from the partition streams, apply it, commit it in one
//! transaction (group commit), publish, acknowledge. Also drives the timers and takes
//! over commands a dead worker read but never acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jam_shared::bus::{Bus, BusMessage, StreamEntry};
use jam_shared::config::Config;
use jam_shared::keys::{self, WORKER_GROUP};
use jam_shared::protocol::Command;
use jam_shared::store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Effects, Engine, EngineConfig, GatewayLiveness};
use crate::WorkerError;

const BATCH: usize = 256;
const BLOCK_MS: u64 = 200;
const TICK: Duration = Duration::from_millis(500);
const CLAIM_EVERY: Duration = Duration::from_secs(5);
/// A command read but not acknowledged this long belongs to a dead consumer.
const CLAIM_IDLE_MS: u64 = 15_000;
const COMMIT_ATTEMPTS: u32 = 6;
/// Applied command ids are kept this long: redelivery happens within minutes.
const KEEP_COMMAND_IDS_MS: i64 = 24 * 3600 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct Consumer {
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    engine: Engine,
    streams: Vec<String>,
    consumer: String,
    liveness: GatewayLiveness,
    /// Bounds concurrent store reads; when all are busy the engine waits.
    queries: Arc<tokio::sync::Semaphore>,
}

impl Consumer {
    pub fn new(cfg: &Config, bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Self {
        Self {
            bus,
            store,
            engine: Engine::new(EngineConfig::from_config(cfg)),
            streams: (0..cfg.partitions).map(keys::command_stream).collect(),
            consumer: cfg.instance_id.clone(),
            liveness: GatewayLiveness::new(cfg.gateway_dead_after),
            queries: Arc::new(tokio::sync::Semaphore::new(32)),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.engine.load(&*self.store).await?;
        self.bus.ensure_group(&self.streams, WORKER_GROUP).await?;
        let (sub, mut heartbeats) = self.bus.subscription(4096).await?;
        sub.subscribe(keys::GATEWAY_HEARTBEAT_CHANNEL).await?;
        tracing::info!(partitions = self.streams.len(), consumer = %self.consumer, "worker consuming");
        let mut last_tick = Instant::now();
        let mut last_claim = Instant::now() - CLAIM_EVERY;
        let mut last_prune = Instant::now();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            self.drain_heartbeats(&mut heartbeats);
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let mut fx = Effects::default();
                let liveness = &self.liveness;
                self.engine.tick(
                    jam_shared::clock::now_ms(),
                    &|g| liveness.is_alive(g),
                    &mut fx,
                );
                self.finish(fx, &[]).await?;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                let before = jam_shared::clock::now_ms() - KEEP_COMMAND_IDS_MS;
                if let Err(e) = self.store.prune_commands(before).await {
                    tracing::warn!(error = %e, "pruning applied command ids failed");
                }
            }
            if last_claim.elapsed() >= CLAIM_EVERY {
                last_claim = Instant::now();
                self.claim_stale().await?;
            }
            let read = tokio::select! {
                r = self.bus.read_group(&self.streams, WORKER_GROUP, &self.consumer, BATCH, BLOCK_MS) => r,
                _ = shutdown.cancelled() => break,
            };
            match read {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    self.process(entries, false).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading commands failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Err(e) = self.bus.ensure_group(&self.streams, WORKER_GROUP).await {
                        tracing::debug!(error = %e, "group re-creation failed");
                    }
                }
            }
        }
        tracing::info!("worker stopped consuming");
        Ok(())
    }

    fn drain_heartbeats(&mut self, rx: &mut mpsc::Receiver<BusMessage>) {
        while let Ok(m) = rx.try_recv() {
            if let Ok(id) = std::str::from_utf8(&m.payload) {
                self.liveness.seen(id);
            }
        }
    }

    async fn claim_stale(&mut self) -> Result<(), WorkerError> {
        for s in self.streams.clone() {
            match self
                .bus
                .claim_stale(&s, WORKER_GROUP, &self.consumer, CLAIM_IDLE_MS, BATCH)
                .await
            {
                Ok(entries) if !entries.is_empty() => {
                    tracing::warn!(stream = %s, count = entries.len(), "took over unacknowledged commands");
                    self.process(entries, true).await?;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming stale commands failed"),
            }
        }
        Ok(())
    }

    /// Apply a batch. `redelivered` entries are checked against the store's record of
    /// applied commands first, so a command retried after a crash applies once.
    async fn process(
        &mut self,
        entries: Vec<StreamEntry>,
        redelivered: bool,
    ) -> Result<(), WorkerError> {
        let now = jam_shared::clock::now_ms();
        let mut cmds = Vec::with_capacity(entries.len());
        for e in &entries {
            match serde_json::from_slice::<Command>(&e.payload) {
                Ok(c) => cmds.push(c),
                Err(err) => {
                    metrics::counter!("jam_command_errors_total", "code" => "MALFORMED")
                        .increment(1);
                    tracing::error!(stream = %e.stream, id = %e.id, error = %err, "dropping malformed command");
                }
            }
            if let Some(ms) = e.id.split('-').next().and_then(|t| t.parse::<i64>().ok()) {
                if ms > 1_000_000_000_000 {
                    metrics::histogram!("jam_command_lag_seconds")
                        .record((now - ms).max(0) as f64 / 1000.0);
                }
            }
        }
        let seen = if redelivered {
            let ids: Vec<String> = cmds.iter().map(|c| c.id.clone()).collect();
            self.store.seen_commands(&ids).await?
        } else {
            Default::default()
        };
        let mut fx = Effects::default();
        for cmd in &cmds {
            if seen.contains(&cmd.id) {
                metrics::counter!("jam_commands_deduplicated_total").increment(1);
                continue;
            }
            self.engine.apply(cmd, &mut fx).await;
        }
        let acks: Vec<(String, String)> = entries.into_iter().map(|e| (e.stream, e.id)).collect();
        metrics::histogram!("jam_command_batch_size").record(cmds.len() as f64);
        self.finish(fx, &acks).await
    }

    /// Commit, then publish, then acknowledge: nothing is announced before it is durable,
    /// nothing is acknowledged before it is announced.
    async fn finish(
        &mut self,
        mut fx: Effects,
        acks: &[(String, String)],
    ) -> Result<(), WorkerError> {
        let batch = self.engine.batch(&mut fx);
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=COMMIT_ATTEMPTS {
            match self.store.commit(&batch).await {
                Ok(()) => break,
                // The engine is ahead of the store now; give up and let a restart reload.
                Err(e) if attempt == COMMIT_ATTEMPTS => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        if !fx.publishes.is_empty() {
            let n = fx.publishes.len();
            if let Err(e) = self
                .bus
                .publish_many(std::mem::take(&mut fx.publishes))
                .await
            {
                metrics::counter!("jam_publish_errors_total").increment(1);
                tracing::warn!(error = %e, events = n, "publishing events failed");
            } else {
                metrics::counter!("jam_events_published_total").increment(n as u64);
            }
        }
        for q in fx.queries.drain(..) {
            let permit = self
                .queries
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let (store, bus) = (self.store.clone(), self.bus.clone());
            tokio::spawn(async move {
                crate::queries::answer(store, bus, q).await;
                drop(permit);
            });
        }
        if !acks.is_empty() {
            if let Err(e) = self.bus.ack(WORKER_GROUP, acks).await {
                // Unacknowledged commands come back to a worker, which skips them as applied.
                tracing::warn!(error = %e, "acknowledging commands failed");
            }
        }
        Ok(())
    }
}
