//! The second half of the worker's pipeline, shared by every partition it owns: commit
//! what the partitions applied, then publish their events and acknowledge their stream
//! entries (one round trip), one group after the other. A group is every batch waiting
//! when the last one finished, at most one per partition, committed in one transaction
//! (each batch fenced by its partition's token): under load a commit and a round trip to
//! Redis serve many partitions' batches instead of one each. While a group commits, the
//! partitions already read and apply their next batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Batch, Store, StoreError};
use bytes::Bytes;
use jam_shared::bus::Bus;
use jam_shared::keys::WORKER_GROUP;
use jam_shared::telemetry::{count, observe};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::Query;
use crate::partition::EntryId;
use crate::Health;

/// What one applied batch left to do.
pub struct Work {
    pub batch: Batch,
    pub publishes: Vec<(String, Bytes)>,
    pub queries: Vec<Query>,
    /// (stream, entry id) to acknowledge once the events are out.
    pub acks: Vec<(String, String)>,
}

/// Batches a partition may have applied but not yet committed: its pipeline depth.
const IN_FLIGHT: u32 = 2;
/// Most batches in one transaction.
const MAX_GROUP: usize = 64;
const PUBLISH_ATTEMPTS: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a partition's lane no longer takes work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneClosed {
    /// Another worker claimed the partition: nothing of this owner may be written.
    Fenced,
    /// The store refused a batch for its data: the batch and what was applied after it
    /// are dropped, unacknowledged, and the partition starts again from the store. The
    /// stream entries the refused batch applied (docs/decisions/0035).
    Refused(Vec<EntryId>),
    /// The committer has stopped.
    Stopped,
}

/// What a partition and the committer share about its lane.
#[derive(Default)]
struct LaneState {
    /// The partition gave up on what it queued (stopping while the store is away):
    /// dropped, not acknowledged, so the next owner reads it again.
    abort: CancellationToken,
    /// A commit found the partition's fence stale.
    fenced: CancellationToken,
    /// The store refused one of the partition's batches for its data.
    refused: CancellationToken,
    /// The stream entries of the refused batch.
    refused_entries: Mutex<Vec<EntryId>>,
}

/// A partition's way into the committer.
pub struct Lane {
    partition: u32,
    tx: mpsc::Sender<Queued>,
    slots: Arc<Semaphore>,
    state: Arc<LaneState>,
}

impl Lane {
    /// Queue an applied batch. Waits while `IN_FLIGHT` of this partition's batches are
    /// not done: a slow commit holds the partition's reader (back-pressure).
    pub async fn send(&self, work: Box<Work>) -> Result<(), LaneClosed> {
        let slot = tokio::select! {
            s = self.slots.clone().acquire_owned() => s.map_err(|_| LaneClosed::Stopped)?,
            _ = self.state.fenced.cancelled() => return Err(LaneClosed::Fenced),
            _ = self.state.refused.cancelled() => return Err(self.closed().unwrap_or(LaneClosed::Stopped)),
        };
        let q = Queued {
            partition: self.partition,
            work,
            lane: self.state.clone(),
            _slot: slot,
        };
        self.tx.send(q).await.map_err(|_| LaneClosed::Stopped)
    }

    /// Whether the lane takes no more work, and why.
    pub fn closed(&self) -> Option<LaneClosed> {
        if self.state.fenced.is_cancelled() {
            Some(LaneClosed::Fenced)
        } else if self.state.refused.is_cancelled() {
            let entries = self.state.refused_entries.lock().unwrap().clone();
            Some(LaneClosed::Refused(entries))
        } else if self.tx.is_closed() {
            Some(LaneClosed::Stopped)
        } else {
            None
        }
    }

    /// Wait until everything queued is committed and acknowledged, or dropped: after
    /// `grace`, what is left is aborted (it stays unacknowledged in the stream), and
    /// after another `grace` the partition stops waiting (a store call that hangs; the
    /// fence keeps its commit out once another worker claims the partition). Says
    /// whether the lane was closed meanwhile.
    pub async fn finish(self, grace: Duration) -> Option<LaneClosed> {
        if tokio::time::timeout(grace, self.slots.acquire_many(IN_FLIGHT))
            .await
            .is_err()
        {
            self.state.abort.cancel();
            if tokio::time::timeout(grace, self.slots.acquire_many(IN_FLIGHT))
                .await
                .is_err()
            {
                tracing::warn!(
                    partition = self.partition,
                    "a commit did not finish; stopped waiting"
                );
            }
        }
        self.closed()
    }
}

