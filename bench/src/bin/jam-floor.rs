//! jam-floor: the least CPU any server can spend on the `rooms` scenario on this machine.
//!
//! `K × P` loopback TCP connections stand for `K` rooms of `P` members. A client thread has
//! every member send a fixed frame `--member-rate` times a second (spread evenly) and drains
//! what comes back; a server thread, one `epoll` loop (mio), reads each frame and writes a
//! pre-built WebSocket text frame to every member of the sender's room (the sender included,
//! as jam and the seed server do), one `write(2)` per member. No parsing, no JSON, no
//! allocation on the path: what is left is the kernel's work (loopback delivery runs in the
//! writer's context) and the wake-ups of an event loop at this rate.
//!
//! Prints the server thread's CPU time (from `/proc/thread-self/schedstat`) per write and
//! deliveries per server CPU-second counted as `../shared/bench` counts them (a message
//! delivered to its room's other `P − 1` members). A server that writes once per recipient
//! cannot beat that figure here. The client is one `epoll` thread in this process, not
//! `../shared/bench`'s load client, so the figure is the floor under the lightest client;
//! see docs/benchmarks.md.
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(Parser, Debug)]
#[command(about = "The syscall floor of the rooms scenario: one epoll loop, one write per member")]
struct Args {
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Frames a second each member sends.
    #[arg(long, default_value_t = 2.0)]
    member_rate: f64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Bytes of the frame the server writes to each member (header included).
    #[arg(long, default_value_t = 154)]
    frame_bytes: usize,
}

/// Bytes a member sends per message (the server counts them and does not parse them).
const IN_FRAME: usize = 96;

fn main() -> Result<()> {
    let a = Args::parse();
    let r = run(&a)?;
    println!(
        "jam-floor rooms {}×{} at {} msg/s each: {} sent, {} relayed, {} writes; server thread \
         {:.3} CPU-s, {:.2} µs per write, {:.0} deliveries per server CPU-s",
        a.rooms,
        a.members,
        a.member_rate,
        r.sent,
        r.relayed,
        r.writes,
        r.cpu_s,
        r.cpu_s / r.writes as f64 * 1e6,
        r.deliveries_per_cpu_s(a.members)
    );
    Ok(())
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    sent: u64,
    relayed: u64,
    writes: u64,
    /// The server thread's CPU time.
    cpu_s: f64,
}

impl Report {
    /// Counted as `../shared/bench` counts: each frame to its room's other members.
    fn deliveries_per_cpu_s(&self, members: usize) -> f64 {
        (self.relayed * (members as u64 - 1)) as f64 / self.cpu_s
    }
}

fn run(a: &Args) -> Result<Report> {
    if a.rooms == 0
        || a.members < 2
        || a.frame_bytes < 4
        || a.member_rate.is_nan()
        || a.member_rate <= 0.0
    {
        bail!("need --rooms ≥ 1, --members ≥ 2, --frame-bytes ≥ 4 and a positive --member-rate");
    }
    let n = a.rooms * a.members;
    let (clients, servers) = pairs(n)?;
    let total = (a.member_rate * a.seconds as f64 * n as f64) as u64;
    let out = frame(a.frame_bytes);
    let members = a.members;
    let server = std::thread::spawn(move || serve(servers, members, &out, total));
    let sent = drive(clients, a, total)?;
    let (cpu_s, relayed, writes) = server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Ok(Report {
        sent,
        relayed,
        writes,
        cpu_s,
    })
}

/// `n` connected loopback pairs (client side, server side), both with TCP_NODELAY.
fn pairs(n: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr: SocketAddr = l.local_addr()?;
    let (mut cs, mut ss) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let c = std::net::TcpStream::connect(addr)?;
        let (s, _) = l.accept()?;
        for x in [&c, &s] {
            x.set_nodelay(true)?;
            x.set_nonblocking(true)?;
        }
        cs.push(TcpStream::from_std(c));
        ss.push(TcpStream::from_std(s));
    }
    Ok((cs, ss))
}

