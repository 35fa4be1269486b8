//! One WebSocket connection: authenticate, take its slots (per user, per IP), register in
//! the routing table, then a reader (frames in, stamped on arrival) and a writer (bounded
//! queue out, pings for RTT) until either side ends, the token expires or the server says so.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jam_shared::auth::Identity;
use jam_shared::keys;
use jam_shared::protocol::event::{error, error_with_ref, frame};
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::close;
use super::frames::{self, ConnLimits, Outcome};
use super::framing::OutFrame;
use super::ratelimit::TokenBucket;
use super::token_life::{self, TokenEvent, TokenLife};
use super::upgrade::{FrameStream, FrameWriter};
use crate::auth::Verified;
use crate::fanout::ConnHandle;
use crate::limits::Slot;
use crate::state::AppState;

/// Pings measure the round trip the sync engine uses; the best of the recent ones counts.
const PING_EVERY: Duration = Duration::from_secs(10);
const RTT_SAMPLES: usize = 8;
/// A connection silent (no frame, no pong) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed connection's write in progress may still take before it is dropped.
const KILLED_WRITE_GRACE: Duration = Duration::from_millis(500);
/// Frames read ahead of the one being handled.
const INBOUND_QUEUE: usize = 64;
/// Frames handed to one `writev(2)` at most.
const WRITE_BATCH: usize = 64;

/// What a connection holds while it lives: its admission and its per-IP slot.
pub struct Admission {
    pub permit: OwnedSemaphorePermit,
    pub ip_slot: Option<Slot>,
}

pub async fn run(
    mut frames: FrameStream,
    out: FrameWriter,
    st: AppState,
    token: Option<String>,
    adm: Admission,
) {
    // Boxed: the hand-shake's state is not carried for the connection's whole life.
    let verified = match Box::pin(authenticate(&mut frames, &st, token)).await {
        Ok(v) => v,
        Err(msg) => return refuse(out, ErrorCode::Unauthorized, &msg, close::POLICY).await,
    };
    let user_slot = match st.limits.user_slot(&verified.identity) {
        Ok(s) => s,
        Err(r) => return refuse(out, r.code, &r.message, close::TOO_MANY_CONNECTIONS).await,
    };
    let conn_id = jam_shared::ids::unique();
    let who = &verified.identity;
    let span =
        tracing::info_span!("conn", conn = %conn_id, user = %who.user_id, tenant = %who.tenant);
    serve(frames, out, st, verified, conn_id)
        .instrument(span)
        .await;
    drop((user_slot, adm));
}

