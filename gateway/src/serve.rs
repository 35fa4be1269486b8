//! The gateway's HTTP listener: hyper's HTTP/1.1 connections with a deadline on every
//! request head. `axum::serve` sets no timer on the connections it builds, so hyper's
//! header timeout never runs there: a client that sends nothing, half a request head, or
//! nothing more after a response, holds its socket and its task for ever (slowloris). Here
//! each head has `head_timeout` to arrive, counted from the connection's start and, on a
//! kept-alive connection, from the end of the previous exchange; then the connection is
//! closed. An upgraded connection (WebSocket, Socket.IO) has left hyper by then and is
//! not affected. HTTP/1.1 only: WebSockets need it, and nothing jam serves needs HTTP/2
//! (docs/decisions/0036-request-heads-have-a-deadline.md).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How accepted connections are set up.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Time a request head has to arrive in full.
    pub head_timeout: Duration,
    /// SO_SNDBUF of accepted sockets; 0: the kernel's autotuning.
    pub send_buffer: usize,
    /// After `stop`, time the connections still answering a request have to finish.
    pub grace: Duration,
}

/// Serve `app` on `listener` until `stop`; then accept no more, let the requests in flight
/// finish (at most `grace`) and return.
pub async fn serve(listener: TcpListener, app: Router, opts: Options, stop: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        tune(&tcp, opts.send_buffer);
        conns.spawn(connection(tcp, peer, app.clone(), opts, stop.clone()));
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(opts.grace, conns.wait())
        .await
        .is_err()
    {
        tracing::debug!(
            open = conns.len(),
            "http connections left at the listener's end"
        );
    }
}

/// Small frames go out at once (no Nagle delay waiting for the peer's delayed ACK), and
/// the send buffer is the configured one.
fn tune(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY failed");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %e, "SO_SNDBUF failed");
        }
    }
}

/// A failed accept: the peer's own failure is skipped at once; anything else (out of
/// descriptors, above all) is logged and waited out briefly rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    metrics::counter!("jam_accept_errors_total").increment(1);
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One HTTP connection, until it ends, is upgraded, or (after `stop`) finishes the
/// exchange in flight.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    opts: Options,
    stop: CancellationToken,
) {
    // Handlers and Socket.IO read the peer's address as axum's `ConnectInfo`.
    let app = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.head_timeout)
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            metrics::counter!("jam_http_head_timeouts_total").increment(1);
        }
        tracing::debug!(error = %e, %peer, "http connection ended");
    }
}
