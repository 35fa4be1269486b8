//! Planned hand-overs between workers (one starts, one stops) take the time of a
//! partition's stop, not of a lease round: workers tell each other on
//! `WORKER_HANDOVER_CHANNEL` and balance at once, and a stopping worker leaves the
//! registry before it gives its partitions back. Two engines share one in-memory bus and
//! store; leases last 20 s, so a round comes every 5 s and a registration outlives the
//! test unless it is withdrawn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jam_shared::bus::memory::MemoryBus;
use jam_shared::config::Config;
use jam_worker::store::memory::MemoryStore;
use jam_worker::{run_engine, Health};
use tokio_util::sync::CancellationToken;

/// `JAM_LEASE_TTL_MS` / 4: how often a worker balances on its own.
const ROUND: Duration = Duration::from_secs(5);

struct Worker {
    health: Arc<Health>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(bus: &Arc<MemoryBus>, store: &Arc<MemoryStore>, instance: &str) -> Worker {
    let env: HashMap<String, String> = [
        ("JAM_INSTANCE_ID", instance),
        ("JAM_LEASE_TTL_MS", "20000"),
        ("JAM_PARTITIONS", "16"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Config::from_map(&env).expect("config");
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let (bus, store, h, s) = (bus.clone(), store.clone(), health.clone(), stop.clone());
    let task = tokio::spawn(async move {
        run_engine(&cfg, bus, store, h, s).await.expect("engine");
    });
    Worker { health, stop, task }
}

/// How long until `done` holds, checked every 10 ms; fails after `limit`.
async fn until(what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_change_hands_without_waiting_for_a_round() {
    let bus = Arc::new(MemoryBus::new());
    let store = Arc::new(MemoryStore::new());
    let a = start(&bus, &store, "worker-a");
    until("the first worker takes every partition", ROUND, || {
        a.health.owned() == 16
    })
    .await;

    // A second worker: the first gives half back as soon as it hears of it. Waiting for
    // rounds instead would take at least one of the newcomer's (its first finds nothing
    // free).
    let b = start(&bus, &store, "worker-b");
    let took = until("a fair share each", 4 * ROUND, || {
        a.health.owned() == 8 && b.health.owned() == 8
    })
    .await;
    assert!(
        took < ROUND / 2,
        "balancing took {took:?}: it waited for a round"
    );

    // The first stops: the second takes everything as soon as it is given back. Without
    // leaving the registry, the stopped worker would count for its whole lease (20 s).
    a.stop.cancel();
    let took = until("the second worker takes every partition", 4 * ROUND, || {
        b.health.owned() == 16
    })
    .await;
    assert!(
        took < ROUND / 2,
        "taking over took {took:?}: it waited for a round"
    );
    tokio::time::timeout(ROUND, a.task)
        .await
        .expect("the first worker stops")
        .unwrap();

    b.stop.cancel();
    tokio::time::timeout(ROUND, b.task)
        .await
        .expect("the second worker stops")
        .unwrap();
}
