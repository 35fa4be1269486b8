//! jam-load: N listeners spread over one or more gateways join one session; one sender
//! chats at a fixed rate; every listener timestamps every delivery. Reports deliveries per
//! second, delivery latency percentiles (send → receive, same machine clock) and, given
//! the server pids, deliveries per server CPU-second. Loopback only; bounded in count and
//! time; stops by itself.
//!
//!   jam-load --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --clients 500 \
//!            --messages 2000 --rate 200 --secret local-cluster-secret --pid 1234 --pid 1235

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Gateway WebSocket URLs; listeners are spread round-robin. Loopback only.
    #[arg(long, required = true)]
    url: Vec<String>,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages per second from the sender.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, env = "JAM_JWT_SECRET", default_value = jam_shared::config::DEV_JWT_SECRET)]
    secret: String,
    /// Server processes whose CPU time is measured (gateways, worker).
    #[arg(long)]
    pid: Vec<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Instead of chat: open this many idle authenticated connections to the first URL and
    /// report the resident memory they cost the first `--pid` (a gateway).
    #[arg(long)]
    idle: Option<usize>,
    /// Instead of chat: connect this many listeners first, then have them all join one
    /// session at once; report the time until every join is answered and the frames and
    /// bytes every member received until the room settles.
    #[arg(long)]
    join_storm: Option<usize>,
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

async fn idle(a: &Args, jwt: &jam_shared::auth::JwtVerifier, n: usize) -> anyhow::Result<()> {
    let pid = *a.pid.first().context("--idle needs the gateway's --pid")?;
    let before = rss_kib(pid);
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(connect(&a.url[0], jwt, &format!("idle-{i}")).await?);
    }
    let opened = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "{n} idle connections opened in {opened:.1} s; gateway RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection",
        before / 1024.0,
        after / 1024.0,
        (after - before) / n as f64
    );
    drop(conns);
    Ok(())
}

/// Connect `n` listeners (64 at a time), then let them all join `sid` at once. Every member
/// counts what it receives from the first join until the room settles: every join answered
/// and no frame for a second. Then all stop together (nobody leaves before that).
async fn join_storm(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    n: usize,
    mut host: Ws,
    sid: &str,
) -> anyhow::Result<()> {
    use futures_util::stream::{self, StreamExt as _};
    let conns: Vec<Ws> = stream::iter(0..n)
        .map(|i| {
            let url = a.url[i % a.url.len()].clone();
            async move { connect(&url, jwt, &format!("storm-{i}")).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let seated = Arc::new(AtomicU64::new(0));
    let by_type = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        (u64, u64),
    >::new()));
    // The host counts too: it is a member of the room.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (hf, hb, mut stop) = (frames.clone(), bytes.clone(), stop_rx.clone());
    let host_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                m = host.next() => match m {
                    Some(Ok(m)) => {
                        hf.fetch_add(1, Ordering::Relaxed);
                        hb.fetch_add(m.len() as u64, Ordering::Relaxed);
                    }
                    _ => break,
                },
            }
        }
        host
    });
    let start = Arc::new(tokio::sync::Barrier::new(n + 1));
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::with_capacity(n);
    for mut ws in conns {
        let (frames, bytes, seated, start, t0, by_type, mut stop) = (
            frames.clone(),
            bytes.clone(),
            seated.clone(),
            start.clone(),
            t0.clone(),
            by_type.clone(),
            stop_rx.clone(),
        );
        let sid = sid.to_string();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let join = json!({"type":"join_session","sessionId": sid,"ref":"j"}).to_string();
            if ws.send(Message::Text(join.into())).await.is_err() {
                return (None, ws);
            }
            let mut answered = None;
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = ws.next() => match m {
                        Some(Ok(m)) => m,
                        _ => break,
                    },
                };
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                if let Message::Text(t) = &m {
                    let ty = serde_json::from_str::<Value>(t)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(String::from))
                        .unwrap_or_default();
                    let mut b = by_type.lock().unwrap();
                    let e = b.entry(ty).or_default();
                    e.0 += 1;
                    e.1 += t.len() as u64;
                }
                if answered.is_none() {
                    if let Message::Text(t) = &m {
                        if t.contains("\"ref\":\"j\"") {
                            let t0 = *t0.get().expect("set before the barrier opens");
                            answered = Some(t0.elapsed());
                            seated.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            (answered, ws)
        }));
    }
    t0.set(Instant::now()).expect("set once");
    let cpu0: f64 = a.pid.iter().map(|p| cpu_seconds(*p)).sum();
    start.wait().await;
    // Settled: every join answered and no frame for a second (or the timeout).
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let (mut last_count, mut quiet_since) = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let f = frames.load(Ordering::Relaxed);
        if f != last_count {
            (last_count, quiet_since) = (f, Instant::now());
        } else if seated.load(Ordering::Relaxed) == n as u64
            && quiet_since.elapsed() >= Duration::from_secs(1)
        {
            break;
        }
    }
    let cpu = a.pid.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let _ = stop_tx.send(true);
    let done = futures_util::future::join_all(tasks).await;
    let _host = host_task.await;
    let (times, _conns): (Vec<Option<Duration>>, Vec<Ws>) =
        done.into_iter().filter_map(|r| r.ok()).unzip();
    let times: Vec<Duration> = times.into_iter().flatten().collect();
    let last = times.iter().max().copied().unwrap_or_default();
    let f = frames.load(Ordering::Relaxed);
    let b = bytes.load(Ordering::Relaxed);
    println!(
        "join storm: {} of {n} listeners seated; last join answered {:.3} s after the first was sent",
        seated.load(Ordering::Relaxed),
        last.as_secs_f64()
    );
    println!(
        "frames to all {} members until settled: {f} frames, {:.2} MB ({:.0} B per frame, {:.1} frames per member)",
        n + 1,
        b as f64 / 1e6,
        b as f64 / f.max(1) as f64,
        f as f64 / (n + 1) as f64
    );
    let types: Vec<String> = by_type
        .lock()
        .unwrap()
        .iter()
        .map(|(t, (n, b))| format!("{t} {n} ({:.2} MB)", *b as f64 / 1e6))
        .collect();
    println!("listeners received: {}", types.join(", "));
    if !a.pid.is_empty() {
        println!(
            "server CPU {cpu:.2} s over {} process(es) (1 s of quiet included)",
            a.pid.len()
        );
    }
    Ok(())
}

