//! The chaos suite: chat from 12 users in 3 sessions over two gateways and two workers, one
//! fault in the middle of the run, an audit of history afterwards (docs/reliability.md).
//! Each fault asserts: no acknowledged message lost, none stored twice, seqs strictly
//! increasing, every process ready again, and reports the time to the first acknowledgement
//! after the fault. `JAM_CHAOS_FULL=1` adds the longer faults.

use std::time::{Duration, Instant};

use jam_tests::chaos::{self, Report, SlowReader, Traffic};
use jam_tests::procs::{self, Proc};
use jam_tests::scenario::join;
use jam_tests::services::{PrivateRedis, TcpGate, TestDb};
use jam_tests::{token, Client};
use serde_json::json;

struct Stack {
    redis: PrivateRedis,
    _db: TestDb,
    pg: TcpGate,
    workers: Vec<Proc>,
    gateways: Vec<Proc>,
    /// The sessions of the traffic, for faults aimed at one.
    sids: Vec<String>,
}

async fn stack(gateway_env: &[(&str, &str)]) -> Stack {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let (auth, rest) = db.url.split_once('@').unwrap();
    let (server, path) = rest.split_once('/').unwrap();
    let pg = TcpGate::closed(server);
    pg.open().await;
    let url = format!("{auth}@127.0.0.1:{}/{path}", pg.port);
    let env = [("JAM_LEASE_TTL_MS", "2000")];
    let workers = vec![
        procs::worker_named(&redis.url(), &url, "w1", &env).await,
        procs::worker_named(&redis.url(), &url, "w2", &env).await,
    ];
    let mut gw_env = vec![("JAM_DRAIN_GRACE_SECS", "2")];
    gw_env.extend_from_slice(gateway_env);
    let gateways = vec![
        procs::gateway(&redis.url(), "gw-a", &gw_env).await,
        procs::gateway(&redis.url(), "gw-b", &gw_env).await,
    ];
    Stack {
        redis,
        _db: db,
        pg,
        workers,
        gateways,
        sids: Vec::new(),
    }
}

const TOTAL: Duration = Duration::from_secs(12);
const FAULT_AFTER: Duration = Duration::from_secs(4);

async fn ready_again(s: &Stack) {
    for p in s.workers.iter().chain(&s.gateways) {
        p.wait_path("/ready").await;
    }
}

/// Session timers still fire after the fault: a typing indicator set through one gateway
/// is cleared by the owning worker's timer (5 s TTL) and seen cleared through the other;
/// and sync still answers a playback report with its drift.
async fn timers_fire(s: &Stack, sid: &str) -> Duration {
    let (a, b) = (s.gateways[0].ws_url(), s.gateways[1].ws_url());
    let mut x = Client::connect(&a, &token("timer-x", "Timer X", None)).await;
    let mut y = Client::connect(&b, &token("timer-y", "Timer Y", None)).await;
    assert_eq!(join(&mut x, sid, None).await["type"], "session_update");
    assert_eq!(join(&mut y, sid, None).await["type"], "session_update");
    x.send(json!({"type": "typing", "sessionId": sid, "isTyping": true}))
        .await;
    let from_x = |typing: bool| {
        move |v: &serde_json::Value| {
            v["type"] == "user_typing" && v["userId"] == "timer-x" && v["isTyping"] == typing
        }
    };
    y.recv_where("timer-x typing", from_x(true)).await;
    let t = Instant::now();
    y.recv_where_within(
        "typing cleared by the timer",
        Duration::from_secs(10),
        from_x(false),
    )
    .await;
    let cleared = t.elapsed();
    // Sync still answers: a report is checked against the host's playback (the traffic's
    // host set it) and answered with the drift.
    y.send(
        json!({"type": "playback_report", "sessionId": sid, "trackUri": "chaos:track",
                  "position": 0.0, "isPlaying": true}),
    )
    .await;
    let status = y
        .recv_where_within("sync_status", Duration::from_secs(5), |v| {
            v["type"] == "sync_status" && v["drift"].is_number()
        })
        .await;
    assert_eq!(status["sessionId"], sid, "{status}");
    cleared
}

