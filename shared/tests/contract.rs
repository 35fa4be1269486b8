//! One contract, two implementations: the in-memory bus and store must behave like Redis
//! and PostgreSQL. Every check runs against both (Redis: a private redis-server on a free
//! port; PostgreSQL: a fresh database on JAM_TEST_DATABASE_URL's server).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jam_shared::bus::memory::MemoryBus;
use jam_shared::bus::redis::RedisBus;
use jam_shared::bus::{Bus, LeaseOp, ReadFrom};
use jam_shared::protocol::model::{
    ChatMessage, DirectMessage, ParticipantRecord, Role, SessionRecord, SessionStatus,
};
use jam_shared::store::memory::MemoryStore;
use jam_shared::store::postgres::PgStore;
use jam_shared::store::{Batch, Fence, Store, StoreError};

struct Redis(Child, u16);

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server installed");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bus_contract(bus: Arc<dyn Bus>) {
    // Pub/sub: only subscribed channels arrive, in order, and unsubscribe stops them.
    let (sub, mut rx) = bus.subscription(64).await.unwrap();
    sub.subscribe("c1").await.unwrap();
    bus.publish("c2", Bytes::from_static(b"not for us"))
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish("c1", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*m.channel, "c1");
        assert_eq!(m.payload, Bytes::from(format!("m{i}")));
    }
    sub.unsubscribe("c1").await.unwrap();
    bus.publish("c1", Bytes::from_static(b"late"))
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());

    // Streams: entries come back once, oldest first, across streams.
    let streams = vec!["s0".to_string(), "s1".to_string()];
    bus.xadd("s0", Bytes::from_static(b"a")).await.unwrap();
    bus.ensure_group(&streams, "g").await.unwrap();
    bus.ensure_group(&streams, "g").await.unwrap();
    bus.xadd("s1", Bytes::from_static(b"b")).await.unwrap();
    bus.xadd("s0", Bytes::from_static(b"c")).await.unwrap();
    let got = bus
        .read_group(&streams, "g", "w1", 10, 500, ReadFrom::New)
        .await
        .unwrap();
    // Entries written before the group existed are delivered too; order holds within a
    // stream (across streams Redis ids only order to the millisecond).
    let of = |s: &str| {
        got.iter()
            .filter(|e| e.stream == s)
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("s0"),
        [Bytes::from_static(b"a"), Bytes::from_static(b"c")]
    );
    assert_eq!(of("s1"), [Bytes::from_static(b"b")]);
    let acks: Vec<(String, String)> = got
        .iter()
        .map(|e| (e.stream.clone(), e.id.clone()))
        .collect();
    bus.ack("g", &acks).await.unwrap();
    assert!(bus
        .read_group(&streams, "g", "w1", 10, 200, ReadFrom::New)
        .await
        .unwrap()
        .is_empty());
    let pending = ReadFrom::Pending {
        after: "0-0".into(),
    };
    assert!(bus
        .read_group(&streams, "g", "w1", 10, 200, pending)
        .await
        .unwrap()
        .is_empty());

    // Leases: one owner at a time; renewal only by the owner; release frees it; expiry too.
    assert!(bus
        .lease("L", "w1", 10_000, LeaseOp::Acquire)
        .await
        .unwrap());
    assert!(!bus
        .lease("L", "w2", 10_000, LeaseOp::Acquire)
        .await
        .unwrap());
    assert!(bus
        .lease("L", "w1", 10_000, LeaseOp::Acquire)
        .await
        .unwrap());
    assert!(!bus.lease("L", "w2", 10_000, LeaseOp::Renew).await.unwrap());
    assert!(bus.lease("L", "w1", 10_000, LeaseOp::Renew).await.unwrap());
    assert!(!bus.lease("L", "w2", 0, LeaseOp::Release).await.unwrap());
    assert!(bus.lease("L", "w1", 0, LeaseOp::Release).await.unwrap());
    assert!(bus.lease("L", "w2", 100, LeaseOp::Acquire).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(bus
        .lease("L", "w3", 10_000, LeaseOp::Acquire)
        .await
        .unwrap());

    // The member registry counts live members only.
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 1);
    assert_eq!(bus.register_member("R", "b", 150).await.unwrap(), 2);
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 1);
    assert_eq!(bus.register_member("R", "x#1", 10_000).await.unwrap(), 2);
    assert_eq!(
        bus.register_member("R", "x#2", 10_000).await.unwrap(),
        2,
        "a reboot"
    );
    bus.ping().await.unwrap();
}

