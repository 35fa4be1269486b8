//! The default scenario: `--clients` listeners join one session, one sender chats at
//! `--rate`; every listener timestamps every delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, now_us, until, Ws};
use crate::procstat::cpu_of;
use crate::stats::Latencies;
use crate::Args;

pub async fn run(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    host: Ws,
    sid: &str,
) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        a.clients * a.messages,
    )));
    let t_join = Instant::now();
    let mut listeners = Vec::new();
    for i in 0..a.clients {
        let url = a.url[i % a.url.len()].clone();
        let mut ws = connect(&url, jwt, &format!("listener-{i}")).await?;
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

    let cpu0 = cpu_of(&a.pid);
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
    let cpu = cpu_of(&a.pid) - cpu0;
    drain.abort();
    if all.is_err() {
        eprintln!("timed out waiting for listeners");
    }
    let n = received.load(Ordering::Relaxed);
    let l = Latencies::new(std::mem::take(&mut *latencies.lock().unwrap()));
    let pct = |q: f64| l.pct(q);
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
