//! HTTP routes besides the WebSocket: health, readiness, metrics, the REST API.

pub mod api;
pub mod backend;
pub mod publish;
pub mod rest;

use axum::extract::State;
use axum::http::StatusCode;

use crate::state::AppState;

pub async fn health() -> &'static str {
    "ok"
}

/// Ready only while the bus answers, some worker applies commands (its store answers),
/// and the gateway is not draining.
pub async fn ready(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if st.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if st.bus.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable");
    }
    match st
        .bus
        .live_members(jam_shared::keys::WORKERS_APPLYING)
        .await
    {
        Ok(0) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker is applying commands",
        ),
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable"),
    }
}

pub async fn metrics() -> String {
    jam_shared::telemetry::prometheus().render()
}

/// CORS for the REST API: the origins of `JAM_ALLOWED_ORIGINS`, with credentials (the
/// cookie); none listed: no CORS headers, same origin only. `*` allows any origin, without
/// credentials.
pub fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    layer
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
}
