//! The WebSocket endpoint: upgrade, authenticate, then one task per connection.

pub mod close;
pub mod connection;
pub mod frames;
pub mod framing;
pub mod inbound;
pub mod outbox;
pub mod ratelimit;
pub mod token_life;
pub mod upgrade;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::state::AppState;

/// Frames above this size close the connection at the protocol level; frames between
/// `JAM_MAX_FRAME_BYTES` and this get a BAD_REQUEST and the connection stays.
const HARD_FRAME_LIMIT: usize = 4 << 20;
/// The read buffer a connection starts with, and the most one read takes: client frames
/// are small (a chat message with a 64-byte text is about 150 bytes), and a larger frame
/// grows the buffer for as long as it needs. Every idle connection holds one.
const READ_BUFFER: usize = 256;

/// The client's address, when the server was started with connection info.
pub struct PeerIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

pub async fn handler(
    ws: upgrade::Upgrade,
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
) -> Response {
    if st.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let Ok(permit) = st.conn_limit.clone().try_acquire_owned() else {
        metrics::counter!("jam_connections_rejected_total", "reason" => "limit").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let token = crate::auth::sources::token_from_request(&q, &headers);
    if let Some((_, crate::auth::sources::Source::Cookie)) = &token {
        if !crate::auth::origin::cookie_origin_allowed(&headers, &st.cfg.auth.allowed_origins) {
            metrics::counter!("jam_origin_rejected_total", "route" => "ws").increment(1);
            return (
                StatusCode::FORBIDDEN,
                "cookie authentication from this origin is not allowed",
            )
                .into_response();
        }
    }
    let token = token.map(|(t, _)| t);
    let ip_slot = match st.limits.ip_slot(ip) {
        Ok(s) => s,
        Err(r) => return (StatusCode::TOO_MANY_REQUESTS, r.message).into_response(),
    };
    let adm = connection::Admission { permit, ip_slot };
    let tracker = st.tracker.clone();
    // tungstenite's default 128 KiB read buffer per socket would make an idle connection
    // cost ~140 KiB; buffers grow on demand for the rare large frame. It only reads:
    // frames out are encoded by `framing`.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(HARD_FRAME_LIMIT))
        .max_frame_size(Some(HARD_FRAME_LIMIT));
    ws.on_upgrade(config, move |inbound, out| {
        tracker.track_future(connection::run(inbound, out, st, token, adm))
    })
}
