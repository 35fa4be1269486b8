//! Server-side publish: a backend holding the API key sends an event to a user's
//! connections or a session's members (`job:assigned`, `friend_request`, ...).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use jam_shared::keys;
use jam_shared::protocol::Envelope;
use jam_shared::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rest::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

#[derive(Deserialize)]
pub struct PublishBody {
    #[serde(default)]
    tenant: Option<String>,
    target: Target,
    event: String,
    #[serde(default)]
    data: Option<Value>,
}

fn valid_event(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 64
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
}

/// Constant-time comparison: the key is a secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A call from the application's backend: `X-API-Key: <JAM_API_KEY>` (or the key as a
/// Bearer token). 403 when no key is configured, 401 for a wrong one.
pub fn backend_key(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = st.cfg.api_key.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "backend calls are disabled (JAM_API_KEY unset)",
        ));
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| crate::auth::sources::bearer(headers));
    if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
        return Err(ApiError::new(ErrorCode::Unauthorized, "invalid API key"));
    }
    Ok(())
}

/// The tenant a backend call names (the default one when absent).
pub fn backend_tenant(tenant: Option<String>) -> Result<String, ApiError> {
    let tenant = tenant
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| keys::DEFAULT_TENANT.to_string());
    if tenant.len() > 64
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::new(ErrorCode::BadRequest, "bad tenant"));
    }
    Ok(tenant)
}

/// Who a backend call acts as: no user (ids starting with `@` are the server's).
pub fn backend_identity(tenant: String) -> jam_shared::auth::Identity {
    jam_shared::auth::Identity {
        user_id: "@backend".into(),
        user_name: "backend".into(),
        tenant,
    }
}

pub async fn publish(
    State(st): State<AppState>,
    headers: HeaderMap,
    b: super::api::Body<PublishBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    backend_key(&st, &headers)?;
    let body = super::api::body(b)?;
    if !valid_event(&body.event) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "event must be 1-64 characters of [A-Za-z0-9_:.-]",
        ));
    }
    let tenant = backend_tenant(body.tenant)?;
    let channel = match (&body.target.user_id, &body.target.session_id) {
        (Some(u), None) if !u.is_empty() => keys::user_channel(&tenant, u),
        (None, Some(s)) if jam_shared::ids::is_valid_session_id(s) => {
            keys::room_channel(&tenant, s)
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "target must be {userId} or {sessionId}",
            ))
        }
    };
    let mut frame = serde_json::Map::new();
    frame.insert("type".into(), Value::String(body.event.clone()));
    match body.data {
        None | Some(Value::Null) => {}
        Some(Value::Object(data)) => {
            for (k, v) in data {
                // The event name is the frame's type; data cannot override it.
                if k != "type" && k != "ref" {
                    frame.insert(k, v);
                }
            }
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "data must be an object",
            ))
        }
    }
    let bytes = serde_json::to_vec(&Value::Object(frame)).expect("json serializes");
    if bytes.len() > st.cfg.max_frame_bytes {
        return Err(ApiError::new(ErrorCode::BadRequest, "event too large"));
    }
    let env = Envelope {
        ts: jam_shared::clock::now_us(),
        ..Default::default()
    };
    st.bus
        .publish(&channel, env.encode(&[bytes.into()]))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "bus unavailable, try again"))?;
    metrics::counter!("jam_server_publishes_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({"published": true}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!(valid_event("job:assigned") && valid_event("friend_request"));
        assert!(!valid_event("") && !valid_event("a b") && !valid_event(&"x".repeat(65)));
    }

    #[test]
    fn key_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"abcd"));
    }
}