/// An error frame, then the close code: the client learns why before the socket goes.
async fn refuse(mut out: FrameWriter, code: ErrorCode, msg: &str, close_code: u16) {
    metrics::counter!("jam_errors_total", "code" => code.as_str()).increment(1);
    let goodbye = async {
        out.write_all(OutFrame::text(&error(code, msg)).as_bytes())
            .await?;
        out.write_all(OutFrame::close(close_code, close::describe(close_code).0).as_bytes())
            .await?;
        out.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
}

async fn authenticate(
    frames: &mut FrameStream,
    st: &AppState,
    token: Option<String>,
) -> Result<Verified, String> {
    let token = match token {
        Some(t) => t,
        None => {
            let first = tokio::time::timeout(st.cfg.auth_timeout, frames.next())
                .await
                .map_err(|_| "authentication timed out".to_string())?;
            let Some(Ok(Message::Text(t))) = first else {
                return Err("expected an authenticate frame".into());
            };
            let v: serde_json::Value = serde_json::from_str(&t)
                .map_err(|_| "expected an authenticate frame".to_string())?;
            if v.get("type").and_then(|t| t.as_str()) != Some("authenticate") {
                return Err("expected an authenticate frame".into());
            }
            v.get("token")
                .and_then(|t| t.as_str())
                .ok_or("missing token")?
                .to_string()
        }
    };
    st.auth.verify(&token).await.map_err(|e| {
        tracing::debug!(error = %e, "token refused");
        match e {
            jam_shared::auth::AuthError::Expired => "token expired".to_string(),
            e if e.retryable() => "token check unavailable, try again".to_string(),
            _ => "invalid token".to_string(),
        }
    })
}

async fn serve(
    stream: FrameStream,
    sink: FrameWriter,
    st: AppState,
    verified: Verified,
    conn_id: String,
) {
    let who = verified.identity.clone();
    let (tx, rx) = mpsc::channel::<OutFrame>(st.cfg.outbound_queue);
    let handle = ConnHandle::new(&conn_id, &who.user_id, tx);
    let user_channel = keys::user_channel(&who.tenant, &who.user_id);
    if let Err(e) = Box::pin(st.table.register(handle.clone(), user_channel)).await {
        tracing::warn!(error = %e, "could not subscribe the user channel");
        st.table.unregister(&conn_id);
        return;
    }
    metrics::gauge!("jam_connections_open").increment(1.0);
    metrics::counter!("jam_connections_opened_total").increment(1);
    tracing::info!("connected");
    report_connect(&st, &who, &conn_id).await;
    handle.push_json(&frame(
        "authenticated",
        &json!({
            "userId": who.user_id, "userName": who.user_name, "connectionId": conn_id,
            "tenant": (who.tenant != keys::DEFAULT_TENANT).then_some(&who.tenant),
            "serverTime": jam_shared::clock::now_ms(),
            "expiresAt": verified.expires_at,
        }),
    ));

    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        handle.kill.clone(),
        handle.close_code.clone(),
    ));
    // flume's queue holds nothing until frames arrive (tokio's allocates a block of slots
    // per channel up front: 2 KiB for every idle connection).
    let (in_tx, inbound) = flume::bounded(INBOUND_QUEUE);
    let reader = tokio::spawn(read_frames(stream, in_tx));
    let mut r = Reader::new(&st, &handle, &who, &conn_id, verified.expires_at);
    let mut reason = r.run(inbound).await;
    let code = handle.close_code.load(Ordering::SeqCst);
    if code != 0 {
        reason = close::describe(code).1;
    }
    handle.kill.cancel();
    reader.abort();
    let _ = writer.await;
    Box::pin(report_disconnects(&st, &who, &conn_id)).await;
    metrics::gauge!("jam_connections_open").decrement(1.0);
    metrics::counter!("jam_connections_closed_total", "reason" => reason).increment(1);
    tracing::info!(reason, "disconnected");
}

/// Tell the user's partition a connection opened: the first one anywhere makes the user
/// online to the people who watch them (contacts' presence).
pub(crate) async fn report_connect(st: &AppState, who: &Identity, conn_id: &str) {
    if let Err(e) = st
        .send_command(who, conn_id, None, None, Action::UserOnline {})
        .await
    {
        tracing::warn!(error = %e, "could not report the connection");
    }
}

/// Tell the workers the connection left its rooms, and its user's partition that it is
/// gone (the last one makes the user offline to their watchers).
pub(crate) async fn report_disconnects(st: &AppState, who: &Identity, conn_id: &str) {
    for room in st.table.unregister(conn_id) {
        if let Some(sid) = keys::room_of(&room) {
            let action = Action::Disconnect {
                session_id: sid.to_string(),
            };
            if let Err(e) = st.send_command(who, conn_id, None, None, action).await {
                tracing::warn!(error = %e, session = sid, "could not report the disconnect");
            }
        }
    }
    if let Err(e) = st
        .send_command(who, conn_id, None, None, Action::UserOffline {})
        .await
    {
        tracing::warn!(error = %e, "could not report the disconnect");
    }
}

