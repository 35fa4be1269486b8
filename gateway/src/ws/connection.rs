//! One WebSocket connection: authenticate, register in the routing table, then a reader
//! (frames in) and a writer (bounded queue out, pings for RTT) until either side ends.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use jam_shared::auth::{AuthError, Identity};
use jam_shared::keys;
use jam_shared::protocol::event::{error, error_with_ref, frame};
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::frames::{self, Outcome};
use super::ratelimit::TokenBucket;
use crate::fanout::ConnHandle;
use crate::state::AppState;

const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Pings measure the round trip the sync engine uses; the best of the recent ones counts.
const PING_EVERY: Duration = Duration::from_secs(10);
const RTT_SAMPLES: usize = 8;
/// A connection silent (no frame, no pong) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames read ahead of the one being handled.
const INBOUND_QUEUE: usize = 64;

pub async fn run(
    mut socket: WebSocket,
    st: AppState,
    token: Option<String>,
    _permit: OwnedSemaphorePermit,
) {
    let who = match authenticate(&mut socket, &st, token).await {
        Ok(who) => who,
        Err(msg) => {
            metrics::counter!("jam_errors_total", "code" => "UNAUTHORIZED").increment(1);
            let _ = socket
                .send(text(error(ErrorCode::Unauthorized, &msg)))
                .await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: CLOSE_POLICY,
                    reason: Utf8Bytes::from_static("unauthorized"),
                })))
                .await;
            return;
        }
    };
    let conn_id = jam_shared::ids::unique();
    let span =
        tracing::info_span!("conn", conn = %conn_id, user = %who.user_id, tenant = %who.tenant);
    serve(socket, st, who, conn_id).instrument(span).await
}

async fn authenticate(
    socket: &mut WebSocket,
    st: &AppState,
    token: Option<String>,
) -> Result<Identity, String> {
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
    st.jwt.verify(&token).map_err(|e| match e {
        AuthError::Expired => "token expired".to_string(),
        AuthError::Invalid(_) => "invalid token".to_string(),
    })
}

async fn serve(socket: WebSocket, st: AppState, who: Identity, conn_id: String) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(st.cfg.outbound_queue);
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
        }),
    )));

    let (mut sink, stream) = socket.split();
    let mut rtts: std::collections::VecDeque<u32> =
        std::collections::VecDeque::with_capacity(RTT_SAMPLES);
    let kill = handle.kill.clone();
    let code = handle.close_code.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = kill.cancelled() => break,
                f = rx.recv() => match f {
                    Some(f) => {
                        if !matches!(tokio::time::timeout(WRITE_TIMEOUT, write_queued(&mut sink, f, &mut rx)).await, Ok(Ok(()))) {
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
        let c = code.load(Ordering::SeqCst);
        let c = if c == 0 { 1000 } else { c };
        let reason = match c {
            CLOSE_SERVICE_RESTART => "service restart",
            crate::fanout::table::CLOSE_SLOW_CONSUMER => "slow consumer",
            _ => "bye",
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            sink.send(Message::Close(Some(CloseFrame {
                code: c,
                reason: Utf8Bytes::from_static(reason),
            }))),
        )
        .await;
    });

    let rate = st.cfg.rate_limit_per_sec;
    let mut bucket = TokenBucket::new(rate, rate * 2.0);
    let mut reason = "client";
    // Frames are read, and stamped, as they arrive: the rate limit judges what the client
    // sent when it sent it, not a backlog that piled up while a command waited on the bus.
    let (in_tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
    let reader = tokio::spawn(read_frames(stream, in_tx));
    loop {
        let next = tokio::select! {
            _ = handle.kill.cancelled() => { reason = "server"; break }
            n = tokio::time::timeout(IDLE_TIMEOUT, inbound.recv()) => n,
        };
        let (arrived, msg) = match next {
            Err(_) => {
                reason = "idle";
                break;
            }
            Ok(None) => break,
            Ok(Some(m)) => m,
        };
        match msg {
            Message::Text(t) => {
                if !bucket.take_at(arrived) {
                    metrics::counter!("jam_errors_total", "code" => "RATE_LIMITED").increment(1);
                    handle.push(text_bytes(error_with_ref(
                        ErrorCode::RateLimited,
                        "Too many frames, slow down",
                        frames::ref_of(&t).as_ref(),
                    )));
                    continue;
                }
                let best_rtt = rtts.iter().min().map(|r| *r as f64);
                match frames::handle(&st, &who, &conn_id, best_rtt, &t).await {
                    Ok(Outcome::Reply(b)) => {
                        handle.push(text_bytes(b));
                    }
                    Ok(Outcome::Forwarded) => {}
                    Err(e) => {
                        metrics::counter!("jam_errors_total", "code" => e.code.as_str())
                            .increment(1);
                        tracing::debug!(code = %e.code, message = %e.message, "frame rejected");
                        handle.push(text_bytes(e.to_frame()));
                    }
                }
            }
            Message::Binary(_) => {
                handle.push(text_bytes(error(
                    ErrorCode::BadRequest,
                    "binary frames are not supported",
                )));
            }
            Message::Pong(p) => {
                if let Ok(b) = <[u8; 8]>::try_from(&p[..]) {
                    let sent = i64::from_be_bytes(b);
                    let rtt = ((jam_shared::clock::now_us() - sent).max(0) / 1000) as u32;
                    if rtts.len() == RTT_SAMPLES {
                        rtts.pop_front();
                    }
                    rtts.push_back(rtt);
                    metrics::histogram!("jam_ws_rtt_seconds").record(rtt as f64 / 1000.0);
                }
            }
            Message::Ping(_) => {}
            Message::Close(_) => break,
        }
    }
    if handle.close_code.load(Ordering::SeqCst) == CLOSE_SERVICE_RESTART {
        reason = "drain";
    } else if handle.close_code.load(Ordering::SeqCst) == crate::fanout::table::CLOSE_SLOW_CONSUMER
    {
        reason = "slow_consumer";
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
