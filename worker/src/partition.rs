//! One owned partition: claim it (a fencing token newer than any earlier owner's), load
//! its sessions, take over what the previous owner read but never acknowledged, then
//! read → apply → hand the batch to the committer, in stream order, until told to stop
//! or fenced. Apply is synchronous; password checks run beside it (`passwords`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Fence, Store, StoreError};
use jam_shared::bus::{Bus, ReadFrom, StreamEntry};
use jam_shared::keys::{self, WORKER_GROUP};
use jam_shared::protocol::{Action, Command};
use jam_shared::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commit::{Lane, LaneClosed, Lanes, Work};
use crate::engine::{Effects, Engine, EngineConfig, GatewayLiveness};
use crate::owner::LeaseClock;
use crate::passwords::{Verified, Verifier};
use crate::quarantine::Quarantine;
use crate::Health;

const BATCH: usize = 256;
const BLOCK_MS: u64 = 200;
/// How long a stopping partition still waits for its blocking read (see
/// [`seen_through`]): the read's own block and some room for a busy host.
const READ_STOP_WAIT: Duration = Duration::from_millis(BLOCK_MS + 1_000);
const TICK: Duration = Duration::from_millis(500);
/// Longest pause between failed reads: short, so a Redis that comes back is used at once.
const READ_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an owner takes over entries stranded with other consumers of its stream.
const SWEEP: Duration = Duration::from_secs(5);
/// Time a stopping partition gives its committer to finish what was applied.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A stream entry id, compared numerically (`<ms>-<seq>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId(u64, u64);