/// Send queued frames (a burst in one `writev`) and a ping every [`PING_EVERY`]; on `kill`,
/// send the close code set on the handle (1000 if none).
pub async fn write_loop<W>(
    mut out: W,
    mut rx: mpsc::Receiver<OutFrame>,
    kill: CancellationToken,
    code: Arc<AtomicU16>,
) where
    W: AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    // One wait for the whole loop: a fresh `cancelled()` per burst was 6 % of a fan-out's
    // CPU profile.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        let sent = tokio::select! {
            biased;
            _ = &mut killed => break,
            f = rx.recv() => match f {
                Some(f) => {
                    let write = tokio::time::timeout(WRITE_TIMEOUT, write_queued(&mut out, f, &mut rx));
                    tokio::pin!(write);
                    tokio::select! {
                        biased;
                        r = &mut write => r,
                        // A kill (a full queue, a drain) waits for a write in progress only
                        // briefly: then the close frame follows it; a peer that is not
                        // reading is dropped, with no close frame after half a frame.
                        _ = &mut killed => match tokio::time::timeout(KILLED_WRITE_GRACE, &mut write).await {
                            Ok(Ok(Ok(()))) => break,
                            _ => return,
                        },
                    }
                }
                None => break,
            },
            _ = ping.tick() => {
                let now = jam_shared::clock::now_us().to_be_bytes();
                let ping = OutFrame::ping(&now);
                tokio::time::timeout(WRITE_TIMEOUT, out.write_all(ping.as_bytes())).await
            }
        };
        // Nothing more can be sent: a failed write means the peer is gone, a write that
        // never finished means it stopped reading.
        let why = match sent {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => close::GONE,
            Err(_) => close::SLOW_CONSUMER,
        };
        let _ = code.compare_exchange(0, why, Ordering::SeqCst, Ordering::SeqCst);
        kill.cancel();
        return;
    }
    let c = match code.load(Ordering::SeqCst) {
        0 => close::NORMAL,
        c => c,
    };
    let goodbye = async {
        out.write_all(OutFrame::close(c, close::describe(c).0).as_bytes())
            .await?;
        out.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
}

/// The reading half: frames in order, the frame-rate limit, the token's expiry.
struct Reader<'a> {
    st: &'a AppState,
    handle: &'a ConnHandle,
    who: &'a Identity,
    conn_id: &'a str,
    bucket: TokenBucket,
    /// Frames refused by the rate limit so far.
    strikes: u32,
    limits: ConnLimits,
    rtts: std::collections::VecDeque<u32>,
    token: TokenLife,
}

impl<'a> Reader<'a> {
    fn new(
        st: &'a AppState,
        handle: &'a ConnHandle,
        who: &'a Identity,
        conn_id: &'a str,
        expires_at: Option<i64>,
    ) -> Self {
        Self {
            st,
            handle,
            who,
            conn_id,
            bucket: TokenBucket::with_burst(st.cfg.rate_limit_per_sec),
            strikes: 0,
            limits: ConnLimits::new(st),
            rtts: std::collections::VecDeque::with_capacity(RTT_SAMPLES),
            token: TokenLife::new(expires_at, st.cfg.auth.expiry_warning),
        }
    }

