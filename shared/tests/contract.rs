//! One contract, two implementations: the in-memory bus and store must behave like Redis
//! and PostgreSQL. Every check runs against both (Redis: a private redis-server on a free
//! port; PostgreSQL: a fresh database on JAM_TEST_DATABASE_URL's server).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jam_shared::bus::memory::MemoryBus;
use jam_shared::bus::redis::RedisBus;
use jam_shared::bus::Bus;
use jam_shared::protocol::model::{
    ChatMessage, DirectMessage, ParticipantRecord, Role, SessionRecord, SessionStatus,
};
use jam_shared::store::memory::MemoryStore;
use jam_shared::store::postgres::PgStore;
use jam_shared::store::{Batch, Store};

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
    let got = bus.read_group(&streams, "g", "w1", 10, 500).await.unwrap();
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
        .read_group(&streams, "g", "w1", 10, 200)
        .await
        .unwrap()
        .is_empty());
    bus.ping().await.unwrap();
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
    let mut batch = Batch {
        upserts: vec![record("AAAA", "t1"), record("AAAA", "t2")],
        ..Default::default()
    };
    batch.messages = (1..=7).map(|s| msg("t1", "AAAA", s)).collect();
    batch.command_ids = vec!["c1".into(), "c2".into()];
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

    let mut loaded = store.load_sessions().await.unwrap();
    loaded.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].password_hash.as_deref(), Some("$argon2id$x"));
    assert_eq!(loaded[0].last_seq, 3);

    // History: newest page first, returned oldest first; tenants apart.
    let page = store.history("t1", "AAAA", None, 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
    let page = store.history("t1", "AAAA", Some(5), 3).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(store
        .history("t2", "AAAA", None, 10)
        .await
        .unwrap()
        .is_empty());

    let seen = store
        .seen_commands(&["c1".into(), "c3".into()])
        .await
        .unwrap();
    assert!(seen.contains("c1") && !seen.contains("c3"));
    // Pruning forgets only what is older than the bound.
    store
        .prune_commands(jam_shared::clock::now_ms() - 60_000)
        .await
        .unwrap();
    assert!(store
        .seen_commands(&["c1".into()])
        .await
        .unwrap()
        .contains("c1"));
    store
        .prune_commands(jam_shared::clock::now_ms() + 60_000)
        .await
        .unwrap();
    assert!(store
        .seen_commands(&["c1".into(), "c2".into()])
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

    // A duplicate seq is refused and the whole batch with it.
    let dup = Batch {
        upserts: vec![record("BBBB", "t1")],
        messages: vec![msg("t1", "AAAA", 7)],
        ..Default::default()
    };
    assert!(store.commit(&dup).await.is_err());
    assert_eq!(
        store.load_sessions().await.unwrap().len(),
        2,
        "nothing of a failed batch is kept"
    );

    // Deleting a session takes its messages.
    store
        .commit(&Batch {
            deletes: vec![("t1".into(), "AAAA".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store
        .history("t1", "AAAA", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.load_sessions().await.unwrap().len(), 1);
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
    bus_contract(Arc::new(bus)).await;
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