impl EntryId {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-').unwrap_or((s, "0"));
        Some(Self(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What a partition shares with its worker process.
#[derive(Clone)]
pub struct Shared {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub engine_cfg: EngineConfig,
    pub partitions: u32,
    pub lease_ttl: Duration,
    /// The consumer name: this worker's node id.
    pub node: String,
    pub liveness: Arc<Mutex<GatewayLiveness>>,
    pub health: Arc<Health>,
    /// The worker's committer, shared by its partitions.
    pub lanes: Lanes,
}

pub struct Partition {
    id: u32,
    stream: String,
    sh: Shared,
    engine: Engine,
    token: i64,
    /// The last entry applied (memory) — every entry at or below it is a redelivery.
    applied: EntryId,
    verifier: Verifier,
    verified: mpsc::Receiver<Verified>,
    /// Entries of batches the store refused (decision 35).
    quarantine: Quarantine,
}

/// How a partition's run ended.
pub enum Ended {
    /// Told to stop, fenced, or the committer stopped: the partition is given up.
    Released,
    /// The store refused a batch: start again from the store, with what was learned.
    Refused(Quarantine),
}

impl Partition {
    /// Claim and load; retried with back-off while the store is away (or until `stop`).
    /// `quarantine`: what an earlier run of this partition learned from refused commits.
    pub async fn claim(
        id: u32,
        sh: Shared,
        stop: &CancellationToken,
        quarantine: Quarantine,
    ) -> Option<Self> {
        let mut delay = Duration::from_millis(100);
        loop {
            // Abandoned at a stop: a fence bumped without the answer only means the next
            // owner's claim bumps it again.
            match unless_stopped(stop, Self::try_claim(id, sh.clone())).await? {
                Ok(mut p) => {
                    p.quarantine = quarantine;
                    p.quarantine.passed(p.applied);
                    return Some(p);
                }
                Err(e) => {
                    tracing::warn!(partition = id, error = %e, "claiming partition failed; retrying");
                    sh.health.store_ok(id, false);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_claim(id: u32, sh: Shared) -> Result<Self, crate::WorkerError> {
        let stream = keys::command_stream(id);
        sh.bus
            .ensure_group(std::slice::from_ref(&stream), WORKER_GROUP)
            .await?;
        let claim = sh.store.claim_partition(id).await?;
        let mut engine = Engine::new(sh.engine_cfg.clone());
        engine.load(&*sh.store, id, sh.partitions).await?;
        let (verifier, verified) = Verifier::new();
        sh.health.store_ok(id, true);
        tracing::info!(partition = id, fence = claim.token, applied = ?claim.applied, sessions = engine.session_count(), "partition claimed");
        Ok(Self {
            id,
            stream,
            applied: claim
                .applied
                .as_deref()
                .and_then(EntryId::parse)
                .unwrap_or_default(),
            token: claim.token,
            engine,
            sh,
            verifier,
            verified,
            quarantine: Quarantine::default(),
        })
    }

    /// Run until `stop` (a clean hand-over), until the partition is lost (fenced), or
    /// until the store refuses one of its batches.
    pub async fn run(mut self, stop: CancellationToken, lease: LeaseClock) -> Ended {
        let lane = self.sh.lanes.lane(self.id);
        let mut taken_over = false;
        let mut ls = LoopState::new();
        while !stop.is_cancelled() && lane.closed().is_none() {
            if !taken_over {
                // What the previous owner read and never acknowledged is ours now, and
                // comes first: nothing is applied before it. Retried until it works (a
                // failed takeover would strand those entries in a dead consumer's list),
                // through the same recovery as a failed read: a Redis that restarted
                // empty in between has no group to take them from.
                match unless_stopped(&stop, self.take_over_pending(0)).await {
                    None => break,
                    Some(None) => {
                        self.bus_failed(&stop, &mut ls.backoff).await;
                        continue;
                    }
                    Some(Some(_)) => {}
                }
                taken_over = true;
            }
            let mut fx = Effects::default();
            self.housekeeping(&mut ls, &mut fx, &stop).await;
            if !lease.holds(self.sh.lease_ttl / 2) {
                // Renewals are late (a Redis outage, or this process was paused): read
                // nothing until the owner renews or hands the partition over.
                self.sh.liveness.lock().unwrap().bus_unhealthy();
                if let Some(w) = self.work(fx, Vec::new()) {
                    if !queue(&lane, w, &stop).await {
                        break;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                ls.from_pending = true;
                continue;
            }
            if self.quarantine.read_size(self.applied, BATCH) == 1 {
                // Suspects ahead: the timers' effects commit on their own, so that a
                // refused batch of one entry names that entry alone (decision 35).
                if let Some(w) = self.work(std::mem::take(&mut fx), Vec::new()) {
                    if !queue(&lane, w, &stop).await {
                        break;
                    }
                }
            }
            let acks = self.read_and_apply(&mut ls, &mut fx, &stop).await;
            self.engine
                .flush_presence(jam_shared::clock::now_ms(), &mut fx);
            if let Some(w) = self.work(fx, acks) {
                // Bounded: a slow commit holds the reader here (back-pressure).
                let t = Instant::now();
                if !queue(&lane, w, &stop).await {
                    break;
                }
                stage("queue", t);
            }
        }
        let closed = lane.finish(STOP_GRACE).await;
        self.end(closed)
    }

    /// After the loop: say why the partition stops, and release it.
    fn end(mut self, closed: Option<LaneClosed>) -> Ended {
        let mut ended = Ended::Released;
        match closed {
            Some(LaneClosed::Refused(entries)) => {
                tracing::warn!(
                    partition = self.id,
                    entries = entries.len(),
                    first = ?entries.iter().min().map(|e| e.to_string()),
                    last = ?entries.iter().max().map(|e| e.to_string()),
                    "a batch was refused; starting again from the store, its entries one at a time"
                );
                self.quarantine.batch_refused(&entries);
                ended = Ended::Refused(self.quarantine);
            }
            Some(LaneClosed::Fenced) => {
                metrics::counter!("jam_partitions_fenced_total").increment(1);
                tracing::warn!(
                    partition = self.id,
                    "partition claimed by another worker; stopped writing"
                );
            }
            Some(LaneClosed::Stopped) => {
                tracing::error!(partition = self.id, "the committer stopped");
            }
            None => {}
        }
        self.sh.health.release(self.id);
        tracing::info!(partition = self.id, "partition released");
        ended
    }

    /// Between batches: results of password checks, the periodic sweep for entries another
    /// consumer holds on our stream, and the timers' tick.
    async fn housekeeping(
        &mut self,
        ls: &mut LoopState,
        fx: &mut Effects,
        stop: &CancellationToken,
    ) {
        while let Ok(v) = self.verified.try_recv() {
            self.engine.apply_verified(&v.cmd, v.ok, fx);
        }
        if ls.last_sweep.elapsed() >= SWEEP {
            // Anything another consumer holds on our stream is stranded (a reader
            // that woke after losing the lease): take it and read pending first.
            ls.last_sweep = Instant::now();
            // Idle for a while: not one of our own batches still in flight.
            let idle = SWEEP.as_millis() as u64 * 2;
            let took = unless_stopped(stop, self.take_over_pending(idle)).await;
            if took.flatten().unwrap_or(0) > 0 {
                ls.from_pending = true;
            }
        }
        if ls.last_tick.elapsed() >= TICK {
            ls.last_tick = Instant::now();
            let liveness = self.sh.liveness.lock().unwrap();
            self.engine
                .tick(jam_shared::clock::now_ms(), &|g| liveness.is_alive(g), fx);
        }
    }

    /// Read the next batch (this consumer's pending entries first, after a takeover or a
    /// failure) and apply it; what to acknowledge once it is committed.
    async fn read_and_apply(
        &mut self,
        ls: &mut LoopState,
        fx: &mut Effects,
        stop: &CancellationToken,
    ) -> Vec<(String, String)> {
        let from = if ls.from_pending {
            ReadFrom::Pending {
                after: self.applied.to_string(),
            }
        } else {
            ReadFrom::New
        };
        let read = self.sh.bus.read_group(
            std::slice::from_ref(&self.stream),
            WORKER_GROUP,
            &self.sh.node,
            self.quarantine.read_size(self.applied, BATCH),
            BLOCK_MS,
            from,
        );
        // Seen through when the partition stops (see `seen_through`), abandoned only if
        // Redis does not answer it in time: a stop would otherwise wait out a read Redis
        // never answers (up to `BLOCK_MS` + 30 s).
        let Some(read) = seen_through(stop, read).await else {
            ls.from_pending = true;
            return Vec::new();
        };
        match read {
            Ok(entries) => {
                ls.backoff = Duration::from_millis(100);
                self.sh.liveness.lock().unwrap().bus_healthy();
                if ls.from_pending && entries.is_empty() {
                    ls.from_pending = false;
                }
                match self.apply_entries(entries, fx, stop).await {
                    Some(acks) => acks,
                    // Stopped while the store was away: they stay pending.
                    None => {
                        ls.from_pending = true;
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(partition = self.id, error = %e, "reading commands failed; retrying");
                ls.from_pending = true;
                self.bus_failed(stop, &mut ls.backoff).await;
                Vec::new()
            }
        }
    }

    /// After a failed read or takeover: the bus counts as unhealthy (gateways are not
    /// judged dead meanwhile), a pause that grows to [`READ_BACKOFF_MAX`], and the group
    /// created again, which a Redis that restarted empty no longer has.
    async fn bus_failed(&self, stop: &CancellationToken, backoff: &mut Duration) {
        self.sh.liveness.lock().unwrap().bus_unhealthy();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(READ_BACKOFF_MAX);
        let streams = [self.stream.clone()];
        let ensure = self.sh.bus.ensure_group(&streams, WORKER_GROUP);
        if let Some(Err(e)) = unless_stopped(stop, ensure).await {
            tracing::debug!(error = %e, "group re-creation failed");
        }
    }

    /// Move every entry other consumers of the group hold unacknowledged to us; how many
    /// (`None` when Redis could not be asked).
    async fn take_over_pending(&self, min_idle_ms: u64) -> Option<usize> {
        let mut total = 0;
        loop {
            match self
                .sh
                .bus
                .claim_stale(&self.stream, WORKER_GROUP, &self.sh.node, min_idle_ms, 1000)
                .await
            {
                Ok(e) if e.len() >= 1000 => total += e.len(),
                Ok(e) => {
                    total += e.len();
                    if total > 0 {
                        tracing::info!(
                            partition = self.id,
                            count = total,
                            "took over unacknowledged commands"
                        );
                    }
                    return Some(total);
                }
                Err(e) => {
                    tracing::warn!(partition = self.id, error = %e, "taking over pending commands failed");
                    return None;
                }
            }
        }
    }

    /// Apply entries in stream order; returns what to acknowledge after the commit, or
    /// `None` when stopped before they could be applied (they stay pending in the stream).
    async fn apply_entries(
        &mut self,
        entries: Vec<StreamEntry>,
        fx: &mut Effects,
        stop: &CancellationToken,
    ) -> Option<Vec<(String, String)>> {
        let now = jam_shared::clock::now_ms();
        let mut acks = Vec::with_capacity(entries.len());
        let mut cmds = Vec::with_capacity(entries.len());
        let mut last = self.applied;
        for e in entries {
            let id = EntryId::parse(&e.id).unwrap_or_default();
            acks.push((e.stream.clone(), e.id.clone()));
            if id <= last {
                metrics::counter!("jam_commands_deduplicated_total").increment(1);
                continue;
            }
            last = id;
            if id.0 > 1_000_000_000_000 {
                let lag = (now - id.0 as i64).max(0) as f64 / 1000.0;
                jam_shared::telemetry::observe("jam_command_lag_seconds", None, lag);
            }
            match e.into_command() {
                Ok(c) if self.quarantine.is_refused(id) => refuse(&c, id, fx),
                Ok(c) => cmds.push(c),
                Err(err) => {
                    metrics::counter!("jam_command_errors_total", "code" => "MALFORMED")
                        .increment(1);
                    let (stream, id) = acks.last().expect("pushed above");
                    tracing::error!(%stream, %id, error = %err, "dropping malformed command");
                }
            }
        }
        let t = Instant::now();
        self.prefetch(&cmds, stop).await?;
        stage("prefetch", t);
        let t = Instant::now();
        self.applied = last;
        for cmd in cmds {
            self.apply_one(cmd, fx);
        }
        self.engine.end_batch(fx);
        stage("apply", t);
        jam_shared::telemetry::observe("jam_command_batch_size", None, acks.len() as f64);
        Some(acks)
    }

    /// Load what the commands need from the store before they apply (users' inboxes and
    /// watchers, one read each for the whole batch), retrying with back-off while the store
    /// is away; `None` when stopped meanwhile.
    async fn prefetch(&mut self, cmds: &[Command], stop: &CancellationToken) -> Option<()> {
        let store = self.sh.store.clone();
        let users = self.engine.inboxes_needed(cmds);
        if !users.is_empty() {
            let rows = self
                .retrying("inboxes", stop, || store.inboxes(&users))
                .await?;
            for (key, rows) in users.into_iter().zip(rows) {
                self.engine.add_inbox(key, rows);
            }
        }
        let users = self.engine.watchers_needed(cmds);
        if !users.is_empty() {
            let lists = self
                .retrying("watchers", stop, || store.watchers(&users))
                .await?;
            for (key, w) in users.into_iter().zip(lists) {
                self.engine.add_watchers(key, w);
            }
        }
        Some(())
    }

    /// A store read, retried with back-off (readiness false meanwhile) until it works or
    /// `stop`.
    async fn retrying<T, F, Fut>(&self, what: &str, stop: &CancellationToken, read: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match read().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(partition = self.id, error = %e, what, "loading before apply failed; retrying");
                    self.sh.health.store_ok(self.id, false);
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn apply_one(&mut self, cmd: Command, fx: &mut Effects) {
        let Some(hash) = self.engine.password_needed(&cmd) else {
            return self.engine.apply(&cmd, fx);
        };
        let password = match &cmd.action {
            Action::JoinSession { password, .. } => password.clone().unwrap_or_default(),
            _ => String::new(),
        };
        if !self.verifier.submit(cmd.clone(), hash, password) {
            fx.error(
                &cmd,
                ErrorCode::Unavailable,
                "Too many joins waiting, try again",
            );
        }
    }

    fn work(&mut self, mut fx: Effects, acks: Vec<(String, String)>) -> Option<Box<Work>> {
        let mut batch = self.engine.batch(&mut fx);
        batch.fence = Some(Fence {
            partition: self.id,
            token: self.token,
            applied: (!acks.is_empty()).then(|| self.applied.to_string()),
        });
        if acks.is_empty() && fx.publishes.is_empty() && fx.queries.is_empty() && batch.is_empty() {
            return None;
        }
        // Counted per batch handed to the committer: what settles an inbox.
        self.engine.settle_inboxes();
        Some(Box::new(Work {
            batch,
            publishes: std::mem::take(&mut fx.publishes),
            queries: std::mem::take(&mut fx.queries),
            acks,
        }))
    }
}

/// What a partition's loop carries from one batch to the next.
struct LoopState {
    /// Read this consumer's pending entries (not new ones) next: after a takeover, a failed
    /// read or a pause, until a read of them comes back empty.
    from_pending: bool,
    /// The pause after the next failed read (doubling up to `READ_BACKOFF_MAX`).
    backoff: Duration,
    last_sweep: Instant,
    last_tick: Instant,
}

impl LoopState {
    fn new() -> Self {
        Self {
            from_pending: true,
            backoff: Duration::from_millis(100),
            last_sweep: Instant::now(),
            last_tick: Instant::now(),
        }
    }
}

/// Time a partition spent in one stage of a batch (`jam_partition_stage_seconds`): loading
/// what the commands need, applying them, or waiting for room in the committer's queue (a
/// slow commit). With `jam_command_lag_seconds` it says where a command's wait comes from.
fn stage(name: &'static str, since: Instant) {
    let secs = since.elapsed().as_secs_f64();
    jam_shared::telemetry::observe("jam_partition_stage_seconds", Some(("stage", name)), secs);
}

/// A command the store refused on its own (decision 35): answered with an error and
/// acknowledged, never applied.
fn refuse(cmd: &Command, id: EntryId, fx: &mut Effects) {
    metrics::counter!("jam_commands_refused_total").increment(1);
    tracing::error!(entry = %id, tenant = %cmd.tenant, user = %cmd.user_id, session = ?cmd.action.session_id(), "the store refused this command's data: answered with an error, not applied");
    fx.error(cmd, ErrorCode::BadRequest, REFUSED_BY_STORE);
}

/// The answer to a command whose data the store refused.
pub const REFUSED_BY_STORE: &str =
    "The server could not store this request's data; it was not applied";

/// Hand `w` to the committer, unless the partition stops while it waits for room (a commit
/// that cannot finish: the store away). What `w` applied then stays pending in the stream
/// and the next owner applies it again: none of it was committed, published or
/// acknowledged. `false` when the partition's loop should end.
async fn queue(lane: &Lane, w: Box<Work>, stop: &CancellationToken) -> bool {
    matches!(unless_stopped(stop, lane.send(w)).await, Some(Ok(())))
}

/// A blocking read, finished even when the partition is told to stop (within
/// [`READ_STOP_WAIT`]). Abandoned, it would stay blocked in Redis for up to `BLOCK_MS`
/// after the lease is given back and take the next commands into this consumer's list,
/// after the next owner has taken over what was here: they would wait for its sweep
/// (seconds). Seen through, what it took is pending here before the lease goes, and the
/// next owner's first takeover gets it. `None` when Redis did not answer in time.
async fn seen_through<T>(
    stop: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    tokio::select! {
        biased;
        r = &mut fut => return Some(r),
        _ = stop.cancelled() => {}
    }
    tokio::time::timeout(READ_STOP_WAIT, fut).await.ok()
}

/// `fut`, or `None` once the partition is told to stop. Only for bus calls whose effect,
/// when Redis applied them and the answer was dropped, the next owner undoes: entries a
/// read or a takeover moved to this consumer stay pending, and the next owner takes them
/// over before it reads anything (`take_over_pending(0)`).
async fn unless_stopped<T>(
    stop: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = stop.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn entry_ids_compare_numerically() {
        let a = EntryId::parse("1700000000000-9").unwrap();
        let b = EntryId::parse("1700000000000-10").unwrap();
        assert!(a < b);
        assert!(EntryId::parse("999-0").unwrap() < a);
        assert_eq!(EntryId::parse("5-0").unwrap().to_string(), "5-0");
        assert_eq!(EntryId::default().to_string(), "0-0");
    }
}
