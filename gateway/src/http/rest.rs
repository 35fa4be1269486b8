//! REST plumbing: JSON errors with the shared codes, the Bearer-JWT caller extractor, and
//! `rpc`, which sends a command like a socket would and waits for the worker's answer.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jam_shared::auth::Identity;
use jam_shared::ErrorCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::fanout::ConnHandle;
use crate::state::AppState;
use crate::ws::frames;
use crate::ws::wire::ClientFrame;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The HTTP status when it is not the code's usual one (413 for a body too large).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }
}

/// A query string that does not parse is the caller's error (400), with axum's reason.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::new(ErrorCode::BadRequest, e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("jam_errors_total", "code" => self.code.as_str()).increment(1);
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        (
            status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

/// The authenticated caller of a REST route (`Authorization: Bearer <jwt>`).
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        use crate::auth::{origin, sources};
        let token = match sources::bearer(&parts.headers) {
            Some(t) => t,
            None => {
                let t = sources::cookie(&parts.headers, sources::COOKIE).ok_or_else(|| {
                    ApiError::new(ErrorCode::Unauthorized, "missing bearer token")
                })?;
                if !origin::cookie_origin_allowed(&parts.headers, &st.cfg.auth.allowed_origins) {
                    metrics::counter!("jam_origin_rejected_total", "route" => "rest").increment(1);
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "cookie authentication from this origin is not allowed",
                    ));
                }
                t
            }
        };
        let v = st.auth.verify(&token).await.map_err(|e| {
            let code = if e.retryable() {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Unauthorized
            };
            ApiError::new(code, e.to_string())
        })?;
        st.limits.rest_request(&v.identity, &token)?;
        Ok(Caller(v.identity))
    }
}

/// Send a REST call's request as `who` and return the worker's first answer (an error
/// becomes `Err`).
pub async fn rpc(st: &AppState, who: &Identity, frame: ClientFrame) -> Result<Value, ApiError> {
    let action = frames::prepare(st, frame)
        .await
        .map_err(|(c, m)| ApiError::new(c, m))?;
    rpc_action(st, who, action).await
}

/// [`rpc`] for an action the server built (the backend's calls), checked field by field.
pub async fn rpc_action(
    st: &AppState,
    who: &Identity,
    action: jam_shared::protocol::Action,
) -> Result<Value, ApiError> {
    action.validate().map_err(|(c, m)| ApiError::new(c, m))?;
    // Bodies, paths and queries alike: whatever reached the action, or the identity (a
    // token's is checked when verified; the backend names users in bodies and paths).
    let json = serde_json::to_vec(&action)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let named = [&who.user_id, &who.user_name, &who.tenant];
    if jam_shared::protocol::nul::in_json(&json) || named.iter().any(|s| s.contains('\0')) {
        let refused = jam_shared::protocol::nul::REFUSED;
        return Err(ApiError::new(ErrorCode::BadRequest, refused));
    }
    let conn = format!("rest-{}", jam_shared::ids::unique());
    let (tx, mut rx) = mpsc::channel(8);
    let handle = ConnHandle::new(&conn, &who.user_id, tx);
    let unavailable = |_| ApiError::new(ErrorCode::Unavailable, "bus unavailable, try again");
    // Only the reply to this call reaches it (through this gateway's inbox); the slot
    // leaves the table with `_slot`, however this future ends.
    let _slot = st.table.register_direct(handle);
    st.send_rest_command(who, &conn, action)
        .await
        .map_err(unavailable)?;
    let frame = tokio::time::timeout(st.cfg.reply_timeout, rx.recv())
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the worker did not answer in time"))?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "reply channel closed"))?;
    let mut v: Value = serde_json::from_slice(frame.payload())
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    if v["type"] == "error" {
        let code = serde_json::from_value(v["code"].clone()).unwrap_or(ErrorCode::Internal);
        return Err(ApiError::new(
            code,
            v["message"].as_str().unwrap_or("error"),
        ));
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("ref");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use jam_shared::bus::{memory::MemoryBus, Bus, BusMessage};
    use jam_shared::config::Config;
    use jam_shared::protocol::Action;

    use super::*;
    use crate::state::Services;

    /// A gateway's state over an in-memory bus that no worker reads: no call is answered.
    async fn unanswered() -> (AppState, mpsc::Receiver<BusMessage>) {
        let cfg = Config::from_map(&HashMap::new()).unwrap();
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let (sub, events) = bus.subscription(8).await.unwrap();
        let st = AppState::new(Services {
            auth: Arc::new(crate::auth::Authenticator::new(&cfg, Some("secret")).unwrap()),
            limits: Arc::new(crate::limits::Limiter::new(&cfg.limits, bus.clone())),
            rpc: Arc::new(crate::rpc::Rpc::new(cfg.rpc.clone())),
            table: crate::fanout::Table::new(sub, "gw-test".into())
                .await
                .unwrap(),
            bus,
            draining: Default::default(),
            tracker: Default::default(),
            conn_limit: Arc::new(tokio::sync::Semaphore::new(1)),
            cfg: Arc::new(cfg),
        });
        (st, events)
    }

    #[tokio::test]
    async fn a_call_whose_client_hung_up_leaves_no_reply_slot() {
        let (st, _events) = unanswered().await;
        let who = Identity {
            user_id: "u1".into(),
            user_name: "U1".into(),
            tenant: "acme".into(),
        };
        let inbox = Action::LoadNotifications {
            before: None,
            limit: None,
            unread: None,
        };
        let mut call = Box::pin(rpc_action(&st, &who, inbox));
        let waited = tokio::time::timeout(Duration::from_millis(50), call.as_mut()).await;
        assert!(waited.is_err(), "nothing answers: the call still waits");
        assert_eq!(st.table.connections().len(), 1, "its reply slot");
        // What hyper does with a handler whose HTTP client went away.
        drop(call);
        assert!(
            st.table.connections().is_empty(),
            "the slot left with the call"
        );
    }
}