    /// Until the connection ends; returns why (a metric label).
    async fn run(&mut self, inbound: flume::Receiver<(Instant, Message)>) -> &'static str {
        loop {
            let deadline = self.token.deadline();
            let next = tokio::select! {
                _ = self.handle.kill.cancelled() => return "server",
                _ = token_life::until(deadline) => match self.token.fire() {
                    TokenEvent::Expired => {
                        self.handle.close(close::TOKEN_EXPIRED);
                        return "token_expired";
                    }
                    TokenEvent::Expiring(f) => {
                        self.handle.push_json(&f);
                        continue;
                    }
                },
                n = tokio::time::timeout(IDLE_TIMEOUT, inbound.recv_async()) => n,
            };
            let (arrived, msg) = match next {
                Err(_) => return "idle",
                Ok(Err(_)) => return "client",
                Ok(Ok(m)) => m,
            };
            match msg {
                Message::Text(t) => {
                    if !self.frame(arrived, &t).await {
                        return "rate_abuse";
                    }
                }
                Message::Binary(_) => {
                    self.handle.push_json(&error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported",
                    ));
                }
                Message::Pong(p) => self.pong(&p),
                // Answered here: tungstenite's own answer goes nowhere (see `upgrade`).
                Message::Ping(p) => {
                    self.handle.push(OutFrame::pong(&p));
                }
                Message::Close(_) => return "client",
                Message::Frame(_) => {}
            }
        }
    }

    /// Handle one text frame; false when the connection has to go (rate abuse).
    async fn frame(&mut self, arrived: Instant, t: &str) -> bool {
        if !self.bucket.take_at(arrived) {
            metrics::counter!("jam_errors_total", "code" => "RATE_LIMITED").increment(1);
            self.strikes += 1;
            if self.strikes >= self.st.cfg.limits.rate_strikes {
                metrics::counter!("jam_limit_refusals_total", "limit" => "rate_strikes")
                    .increment(1);
                self.handle.close(close::RATE_ABUSE);
                return false;
            }
            self.handle.push_json(&error_with_ref(
                ErrorCode::RateLimited,
                "Too many frames, slow down",
                frames::ref_of(t).as_ref(),
            ));
            return true;
        }
        let best_rtt = self.rtts.iter().min().map(|r| *r as f64);
        let st = self.st;
        // Boxed: an idle connection does not carry the state of handling a frame (most of
        // a connection's memory before, see docs/benchmarks.md).
        let handled = Box::pin(frames::handle(
            st,
            self.who,
            self.conn_id,
            best_rtt,
            &mut self.limits,
            t,
        ));
        match handled.await {
            Ok(Outcome::Reply(b)) => {
                self.handle.push_json(&b);
            }
            Ok(Outcome::Forwarded) => {}
            Ok(Outcome::Refreshed { expires_at, reply }) => {
                metrics::counter!("jam_token_refreshes_total").increment(1);
                self.token.refreshed(expires_at);
                self.handle.push_json(&reply);
            }
            Err(e) => {
                metrics::counter!("jam_errors_total", "code" => e.code.as_str()).increment(1);
                tracing::debug!(code = %e.code, message = %e.message, "frame rejected");
                self.handle.push_json(&e.to_frame());
            }
        }
        true
    }

    fn pong(&mut self, p: &[u8]) {
        if let Ok(b) = <[u8; 8]>::try_from(p) {
            let sent = i64::from_be_bytes(b);
            let rtt = ((jam_shared::clock::now_us() - sent).max(0) / 1000) as u32;
            if self.rtts.len() == RTT_SAMPLES {
                self.rtts.pop_front();
            }
            self.rtts.push_back(rtt);
            metrics::histogram!("jam_ws_rtt_seconds").record(rtt as f64 / 1000.0);
        }
    }
}

/// Read frames into `out`, each with the instant it arrived, until the stream ends or
/// the receiver goes away. Bounded: a full queue stops reading (TCP pushes back).
pub async fn read_frames<S, E>(mut stream: S, out: flume::Sender<(Instant, Message)>)
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Ok(m)) = stream.next().await {
        if out.send_async((Instant::now(), m)).await.is_err() {
            return;
        }
    }
}

/// Write `first` and everything else already queued: one `writev(2)` for a burst (up to
/// [`WRITE_BATCH`] frames) instead of one write per frame.
pub async fn write_queued<W>(
    out: &mut W,
    first: OutFrame,
    rx: &mut mpsc::Receiver<OutFrame>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    // Bounded: at most what the queue holds now.
    let mut left = rx.len();
    if left == 0 {
        // The usual delivery: one frame, no batch to build.
        return out.write_all(first.as_bytes()).await;
    }
    let mut batch = vec![first];
    loop {
        while left > 0 && batch.len() < WRITE_BATCH {
            let Ok(f) = rx.try_recv() else {
                left = 0;
                break;
            };
            batch.push(f);
            left -= 1;
        }
        write_all(out, &batch).await?;
        if left == 0 {
            return Ok(());
        }
        batch.clear();
    }
}

