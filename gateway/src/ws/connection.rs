//! One WebSocket connection: authenticate, take its slots (per user, per IP), register in
//! the routing table, then a reader (frames in, stamped on arrival) and a writer (bounded
//! queue out, pings for RTT) until either side ends, the token expires or the server says so.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use jam_shared::auth::Identity;
use jam_shared::keys;
use jam_shared::protocol::event::{error, error_with_ref, frame};
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::close;
use super::frames::{self, ConnLimits, Outcome};
use super::ratelimit::TokenBucket;
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
/// Frames read ahead of the one being handled.
const INBOUND_QUEUE: usize = 64;

/// What a connection holds while it lives: its admission and its per-IP slot.
pub struct Admission {
    pub permit: OwnedSemaphorePermit,
    pub ip_slot: Option<Slot>,
}

pub async fn run(mut socket: WebSocket, st: AppState, token: Option<String>, adm: Admission) {
    let verified = match authenticate(&mut socket, &st, token).await {
        Ok(v) => v,
        Err(msg) => return refuse(socket, ErrorCode::Unauthorized, &msg, close::POLICY).await,
    };
    let user_slot = match st.limits.user_slot(&verified.identity) {
        Ok(s) => s,
        Err(r) => return refuse(socket, r.code, &r.message, close::TOO_MANY_CONNECTIONS).await,
    };
    let conn_id = jam_shared::ids::unique();
    let who = &verified.identity;
    let span =
        tracing::info_span!("conn", conn = %conn_id, user = %who.user_id, tenant = %who.tenant);
    serve(socket, st, verified, conn_id).instrument(span).await;
    drop((user_slot, adm));
}

/// An error frame, then the close code: the client learns why before the socket goes.
async fn refuse(mut socket: WebSocket, code: ErrorCode, msg: &str, close_code: u16) {
    metrics::counter!("jam_errors_total", "code" => code.as_str()).increment(1);
    let _ = socket.send(text(error(code, msg))).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code,
            reason: Utf8Bytes::from_static(close::describe(close_code).0),
        })))
        .await;
}

async fn authenticate(
    socket: &mut WebSocket,
    st: &AppState,
    token: Option<String>,
) -> Result<Verified, String> {
    let token = match token {
        Some(t) => t,
        None => {
            let first = tokio::time::timeout(st.cfg.auth_timeout, socket.recv())
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

async fn serve(socket: WebSocket, st: AppState, verified: Verified, conn_id: String) {
    let who = verified.identity.clone();
    let (tx, rx) = mpsc::channel::<Utf8Bytes>(st.cfg.outbound_queue);
    let handle = ConnHandle {
        id: Arc::from(conn_id.as_str()),
        user_id: Arc::from(who.user_id.as_str()),
        tx,
        kill: CancellationToken::new(),
        close_code: Arc::new(AtomicU16::new(0)),
    };
    if let Err(e) = st
        .table
        .register(
            handle.clone(),
            keys::user_channel(&who.tenant, &who.user_id),
        )
        .await
    {
        tracing::warn!(error = %e, "could not subscribe the user channel");
        st.table.unregister(&conn_id);
        return;
    }
    metrics::gauge!("jam_connections_open").increment(1.0);
    metrics::counter!("jam_connections_opened_total").increment(1);
    tracing::info!("connected");
    handle.push(text_bytes(frame(
        "authenticated",
        &json!({
            "userId": who.user_id, "userName": who.user_name, "connectionId": conn_id,
            "tenant": (who.tenant != keys::DEFAULT_TENANT).then_some(&who.tenant),
            "serverTime": jam_shared::clock::now_ms(),
            "expiresAt": verified.expires_at,
        }),
    )));

    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        handle.kill.clone(),
        handle.close_code.clone(),
    ));
    let (in_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
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
    for room in st.table.unregister(&conn_id) {
        // Only rooms are sessions; a user channel has nobody to tell.
        if let Some(sid) = keys::room_of(&room) {
            let action = Action::Disconnect {
                session_id: sid.to_string(),
            };
            if let Err(e) = st.send_command(&who, &conn_id, None, None, action).await {
                tracing::warn!(error = %e, session = sid, "could not report the disconnect");
            }
        }
    }
    metrics::gauge!("jam_connections_open").decrement(1.0);
    metrics::counter!("jam_connections_closed_total", "reason" => reason).increment(1);
    tracing::info!(reason, "disconnected");
}

/// Send queued frames (a burst with one flush) and a ping every [`PING_EVERY`]; on `kill`,
/// send the close code set on the handle (1000 if none).
pub async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    kill: CancellationToken,
    code: Arc<AtomicU16>,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            f = rx.recv() => match f {
                Some(f) => {
                    let sent = tokio::time::timeout(WRITE_TIMEOUT, write_queued(&mut sink, f, &mut rx)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        kill.cancel();
                        return;
                    }
                }
                None => break,
            },
            _ = ping.tick() => {
                let now = jam_shared::clock::now_us().to_be_bytes();
                if sink.send(Message::Ping(now.to_vec().into())).await.is_err() {
                    kill.cancel();
                    return;
                }
            }
        }
    }
    let c = match code.load(Ordering::SeqCst) {
        0 => close::NORMAL,
        c => c,
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sink.send(Message::Close(Some(CloseFrame {
            code: c,
            reason: Utf8Bytes::from_static(close::describe(c).0),
        }))),
    )
    .await;
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
    expires_at: Option<i64>,
    warned: bool,
}

