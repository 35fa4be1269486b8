//! The WebSocket endpoint: upgrade, authenticate, then one task pair per connection.

pub mod auth;
pub mod connection;
pub mod frames;
pub mod ratelimit;

use std::collections::HashMap;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Frames above this size close the connection at the protocol level; frames between
/// `JAM_MAX_FRAME_BYTES` and this get a BAD_REQUEST and the connection stays.
const HARD_FRAME_LIMIT: usize = 4 << 20;
const SOCKET_BUFFER: usize = 4 << 10;

pub async fn handler(
    ws: WebSocketUpgrade,
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if st.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let Ok(permit) = st.conn_limit.clone().try_acquire_owned() else {
        metrics::counter!("jam_connections_rejected_total", "reason" => "limit").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let token = auth::token_from_request(&q, &headers);
    let tracker = st.tracker.clone();
    // tungstenite's default 128 KiB read buffer per socket would make an idle connection
    // cost ~140 KiB; buffers grow on demand for the rare large frame.
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| tracker.track_future(connection::run(socket, st, token, permit)))
}
