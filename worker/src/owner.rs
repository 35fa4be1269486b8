//! Partition ownership: each worker announces itself in a registry, takes a fair share
//! of the partitions through leases in Redis (renewed while held) and runs one
//! [`Partition`] per lease. A dead worker's leases expire and the others take them over;
//! a worker that loses a lease stops that partition, and the fencing token keeps it from
//! writing even if it does not notice in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jam_shared::bus::{BusError, BusMessage, LeaseOp, Subscription};
use jam_shared::keys;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::partition::{Ended, Partition, Shared};
use crate::quarantine::Quarantine;

/// Pauses before a partition starts again after a refused batch: the first, the longest.
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(50);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(5);
/// How long a stopping partition waits for Redis to take its lease back.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

struct Owned {
    stop: CancellationToken,
    task: JoinHandle<()>,
    lease: LeaseClock,
}

/// Until when a lease is surely ours: set from the time a renewal was *sent*, so a pause
/// anywhere after it only makes the reader more careful. The reader reads only while
/// more than half the lease is left, so a worker that wakes after losing its lease does
/// not take commands out of the new owner's stream.
#[derive(Clone)]
pub struct LeaseClock(Arc<Mutex<Instant>>);

impl LeaseClock {
    fn new(until: Instant) -> Self {
        Self(Arc::new(Mutex::new(until)))
    }

    fn extend(&self, until: Instant) {
        *self.0.lock().unwrap() = until;
    }

    /// Whether at least `margin` of the lease is left.
    pub fn holds(&self, margin: Duration) -> bool {
        Instant::now() + margin < *self.0.lock().unwrap()
    }
}

pub struct Owner {
    sh: Shared,
    ttl: Duration,
    owned: HashMap<u32, Owned>,
    /// Whether the others have been told this worker is here (after its first
    /// registration), so that a worker holding more than its share gives it back now.
    announced: bool,
}

impl Owner {
    pub fn new(sh: Shared, ttl: Duration) -> Self {
        Self {
            sh,
            ttl,
            owned: HashMap::new(),
            announced: false,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), crate::WorkerError> {
        let (sub, messages) = self.sh.bus.subscription(4096).await?;
        for channel in LISTENED {
            sub.subscribe(channel).await?;
        }
        let handover = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.sh.clone(),
            sub.clone(),
            messages,
            handover.clone(),
        ));
        let mut every = tokio::time::interval(self.ttl / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(node = %self.sh.node, partitions = self.sh.partitions, "worker started");
        loop {
            tokio::select! {
                // First: after a long round the next tick is due at once.
                biased;
                _ = shutdown.cancelled() => break,
                _ = every.tick() => self.round().await,
                // Another worker started, gave partitions back or stopped: balance now.
                _ = handover.notified() => self.round().await,
            }
        }
        tracing::info!(
            owned = self.owned.len(),
            "worker stopping: handing partitions back"
        );
        self.leave().await;
        let all: Vec<u32> = self.owned.keys().copied().collect();
        let released = futures::future::join_all(all.into_iter().map(|p| {
            let o = self.owned.remove(&p).expect("owned");
            stop_and_release(self.sh.clone(), p, o)
        }))
        .await;
        if released.into_iter().any(|r| r) {
            self.announce("stopped").await;
        }
        listener.abort();
        drop(sub);
        Ok(())
    }

    /// One round: announce, renew, drop what was lost, take or give back to reach a fair share.
    async fn round(&mut self) {
        let registered = self.balance().await;
        metrics::gauge!("jam_worker_partitions_owned").set(self.owned.len() as f64);
        if registered && !self.announced {
            self.announced = true;
            self.announce("started").await;
        }
    }

    /// Tell the other workers to balance now (`WORKER_HANDOVER_CHANNEL`). Lost, it only
    /// leaves them to their next round.
    async fn announce(&self, what: &'static str) {
        let payload = Bytes::from(self.sh.node.clone());
        let publish = self.sh.bus.publish(keys::WORKER_HANDOVER_CHANNEL, payload);
        match self.bounded(publish).await {
            Ok(()) => tracing::debug!(what, "told the other workers to balance"),
            Err(e) => tracing::warn!(error = %e, what, "telling the other workers failed"),
        }
    }