struct Queued {
    partition: u32,
    /// Boxed: a batch moves through a few futures and a channel on its way here, and
    /// moving the pointer costs less than copying the batch each time.
    work: Box<Work>,
    lane: Arc<LaneState>,
    /// Held until the batch is done (committed and acknowledged, or dropped).
    _slot: OwnedSemaphorePermit,
}

impl Queued {
    fn dropped(&self) -> bool {
        let l = &self.lane;
        l.abort.is_cancelled() || l.fenced.is_cancelled() || l.refused.is_cancelled()
    }

    /// The store refused this batch: it is dropped, and so is whatever the partition
    /// applied after it (its lane closes).
    fn refuse(self) {
        metrics::counter!("jam_commits_refused_total").increment(1);
        tracing::error!(
            partition = self.partition,
            entries = self.work.acks.len(),
            "the store refused a batch for its data: dropped, the partition starts again from the store"
        );
        let entries = self
            .work
            .acks
            .iter()
            .filter_map(|(_, id)| EntryId::parse(id));
        *self.lane.refused_entries.lock().unwrap() = entries.collect();
        self.lane.refused.cancel();
    }
}

/// How a group's commit ended.
enum Committed {
    /// Everything left in the group is committed.
    Yes,
    /// Nothing was left to commit (dropped: fenced or aborted).
    Nothing,
    /// The store refused the group for its data.
    Refused,
}

/// Where partitions get their lanes. The committer runs until every handle is gone, or
/// until the worker aborts it once every partition has finished its lane.
#[derive(Clone)]
pub struct Lanes {
    tx: mpsc::Sender<Queued>,
}

impl Lanes {
    pub fn lane(&self, partition: u32) -> Lane {
        Lane {
            partition,
            tx: self.tx.clone(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
            state: Arc::default(),
        }
    }
}

pub struct Committer {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub health: Arc<Health>,
    /// Bounds concurrent store reads answering queries.
    pub queries: Arc<Semaphore>,
}

impl Committer {
    /// Start the committer for up to `partitions` lanes.
    pub fn spawn(self, partitions: u32) -> (Lanes, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(partitions as usize * IN_FLIGHT as usize);
        (Lanes { tx }, tokio::spawn(self.run(rx)))
    }

    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let mut backlog = VecDeque::new();
        while let Some(group) = gather(&mut backlog, &mut rx).await {
            self.finish_group(group).await;
        }
    }

    async fn finish_group(&self, group: Vec<Queued>) {
        let mut group = self.commit_or_isolate(group).await;
        if group.is_empty() {
            return;
        }
        let publishes: Vec<_> = group
            .iter_mut()
            .flat_map(|q| std::mem::take(&mut q.work.publishes))
            .collect();
        let acks: Vec<_> = group
            .iter_mut()
            .flat_map(|q| std::mem::take(&mut q.work.acks))
            .collect();
        let t = Instant::now();
        self.publish_and_ack(publishes, &acks).await;
        observe("jam_publish_seconds", None, t.elapsed().as_secs_f64());
        for q in group
            .iter_mut()
            .flat_map(|q| std::mem::take(&mut q.work.queries))
        {
            let Ok(permit) = self.queries.clone().acquire_owned().await else {
                break;
            };
            let (store, bus) = (self.store.clone(), self.bus.clone());
            tokio::spawn(async move {
                crate::queries::answer(store, bus, q).await;
                drop(permit);
            });
        }
    }

    /// Commit the group; what was committed. A group the store refuses for its data is
    /// committed again one batch at a time, so that one partition's bad batch holds up no
    /// other: the batches refused on their own close their lanes (decision 35).
    async fn commit_or_isolate(&self, mut group: Vec<Queued>) -> Vec<Queued> {
        match self.commit(&mut group).await {
            Committed::Yes => return group,
            Committed::Nothing => return Vec::new(),
            Committed::Refused if group.len() == 1 => {
                group.pop().expect("one").refuse();
                return Vec::new();
            }
            Committed::Refused => {}
        }
        let mut kept = Vec::with_capacity(group.len());
        for q in group {
            let mut one = vec![q];
            match self.commit(&mut one).await {
                Committed::Yes => kept.append(&mut one),
                Committed::Nothing => {}
                Committed::Refused => one.pop().expect("one").refuse(),
            }
        }
        kept
    }

