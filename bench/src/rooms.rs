//! `--rooms K`: K rooms of `--members` P; every member chats at `--member-rate` messages a
//! second for `--seconds`, and every member timestamps what the others send. Several rates
//! make a ramp: one step per rate, each with fresh rooms and connections. Members follow
//! their room's `seq` as a client should ([`crate::follow`]): a gap or a `resync_required`
//! (a gateway that fell behind the bus drops events, pub/sub being at-most-once) makes them
//! rejoin with `sinceSeq`, and what the reply brings back counts as received then. A
//! delivery not received within [`DRAIN`] after the step's last message counts as lost.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::stream;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, now_us, until, Ws};
use crate::follow::{Follower, Next};
use crate::procstat::{busy_between, cpu_by_name, cpu_of, cpu_spent, host_jiffies};
use crate::stats::Latencies;
use crate::Args;

/// How long receivers wait for what is still on its way after the last message is sent.
const DRAIN: Duration = Duration::from_secs(5);
/// How long after the step's set-up its first message goes out.
const START_IN: Duration = Duration::from_millis(100);
/// Rooms seated at once.
const SEATING: usize = 16;
/// The longest a member waits for its room's next event after a `resync_required`.
const RESYNC_WAIT: Duration = Duration::from_secs(1);

/// One step's figures.
struct Step {
    rate: f64,
    sent: u64,
    expected: u64,
    received: u64,
    duplicates: u64,
    /// Rejoins after a gap or a `resync_required`, and those answered by a snapshot.
    rejoins: u64,
    snapshots: u64,
    /// Deliveries that came in a rejoin's reply, not live.
    recovered: u64,
    /// Members that did not get all they waited for, and those of them still waiting for
    /// an answer (a rejoin's or a history page's) when the step ended.
    short: u64,
    waiting: u64,
    latencies: Latencies,
    /// Per `--timeline-ms` slice of send time: (slice start ms, its latencies).
    timeline: Vec<(u64, Latencies)>,
    server_cpu: f64,
    /// `--count-named`: (name, CPU seconds, processes that spent any).
    named: Vec<(String, f64, usize)>,
    host_busy: f64,
}

