//! One contract, two implementations: the in-memory bus must behave like Redis. Every check
//! runs against both (Redis: a private redis-server on a free port). The store's contract
//! lives with the worker, which owns the store (worker/tests/store_contract.rs).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jam_shared::bus::lag::lagged_channels;
use jam_shared::bus::memory::MemoryBus;
use jam_shared::bus::redis::RedisBus;
use jam_shared::bus::{Bus, LeaseOp, Payload, ReadFrom, StreamEntry};
use jam_shared::keys;

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

/// The bytes an entry appended with `xadd` carries.
fn bytes_of(e: &StreamEntry) -> Bytes {
    match &e.payload {
        Payload::Bytes(b) => b.clone(),
        Payload::Command(c) => panic!("appended as bytes, read as a command: {c:?}"),
    }
}

/// Whether consumer "w1" of group "g" holds nothing unacknowledged on `streams`.
async fn nothing_pending(bus: &dyn Bus, streams: &[String]) -> bool {
    let pending = ReadFrom::Pending {
        after: "0-0".into(),
    };
    bus.read_group(streams, "g", "w1", 10, 200, pending)
        .await
        .unwrap()
        .is_empty()
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
            .map(bytes_of)
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
    assert!(nothing_pending(&*bus, &streams).await);

    // A blocked read wakes for an entry on any stream it reads, at once, and not for a
    // stream it does not read.
    for (stream, wakes) in [("elsewhere", false), ("s1", true), ("s0", true)] {
        let reader = tokio::spawn({
            let (bus, streams) = (bus.clone(), streams.clone());
            async move {
                let t = std::time::Instant::now();
                let got = bus
                    .read_group(&streams, "g", "w1", 10, 1_500, ReadFrom::New)
                    .await
                    .unwrap();
                (got, t.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        bus.xadd(stream, Bytes::from_static(b"late")).await.unwrap();
        let (got, waited) = reader.await.unwrap();
        if wakes {
            assert_eq!(got.len(), 1, "{stream}");
            assert_eq!(got[0].stream, stream);
            assert!(
                waited < Duration::from_millis(1_000),
                "{stream}: {waited:?}"
            );
            bus.ack("g", &[(got[0].stream.clone(), got[0].id.clone())])
                .await
                .unwrap();
        } else {
            assert!(got.is_empty(), "an entry of another stream: {got:?}");
        }
    }

    // Publish and acknowledge in one call: the event is out and the entry is done.
    sub.subscribe("c3").await.unwrap();
    bus.xadd("s1", Bytes::from_static(b"d")).await.unwrap();
    let got = bus
        .read_group(&streams, "g", "w1", 10, 500, ReadFrom::New)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let acks = vec![(got[0].stream.clone(), got[0].id.clone())];
    let event = vec![("c3".to_string(), Bytes::from_static(b"d applied"))];
    bus.publish_and_ack(event, "g", &acks).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&*m.channel, &m.payload[..]), ("c3", &b"d applied"[..]));
    assert!(nothing_pending(&*bus, &streams).await);

    // A group: several events, in order, on two channels (binary payloads kept byte for
    // byte), and entries of two streams acknowledged at once.
    sub.subscribe("c4").await.unwrap();
    for (s, p) in [("s0", "e"), ("s1", "f"), ("s0", "g")] {
        bus.xadd(s, Bytes::from(p)).await.unwrap();
    }
    let got = bus
        .read_group(&streams, "g", "w1", 10, 500, ReadFrom::New)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let acks: Vec<(String, String)> = got
        .iter()
        .map(|e| (e.stream.clone(), e.id.clone()))
        .collect();
    let events: Vec<(String, Bytes)> = (0..5u8)
        .map(|i| {
            let channel = if i % 2 == 0 { "c3" } else { "c4" };
            (
                channel.to_string(),
                Bytes::from(vec![i, 0, 0xff, b'\'', b'"']),
            )
        })
        .collect();
    bus.publish_and_ack(events.clone(), "g", &acks)
        .await
        .unwrap();
    for (channel, payload) in &events {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&*m.channel, &m.payload), (channel.as_str(), payload));
    }
    assert!(nothing_pending(&*bus, &streams).await);

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
    assert_eq!(bus.live_members("R").await.unwrap(), 0);
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 1);
    assert_eq!(bus.register_member("R", "b", 150).await.unwrap(), 2);
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 2);
    assert_eq!(bus.live_members("R").await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bus.live_members("R").await.unwrap(), 1, "b expired");
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 1);
    assert_eq!(bus.register_member("R", "x#1", 10_000).await.unwrap(), 2);
    assert_eq!(
        bus.register_member("R", "x#2", 10_000).await.unwrap(),
        2,
        "a reboot"
    );
    bus.leave_member("R", "a").await.unwrap();
    assert_eq!(bus.live_members("R").await.unwrap(), 1, "a left");
    bus.leave_member("R", "nobody").await.unwrap();
    assert_eq!(bus.register_member("R", "a", 10_000).await.unwrap(), 2);
    // Fixed-window counters, shared by every gateway.
    assert_eq!(bus.count_in_window("C", 200).await.unwrap(), 1);
    assert_eq!(bus.count_in_window("C", 200).await.unwrap(), 2);
    assert_eq!(bus.count_in_window("D", 200).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bus.count_in_window("C", 200).await.unwrap(),
        1,
        "a new window"
    );
    bus.ping().await.unwrap();
}