/// Redis only: entries read but not acknowledged come back from a pending read, in order,
/// after a given id; another consumer can take them over.
async fn pending_contract(bus: Arc<dyn Bus>) {
    let streams = vec!["p0".to_string()];
    bus.ensure_group(&streams, "g").await.unwrap();
    for b in ["x", "y", "z"] {
        bus.xadd("p0", Bytes::from(b)).await.unwrap();
    }
    let got = bus
        .read_group(&streams, "g", "w1", 10, 200, ReadFrom::New)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let again = bus
        .read_group(
            &streams,
            "g",
            "w1",
            10,
            200,
            ReadFrom::Pending {
                after: got[0].id.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        [Bytes::from_static(b"y"), Bytes::from_static(b"z")]
    );
    let taken = bus.claim_stale("p0", "g", "w2", 0, 10).await.unwrap();
    assert_eq!(taken.len(), 3);
    let mine = bus
        .read_group(
            &streams,
            "g",
            "w2",
            10,
            200,
            ReadFrom::Pending {
                after: "0-0".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(mine.len(), 3);
    assert!(bus
        .read_group(
            &streams,
            "g",
            "w1",
            10,
            200,
            ReadFrom::Pending {
                after: "0-0".into()
            }
        )
        .await
        .unwrap()
        .is_empty());
}

fn record(id: &str, tenant: &str) -> SessionRecord {
    SessionRecord {
        tenant: tenant.into(),
        id: id.into(),
        name: "n".into(),
        description: String::new(),
        host_id: "h".into(),
        is_private: false,
        password_hash: Some("$argon2id$x".into()),
        max_participants: 5,
        participants: vec![ParticipantRecord::new("h", "H", Role::Host, 1, vec![])],
        status: SessionStatus::Active,
        created_at: 1,
        expires_at: 2,
        last_seq: 3,
        playback: None,
        current_track: None,
        queue: vec![],
        last_check_at: 0,
    }
}

fn msg(tenant: &str, sid: &str, seq: i64) -> ChatMessage {
    ChatMessage {
        id: format!("{sid}-{seq}"),
        tenant: tenant.into(),
        session_id: sid.into(),
        user_id: "u".into(),
        user_name: "U".into(),
        message: format!("text {seq}"),
        created_at: seq,
        seq,
    }
}

async fn store_contract(store: Arc<dyn Store>) {
    let claim = store.claim_partition(3).await.unwrap();
    assert_eq!(claim.applied, None);
    let fence = |applied: &str| {
        Some(Fence {
            partition: 3,
            token: claim.token,
            applied: Some(applied.into()),
        })
    };
    let mut batch = Batch {
        fence: fence("5-0"),
        upserts: vec![record("AAAA", "t1"), record("AAAA", "t2")],
        ..Default::default()
    };
    batch.messages = (1..=7).map(|s| msg("t1", "AAAA", s)).collect();
    batch.direct = vec![DirectMessage {
        id: "d1".into(),
        tenant: "t1".into(),
        sender_id: "a".into(),
        sender_name: "A".into(),
        receiver_id: "b".into(),
        content: "hi".into(),
        created_at: 10,
    }];
    store.commit(&batch).await.unwrap();
    // A replayed batch changes nothing (messages are keyed by their own id).
    store.commit(&batch).await.unwrap();

    let mut loaded = store.load_sessions(3).await.unwrap();
    loaded.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].password_hash.as_deref(), Some("$argon2id$x"));
    // The row says 3; its messages go up to 7: chat does not rewrite the session.
    assert_eq!(loaded[0].last_seq, 7);
    assert_eq!(loaded[1].last_seq, 3);
    assert!(store.load_sessions(4).await.unwrap().is_empty());
    assert_eq!(store.list_sessions("t1").await.unwrap().len(), 1);

    // History: newest page first, returned oldest first; tenants apart; `since` cuts.
    let page = store.history("t1", "AAAA", 0, None, 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 30)
            .await
            .unwrap()
            .len(),
        7
    );
    let page = store.history("t1", "AAAA", 0, Some(5), 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let page = store.history("t1", "AAAA", 6, None, 30).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
    assert!(store
        .history("t2", "AAAA", 0, None, 10)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        store
            .direct_history("t1", "b", "a", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .direct_history("t2", "a", "b", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .direct_history("t1", "a", "c", None, 10)
        .await
        .unwrap()
        .is_empty());

    // A newer claim fences the old owner: its batch is refused whole.
    let newer = store.claim_partition(3).await.unwrap();
    assert!(newer.token > claim.token);
    assert_eq!(newer.applied.as_deref(), Some("5-0"));
    let stale = Batch {
        fence: fence("9-0"),
        upserts: vec![record("BBBB", "t1")],
        messages: vec![msg("t1", "AAAA", 8)],
        ..Default::default()
    };
    assert!(matches!(
        store.commit(&stale).await,
        Err(StoreError::Fenced(3))
    ));
    assert_eq!(
        store.load_sessions(3).await.unwrap().len(),
        2,
        "nothing of a fenced batch is kept"
    );
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 30)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        store.claim_partition(3).await.unwrap().applied.as_deref(),
        Some("5-0")
    );

    // Ending a session keeps its messages; only the retention purge deletes them.
    store
        .commit(&Batch {
            deletes: vec![("t1".into(), "AAAA".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .history("t1", "AAAA", 0, None, 10)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(store.load_sessions(3).await.unwrap().len(), 1);
    assert_eq!(store.purge_messages(4).await.unwrap(), 3);
    let left = store.history("t1", "AAAA", 0, None, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert_eq!(
        store.purge_messages(11).await.unwrap(),
        5,
        "4 chat + 1 direct"
    );
    store.ping().await.unwrap();
}

#[tokio::test]
async fn memory_bus_meets_the_contract() {
    bus_contract(Arc::new(MemoryBus::new())).await;
}

#[tokio::test]
async fn redis_bus_meets_the_contract() {
    let r = Redis::start();
    let bus = RedisBus::connect(&format!("redis://127.0.0.1:{}", r.1))
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(bus);
    bus_contract(bus.clone()).await;
    pending_contract(bus).await;
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    store_contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let admin = std::env::var("JAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let name = format!("jam_contract_{}", &jam_shared::ids::unique()[..10]);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    {
        let store = PgStore::connect(&url, 4).await.unwrap();
        // Migrations are idempotent.
        PgStore::connect(&url, 4).await.unwrap();
        store_contract(Arc::new(store)).await;
    }
    let _ = client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
}
