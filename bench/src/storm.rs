//! `--join-storm N`: N listeners join one session at once; how long until every join is
//! answered, and what the members received until the room settled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, Ws};
use crate::procstat::cpu_of;
use crate::Args;

/// What counts as the room's traffic: not the server's pings, which would also keep the
/// room from ever looking settled (with a thousand members one arrives somewhere every
/// second or so, and the run waited out its whole `--timeout`).
fn is_room_frame(m: &Message) -> bool {
    !matches!(m, Message::Ping(_) | Message::Pong(_))
}

/// Connect `n` listeners (64 at a time), then let them all join `sid` at once. Every member
/// counts what it receives from the first join until the room settles: every join answered
/// and no frame for a second. Then all stop together (nobody leaves before that).
pub async fn run(
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
                    Some(Ok(m)) if !is_room_frame(&m) => {}
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
                if !is_room_frame(&m) {
                    continue;
                }
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
    let cpu0 = cpu_of(&a.pid);
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
    let cpu = cpu_of(&a.pid) - cpu0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_not_room_frames() {
        assert!(!is_room_frame(&Message::Ping(vec![1].into())));
        assert!(!is_room_frame(&Message::Pong(vec![].into())));
        assert!(is_room_frame(&Message::text("{\"type\":\"user_joined\"}")));
    }
}