    /// Leave the registries before stopping: the others' fair share counts this worker
    /// out at once, so they take what it gives back as soon as it is given. Both at once,
    /// within one bound: with Redis away the entries expire instead.
    async fn leave(&self) {
        let sets = [keys::WORKER_REGISTRY, keys::WORKERS_APPLYING];
        let leave = futures::future::try_join_all(
            sets.map(|set| self.sh.bus.leave_member(set, &self.sh.node)),
        );
        if let Err(e) = self.bounded(leave).await {
            tracing::warn!(error = %e, "leaving the worker registries failed; they will expire");
        }
    }

    /// One round: register, renew what is held, then give back the surplus or claim up to
    /// a fair share (the partitions ÷ the live workers, rounded up). Whether this worker
    /// is registered.
    async fn balance(&mut self) -> bool {
        let ttl_ms = self.ttl.as_millis() as u64;
        let Some(live) = self.register(ttl_ms).await else {
            return false;
        };
        self.renew_held(ttl_ms).await;
        let target = (self.sh.partitions as usize).div_ceil(live);
        metrics::gauge!("jam_workers_live").set(live as f64);
        if self.owned.len() > target {
            self.give_back_surplus(target).await;
        } else {
            self.claim_share(target, ttl_ms).await;
        }
        true
    }

    /// Say this worker is alive (and applying, while every partition held commits); how
    /// many workers are, or `None` when the registry cannot be reached.
    async fn register(&self, ttl_ms: u64) -> Option<usize> {
        let bus = &self.sh.bus;
        let live = match self
            .bounded(bus.register_member(keys::WORKER_REGISTRY, &self.sh.node, ttl_ms))
            .await
        {
            Ok(n) => n.max(1),
            Err(e) => {
                tracing::warn!(error = %e, "worker registry unreachable; keeping what is held");
                return None;
            }
        };
        // Gateways are ready only while some worker applies commands: announce it while
        // every partition held commits (a store outage lets the entry expire).
        if self.sh.health.committing() {
            if let Err(e) = self
                .bounded(bus.register_member(keys::WORKERS_APPLYING, &self.sh.node, ttl_ms))
                .await
            {
                tracing::debug!(error = %e, "announcing that commands are applied failed");
            }
        }
        Some(live)
    }

    /// Renew (or re-take after a Redis restart) what we hold; stop what someone else has.
    /// All renewals at once: one round trip (the client pipelines them) and one bound for
    /// them all, however many partitions are held.
    async fn renew_held(&mut self, ttl_ms: u64) {
        let held: Vec<u32> = self.owned.keys().copied().collect();
        let sent = Instant::now();
        let this = &*self;
        let answers = futures::future::join_all(held.iter().map(|&p| async move {
            let key = keys::partition_lease(p);
            let acquire = this
                .sh
                .bus
                .lease(&key, &this.sh.node, ttl_ms, LeaseOp::Acquire);
            this.bounded(acquire).await
        }))
        .await;
        let mut lost = Vec::new();
        for (p, lease) in held.into_iter().zip(answers) {
            let finished = self.owned.get(&p).is_some_and(|o| o.task.is_finished());
            if finished || matches!(lease, Ok(false)) {
                tracing::warn!(partition = p, finished, "partition lost");
                lost.push((p, self.owned.remove(&p).expect("held")));
            } else if let (Ok(true), Some(o)) = (&lease, self.owned.get(&p)) {
                o.lease.extend(sent + self.ttl);
            }
        }
        let stops = lost
            .into_iter()
            .map(|(p, o)| stop_and_release(self.sh.clone(), p, o));
        futures::future::join_all(stops).await;
    }

