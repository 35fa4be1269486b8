//! HTTP routes besides the WebSocket: health, readiness, metrics, the REST API.

pub mod api;
pub mod publish;
pub mod rest;

use axum::extract::State;
use axum::http::StatusCode;

use crate::state::AppState;

pub async fn health() -> &'static str {
    "ok"
}

/// Ready only while the bus answers and the gateway is not draining.
pub async fn ready(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if st.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if st.bus.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable");
    }
    (StatusCode::OK, "ready")
}

pub async fn metrics() -> String {
    jam_shared::telemetry::prometheus().render()
}