pub async fn run(a: &Args, jwt: &jam_shared::auth::JwtVerifier, k: usize) -> anyhow::Result<()> {
    if a.members < 2 {
        bail!("--members must be at least 2: a room needs someone to deliver to");
    }
    for (i, &rate) in a.member_rate.iter().enumerate() {
        if !(rate > 0.0 && rate <= 25.0) {
            bail!("--member-rate {rate}: between 0 and 25 messages a second (the gateway's per-connection limit is 30)");
        }
        let step = step(a, jwt, i, k, rate).await?;
        step.report(a, k);
        // Let the servers settle (the step's members leave) before the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn step(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    step: usize,
    k: usize,
    rate: f64,
) -> anyhow::Result<Step> {
    let p = a.members;
    let rooms: Vec<(String, Vec<(Ws, u64)>)> = stream::iter(0..k)
        .map(|room| seat(a, jwt, step, room))
        .buffer_unordered(SEATING)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!("step {step}: {k} rooms of {p} seated");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let count = (rate * a.seconds).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = TokioInstant::now() + START_IN;
    // The same start on the clock the members stamp their messages with.
    let t0_us = now_us() + START_IN.as_micros() as i64;
    let deadline = t0 + Duration::from_secs_f64(a.seconds) + period + DRAIN;
    let members = k * p;
    let (cpu0, host0) = (cpu_of(&a.pid), host_jiffies());
    let named0: Vec<_> = a.count_named.iter().map(|n| cpu_by_name(n)).collect();
    let mut tasks = Vec::with_capacity(members);
    for (room, (sid, conns)) in rooms.into_iter().enumerate() {
        for (index, (ws, seq)) in conns.into_iter().enumerate() {
            // Members start spread over one period, so the load is even.
            let offset = period.mul_f64((room * p + index) as f64 / members as f64);
            // Each member waits its own time after a `resync_required`, spread over a second.
            let wait = RESYNC_WAIT.mul_f64(((room * p + index) * 7919 % 1000) as f64 / 1000.0);
            let m = Member {
                follower: Follower::new(&sid, seq, wait),
                sid: sid.clone(),
                index,
                count,
                expect: count * (p as u64 - 1),
            };
            tasks.push(tokio::spawn(m.run(ws, t0 + offset, period, deadline)));
        }
    }
    tokio::time::sleep_until(t0 + Duration::from_secs_f64(a.seconds)).await;
    let host_busy = busy_between(host0, host_jiffies());
    let (mut sent, mut received, mut duplicates, mut all) = (0, 0, 0, Vec::new());
    let (mut rejoins, mut snapshots, mut recovered) = (0, 0, 0);
    let (mut short, mut waiting) = (0, 0);
    let mut slices: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    let slice_ms = a.timeline_ms.filter(|w| *w > 0);
    // Every connection stays open until the whole step is measured: a member that is done
    // early and hangs up would make the others' last deliveries compete with its leave.
    let mut open = Vec::with_capacity(members);
    for t in tasks {
        let mut r = t.await.context("a member's task failed")?;
        open.push(r.conn.take());
        sent += r.sent;
        duplicates += r.duplicates;
        rejoins += r.rejoins;
        snapshots += r.snapshots;
        recovered += r.recovered;
        short += u64::from(r.short);
        waiting += u64::from(r.short && r.waiting);
        received += r.latencies.len() as u64;
        for (sent_us, ms) in r.latencies {
            if let Some(w) = slice_ms {
                let at_ms = (sent_us - t0_us).max(0) as u64 / 1000;
                slices.entry(at_ms / w * w).or_default().push(f64::from(ms));
            }
            all.push(f64::from(ms));
        }
    }
    let server_cpu = cpu_of(&a.pid) - cpu0;
    let named = a
        .count_named
        .iter()
        .zip(&named0)
        .map(|(n, before)| {
            let (cpu, procs) = cpu_spent(before, &cpu_by_name(n));
            (n.clone(), cpu, procs)
        })
        .collect();
    drop(open);
    Ok(Step {
        rate,
        sent,
        expected: members as u64 * count * (p as u64 - 1),
        received,
        duplicates,
        rejoins,
        snapshots,
        recovered,
        short,
        waiting,
        latencies: Latencies::new(all),
        timeline: slices
            .into_iter()
            .map(|(at, v)| (at, Latencies::new(v)))
            .collect(),
        server_cpu,
        named,
        host_busy,
    })
}

/// Connect a room's members (spread over the gateways), the first creates the session and
/// the rest join it; each with the room's `seq` in its reply.
async fn seat(
    a: &Args,
    jwt: &jam_shared::auth::JwtVerifier,
    step: usize,
    room: usize,
) -> anyhow::Result<(String, Vec<(Ws, u64)>)> {
    let p = a.members;
    let mut conns = Vec::with_capacity(p);
    for i in 0..p {
        let url = &a.url[(room * p + i) % a.url.len()];
        conns.push(connect(url, jwt, &format!("room{step}-{room}-{i}")).await?);
    }
    let create = json!({"type":"create_session","name": format!("room {room}"),"ref":"c"});
    conns[0]
        .send(Message::Text(create.to_string().into()))
        .await?;
    let created = until(&mut conns[0], |v| v["ref"] == "c").await?;
    let sid = created["session"]["id"]
        .as_str()
        .with_context(|| format!("room {room} not created: {created}"))?
        .to_string();
    let mut seqs = vec![seq_in(&created)?];
    for ws in &mut conns[1..] {
        let join = json!({"type":"join_session","sessionId": sid,"ref":"j"});
        ws.send(Message::Text(join.to_string().into())).await?;
        let joined = until(ws, |v| v["ref"] == "j").await?;
        if joined["type"] == "error" {
            bail!("joining room {room} failed: {joined}");
        }
        seqs.push(seq_in(&joined)?);
    }
    Ok((sid, conns.into_iter().zip(seqs).collect()))
}

fn seq_in(reply: &serde_json::Value) -> anyhow::Result<u64> {
    reply["session"]["seq"]
        .as_u64()
        .with_context(|| format!("no session seq in {reply}"))
}

struct Member {
    follower: Follower,
    sid: String,
    index: usize,
    count: u64,
    /// Deliveries from the others this member waits for.
    expect: u64,
}

struct MemberResult {
    sent: u64,
    /// (sent at µs, send → receive ms), one per delivery from another member.
    latencies: Vec<(i64, f32)>,
    /// Deliveries of a message this member had received already.
    duplicates: u64,
    rejoins: u64,
    snapshots: u64,
    /// Deliveries that came in a rejoin's reply.
    recovered: u64,
    /// Fewer deliveries than expected; an answer still awaited at the end.
    short: bool,
    waiting: bool,
    /// The member's connection, closed by the step once every member is done.
    conn: Option<Ws>,
}

impl Member {
    async fn run(
        mut self,
        ws: Ws,
        start: TokioInstant,
        period: Duration,
        deadline: TokioInstant,
    ) -> MemberResult {
        let (sink, mut stream) = ws.split();
        // The sender's and the receiver's (a rejoin) frames share the socket.
        let sink = tokio::sync::Mutex::new(sink);
        let (sid, index, count) = (self.sid.clone(), self.index, self.count);
        let send = async {
            let mut tick = tokio::time::interval_at(start, period);
            let mut sent = 0;
            for _ in 0..count {
                tick.tick().await;
                // `<sent at, µs>:<member>:<n>`: the receivers' clock is the same.
                let frame = format!(
                    r#"{{"type":"send_message","sessionId":"{sid}","message":"{}:{index}:{sent}"}}"#,
                    now_us(),
                );
                let send = async { sink.lock().await.send(Message::Text(frame.into())).await };
                if !matches!(tokio::time::timeout_at(deadline, send).await, Ok(Ok(()))) {
                    break;
                }
                sent += 1;
            }
            sent
        };
        let receive = async {
            let mut got = Received::new(index, self.expect);
            while (got.latencies.len() as u64) < self.expect {
                let wake = self.follower.due().map_or(deadline, |d| d.min(deadline));
                let next = match tokio::time::timeout_at(wake, stream.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let next = self.follower.frame(&t, TokioInstant::now());
                        if matches!(next, Next::Live) {
                            got.take(chat_stamp(&t), false);
                        }
                        next
                    }
                    Ok(Some(Ok(_))) => continue,
                    Err(_) if wake < deadline => self.follower.tick(TokioInstant::now()),
                    _ => break,
                };
                let ask = match next {
                    Next::Live | Next::Skip => None,
                    Next::Recovered(texts, page) => {
                        for text in texts {
                            got.take(stamp_of(&text), true);
                        }
                        page
                    }
                    Next::Rejoin(f) => Some(f),
                };
                if let Some(f) = ask {
                    // Within the step: a socket that stopped taking frames is the step's end.
                    let send = async { sink.lock().await.send(Message::Text(f.into())).await };
                    let _ = tokio::time::timeout_at(deadline, send).await;
                }
            }
            got
        };
        let (sent, got) = tokio::join!(send, receive);
        let short = (got.latencies.len() as u64) < self.expect;
        MemberResult {
            sent,
            latencies: got.latencies,
            duplicates: got.duplicates,
            rejoins: self.follower.rejoins,
            snapshots: self.follower.snapshots,
            recovered: got.recovered,
            short,
            waiting: self.follower.waiting(),
            conn: sink.into_inner().reunite(stream).ok(),
        }
    }
}