/// How long after the fault every gateway may take to show the members as they are.
const PRESENCE_WITHIN: Duration = Duration::from_secs(30);

/// Run the traffic with `fault` (and its repair) in the middle; audit; assert.
async fn run<F>(name: &str, fault: F) -> Report
where
    F: AsyncFnOnce(&mut Stack),
{
    run_with(name, &[], fault).await
}

/// [`run`] with gateways configured by `gateway_env`.
async fn run_with<F>(name: &str, gateway_env: &[(&str, &str)], fault: F) -> Report
where
    F: AsyncFnOnce(&mut Stack),
{
    let mut s = stack(gateway_env).await;
    let urls: Vec<String> = s.gateways.iter().map(|g| g.ws_url()).collect();
    let traffic = Traffic {
        urls: urls.clone(),
        sessions: 3,
        per_session: 4,
        every: Duration::from_millis(200),
    };
    let mut running = chaos::start(&traffic, TOTAL).await;
    s.sids = running.sids.clone();
    tokio::time::sleep(FAULT_AFTER).await;
    running.fault_now().await;
    fault(&mut s).await;
    let presence = running.presence(&urls, PRESENCE_WITHIN).await;
    let sids = running.sids.clone();
    let (logs, at) = running.finish().await;
    ready_again(&s).await;
    let mut report = chaos::audit(name, &s.gateways[0].ws_url(), &logs, &sids, at).await;
    report.presence = presence;
    let timer = timers_fire(&s, &sids[0]).await;
    println!(
        "{} timers: typing cleared {:.1} s after it was set |",
        report.row(),
        timer.as_secs_f64()
    );
    assert!(report.acked > 100, "{report:?}");
    assert_eq!(report.lost, 0, "acknowledged messages lost: {report:?}");
    assert_eq!(report.duplicates, 0, "stored twice: {report:?}");
    assert_eq!(report.seq_errors, 0, "seq order: {report:?}");
    assert!(
        report.presence.is_some(),
        "presence did not converge within {PRESENCE_WITHIN:?} of the fault's end: {report:?}"
    );
    report
}

#[tokio::test]
async fn chaos_worker_sigkill() {
    run("worker SIGKILL", async |s: &mut Stack| {
        s.workers[0].kill();
        tokio::time::sleep(Duration::from_secs(4)).await;
        s.workers[0].restart().await;
    })
    .await;
}

#[tokio::test]
async fn chaos_gateway_sigkill() {
    run("gateway SIGKILL", async |s: &mut Stack| {
        s.gateways[0].kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.gateways[0].restart().await;
    })
    .await;
}

#[tokio::test]
async fn chaos_redis_restart() {
    run("Redis restart (2 s down)", async |s: &mut Stack| {
        s.redis.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.redis.restart();
    })
    .await;
}

#[tokio::test]
async fn chaos_postgres_cut() {
    run("PostgreSQL unreachable 3 s", async |s: &mut Stack| {
        s.pg.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.pg.open().await;
    })
    .await;
}

/// Slow consumers dropped by gateway `g` so far.
async fn slow_consumers(g: &Proc) -> f64 {
    let text = jam_tests::metrics::scrape(&g.http("/metrics")).await;
    jam_tests::metrics::sum(&text, "jam_slow_consumers_total", &[])
}