impl<'a> Reader<'a> {
    fn new(
        st: &'a AppState,
        handle: &'a ConnHandle,
        who: &'a Identity,
        conn_id: &'a str,
        expires_at: Option<i64>,
    ) -> Self {
        let rate = st.cfg.rate_limit_per_sec;
        let dm = st.cfg.limits.dm_per_sec;
        Self {
            st,
            handle,
            who,
            conn_id,
            bucket: TokenBucket::new(rate, rate * 2.0),
            strikes: 0,
            limits: ConnLimits {
                dm: TokenBucket::new(dm, dm * 2.0),
            },
            rtts: std::collections::VecDeque::with_capacity(RTT_SAMPLES),
            expires_at,
            warned: false,
        }
    }

    /// When the next token deadline falls: the warning, then the expiry itself.
    fn next_deadline(&self) -> Option<(tokio::time::Instant, bool)> {
        let exp = self.expires_at?;
        let warn = exp - self.st.cfg.auth.expiry_warning.as_millis() as i64;
        let (at, is_expiry) = if self.warned {
            (exp, true)
        } else {
            (warn, false)
        };
        let left = (at - jam_shared::clock::now_ms()).max(0) as u64;
        Some((
            tokio::time::Instant::now() + Duration::from_millis(left),
            is_expiry,
        ))
    }

    /// Until the connection ends; returns why (a metric label).
    async fn run(&mut self, mut inbound: mpsc::Receiver<(Instant, Message)>) -> &'static str {
        loop {
            let deadline = self.next_deadline();
            let token_timer = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                _ = self.handle.kill.cancelled() => return "server",
                _ = token_timer => {
                    if deadline.is_some_and(|(_, expiry)| expiry) {
                        self.handle.close(close::TOKEN_EXPIRED);
                        return "token_expired";
                    }
                    self.warned = true;
                    self.handle.push(text_bytes(frame(
                        "token_expiring",
                        &json!({"expiresAt": self.expires_at}),
                    )));
                    continue;
                }
                n = tokio::time::timeout(IDLE_TIMEOUT, inbound.recv()) => n,
            };
            let (arrived, msg) = match next {
                Err(_) => return "idle",
                Ok(None) => return "client",
                Ok(Some(m)) => m,
            };
            match msg {
                Message::Text(t) => {
                    if !self.frame(arrived, &t).await {
                        return "rate_abuse";
                    }
                }
                Message::Binary(_) => {
                    self.handle.push(text_bytes(error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported",
                    )));
                }
                Message::Pong(p) => self.pong(&p),
                Message::Ping(_) => {}
                Message::Close(_) => return "client",
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
            self.handle.push(text_bytes(error_with_ref(
                ErrorCode::RateLimited,
                "Too many frames, slow down",
                frames::ref_of(t).as_ref(),
            )));
            return true;
        }
        let best_rtt = self.rtts.iter().min().map(|r| *r as f64);
        let st = self.st;
        match frames::handle(st, self.who, self.conn_id, best_rtt, &mut self.limits, t).await {
            Ok(Outcome::Reply(b)) => {
                self.handle.push(text_bytes(b));
            }
            Ok(Outcome::Forwarded) => {}
            Ok(Outcome::Refreshed { expires_at, reply }) => {
                metrics::counter!("jam_token_refreshes_total").increment(1);
                self.expires_at = expires_at;
                self.warned = false;
                self.handle.push(text_bytes(reply));
            }
            Err(e) => {
                metrics::counter!("jam_errors_total", "code" => e.code.as_str()).increment(1);
                tracing::debug!(code = %e.code, message = %e.message, "frame rejected");
                self.handle.push(text_bytes(e.to_frame()));
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
pub async fn read_frames<S, E>(mut stream: S, out: mpsc::Sender<(Instant, Message)>)
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Ok(m)) = stream.next().await {
        if out.send((Instant::now(), m)).await.is_err() {
            return;
        }
    }
}

/// Write `first` and everything else already queued, then flush once: one syscall for a
/// burst instead of one per frame.
pub async fn write_queued<S>(
    sink: &mut S,
    first: Utf8Bytes,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    sink.feed(Message::Text(first)).await?;
    // Bounded: at most what the queue holds now.
    let mut n = rx.len();
    while n > 0 {
        let Ok(f) = rx.try_recv() else { break };
        sink.feed(Message::Text(f)).await?;
        n -= 1;
    }
    sink.flush().await
}

fn text(b: bytes::Bytes) -> Message {
    Message::Text(text_bytes(b))
}

fn text_bytes(b: bytes::Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(b).expect("frames are serialized JSON, hence UTF-8")
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A sink that records frames and counts flushes.
    #[derive(Default)]
    struct Recorder {
        frames: Vec<String>,
        flushes: usize,
    }

    impl futures_util::Sink<Message> for Recorder {
        type Error = std::convert::Infallible;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, m: Message) -> Result<(), Self::Error> {
            if let Message::Text(t) = m {
                self.frames.push(t.to_string());
            }
            Ok(())
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_are_stamped_when_they_arrive_not_when_handled() {
        let frames = futures_util::stream::iter(
            ["a", "b", "c"].map(|t| Ok::<_, ()>(Message::Text(Utf8Bytes::from_static(t)))),
        );
        let (tx, mut rx) = mpsc::channel(8);
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

    #[tokio::test]
    async fn everything_queued_goes_out_with_one_flush() {
        let (tx, mut rx) = mpsc::channel(8);
        for f in ["b", "c", "d"] {
            tx.try_send(Utf8Bytes::from_static(f)).unwrap();
        }
        let mut sink = Recorder::default();
        write_queued(&mut sink, Utf8Bytes::from_static("a"), &mut rx)
            .await
            .unwrap();
        assert_eq!(sink.frames, ["a", "b", "c", "d"]);
        assert_eq!(sink.flushes, 1);
        assert!(rx.try_recv().is_err());
    }
}