    /// Commit the group, retrying an outage with back-off for as long as it lasts
    /// (readiness false meanwhile). A stale fence closes that partition's lane and the
    /// rest commit without it. Data the store refuses is not retried.
    async fn commit(&self, group: &mut Vec<Queued>) -> Committed {
        let mut delay = Duration::from_millis(50);
        loop {
            group.retain(|q| !q.dropped());
            if group.is_empty() {
                return Committed::Nothing;
            }
            let batches: Vec<&Batch> = group.iter().map(|q| &q.work.batch).collect();
            let t = Instant::now();
            match self.store.commit_group(&batches).await {
                Ok(()) => {
                    observe("jam_commit_seconds", None, t.elapsed().as_secs_f64());
                    observe("jam_commit_batches", None, group.len() as f64);
                    for q in group.iter() {
                        self.health.store_ok(q.partition, true);
                    }
                    return Committed::Yes;
                }
                Err(StoreError::Fenced(p)) => {
                    for q in group.iter().filter(|q| q.partition == p) {
                        q.lane.fenced.cancel();
                    }
                }
                Err(e) => {
                    metrics::counter!("jam_commit_errors_total", "retryable" => e.retryable().to_string())
                        .increment(1);
                    if !e.retryable() {
                        tracing::warn!(error = %e, batches = group.len(), "commit refused for its data; retrying cannot help");
                        return Committed::Refused;
                    }
                    tracing::warn!(error = %e, batches = group.len(), retry_in_ms = delay.as_millis() as u64, "commit failed; retrying");
                    for q in group.iter() {
                        self.health.store_ok(q.partition, false);
                    }
                    let aborts = group.iter().map(|q| Box::pin(q.lane.abort.cancelled()));
                    tokio::select! {
                        _ = futures::future::select_all(aborts) => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Publish committed events and acknowledge their stream entries, in one round trip,
    /// retrying with back-off. The acknowledgement may go first or not at all: the
    /// entries are committed, and a redelivery is skipped by the partition's high-water
    /// mark. Events that still cannot go out are dropped with a metric: they are in the
    /// store, and clients that notice the seq gap recover them.
    async fn publish_and_ack(&self, msgs: Vec<(String, Bytes)>, acks: &[(String, String)]) {
        if msgs.is_empty() && acks.is_empty() {
            return;
        }
        let n = msgs.len();
        let mut delay = Duration::from_millis(20);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self
                .bus
                .publish_and_ack(msgs.clone(), WORKER_GROUP, acks)
                .await
            {
                Ok(()) => {
                    count("jam_events_published_total", None, n as u64);
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
                    // Acknowledged on their own if Redis takes that much, so the entries
                    // do not sit in the pending list for good.
                    if let Err(e) = self.bus.ack(WORKER_GROUP, acks).await {
                        tracing::warn!(error = %e, "acknowledging commands failed");
                    }
                }
            }
        }
    }
}

/// The next group: the backlog first, then whatever is queued, waiting only when
/// neither has anything. At most one batch per partition (a partition's later batches
/// wait for the next group, in order) and `MAX_GROUP` in all. `None` once every lane
/// handle is gone and nothing is left.
async fn gather(
    backlog: &mut VecDeque<Queued>,
    rx: &mut mpsc::Receiver<Queued>,
) -> Option<Vec<Queued>> {
    if backlog.is_empty() {
        backlog.push_back(rx.recv().await?);
    }
    let mut group: Vec<Queued> = Vec::new();
    let mut later = VecDeque::new();
    let take = |q: Queued, group: &mut Vec<Queued>, later: &mut VecDeque<Queued>| {
        if group.len() < MAX_GROUP && group.iter().all(|g| g.partition != q.partition) {
            group.push(q);
        } else {
            later.push_back(q);
        }
    };
    while let Some(q) = backlog.pop_front() {
        take(q, &mut group, &mut later);
    }
    while let Ok(q) = rx.try_recv() {
        take(q, &mut group, &mut later);
        if group.len() >= MAX_GROUP {
            break;
        }
    }
    *backlog = later;
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(partition: u32, marker: &str) -> Queued {
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Queued {
            partition,
            work: Box::new(Work {
                batch: Batch::default(),
                publishes: vec![(marker.to_string(), Bytes::new())],
                queries: vec![],
                acks: vec![],
            }),
            lane: Arc::default(),
            _slot: slot,
        }
    }

    fn names(group: &[Queued]) -> Vec<&str> {
        group
            .iter()
            .map(|q| q.work.publishes[0].0.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_group_holds_one_batch_per_partition_and_keeps_each_partitions_order() {
        let (tx, mut rx) = mpsc::channel(16);
        for (p, m) in [
            (1, "1a"),
            (1, "1b"),
            (2, "2a"),
            (3, "3a"),
            (2, "2b"),
            (1, "1c"),
        ] {
            tx.send(queued(p, m)).await.unwrap();
        }
        let mut backlog = VecDeque::new();
        let g = gather(&mut backlog, &mut rx).await.unwrap();
        assert_eq!(names(&g), ["1a", "2a", "3a"]);
        tx.send(queued(3, "3b")).await.unwrap();
        let g = gather(&mut backlog, &mut rx).await.unwrap();
        assert_eq!(names(&g), ["1b", "2b", "3b"]);
        let g = gather(&mut backlog, &mut rx).await.unwrap();
        assert_eq!(names(&g), ["1c"]);
        drop(tx);
        assert!(gather(&mut backlog, &mut rx).await.is_none());
    }

    /// A batch of `partition` under `token` with one chat message, applied from `entry`.
    fn chat(partition: u32, token: i64, text: &str, entry: &str) -> Box<Work> {
        let message = crate::model::ChatMessage {
            id: text.into(),
            tenant: "t".into(),
            session_id: format!("s{partition}"),
            user_id: "u".into(),
            user_name: "U".into(),
            message: text.into(),
            created_at: 1,
            seq: 1,
        };
        Box::new(Work {
            batch: Batch {
                fence: Some(crate::store::Fence {
                    partition,
                    token,
                    applied: Some(entry.into()),
                }),
                messages: vec![message],
                ..Batch::default()
            },
            publishes: vec![],
            queries: vec![],
            acks: vec![(format!("cmd:{partition}"), entry.into())],
        })
    }

    /// One group holds a batch the store refuses and another partition's batch: the other
    /// commits, the refused one closes its lane with its entries, and what its partition
    /// queued after it is dropped (decision 35).
    #[tokio::test]
    async fn a_refused_batch_closes_its_lane_and_the_rest_of_its_group_commits() {
        let store = Arc::new(crate::store::memory::MemoryStore::refusing("poison"));
        let committer = Committer {
            bus: Arc::new(jam_shared::bus::memory::MemoryBus::new()),
            store: store.clone(),
            health: Arc::default(),
            queries: Arc::new(Semaphore::new(4)),
        };
        let (t1, t2) = (
            store.claim_partition(1).await.unwrap().token,
            store.claim_partition(2).await.unwrap().token,
        );
        let (lanes, task) = committer.spawn(4);
        let (one, two) = (lanes.lane(1), lanes.lane(2));
        // All three queued before the committer runs: one group of the first two.
        one.send(chat(1, t1, "poison", "5-0")).await.unwrap();
        two.send(chat(2, t2, "fine", "6-0")).await.unwrap();
        one.send(chat(1, t1, "after", "7-0")).await.unwrap();
        // Both lanes' batches are done (committed or dropped) well within the grace.
        let refused = vec![EntryId::parse("5-0").unwrap()];
        let closed = one.finish(Duration::from_secs(5)).await;
        assert_eq!(closed, Some(LaneClosed::Refused(refused)));
        assert_eq!(two.finish(Duration::from_secs(5)).await, None);
        let stored = |sid: &'static str| {
            let store = store.clone();
            async move { store.history("t", sid, 0, None, 10).await.unwrap() }
        };
        let fine = stored("s2").await;
        assert_eq!(fine.len(), 1, "the other partition's batch committed");
        assert!(
            stored("s1").await.is_empty(),
            "neither the refused batch nor the next"
        );
        let applied = store.claim_partition(1).await.unwrap().applied;
        assert_eq!(applied, None, "the refused partition's mark did not move");
        drop(lanes);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_group_leaves_the_rest_in_order() {
        let (tx, mut rx) = mpsc::channel(MAX_GROUP + 4);
        for p in 0..MAX_GROUP as u32 + 2 {
            tx.send(queued(p, &p.to_string())).await.unwrap();
        }
        let mut backlog = VecDeque::new();
        let g = gather(&mut backlog, &mut rx).await.unwrap();
        assert_eq!(g.len(), MAX_GROUP);
        let g = gather(&mut backlog, &mut rx).await.unwrap();
        let expected = [MAX_GROUP.to_string(), (MAX_GROUP + 1).to_string()];
        assert_eq!(names(&g), expected);
    }
}