/// An unmasked text frame of `len` bytes in all.
fn frame(len: usize) -> Vec<u8> {
    let mut f = if len - 4 < 126 {
        vec![0x81, (len - 2) as u8]
    } else {
        vec![0x81, 126, ((len - 4) >> 8) as u8, (len - 4) as u8]
    };
    f.resize(len, b'x');
    f
}

/// This thread's CPU time so far, in seconds (user and system, nanosecond resolution).
fn thread_cpu() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = s.split_whitespace().next().context("schedstat")?.parse()?;
    Ok(ns as f64 / 1e9)
}

/// The server: relay every whole frame read from a member to its room. Returns its CPU
/// time, the frames relayed and the writes made, once `total` frames are relayed or the
/// client has gone quiet for 5 s.
fn serve(
    mut conns: Vec<TcpStream>,
    members: usize,
    out: &[u8],
    total: u64,
) -> Result<(f64, u64, u64)> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(c, Token(i), Interest::READABLE)?;
    }
    let mut pending = vec![0usize; conns.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 65536];
    let (mut msgs, mut writes) = (0u64, 0u64);
    let cpu0 = thread_cpu()?;
    while msgs < total {
        poll.poll(&mut events, Some(Duration::from_secs(5)))?;
        if events.is_empty() {
            break;
        }
        for e in events.iter() {
            let i = e.token().0;
            loop {
                match conns[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(r) => pending[i] += r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let room = i / members * members;
            while pending[i] >= IN_FRAME {
                pending[i] -= IN_FRAME;
                msgs += 1;
                for c in &mut conns[room..room + members] {
                    // A socket whose buffer is full (a client that fell behind) refuses the
                    // frame instead of stalling the loop; it is not counted as a write.
                    if c.write(out).is_ok() {
                        writes += 1;
                    }
                }
            }
        }
    }
    Ok((thread_cpu()? - cpu0, msgs, writes))
}

/// The client: every member sends `IN_FRAME` bytes at its rate, staggered over the
/// interval, while everything the server writes is drained. Returns the frames sent.
fn drive(mut conns: Vec<TcpStream>, a: &Args, total: u64) -> Result<u64> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(c, Token(i), Interest::READABLE)?;
    }
    let n = conns.len() as u64;
    let interval = Duration::from_secs_f64(1.0 / (a.member_rate * n as f64));
    let msg = [0x82u8; IN_FRAME];
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 65536];
    let start = Instant::now();
    let mut sent = 0u64;
    let deadline = start + Duration::from_secs(a.seconds + 10);
    while Instant::now() < deadline {
        let due = ((start.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64).min(total);
        while sent < due {
            conns[(sent % n) as usize].write_all(&msg)?;
            sent += 1;
        }
        let next = start + interval.mul_f64((sent + 1) as f64);
        let wait = next.saturating_duration_since(Instant::now());
        let wait = if sent >= total {
            Duration::from_millis(200)
        } else {
            wait.min(Duration::from_millis(5))
        };
        poll.poll(&mut events, Some(wait))?;
        for e in events.iter() {
            let c = &mut conns[e.token().0];
            while let Ok(r) = c.read(&mut buf) {
                if r == 0 {
                    break;
                }
            }
        }
        if sent >= total && events.is_empty() {
            break;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_is_relayed_to_each_member_of_its_room() {
        let a = Args {
            rooms: 3,
            members: 4,
            member_rate: 20.0,
            seconds: 1,
            frame_bytes: 154,
        };
        let r = run(&a).unwrap();
        assert_eq!(r.sent, 240);
        assert_eq!(r.relayed, 240);
        assert_eq!(r.writes, 240 * 4);
        assert!(r.cpu_s > 0.0);
        assert!((r.deliveries_per_cpu_s(4) - 720.0 / r.cpu_s).abs() < 1e-6);
    }

    #[test]
    fn frames_carry_their_length() {
        assert_eq!(frame(100)[..2], [0x81, 98]);
        assert_eq!(frame(154)[..4], [0x81, 126, 0, 150]);
        assert_eq!(frame(154).len(), 154);
    }
}