#[tokio::test]
async fn chaos_slow_consumer() {
    // A small outbound queue and kernel send buffer, so that a member who stops reading
    // overflows them in seconds (the kernel's autotuning lets loopback hold megabytes).
    let env = [
        ("JAM_OUTBOUND_QUEUE", "64"),
        ("JAM_SOCKET_SEND_BUFFER", "16384"),
    ];
    run_with(
        "a client that stops reading",
        &env,
        async |s: &mut Stack| {
            let (sid, url) = (s.sids[0].clone(), s.gateways[0].ws_url());
            let mut slow = SlowReader::join(&url, "chaos-slow", &sid).await;
            let mut loud =
                Client::connect(&s.gateways[1].ws_url(), &token("chaos-loud", "Loud", None)).await;
            assert_eq!(join(&mut loud, &sid, None).await["type"], "session_update");
            // Large messages into its room until its gateway gives up on it.
            let big = "x".repeat(1900);
            let t = Instant::now();
            let mut sent = 0;
            while slow_consumers(&s.gateways[0]).await < 1.0 {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "never dropped ({sent} sent)"
                );
                let r = loud
                    .request(json!({"type": "send_message", "sessionId": sid,
                                "message": format!("loud-{sent} {big}")}))
                    .await;
                assert_eq!(r["type"], "new_message", "{r}");
                sent += 1;
                // Under the frame-rate limit.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            let dropped_after = t.elapsed();
            // It reads again: what the gateway had sent before dropping it, then the end.
            let read = slow.read_to_end().await;
            // Rejoined with its last seq, it has every message since it joined, once, in order.
            let mut back = Client::connect(&url, &token("chaos-slow", "chaos-slow", None)).await;
            let reply = back
                .request(
                    json!({"type": "join_session", "sessionId": sid, "sinceSeq": slow.view.seq}),
                )
                .await;
            assert_eq!(reply["recovered"], true, "{reply}");
            slow.view.rejoined(&reply);
            let want: Vec<String> = chaos::history(&url, &sid)
                .await
                .into_iter()
                .filter(|(seq, _)| *seq > slow.joined_at && *seq <= slow.view.seq)
                .map(|(_, t)| t)
                .collect();
            assert_eq!(slow.view.texts, want, "every message once, in order");
            println!(
                "slow consumer: dropped {:.1} s after it stopped reading ({sent} large messages), \
             {read} frames read afterwards, {} messages recovered in order",
                dropped_after.as_secs_f64(),
                want.len()
            );
        },
    )
    .await;
}

fn full() -> bool {
    std::env::var("JAM_CHAOS_FULL").is_ok_and(|v| v == "1")
}

#[tokio::test]
async fn chaos_full_matrix() {
    if !full() {
        eprintln!("skipped: set JAM_CHAOS_FULL=1 for the longer faults");
        return;
    }
    let mut rows = Vec::new();
    rows.push(
        run("worker SIGSTOP 8 s", async |s: &mut Stack| {
            s.workers[0].signal("STOP");
            tokio::time::sleep(Duration::from_secs(8)).await;
            s.workers[0].signal("CONT");
        })
        .await,
    );
    rows.push(
        run("gateway SIGTERM + restart", async |s: &mut Stack| {
            s.gateways[0].signal("TERM");
            s.gateways[0].wait_exit(Duration::from_secs(10)).await;
            s.gateways[0].restart().await;
        })
        .await,
    );
    rows.push(
        run(
            "gateway restarted at once, same name",
            async |s: &mut Stack| {
                s.gateways[1].kill();
                s.gateways[1].restart().await;
            },
        )
        .await,
    );
    rows.push(
        run("Redis down 45 s", async |s: &mut Stack| {
            s.redis.stop();
            tokio::time::sleep(Duration::from_secs(45)).await;
            s.redis.restart();
        })
        .await,
    );
    for r in rows {
        println!("{}", r.row());
    }
}

#[tokio::test]
async fn chaos_full_redis_client_pause() {
    if !full() {
        eprintln!("skipped: set JAM_CHAOS_FULL=1 for the longer faults");
        return;
    }
    run("Redis CLIENT PAUSE 8 s", async |s: &mut Stack| {
        // Past the 5 s command timeout: reads and writes stall; none may be lost or
        // applied out of order.
        s.redis.pause(8000);
        tokio::time::sleep(Duration::from_secs(8)).await;
    })
    .await;
}

#[tokio::test]
async fn chaos_full_redis_restarted_from_an_older_snapshot() {
    if !full() {
        eprintln!("skipped: set JAM_CHAOS_FULL=1 for the longer faults");
        return;
    }
    run(
        "Redis restarted from a 3 s old snapshot",
        async |s: &mut Stack| {
            // Commands applied and acknowledged after the snapshot come back to the
            // streams: the workers' high-water marks must skip them.
            s.redis.snapshot();
            tokio::time::sleep(Duration::from_secs(3)).await;
            s.redis.restart();
        },
    )
    .await;
}
