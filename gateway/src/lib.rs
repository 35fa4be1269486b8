//! jam-gateway: terminates WebSockets, authenticates, validates frames, forwards
//! commands to the worker over the bus and fans the worker's events out to local sockets.

pub mod auth;
pub mod cli;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod limits;
pub mod rpc;
pub mod serve;
pub mod sio;
pub mod state;
pub mod web;
pub mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use jam_shared::bus::{Bus, BusError};
use jam_shared::config::Config;
use jam_shared::keys;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Auth(#[from] auth::SetupError),
}

pub fn app(st: AppState) -> Router {
    let api = Router::new()
        .route("/api/version", get(http::api::version))
        .route(
            "/api/sessions",
            get(http::api::list_sessions).post(http::api::create_session),
        )
        .route(
            "/api/sessions/{id}",
            axum::routing::delete(http::api::end_session).put(http::api::register_session),
        )
        .route("/api/sessions/{id}/attendance", get(http::api::attendance))
        .route(
            "/api/sessions/{id}/join",
            axum::routing::post(http::api::join_session),
        )
        .route(
            "/api/sessions/{id}/messages",
            get(http::api::session_messages),
        )
        .route(
            "/api/sessions/{id}/offset",
            axum::routing::patch(http::api::set_offset),
        )
        .route("/api/sessions/{id}/state", get(http::api::session_state))
        .route("/api/openapi.json", get(http::api::openapi))
        .route("/api/messages/direct", get(http::api::direct_messages))
        .route("/api/publish", axum::routing::post(http::publish::publish))
        .route(
            "/api/users/{id}/contacts",
            axum::routing::put(http::backend::set_contacts),
        )
        .route(
            "/api/notifications",
            get(http::backend::list).post(http::backend::create),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            st.cfg.limits.body_bytes,
        ))
        // A body sent a byte at a time holds its connection no longer than this.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            st.cfg.http_request_timeout,
        ))
        .layer(http::cors(&st.cfg.auth.allowed_origins));
    let router = Router::new()
        .route("/ws", get(ws::handler))
        .route("/health", get(http::health))
        .route("/ready", get(http::ready))
        .route("/metrics", get(http::metrics))
        .merge(api);
    let router = if st.cfg.web_ui {
        router.merge(web::router())
    } else {
        router
    };
    // Socket.IO clients on /socket.io/ (the layer answers only that path).
    let router = if st.cfg.socketio {
        router.layer(sio::layer(st.clone()))
    } else {
        router
    };
    router.with_state(st)
}

/// Serve until `shutdown`, then drain: not ready, every client told 1012 (service
/// restart) so it reconnects elsewhere, wait up to the grace for connections to end.
pub async fn run(
    cfg: Config,
    hs_secret: Option<String>,
    listener: TcpListener,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let auth = Arc::new(auth::Authenticator::new(&cfg, hs_secret.as_deref())?);
    let limits = Arc::new(limits::Limiter::new(&cfg.limits, bus.clone()));
    let (sub, rx) = bus.subscription(cfg.bus_buffer).await?;
    let table = fanout::Table::new(sub, cfg.node_id()).await?;
    let dispatcher = tokio::spawn(fanout::dispatch::run(table.clone(), rx));
    let pinger = tokio::spawn(ws::connection::pinger(table.clone()));
    let rpc = Arc::new(rpc::Rpc::new(cfg.rpc.clone()));
    let st = AppState::new(state::Services {
        cfg: Arc::new(cfg),
        auth,
        limits,
        rpc,
        bus: bus.clone(),
        table: table.clone(),
        draining: CancellationToken::new(),
        tracker: TaskTracker::new(),
        conn_limit: Arc::new(Semaphore::new(0)),
    });
    st.conn_limit.add_permits(st.cfg.max_connections);
    let heartbeat = tokio::spawn(heartbeat(st.clone(), shutdown.clone()));

    let server_stop = CancellationToken::new();
    let opts = serve::Options {
        head_timeout: st.cfg.http_head_timeout,
        send_buffer: st.cfg.socket_send_buffer,
        grace: std::time::Duration::from_secs(2),
    };
    let server = tokio::spawn(serve::serve(
        listener,
        app(st.clone()),
        opts,
        server_stop.clone(),
    ));

    shutdown.cancelled().await;
    let grace = st.cfg.drain_grace;
    st.draining.cancel();
    let open = st.table.close_all(ws::close::SERVICE_RESTART);
    tracing::info!(
        connections = open,
        grace_secs = grace.as_secs_f64(),
        "draining"
    );
    st.tracker.close();
    if tokio::time::timeout(grace, st.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain grace elapsed with connections still open");
    }
    // Load balancers polling /ready see "not ready" before the port goes away.
    tokio::time::sleep(st.cfg.drain_linger).await;
    server_stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    heartbeat.abort();
    dispatcher.abort();
    pinger.abort();
    tracing::info!("gateway stopped");
    Ok(())
}

/// Tell the workers this gateway is alive; silence means its connections are gone.
async fn heartbeat(st: AppState, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(st.cfg.heartbeat);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let id = bytes::Bytes::from(st.gateway_id().to_string());
                if let Err(e) = st.bus.publish(keys::GATEWAY_HEARTBEAT_CHANNEL, id).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }
    }
}