fn now_us() -> i64 {
    jam_shared::clock::now_us()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, jwt: &jam_shared::auth::JwtVerifier, user: &str) -> anyhow::Result<Ws> {
    let token = jwt.sign(&jam_shared::auth::claims_for(user, user, None, 3600));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    let first = ws.next().await.context("closed")??;
    if !first.to_text()?.contains("authenticated") {
        bail!("not authenticated: {first}");
    }
    Ok(ws)
}

async fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await?
            .context("closed")??;
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t)?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    for u in &a.url {
        let host = u
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .next()
            .unwrap_or("");
        if !(host.starts_with("127.") || host == "localhost") {
            bail!("{u}: load is only ever sent to loopback");
        }
    }
    let jwt = jam_shared::auth::JwtVerifier::new(&a.secret);
    if let Some(n) = a.idle {
        return idle(&a, &jwt, n).await;
    }
    let mut host = connect(&a.url[0], &jwt, "load-host").await?;
    host.send(Message::Text(
        json!({"type":"create_session","name":"load","maxParticipants": 10000,"ref":"c"})
            .to_string()
            .into(),
    ))
    .await?;
    let created = until(&mut host, |v| v["ref"] == "c").await?;
    let sid = created["session"]["id"]
        .as_str()
        .context("no session")?
        .to_string();
    if let Some(n) = a.join_storm {
        return join_storm(&a, &jwt, n, host, &sid).await;
    }

    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        a.clients * a.messages,
    )));
    let t_join = Instant::now();
    let mut listeners = Vec::new();
    for i in 0..a.clients {
        let url = a.url[i % a.url.len()].clone();
        let mut ws = connect(&url, &jwt, &format!("listener-{i}")).await?;
        ws.send(Message::Text(
            json!({"type":"join_session","sessionId": sid,"ref":"j"})
                .to_string()
                .into(),
        ))
        .await?;
        until(&mut ws, |v| v["ref"] == "j").await?;
        let (received, latencies, expected) = (received.clone(), latencies.clone(), a.messages);
        listeners.push(tokio::spawn(async move {
            let mut got = 0;
            let mut local = Vec::with_capacity(expected);
            while got < expected {
                let t = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                // Cheap check first: only chat frames count.
                if !t.contains("\"new_message\"") {
                    continue;
                }
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if let Some(sent) = v["message"].as_str().and_then(|m| m.parse::<i64>().ok()) {
                    local.push((now_us() - sent) as f64 / 1000.0);
                    got += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().unwrap().extend(local);
        }));
    }
    eprintln!(
        "{} listeners joined in {:.1} s",
        a.clients,
        t_join.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0: f64 = a.pid.iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    let every = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut tick = tokio::time::interval(every);
    let (mut sink, mut stream) = host.split();
    // The host's own copies are drained so its queue never fills.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    for _ in 0..a.messages {
        tick.tick().await;
        let frame = json!({"type":"send_message","sessionId": sid,"message": now_us().to_string()});
        sink.send(Message::Text(frame.to_string().into())).await?;
    }
    let deadline = Duration::from_secs(a.timeout);
    let all = tokio::time::timeout(deadline, futures_util::future::join_all(listeners)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = a.pid.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    drain.abort();
    if all.is_err() {
        eprintln!("timed out waiting for listeners");
    }
    let n = received.load(Ordering::Relaxed);
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|x, y| x.total_cmp(y));
    let pct = |q: f64| {
        l.get(((l.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "listeners {} over {} gateway(s), {} messages at {}/s: {} of {} deliveries in {:.1} s = {:.0} deliveries/s",
        a.clients,
        a.url.len(),
        a.messages,
        a.rate,
        n,
        a.clients * a.messages,
        elapsed,
        n as f64 / elapsed
    );
    println!(
        "latency send→receive ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if !a.pid.is_empty() {
        println!(
            "server CPU {:.2} s over {} process(es): {:.0} deliveries per CPU-second",
            cpu,
            a.pid.len(),
            n as f64 / cpu.max(1e-9)
        );
    }
    Ok(())
}
