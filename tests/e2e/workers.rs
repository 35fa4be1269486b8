//! Several workers: partitions shared through leases, a killed worker's partitions taken
//! over, a paused worker fenced, password checks off the single writer. Every test
//! audits the database afterwards: each acknowledged message exactly once, in seq order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jam_tests::metrics::{scrape, sum};
use jam_tests::procs::{self, Proc};
use jam_tests::scenario::{create, join};
use jam_tests::services::{PrivateRedis, TestDb};
use jam_tests::{token, Client};
use serde_json::json;

struct Two {
    /// Kept for the test's length: its processes use it.
    _redis: PrivateRedis,
    db: TestDb,
    w1: Proc,
    w2: Proc,
    gw: Proc,
}

async fn two_workers() -> Two {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let w1 = procs::worker_named(&redis.url(), &db.url, "worker-1", &[]).await;
    let w2 = procs::worker_named(&redis.url(), &db.url, "worker-2", &[]).await;
    let gw = procs::gateway(&redis.url(), "gw-a", &[]).await;
    let t = Two {
        _redis: redis,
        db,
        w1,
        w2,
        gw,
    };
    // Both hold a fair share before the test starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = owned(&t.w1).await;
        let b = owned(&t.w2).await;
        if a == 8.0 && b == 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never balanced: {a} + {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t
}

async fn owned(w: &Proc) -> f64 {
    sum(
        &scrape(&w.http("/metrics")).await,
        "jam_worker_partitions_owned",
        &[],
    )
}

/// Wait (bounded) until `w` owns every partition.
async fn owns_all(w: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while owned(w).await != 16.0 {
        assert!(
            Instant::now() < deadline,
            "{} never owned every partition",
            w.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One sender per session, each sending sequentially and recording what was acknowledged.
struct Sender {
    client: Client,
    sid: String,
    acked: Vec<(String, i64)>,
    longest_wait: Duration,
}

impl Sender {
    /// Send one message and wait for its acknowledgement, resending it with the same
    /// idempotency key when none comes: pub/sub may lose the acknowledgement of a message
    /// committed just before its worker died, and the retry returns the original.
    async fn send(&mut self, text: String) {
        let r = format!("r-{text}");
        let t = Instant::now();
        for attempt in 1..=4 {
            self.client
                .send(json!({"type": "send_message", "sessionId": self.sid, "message": text, "ref": r, "idempotencyKey": text}))
                .await;
            let rr = r.clone();
            let Some(m) = self
                .client
                .try_recv_where(Duration::from_secs(8), move |v| v["ref"] == rr.as_str())
                .await
            else {
                assert!(
                    attempt < 4,
                    "{r}: no acknowledgement after {attempt} attempts"
                );
                continue;
            };
            assert_eq!(m["type"], "new_message", "{m}");
            self.longest_wait = self.longest_wait.max(t.elapsed());
            self.acked.push((text, m["seq"].as_i64().unwrap()));
            return;
        }
    }
}

async fn senders(url: &str, n: usize) -> Vec<Sender> {
    let mut out = Vec::new();
    for i in 0..n {
        let user = format!("host{i}");
        let mut client = Client::connect(url, &token(&user, &user, None)).await;
        let sid = create(&mut client, json!({"name": format!("room {i}")})).await;
        out.push(Sender {
            client,
            sid,
            acked: Vec::new(),
            longest_wait: Duration::ZERO,
        });
    }
    out
}

/// Send `rounds` messages from every sender concurrently; `during` runs after `at` rounds.
async fn chat(senders: &mut [Sender], rounds: usize, tag: &str) {
    let futs = senders.iter_mut().enumerate().map(|(i, s)| async move {
        for k in 0..rounds {
            s.send(format!("{tag}-{i}-{k}")).await;
        }
    });
    futures_util::future::join_all(futs).await;
}

/// Like [`chat`], but every sender goes on until `until`, 20 messages a second at most
/// (below the default rate limit).
async fn chat_until(senders: &mut [Sender], until: Instant, tag: &str) {
    let futs = senders.iter_mut().enumerate().map(|(i, s)| async move {
        let mut k = 0;
        while Instant::now() < until {
            let next = tokio::time::sleep(Duration::from_millis(50));
            s.send(format!("{tag}-{i}-{k}")).await;
            next.await;
            k += 1;
        }
    });
    futures_util::future::join_all(futs).await;
}

/// Every acknowledged message is stored exactly once, with the seq it was acknowledged
/// with, and a session's seqs are strictly increasing with no duplicates.
async fn audit(db: &TestDb, senders: &[Sender]) {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for s in senders {
        let rows = client
            .query(
                "SELECT message, seq FROM jam_messages WHERE session_id = $1 ORDER BY seq",
                &[&s.sid],
            )
            .await
            .unwrap();
        let stored: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (m, _) in &stored {
            *count.entry(m.as_str()).or_default() += 1;
        }
        for (text, seq) in &s.acked {
            assert_eq!(count.get(text.as_str()), Some(&1), "{text} stored once");
            assert!(
                stored.contains(&(text.clone(), *seq)),
                "{text} kept seq {seq}"
            );
        }
        assert!(
            stored.windows(2).all(|w| w[0].1 < w[1].1),
            "seqs strictly increase in {}",
            s.sid
        );
        // Each sender's own messages are stored in the order it sent them.
        let mine: Vec<&String> = stored.iter().map(|(m, _)| m).collect();
        let sent: Vec<&String> = s.acked.iter().map(|(m, _)| m).collect();
        assert_eq!(mine, sent, "order of {}", s.sid);
    }
}

/// Two workers and eight senders, one session each; `sig` goes to worker-1 300 ms into
/// 4 s of chat from every sender (so it lands mid-stream), and worker-1 must exit within
/// `exit_within`. Then worker-2 owns every partition and serves, and every acknowledged
/// message is stored once, in order. Returns the longest wait for an acknowledgement
/// during the chat.
async fn worker_signalled_mid_stream(sig: &str, exit_within: Duration) -> Duration {
    let mut t = two_workers().await;
    let mut s = senders(&t.gw.ws_url(), 8).await;
    chat(&mut s, 10, "before").await;
    for x in s.iter_mut() {
        x.longest_wait = Duration::ZERO;
    }
    let sending = chat_until(&mut s, Instant::now() + Duration::from_secs(4), "during");
    let signal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.w1.signal(sig);
        assert!(t.w1.wait_exit(exit_within).await, "worker-1 did not exit");
    };
    tokio::join!(sending, signal);
    let stall = s.iter().map(|x| x.longest_wait).max().unwrap();
    eprintln!("longest wait for an acknowledgement: {stall:?}");
    owns_all(&t.w2).await;
    chat(&mut s, 5, "after").await;
    audit(&t.db, &s).await;
    stall
}

#[tokio::test]
async fn a_killed_workers_partitions_are_taken_over_within_ten_seconds() {
    let stall = worker_signalled_mid_stream("KILL", Duration::from_secs(5)).await;
    assert!(
        stall < Duration::from_secs(10),
        "the longest wait for an acknowledgement was {stall:?}"
    );
}

/// A rolling update: worker-1 gets SIGTERM mid-stream. It leaves the registry, finishes
/// what it applied, gives its leases back and says so; worker-2 takes them at once
/// instead of after its next round or the registration's expiry (the lease's lifetime,
/// 5 s).
#[tokio::test]
async fn a_stopped_workers_partitions_move_at_once() {
    let stall = worker_signalled_mid_stream("TERM", Duration::from_secs(3)).await;
    assert!(
        stall < Duration::from_millis(2500),
        "the longest wait for an acknowledgement was {stall:?}: the hand-over waited"
    );
}

#[tokio::test]
async fn a_paused_worker_that_lost_its_lease_commits_nothing() {
    let t = two_workers().await;
    let mut s = senders(&t.gw.ws_url(), 8).await;
    chat(&mut s, 5, "before").await;
    // Pause worker-1 mid-stream, past its lease: worker-2 takes its partitions over.
    let sending = chat(&mut s, 30, "during");
    let pause = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t.w1.signal("STOP");
    };
    tokio::join!(sending, pause);
    owns_all(&t.w2).await;
    // It wakes up believing it owns its partitions; whatever it still had applied must
    // not reach the database, and it reads nothing more from the new owner's streams.
    t.w1.signal("CONT");
    eprintln!("step: woken");
    chat(&mut s, 10, "woken").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("step: later");
    chat(&mut s, 10, "later").await;
    eprintln!("step: audit");
    audit(&t.db, &s).await;
    eprintln!("step: rejoin");
    // And it rejoins: after rebalancing both hold a share again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&t.w1).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the woken worker never got a share back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chat(&mut s, 5, "rebalanced").await;
    audit(&t.db, &s).await;
}

#[tokio::test]
async fn password_hashes_come_from_the_server_and_checks_never_block_other_rooms() {
    let t = two_workers().await;
    let url = t.gw.ws_url();
    let mut host = Client::connect(&url, &token("host", "Host", None)).await;
    // A client-supplied hash is ignored: the session has no password at all.
    let huge = "$argon2id$v=19$m=4000000,t=9999,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    let open = create(&mut host, json!({"name": "x", "passwordHash": huge})).await;
    let mut guest = Client::connect(&url, &token("guest", "Guest", None)).await;
    let r = join(&mut guest, &open, None).await;
    assert_eq!(r["type"], "session_update", "{r}");
    assert_eq!(r["session"]["isPrivate"], false, "{r}");

    // Password joins in flight do not delay chat in other sessions (same partitions).
    let locked = create(&mut host, json!({"name": "locked", "password": "pw"})).await;
    let mut s = senders(&url, 4).await;
    let mut joiners = Vec::new();
    for i in 0..6 {
        let u = format!("j{i}");
        joiners.push(Client::connect(&url, &token(&u, &u, None)).await);
    }
    let joins = futures_util::future::join_all(joiners.iter_mut().map(|c| {
        let locked = locked.clone();
        async move { join(c, &locked, Some("pw")).await }
    }));
    let (joined, _) = tokio::join!(joins, chat(&mut s, 20, "busy"));
    for j in joined {
        assert_eq!(j["type"], "session_update", "{j}");
    }
    let wrong = join(&mut guest, &locked, Some("nope")).await;
    assert_eq!(wrong["code"], "INVALID_PASSWORD");
    audit(&t.db, &s).await;
}

/// The database refuses one message's data (here a CHECK constraint, SQLSTATE 23514; in
/// the field a constraint an operator added, or a value a gateway check let through). The
/// refused batch is dropped and its partition starts again from the store, applying that
/// batch's entries one at a time: the culprit gets an error and is never stored, every
/// other message of the burst and of the other sessions is acknowledged and stored once,
/// in order, and the partition serves on (decision 35). Before, the worker retried the
/// refused group for ever, and every partition it owned stopped with it.
#[tokio::test]
async fn a_command_the_store_refuses_is_answered_and_holds_up_no_one() {
    const BURST: usize = 30;
    const POISONED: usize = 12;
    let t = two_workers().await;
    let mut s = senders(&t.gw.ws_url(), 6).await;
    chat(&mut s, 2, "before").await;
    let (db, conn) = tokio_postgres::connect(&t.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(
        "ALTER TABLE jam_messages ADD CONSTRAINT jam_test_refused CHECK (message NOT LIKE 'poison%')",
    )
    .await
    .unwrap();

    let (first, others) = s.split_at_mut(1);
    let x = &mut first[0];
    let texts: Vec<String> = (0..BURST)
        .map(|k| match k {
            POISONED => format!("poison-{k}"),
            _ => format!("burst-{k}"),
        })
        .collect();
    // Back to back, so that the poisoned one shares its batch (and its group) with others.
    let burst = async {
        for text in &texts {
            x.client
                .send(json!({"type": "send_message", "sessionId": x.sid, "message": text, "ref": format!("r-{text}")}))
                .await;
        }
        let mut answers = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while answers.len() < BURST {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = x
                .client
                .try_recv_where(left, |v| {
                    v["ref"].as_str().is_some_and(|r| r.starts_with("r-"))
                })
                .await
                .unwrap_or_else(|| panic!("only {} of {BURST} answered", answers.len()));
            answers.insert(m["ref"].as_str().unwrap()[2..].to_string(), m);
        }
        answers
    };
    let (answers, ()) = tokio::join!(burst, chat(others, 10, "during"));
    for text in &texts {
        let m = &answers[text];
        if text.starts_with("poison") {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["code"], "BAD_REQUEST", "{m}");
        } else {
            assert_eq!(m["type"], "new_message", "{text}: {m}");
            x.acked.push((text.clone(), m["seq"].as_i64().unwrap()));
        }
    }
    assert!(
        x.acked.windows(2).all(|w| w[0].1 < w[1].1),
        "the burst keeps its order: {:?}",
        x.acked
    );
    let metrics = [
        scrape(&t.w1.http("/metrics")).await,
        scrape(&t.w2.http("/metrics")).await,
    ];
    let total = |name: &str| metrics.iter().map(|m| sum(m, name, &[])).sum::<f64>();
    assert_eq!(
        total("jam_commands_refused_total"),
        1.0,
        "one command refused"
    );
    // The batch that held it, then the batch of it alone; no other partition's batch of a
    // refused group (each committed on its own).
    let batches = total("jam_commits_refused_total");
    assert_eq!(batches, 2.0, "batches refused");
    // The partition serves on, and the audit finds every acknowledged message once, in
    // order, and nothing else (the poisoned one is not stored).
    chat(&mut s, 3, "after").await;
    audit(&t.db, &s).await;
}