/// What one member counted of the others' messages.
struct Received {
    index: usize,
    latencies: Vec<(i64, f32)>,
    seen: std::collections::HashSet<(usize, u64)>,
    duplicates: u64,
    recovered: u64,
}

impl Received {
    fn new(index: usize, expect: u64) -> Self {
        Self {
            index,
            latencies: Vec::with_capacity(expect as usize),
            seen: std::collections::HashSet::with_capacity(expect as usize),
            duplicates: 0,
            recovered: 0,
        }
    }

    fn take(&mut self, stamp: Option<Stamp>, recovered: bool) {
        match stamp {
            Some(s) if s.from == self.index => {}
            Some(s) if !self.seen.insert((s.from, s.n)) => self.duplicates += 1,
            Some(s) => {
                let ms = ((now_us() - s.sent_us) as f64 / 1000.0) as f32;
                self.latencies.push((s.sent_us, ms));
                self.recovered += u64::from(recovered);
            }
            None => {}
        }
    }
}

#[derive(Debug, PartialEq)]
struct Stamp {
    sent_us: i64,
    from: usize,
    n: u64,
}

/// The stamp of a `new_message` frame this tool sent (`None` for any other frame). Cheap:
/// every member reads every frame of its room.
fn chat_stamp(frame: &str) -> Option<Stamp> {
    if !frame.contains(r#""type":"new_message""#) {
        return None;
    }
    let key = r#""message":""#;
    let at = frame.find(key)? + key.len();
    stamp_of(&frame[at..at + frame[at..].find('"')?])
}