/// Commands appended as values come back as the same commands, in order, mixed with
/// entries appended as bytes: decoded from JSON on Redis, handed over as they are in memory.
async fn command_contract(bus: Arc<dyn Bus>) {
    let streams = vec!["k0".to_string()];
    bus.ensure_group(&streams, "g").await.unwrap();
    let cmd = |n: u32| jam_shared::protocol::Command {
        id: format!("c{n}"),
        tenant: "t".into(),
        user_id: "u".into(),
        user_name: "U".into(),
        conn: "conn".into(),
        gateway: "gw#1".into(),
        r#ref: Some(serde_json::json!({"n": n})),
        received_at: 1_700_000_000_000,
        ephemeral: false,
        rtt_ms: Some(12.5),
        action: jam_shared::protocol::Action::SendMessage {
            session_id: "s".into(),
            message: format!("hello {n}"),
        },
    };
    bus.xadd_command("k0", cmd(1)).await.unwrap();
    let as_bytes = serde_json::to_vec(&cmd(2)).unwrap();
    bus.xadd("k0", Bytes::from(as_bytes)).await.unwrap();
    bus.xadd_command("k0", cmd(3)).await.unwrap();
    let got = bus
        .read_group(&streams, "g", "w1", 10, 500, ReadFrom::New)
        .await
        .unwrap();
    let cmds: Vec<_> = got.into_iter().map(|e| e.into_command().unwrap()).collect();
    assert_eq!(cmds, [cmd(1), cmd(2), cmd(3)]);
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
        again.iter().map(bytes_of).collect::<Vec<_>>(),
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

/// A subscriber that falls behind loses messages (pub/sub is at-most-once) and is told, as
/// soon as it has room, which channels lost some: before anything published after the loss.
async fn lag_contract(bus: Arc<dyn Bus>) {
    let (sub, mut rx) = bus.subscription(2).await.unwrap();
    sub.subscribe("busy").await.unwrap();
    sub.subscribe("quiet").await.unwrap();
    bus.publish("quiet", Bytes::from_static(b"q0"))
        .await
        .unwrap();
    for i in 0..20 {
        bus.publish("busy", Bytes::from(format!("b{i}")))
            .await
            .unwrap();
    }
    // Nothing is read until every message has reached the subscriber or been dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open")
    };
    let got: Vec<(String, Bytes)> = [next().await, next().await]
        .into_iter()
        .map(|m| (m.channel.to_string(), m.payload))
        .collect();
    assert_eq!(
        got,
        [
            ("quiet".to_string(), Bytes::from_static(b"q0")),
            ("busy".to_string(), Bytes::from_static(b"b0"))
        ]
    );
    let notice = next().await;
    assert_eq!(&*notice.channel, keys::BUS_LAGGED);
    assert_eq!(lagged_channels(&notice), Some(vec!["busy"]));
    // Then messages flow again, and with nothing more lost nothing more is said.
    bus.publish("quiet", Bytes::from_static(b"q1"))
        .await
        .unwrap();
    let m = next().await;
    assert_eq!((&*m.channel, &*m.payload), ("quiet", &b"q1"[..]));
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn memory_bus_meets_the_contract() {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    bus_contract(bus.clone()).await;
    lag_contract(bus.clone()).await;
    command_contract(bus).await;
}

#[tokio::test]
async fn redis_bus_meets_the_contract() {
    let r = Redis::start();
    let bus = RedisBus::connect(&format!("redis://127.0.0.1:{}", r.1))
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(bus);
    bus_contract(bus.clone()).await;
    lag_contract(bus.clone()).await;
    command_contract(bus.clone()).await;
    pending_contract(bus).await;
}
