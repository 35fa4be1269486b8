//! `--join-storm N`: N listeners join one session at once; how long until every join is
//! answered, and what the members received until the room settled.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
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

/// What the members received, shared by their tasks.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    seated: AtomicU64,
    /// Listeners only: frames and bytes by the frame's `type`.
    by_type: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Counters {
    fn count(&self, m: &Message) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
    }

    fn count_type(&self, text: &str) {
        let ty = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["type"].as_str().map(String::from))
            .unwrap_or_default();
        let mut b = self.by_type.lock().unwrap();
        let e = b.entry(ty).or_default();
        e.0 += 1;
        e.1 += text.len() as u64;
    }
}

/// Connect `n` listeners (64 at a time), then let them all join `sid` at once. Every member
/// counts what it receives from the first join until the room settles: every join answered
/// and no frame for a second. Then all stop together (nobody leaves before that).
pub async fn run(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    n: usize,
    host: Ws,
    sid: &str,
) -> anyhow::Result<()> {
    let conns = connect_all(a, jwt, n).await?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The host counts too: it is a member of the room.
    let host_task = tokio::spawn(count_host(host, counters.clone(), stop_rx.clone()));
    let start = Arc::new(tokio::sync::Barrier::new(n + 1));
    let t0 = Arc::new(OnceLock::<Instant>::new());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            let member = Member {
                sid: sid.to_string(),
                counters: counters.clone(),
                start: start.clone(),
                t0: t0.clone(),
                stop: stop_rx.clone(),
            };
            tokio::spawn(member.join_and_count(ws))
        })
        .collect();
    t0.set(Instant::now()).expect("set once");
    let cpu0 = cpu_of(&a.pid);
    start.wait().await;
    wait_settled(&counters, n, Duration::from_secs(a.timeout)).await;
    let cpu = cpu_of(&a.pid) - cpu0;
    let _ = stop_tx.send(true);
    let done = futures_util::future::join_all(tasks).await;
    let _host = host_task.await;
    let (times, _conns): (Vec<Option<Duration>>, Vec<Ws>) =
        done.into_iter().filter_map(|r| r.ok()).unzip();
    let last = times.into_iter().flatten().max().unwrap_or_default();
    report(&counters, n, last);
    if !a.pid.is_empty() {
        println!(
            "server CPU {cpu:.2} s over {} process(es) (1 s of quiet included)",
            a.pid.len()
        );
    }
    Ok(())
}

async fn connect_all(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    n: usize,
) -> anyhow::Result<Vec<Ws>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let url = a.url[i % a.url.len()].clone();
            async move { connect(&url, jwt, &format!("storm-{i}")).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The host's frames count with the room's (not by type: those are the listeners').
async fn count_host(
    mut host: Ws,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Ws {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = host.next() => match m {
                Some(Ok(m)) if !is_room_frame(&m) => {}
                Some(Ok(m)) => counters.count(&m),
                _ => break,
            },
        }
    }
    host
}

/// One listener's part: wait for the others, join, count until told to stop.
struct Member {
    sid: String,
    counters: Arc<Counters>,
    start: Arc<tokio::sync::Barrier>,
    t0: Arc<OnceLock<Instant>>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Member {
    /// How long after the first join was sent this one was answered (`None`: never), and
    /// the connection, kept open until every member is done.
    async fn join_and_count(mut self, mut ws: Ws) -> (Option<Duration>, Ws) {
        self.start.wait().await;
        let join = json!({"type":"join_session","sessionId": self.sid,"ref":"j"}).to_string();
        if ws.send(Message::Text(join.into())).await.is_err() {
            return (None, ws);
        }
        let mut answered = None;
        loop {
            let m = tokio::select! {
                _ = self.stop.changed() => break,
                m = ws.next() => match m {
                    Some(Ok(m)) => m,
                    _ => break,
                },
            };
            if !is_room_frame(&m) {
                continue;
            }
            self.counters.count(&m);
            let Message::Text(t) = &m else { continue };
            self.counters.count_type(t);
            if answered.is_none() && t.contains("\"ref\":\"j\"") {
                let t0 = *self.t0.get().expect("set before the barrier opens");
                answered = Some(t0.elapsed());
                self.counters.seated.fetch_add(1, Ordering::Relaxed);
            }
        }
        (answered, ws)
    }
}

/// Settled: every join answered and no frame for a second (or the timeout).
async fn wait_settled(counters: &Counters, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let (mut last_count, mut quiet_since) = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let f = counters.frames.load(Ordering::Relaxed);
        if f != last_count {
            (last_count, quiet_since) = (f, Instant::now());
        } else if counters.seated.load(Ordering::Relaxed) == n as u64
            && quiet_since.elapsed() >= Duration::from_secs(1)
        {
            break;
        }
    }
}

fn report(counters: &Counters, n: usize, last: Duration) {
    let f = counters.frames.load(Ordering::Relaxed);
    let b = counters.bytes.load(Ordering::Relaxed);
    println!(
        "join storm: {} of {n} listeners seated; last join answered {:.3} s after the first was sent",
        counters.seated.load(Ordering::Relaxed),
        last.as_secs_f64()
    );
    println!(
        "frames to all {} members until settled: {f} frames, {:.2} MB ({:.0} B per frame, {:.1} frames per member)",
        n + 1,
        b as f64 / 1e6,
        b as f64 / f.max(1) as f64,
        f as f64 / (n + 1) as f64
    );
    let types: Vec<String> = counters
        .by_type
        .lock()
        .unwrap()
        .iter()
        .map(|(t, (n, b))| format!("{t} {n} ({:.2} MB)", *b as f64 / 1e6))
        .collect();
    println!("listeners received: {}", types.join(", "));
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
