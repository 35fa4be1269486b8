//! One WebSocket connection: authenticate, take its slots (per user, per IP), register in
//! the routing table, then one task reads frames (stamped on arrival, see `inbound`) and
//! handles them, while frames out go through its outbox (written by whoever has them),
//! until either side ends, the token expires or the server says so.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jam_shared::auth::Identity;
use jam_shared::keys;
use jam_shared::protocol::event::{error, error_with_ref, frame};
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::Instrument;

use super::close;
use super::frames::{self, ConnLimits, Outcome};
use super::framing::OutFrame;
use super::outbox::Outbox;
use super::ratelimit::TokenBucket;
use super::token_life::{TokenEvent, TokenLife};
use super::upgrade::{FrameWriter, Inbound};
use crate::auth::Verified;
use crate::fanout::ConnHandle;
use crate::limits::Slot;
use crate::state::AppState;

/// Pings measure the round trip the sync engine uses; the best of the recent ones counts.
const PING_EVERY: Duration = Duration::from_secs(10);
/// The pinger's round is cut in this many slices, one every `PING_EVERY / PING_SLICES`.
const PING_SLICES: u32 = 10;
/// Sockets pinged before the pinger lets other tasks run.
const PING_BURST: usize = 1024;
const RTT_SAMPLES: usize = 8;
/// A connection silent (no frame, no pong) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the close frame may wait for the peer to read what is queued before it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same for a slow consumer: its write in progress gets a short while, then it is
/// dropped (with no close frame after half a frame).
const KILLED_WRITE_GRACE: Duration = Duration::from_millis(500);
/// How long a closed connection still reads (and drops) what the client sends.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection holds while it lives: its admission and its per-IP slot.
pub struct Admission {
    pub permit: OwnedSemaphorePermit,
    pub ip_slot: Option<Slot>,
}

/// Set the connection up (authenticate, take the user's slot, register), then hand its
/// life to a task of its own that holds only what a live connection needs: the set-up's
/// state (and this future's arguments) end here. Boxed set-up, small life: an idle
/// connection's task went from 2 KiB to about 1 KiB (`-Zprint-type-sizes`).
pub async fn run(
    inbound: Inbound,
    out: FrameWriter,
    st: AppState,
    token: Option<String>,
    adm: Admission,
) {
    let Some((live, span)) = Box::pin(open(inbound, out, st, token, adm)).await else {
        return;
    };
    let tracker = live.reader.st.tracker.clone();
    tracker.spawn(live.serve().instrument(span));
}

