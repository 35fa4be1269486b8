//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's extractor so the
//! connection gets the raw socket: tungstenite reads client frames from its read half, and
//! the writer sends pre-encoded frames ([`super::framing`]) on its write half.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// What the client sent before hyper handed the socket over, then the socket's read half.
pub type Io = tokio::io::Chain<std::io::Cursor<bytes::Bytes>, OwnedReadHalf>;
/// Client frames, parsed by tungstenite from the read half.
pub type FrameStream = WebSocketStream<ReadOnly<Io>>;
pub use super::inbound::Inbound;
/// The socket's write half: frames go out through the connection's
/// [`Outbox`](super::outbox::Outbox).
pub type FrameWriter = OwnedWriteHalf;

/// A valid upgrade request: its key and hyper's handle on the upgraded connection.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let refuse = |status: StatusCode, msg: &'static str| (status, msg).into_response();
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET to upgrade"));
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "a WebSocket upgrade is required",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "connection cannot be upgraded",
            ));
        };
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answer 101 and run `f` on the socket once hyper hands it over.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, f: F) -> Response
    where
        F: FnOnce(Inbound, FrameWriter) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            // The TCP socket itself, so that frames can be written without a task
            // (`try_write_vectored`); `serve.rs` hands hyper TcpStreams in hyper-util's
            // wrapper.
            let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(p) => p,
                Err(_) => {
                    tracing::error!("upgraded connection is not a TCP stream");
                    return;
                }
            };
            let (r, w) = parts.io.into_inner().into_split();
            // Copied: hyper's read buffer (8 KiB or more) would otherwise live as long as
            // the connection, for the few bytes (usually none) read past the request.
            let early = bytes::Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            let r = std::io::Cursor::new(early).chain(r);
            // No hand-shake to wait for: ready at the first poll. The connection's own task
            // reads it (see `inbound`).
            let frames = WebSocketStream::from_raw_socket(ReadOnly(r), Role::Server, Some(config))
                .now_or_never()
                .expect("a stream without a hand-shake is ready at once");
            let inbound = Inbound::new(frames);
            f(inbound, w).await;
        });
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        res
    }
}

/// The read half as tungstenite's stream. tungstenite answers pings and closes by writing to
/// its stream; those writes are dropped here, and the connection answers them itself
/// through its writer (one writer per socket, so frames never interleave).
pub struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