/// The stamp in a chat text this tool wrote.
fn stamp_of(text: &str) -> Option<Stamp> {
    let mut parts = text.split(':');
    let mut next = || parts.next();
    Some(Stamp {
        sent_us: next()?.parse().ok()?,
        from: next()?.parse().ok()?,
        n: next()?.parse().ok()?,
    })
}

impl Step {
    fn report(&self, a: &Args, k: usize) {
        let msgs_per_s = self.rate * (k * a.members) as f64;
        let lost = self.expected.saturating_sub(self.received);
        let per_cpu = self.received as f64 / self.server_cpu.max(1e-9);
        let l = &self.latencies;
        for (at, t) in &self.timeline {
            let line = json!({"timeline_ms": at, "deliveries": t.len(), "p50_ms": t.pct(0.5), "p99_ms": t.pct(0.99), "max_ms": t.pct(1.0)});
            println!("{line}");
        }
        if a.json {
            let line = json!({
                "scenario": "rooms", "rooms": k, "members": a.members,
                "member_rate": self.rate, "msgs_per_s": msgs_per_s, "seconds": a.seconds,
                "gateways": a.url.len(), "sent": self.sent, "expected": self.expected,
                "received": self.received, "lost": lost, "duplicates": self.duplicates,
                "rejoins": self.rejoins, "snapshots": self.snapshots, "recovered": self.recovered,
                "members_short": self.short, "members_waiting": self.waiting,
                "p50_ms": l.pct(0.5), "p90_ms": l.pct(0.9), "p99_ms": l.pct(0.99), "max_ms": l.pct(1.0),
                "server_cpu_s": self.server_cpu, "deliveries_per_cpu_s": per_cpu,
                "host_busy": self.host_busy,
                "named_cpu_s": self.named.iter().map(|(n, c, _)| (n.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            });
            println!("{line}");
            return;
        }
        println!(
            "rooms {k}×{} at {} msg/s each = {msgs_per_s:.0} msgs/s for {} s over {} gateway(s): {} sent, {} of {} deliveries, {lost} lost, {} duplicates",
            a.members, self.rate, a.seconds, a.url.len(), self.sent, self.received, self.expected, self.duplicates
        );
        if self.rejoins > 0 {
            println!(
                "  {} rejoins after dropped events ({} answered by a snapshot): {} deliveries came in their replies",
                self.rejoins, self.snapshots, self.recovered
            );
        }
        if self.short > 0 {
            // Many members a little short: a backlog the drain did not cover; few members
            // far short, waiting: answers that never came.
            println!(
                "  {} members short of deliveries, {} of them still waiting for an answer",
                self.short, self.waiting
            );
        }
        println!(
            "  latency send→receive ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}; host busy {:.0} %",
            l.pct(0.5),
            l.pct(0.9),
            l.pct(0.99),
            l.pct(1.0),
            self.host_busy * 100.0
        );
        if !a.pid.is_empty() {
            println!(
                "  server CPU {:.2} s over {} process(es): {per_cpu:.0} deliveries per CPU-second",
                self.server_cpu,
                a.pid.len()
            );
        }
        for (name, cpu, procs) in &self.named {
            println!(
                "  {name} CPU {cpu:.2} s over {procs} process(es): {:.0} µs a message",
                cpu * 1e6 / self.sent.max(1) as f64
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{chat_stamp, Stamp};

    #[test]
    fn only_this_tools_chat_frames_carry_a_stamp() {
        let f =
            r#"{"type":"new_message","sessionId":"K7","message":"1700000000123456:3:17","seq":4}"#;
        let s = Stamp {
            sent_us: 1_700_000_000_123_456,
            from: 3,
            n: 17,
        };
        assert_eq!(chat_stamp(f), Some(s));
        assert_eq!(
            chat_stamp(r#"{"type":"new_message","message":"1:2"}"#),
            None
        );
        assert_eq!(chat_stamp(r#"{"type":"new_message","message":"hi"}"#), None);
        assert_eq!(
            chat_stamp(r#"{"type":"user_joined","message":"1:2"}"#),
            None
        );
        assert_eq!(chat_stamp(r#"{"type":"new_message","message":"1:2"#), None);
    }
}