async fn open(
    mut inbound: Inbound,
    out: FrameWriter,
    st: AppState,
    token: Option<String>,
    adm: Admission,
) -> Option<(Live, tracing::Span)> {
    let verified = match authenticate(&mut inbound, &st, token).await {
        Ok(v) => v,
        Err(msg) => {
            refuse(out, ErrorCode::Unauthorized, &msg, close::POLICY).await;
            return None;
        }
    };
    let user_slot = match st.limits.user_slot(&verified.identity) {
        Ok(s) => s,
        Err(r) => {
            refuse(out, r.code, &r.message, close::TOO_MANY_CONNECTIONS).await;
            return None;
        }
    };
    let conn_id = jam_shared::ids::unique();
    let who = verified.identity;
    let span =
        tracing::info_span!("conn", conn = %conn_id, user = %who.user_id, tenant = %who.tenant);
    let outbox = Outbox::new(Box::new(out), st.cfg.outbound_queue);
    let handle = ConnHandle::socket(&conn_id, &who.user_id, outbox);
    let reader = Reader::new(st, handle, who, verified.expires_at);
    let started = inbound
        .alongside(reader.start(verified.expires_at))
        .instrument(span.clone())
        .await;
    let live = Live {
        reader,
        inbound,
        _held: (user_slot, adm),
    };
    started.then_some((live, span))
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
    inbound: &mut Inbound,
    st: &AppState,
    token: Option<String>,
) -> Result<Verified, String> {
    let token = match token {
        Some(t) => t,
        None => {
            let first = tokio::time::timeout(st.cfg.auth_timeout, inbound.recv())
                .await
                .map_err(|_| "authentication timed out".to_string())?;
            let Some((_, Message::Text(t))) = first else {
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

/// What a connection holds while it lives.
struct Live {
    reader: Reader,
    inbound: Inbound,
    _held: (Slot, Admission),
}

impl Reader {
    /// Greet the client, register, tell the workers; false when the bus is away. The
    /// greeting goes first, before the connection is in the table: nothing (a ping, a frame
    /// on the user's channel) can reach the client ahead of `authenticated`.
    async fn start(&self, expires_at: Option<i64>) -> bool {
        let (st, handle, who) = (&self.st, &self.handle, &self.who);
        handle.push_json(&frame(
            "authenticated",
            &json!({
                "userId": who.user_id, "userName": who.user_name, "connectionId": &*handle.id,
                "tenant": (who.tenant != keys::DEFAULT_TENANT).then_some(&who.tenant),
                "serverTime": jam_shared::clock::now_ms(),
                "expiresAt": expires_at,
            }),
        ));
        // The first round-trip sample at once; then the gateway's pinger (see [`pinger`]).
        handle.push(ping_now());
        let user_channel = keys::user_channel(&who.tenant, &who.user_id);
        if let Err(e) = st.table.register(handle.clone(), user_channel).await {
            tracing::warn!(error = %e, "could not subscribe the user channel");
            st.table.unregister(&handle.id);
            handle.push_json(&error(ErrorCode::Unavailable, "bus unavailable, reconnect"));
            handle.close(close::SERVICE_RESTART);
            handle.finish(CLOSE_GRACE).await;
            return false;
        }
        metrics::gauge!("jam_connections_open").increment(1.0);
        metrics::counter!("jam_connections_opened_total").increment(1);
        tracing::info!("connected");
        report_connect(st, who, &handle.id).await;
        true
    }
}

impl Live {
    /// Frames until the connection ends, then the close frame and the reports.
    // Not an `async fn`: that moves its arguments into locals of its own, and the
    // connection's state (464 bytes) would sit in every idle task twice. The block below
    // uses what it captured in place (`-Zprint-type-sizes`).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice"
    )]
    fn serve(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // Named, so that the block captures it: a block captures only the fields it
            // uses, and the connection's slots must be held until it ends.
            let _held = &self._held;
            let mut reason = self.reader.run(&mut self.inbound).await;
            Box::pin(self.reader.end(&mut reason, &mut self.inbound)).await;
            metrics::gauge!("jam_connections_open").decrement(1.0);
            metrics::counter!("jam_connections_closed_total", "reason" => reason).increment(1);
            tracing::info!(reason, "disconnected");
        }
    }
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

fn ping_now() -> OutFrame {
    OutFrame::ping(&jam_shared::clock::now_us().to_be_bytes())
}

/// Ping every WebSocket of the gateway every [`PING_EVERY`] (one task for all: an idle
/// connection holds no timer of its own). The pong carries the send time back: the
/// round trip the sync engine uses, and proof the peer is alive (see [`IDLE_TIMEOUT`]).
/// One slice of the connections at a time ([`PING_SLICES`] per round), yielding every
/// [`PING_BURST`] sockets: a gateway's pings, and the pongs they bring back, never come
/// as one burst that holds up the events being delivered.
pub async fn pinger(table: Arc<crate::fanout::Table>) {
    let mut every = tokio::time::interval(PING_EVERY / PING_SLICES);
    every.tick().await;
    for slice in (0..PING_SLICES).cycle() {
        every.tick().await;
        let ping = ping_now();
        for (i, c) in table
            .connections_in_slice(slice, PING_SLICES)
            .iter()
            .enumerate()
        {
            if c.is_socket() {
                c.push(ping.clone());
            }
            if i % PING_BURST == PING_BURST - 1 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The last [`RTT_SAMPLES`] round trips (ms), in place: no allocation per connection.
/// Milliseconds, saturating at 65 s (a ping that late says the same as any slow one).
#[derive(Default)]
struct Rtts {
    samples: [u16; RTT_SAMPLES],
    len: u8,
    next: u8,
}

impl Rtts {
    fn push(&mut self, rtt: u32) {
        self.samples[self.next as usize] = rtt.min(u16::MAX as u32) as u16;
        self.next = (self.next + 1) % RTT_SAMPLES as u8;
        self.len = (self.len + 1).min(RTT_SAMPLES as u8);
    }

    /// The best of the recent samples: the one least delayed by queues.
    fn best(&self) -> Option<u32> {
        self.samples[..self.len as usize]
            .iter()
            .copied()
            .min()
            .map(u32::from)
    }
}

/// The reading half: frames in order, the frame-rate limit, the token's expiry.
struct Reader {
    st: AppState,
    handle: ConnHandle,
    who: Identity,
    bucket: TokenBucket,
    /// Frames refused by the rate limit so far.
    strikes: u32,
    limits: ConnLimits,
    rtts: Rtts,
    token: TokenLife,
}

impl Reader {
    fn new(st: AppState, handle: ConnHandle, who: Identity, expires_at: Option<i64>) -> Self {
        Self {
            bucket: TokenBucket::with_burst(st.cfg.rate_limit_per_sec),
            strikes: 0,
            limits: ConnLimits::new(&st),
            rtts: Rtts::default(),
            token: TokenLife::new(expires_at, st.cfg.auth.expiry_warning),
            st,
            handle,
            who,
        }
    }

    /// The connection is over: the close frame (after what is queued, bounded), then the
    /// workers hear it left. `reason` becomes the close code's when the server closed it.
    async fn end(&self, reason: &mut &'static str, inbound: &mut Inbound) {
        let handle = &self.handle;
        let code = handle.close_code.load(Ordering::SeqCst);
        if code != 0 {
            *reason = close::describe(code).1;
        }
        handle.kill.cancel();
        let grace = match code {
            close::SLOW_CONSUMER => KILLED_WRITE_GRACE,
            _ => CLOSE_GRACE,
        };
        handle.finish(grace).await;
        // A lingering close: what the client still sends is read and dropped until it
        // closes too (bounded). Closing a socket with unread input makes the kernel send a
        // reset, and a reset can take the close frame with it before the client reads it.
        let _ =
            tokio::time::timeout(LINGER, async { while inbound.recv().await.is_some() {} }).await;
        report_disconnects(&self.st, &self.who, &handle.id).await;
    }

    /// Until the connection ends; returns why (a metric label).
    async fn run(&mut self, inbound: &mut Inbound) -> &'static str {
        loop {
            // One timer for both deadlines (the token's and the idle one): every idle
            // connection waits here, so each timer is memory times the connections. What
            // lives across this wait is what an idle connection's task holds: keep it small.
            let (wake, token_first) = {
                let idle_at = tokio::time::Instant::now() + IDLE_TIMEOUT;
                match self.token.deadline() {
                    Some(t) if t <= idle_at => (t, true),
                    _ => (idle_at, false),
                }
            };
            let next = tokio::select! {
                _ = self.handle.kill.cancelled_here() => return "server",
                _ = tokio::time::sleep_until(wake) => {
                    if !token_first {
                        return "idle";
                    }
                    match self.token.fire() {
                        TokenEvent::Expired => {
                            self.handle.close(close::TOKEN_EXPIRED);
                            return "token_expired";
                        }
                        TokenEvent::Expiring(f) => {
                            self.handle.push_json(&f);
                            continue;
                        }
                    }
                },
                n = inbound.recv() => n,
            };
            let Some((arrived, msg)) = next else {
                return "client";
            };
            let Message::Text(t) = msg else {
                match self.control(msg) {
                    Some(reason) => return reason,
                    None => continue,
                }
            };
            // Boxed: an idle connection does not carry the state of handling a frame (most
            // of a connection's memory before, see docs/benchmarks.md). Frames that arrive
            // meanwhile are read (and stamped) ahead.
            if !Box::pin(inbound.alongside(self.frame(arrived, t))).await {
                return "rate_abuse";
            }
        }
    }

    /// A frame other than text; the reason when it ends the connection.
    fn control(&mut self, msg: Message) -> Option<&'static str> {
        match msg {
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
            Message::Close(_) => return Some("client"),
            Message::Text(_) | Message::Frame(_) => {}
        }
        None
    }

    /// Handle one text frame; false when the connection has to go (rate abuse).
    async fn frame(&mut self, arrived: Instant, t: Utf8Bytes) -> bool {
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
                frames::ref_of(&t).as_ref(),
            ));
            return true;
        }
        let best_rtt = self.rtts.best().map(f64::from);
        let handled = frames::handle(
            &self.st,
            &self.who,
            &self.handle.id,
            best_rtt,
            &mut self.limits,
            &t,
        );
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
            self.rtts.push(rtt);
            metrics::histogram!("jam_ws_rtt_seconds").record(rtt as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_of_the_last_samples_counts() {
        let mut r = Rtts::default();
        assert_eq!(r.best(), None);
        r.push(30);
        r.push(12);
        assert_eq!(r.best(), Some(12));
        // Eight newer samples push the 12 out.
        for _ in 0..RTT_SAMPLES {
            r.push(40);
        }
        assert_eq!(r.best(), Some(40));
    }
}