    /// A round's Redis call, bounded by a quarter of the lease's lifetime: an answer later
    /// than that is no use to a renewal, and a round that waited longer would hold up the
    /// next one and the worker's stop. A lease Redis granted without the answer arriving
    /// is ours at the next round's acquire (same owner), or expires.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        BusError::within(self.ttl / 4, fut).await
    }

    /// Give back the partitions above `target`, so a newcomer gets its share.
    async fn give_back_surplus(&mut self, target: usize) {
        let surplus: Vec<u32> = self
            .owned
            .keys()
            .copied()
            .take(self.owned.len().saturating_sub(target))
            .collect();
        // All at once: the owned partitions' renewals wait for this round.
        let stops: Vec<_> = surplus
            .into_iter()
            .map(|p| {
                tracing::info!(
                    partition = p,
                    target,
                    "handing a partition to another worker"
                );
                let o = self.owned.remove(&p).expect("held");
                stop_and_release(self.sh.clone(), p, o)
            })
            .collect();
        let released = futures::future::join_all(stops).await;
        if released.into_iter().any(|r| r) {
            self.announce("gave partitions back").await;
        }
    }

    /// Claim free partitions up to `target`, starting from this worker's own place in the
    /// ring (so workers starting together try different ones first).
    async fn claim_share(&mut self, target: usize, ttl_ms: u64) {
        let start = keys::partition_of(&self.sh.node, self.sh.partitions);
        for i in 0..self.sh.partitions {
            if self.owned.len() >= target {
                break;
            }
            let p = (start + i) % self.sh.partitions;
            if self.owned.contains_key(&p) {
                continue;
            }
            let sent = Instant::now();
            let key = keys::partition_lease(p);
            match self
                .bounded(
                    self.sh
                        .bus
                        .lease(&key, &self.sh.node, ttl_ms, LeaseOp::Acquire),
                )
                .await
            {
                Ok(true) => self.start(p, LeaseClock::new(sent + self.ttl)),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lease request failed");
                    return;
                }
            }
        }
    }

    fn start(&mut self, p: u32, lease: LeaseClock) {
        let stop = CancellationToken::new();
        let (sh, s, l) = (self.sh.clone(), stop.clone(), lease.clone());
        self.sh.health.claimed(p);
        let task = tokio::spawn(async move {
            // Started again, lease kept, after a batch the store refused (decision 35),
            // with a pause that grows while refusals follow each other (one that names no
            // command recurs) and starts small again after a quiet run.
            let mut quarantine = Quarantine::default();
            let mut pause = FIRST_RESTART_PAUSE;
            while let Some(part) = Partition::claim(p, sh.clone(), &s, quarantine).await {
                let started = Instant::now();
                match part.run(s.clone(), l.clone()).await {
                    Ended::Released => break,
                    Ended::Refused(q) => quarantine = q,
                }
                if started.elapsed() > MAX_RESTART_PAUSE * 2 {
                    pause = FIRST_RESTART_PAUSE;
                }
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_RESTART_PAUSE);
                sh.health.claimed(p);
            }
        });
        self.owned.insert(p, Owned { stop, task, lease });
    }
}

/// Stop a partition (its committer finishes what was applied) and give its lease back;
/// whether Redis took it. Giving it back only saves the next owner the lease's expiry, so
/// a Redis that does not answer gets [`RELEASE_TIMEOUT`], not the command timeout.
async fn stop_and_release(sh: Shared, p: u32, o: Owned) -> bool {
    o.stop.cancel();
    let _ = o.task.await;
    sh.health.release(p);
    let key = keys::partition_lease(p);
    let release = sh.bus.lease(&key, &sh.node, 0, LeaseOp::Release);
    match BusError::within(RELEASE_TIMEOUT, release).await {
        Ok(released) => released,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "releasing a lease failed; it will expire");
            false
        }
    }
}

/// The channels the owner listens to.
const LISTENED: [&str; 2] = [
    keys::GATEWAY_HEARTBEAT_CHANNEL,
    keys::WORKER_HANDOVER_CHANNEL,
];

/// Gateways' heartbeats (their liveness) and other workers' hand-overs (`handover`).
async fn listen(
    sh: Shared,
    sub: Arc<dyn Subscription>,
    mut rx: mpsc::Receiver<BusMessage>,
    handover: Arc<Notify>,
) {
    while let Some(m) = rx.recv().await {
        if &*m.channel == keys::BUS_RESET {
            // The subscription keeps no list of its own: listen again.
            for channel in LISTENED {
                resubscribe(&*sub, channel).await;
            }
        }
        if &*m.channel == keys::WORKER_HANDOVER_CHANNEL {
            // Our own notices need no round; several waiting make one.
            if *m.payload != *sh.node.as_bytes() {
                handover.notify_one();
            }
            continue;
        }
        let mut l = sh.liveness.lock().unwrap();
        if &*m.channel == keys::BUS_RESET || &*m.channel == keys::BUS_LAGGED {
            // A hand-over may have been missed too: balance now.
            handover.notify_one();
            // Heartbeats may have been missed: listen a full timeout before judging again.
            l.bus_unhealthy();
            l.bus_healthy();
        } else if let Ok(id) = std::str::from_utf8(&m.payload) {
            l.seen(id);
        }
    }
}

/// Subscribe to `channel` again, backing off between tries; the bus reconnects (and
/// says so again) if it keeps failing.
async fn resubscribe(sub: &dyn Subscription, channel: &str) {
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=8 {
        match sub.subscribe(channel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, channel, "re-subscribing failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}
