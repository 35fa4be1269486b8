//! The worker's HTTP side: liveness, readiness (bus and store answer, not draining), metrics.

use std::sync::Arc;

use crate::store::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use jam_shared::bus::Bus;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HttpState {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub draining: CancellationToken,
    pub health: Arc<crate::Health>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(|| async { jam_shared::telemetry::prometheus().render() }),
        )
        .with_state(state)
}

async fn ready(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if s.bus.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable");
    }
    if s.store.ping().await.is_err() || !s.health.committing() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
    }
    (StatusCode::OK, "ready")
}