/// Every byte of `frames`, in order, with as few `writev(2)` calls as the socket allows.
async fn write_all<W: AsyncWrite + Unpin>(out: &mut W, frames: &[OutFrame]) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < frames.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&frames[i].as_bytes()[off..])
            .chain(frames[i + 1..].iter().map(|f| f.as_bytes()))
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = out.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < frames.len() {
            let rest = frames[i].as_bytes().len() - off;
            if n < rest {
                off += n;
                break;
            }
            n -= rest;
            i += 1;
            off = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket that records what is written and counts the calls, taking at most
    /// `chunk` bytes per call (a socket buffer that fills).
    struct Recorder {
        bytes: Vec<u8>,
        calls: usize,
        chunk: usize,
    }

    impl Recorder {
        fn new(chunk: usize) -> Self {
            Self {
                bytes: Vec::new(),
                calls: 0,
                chunk,
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let n = buf.len().min(self.chunk);
            self.bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.chunk - n);
                self.bytes.extend_from_slice(&b[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_are_stamped_when_they_arrive_not_when_handled() {
        let frames =
            futures_util::stream::iter(["a", "b", "c"].map(|t| Ok::<_, ()>(Message::text(t))));
        let (tx, rx) = flume::bounded(8);
        let before = Instant::now();
        read_frames(frames, tx).await;
        // Handled later: the stamps still say when they came in.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        while let Ok((at, m)) = rx.try_recv() {
            assert!(at >= before && at < before + Duration::from_millis(50));
            got.push(m.into_text().unwrap().to_string());
        }
        assert_eq!(got, ["a", "b", "c"]);
    }

    fn queued(texts: &[&str]) -> (OutFrame, mpsc::Receiver<OutFrame>, Vec<u8>) {
        let (tx, rx) = mpsc::channel(texts.len() + 1);
        let frames: Vec<OutFrame> = texts.iter().map(|t| OutFrame::text(t.as_bytes())).collect();
        for f in &frames[1..] {
            tx.try_send(f.clone()).unwrap();
        }
        let wire = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
        (frames[0].clone(), rx, wire)
    }

    /// A socket whose writes fail: the peer went away.
    struct Broken;

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_connection_as_the_peers_close() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(OutFrame::text(b"{}")).unwrap();
        let (kill, code) = (CancellationToken::new(), Arc::new(AtomicU16::new(0)));
        write_loop(Broken, rx, kill.clone(), code.clone()).await;
        assert!(kill.is_cancelled(), "the reader is told to stop");
        assert_eq!(code.load(Ordering::SeqCst), close::GONE);
        assert_eq!(close::describe(close::GONE).1, "client");
    }

    /// A peer that stopped reading: every write waits for ever (and says it was tried).
    struct Stuck(Arc<tokio::sync::Notify>);

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.notify_one();
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_kill_does_not_wait_for_a_write_the_peer_is_not_reading() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(OutFrame::text(b"{}")).unwrap();
        let (kill, code) = (CancellationToken::new(), Arc::new(AtomicU16::new(0)));
        let tried = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(write_loop(
            Stuck(tried.clone()),
            rx,
            kill.clone(),
            code.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(5), tried.notified())
            .await
            .expect("the writer tries to write");
        assert!(!writer.is_finished(), "the write is still waiting");
        let t = tokio::time::Instant::now();
        // What a full queue does (ConnHandle::push).
        code.store(close::SLOW_CONSUMER, Ordering::SeqCst);
        kill.cancel();
        writer.await.unwrap();
        // Well inside the write timeout the writer would otherwise wait out.
        assert!(t.elapsed() < WRITE_TIMEOUT / 4, "{:?}", t.elapsed());
        assert_eq!(code.load(Ordering::SeqCst), close::SLOW_CONSUMER);
    }

    #[tokio::test]
    async fn everything_queued_goes_out_in_one_write() {
        let (first, mut rx, wire) = queued(&["a", "b", "c", "d"]);
        let mut out = Recorder::new(usize::MAX);
        write_queued(&mut out, first, &mut rx).await.unwrap();
        assert_eq!(out.bytes, wire);
        assert_eq!(out.calls, 1);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_short_write_resumes_where_it_stopped() {
        let texts: Vec<String> = (0..200).map(|i| format!("{{\"n\":{i}}}")).collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let (first, mut rx, wire) = queued(&refs);
        let mut out = Recorder::new(7);
        write_queued(&mut out, first, &mut rx).await.unwrap();
        assert_eq!(out.bytes, wire, "every byte once, in order");
        assert!(rx.try_recv().is_err());
    }
}
