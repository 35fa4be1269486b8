//! The REST API (Bearer JWT): the same commands as the WebSocket, answered as JSON.
//! What REST changes is announced to the session's sockets exactly as if it came over WS.

use crate::ws::wire::ClientFrame;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use jam_shared::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rest::{rpc, rpc_action, ApiError, Caller};
use crate::state::AppState;

/// A JSON body, or why it is not one.
pub type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The body, or a 400 (a 413 with its metric when it is over `JAM_MAX_BODY_BYTES`).
pub fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection};
        let too_large = matches!(
            &e,
            JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(
                FailedToBufferBody::LengthLimitError(_)
            ))
        );
        if too_large {
            metrics::counter!("jam_limit_refusals_total", "limit" => "body_bytes").increment(1);
            return ApiError {
                status: Some(StatusCode::PAYLOAD_TOO_LARGE),
                ..ApiError::new(ErrorCode::LimitExceeded, "request body too large")
            };
        }
        ApiError::new(ErrorCode::BadRequest, e.body_text())
    })
}

pub async fn version() -> Json<Value> {
    Json(json!({"name": "jam", "version": env!("CARGO_PKG_VERSION"), "protocol": 1}))
}

/// `?before=&beforeId=&limit=`: a page older than (`before`, `beforeId`), the first item of
/// the page before it, so that items sharing a millisecond are neither lost nor repeated.
/// One type for every query paged by time and id, so that a field spelled for one is
/// spelled for all.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    before_id: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/sessions?before=&beforeId=&limit=`: a page of the tenant's public, active
/// sessions, newest first.
pub async fn list_sessions(
    State(st): State<AppState>,
    Caller(who): Caller,
    q: Result<Query<Cursor>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q?;
    let frame = ClientFrame::GetSessions {
        before: p.before,
        before_id: p.before_id,
        limit: p.limit,
    };
    let v = rpc(&st, &who, frame).await?;
    Ok(Json(
        json!({"sessions": v["sessions"], "hasMore": v["hasMore"]}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    /// Optional: spotify-sync's client sends only `{userId, userName}` (both ignored: the
    /// identity is the token's); the session is then named after the caller.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    is_private: Option<bool>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    max_participants: Option<u32>,
}

pub async fn create_session(
    State(st): State<AppState>,
    Caller(who): Caller,
    b: Body<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    st.limits.session_created(&who).await?;
    let name = b.name.unwrap_or_else(|| {
        format!("{}'s session", who.user_name)
            .chars()
            .take(100)
            .collect()
    });
    let action = ClientFrame::CreateSession {
        name,
        description: b.description,
        is_private: b.is_private,
        password: b.password,
        max_participants: b.max_participants,
    };
    let v = rpc(&st, &who, action).await?;
    let s = &v["session"];
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "sessionId": s["id"], "role": "host", "createdAt": s["createdAt"], "expiresAt": s["expiresAt"],
            "session": s,
        })),
    ))
}

#[derive(Deserialize, Default)]
pub struct JoinBody {
    #[serde(default)]
    password: Option<String>,
}

pub async fn join_session(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    b: Body<JoinBody>,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: no JSON content type means no password.
    let b = match b {
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_)) => {
            JoinBody::default()
        }
        b => body(b)?,
    };
    let password = b.password;
    let v = rpc(
        &st,
        &who,
        ClientFrame::JoinSession {
            session_id: id,
            password,
            capabilities: None,
            since_seq: None,
        },
    )
    .await?;
    let s = &v["session"];
    let host_name = s["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == s["hostId"]))
        .map(|p| p["name"].clone());
    let me = s["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == who.user_id.as_str()));
    Ok(Json(json!({
        "sessionId": s["id"],
        "role": if s["hostId"] == who.user_id.as_str() { "host" } else { "client" },
        "hostName": host_name,
        "joinedAt": me.map(|p| p["joinedAt"].clone()),
        "session": s,
    })))
}

pub async fn end_session(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    rpc(&st, &who, ClientFrame::EndSession { session_id: id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Page {
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

pub async fn session_messages(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q?;
    let v = rpc(
        &st,
        &who,
        ClientFrame::LoadHistory {
            session_id: id,
            before: p.before,
            limit: p.limit,
        },
    )
    .await?;
    Ok(Json(
        json!({"messages": v["messages"], "hasMore": v["hasMore"]}),
    ))
}

/// `?with=`: the other user of a direct conversation.
#[derive(Deserialize)]
pub struct With {
    with: String,
}

/// `GET /api/messages/direct?with=&before=&beforeId=&limit=`: a page of the conversation
/// with one user, oldest first.
pub async fn direct_messages(
    State(st): State<AppState>,
    Caller(who): Caller,
    w: Result<Query<With>, axum::extract::rejection::QueryRejection>,
    q: Result<Query<Cursor>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(w) = w?;
    let Query(p) = q?;
    let v = rpc(
        &st,
        &who,
        ClientFrame::LoadDirect {
            with: w.with,
            before: p.before,
            before_id: p.before_id,
            limit: p.limit,
        },
    )
    .await?;
    Ok(Json(
        json!({"with": v["with"], "messages": v["messages"], "hasMore": v["hasMore"]}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetBody {
    offset_ms: f64,
}

pub async fn set_offset(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    b: Body<OffsetBody>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let v = rpc(
        &st,
        &who,
        ClientFrame::SetOffset {
            session_id: id,
            offset_ms: b.offset_ms,
        },
    )
    .await?;
    Ok(Json(
        json!({"sessionId": v["sessionId"], "offsetMs": v["offsetMs"], "updatedAt": v["updatedAt"]}),
    ))
}

pub async fn session_state(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut v = rpc(&st, &who, ClientFrame::GetState { session_id: id }).await?;
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterBody {
    #[serde(default)]
    tenant: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    is_private: Option<bool>,
    #[serde(default)]
    max_participants: Option<u32>,
}

/// `PUT /api/sessions/{id}` (API key): the application's backend creates (201) or updates
/// (200) a room under its own id (a show's chat), in its tenant. Clients join it by that id
/// (`join_session`, or show-chat's `join_show`).
pub async fn register_session(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    b: Body<RegisterBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    super::publish::backend_key(&st, &headers)?;
    let b = body(b)?;
    let who = super::publish::backend_identity(super::publish::backend_tenant(b.tenant)?);
    let action = jam_shared::protocol::Action::RegisterSession {
        session_id: id,
        name: b.name,
        description: b.description,
        is_private: b.is_private,
        max_participants: b.max_participants,
    };
    let v = rpc_action(&st, &who, action).await?;
    let status = if v["created"] == true {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"session": v["session"], "created": v["created"]})),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttendancePage {
    /// With the API key: the tenant.
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    after_user_id: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/sessions/{id}/attendance`: who checked in and out, for the host (Bearer) or
/// the backend (API key, `?tenant=`). Kept after the session ends.
pub async fn attendance(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    use axum::extract::FromRequestParts;
    let (mut parts, _) = req.into_parts();
    let backend = parts.headers.contains_key("x-api-key");
    let Query(q) = Query::<AttendancePage>::try_from_uri(&parts.uri)?;
    let who = if backend {
        super::publish::backend_key(&st, &parts.headers)?;
        super::publish::backend_identity(super::publish::backend_tenant(q.tenant)?)
    } else {
        Caller::from_request_parts(&mut parts, &st).await?.0
    };
    let action = jam_shared::protocol::Action::GetAttendance {
        session_id: id,
        backend,
        after: q.after,
        after_user_id: q.after_user_id,
        limit: q.limit,
    };
    let v = rpc_action(&st, &who, action).await?;
    Ok(Json(
        json!({"sessionId": v["sessionId"], "attendance": v["attendance"], "hasMore": v["hasMore"]}),
    ))
}

/// The OpenAPI document, kept beside the handlers; a test checks every route is in it.
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[cfg(test)]
mod tests {
    use super::{Cursor, With, OPENAPI};
    use axum::extract::Query;

    fn query<T: serde::de::DeserializeOwned>(q: &str) -> Option<T> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        Query::<T>::try_from_uri(&uri).ok().map(|Query(t)| t)
    }

    /// The cursor's fields as docs/protocol.md spells them, numbers read as numbers, for
    /// the session list and a direct conversation alike (`with` beside it).
    #[test]
    fn a_cursor_is_read_from_the_query_string() {
        let c: Cursor = query("before=1700000000000&beforeId=m-1&limit=3&with=bob").unwrap();
        assert_eq!(c.before, Some(1_700_000_000_000));
        assert_eq!(c.before_id.as_deref(), Some("m-1"));
        assert_eq!(c.limit, Some(3));
        let w: With = query("before=1&with=bob").unwrap();
        assert_eq!(w.with, "bob");
        let empty: Cursor = query("").unwrap();
        assert!(empty.before.is_none() && empty.before_id.is_none() && empty.limit.is_none());
        assert!(
            query::<Cursor>("before=soon").is_none(),
            "a bad number is refused"
        );
        assert!(
            query::<With>("before=1").is_none(),
            "a conversation needs `with`"
        );
    }

    /// Every route the router serves is documented, with its method, and vice versa.
    #[test]
    fn openapi_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let src = include_str!("../lib.rs");
        let mut served = Vec::new();
        for chunk in src.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap();
            let body = chunk.split(".with_state").next().unwrap();
            for m in ["get", "post", "patch", "delete", "put"] {
                if body.contains(&format!("{m}(")) {
                    served.push((path.to_string(), m.to_string()));
                }
            }
        }
        let served: Vec<_> = served.into_iter().filter(|(p, _)| p != "/ws").collect();
        assert!(served.len() >= 14, "{served:?}");
        for (p, m) in &served {
            assert!(
                doc["paths"][p][m].is_object(),
                "{m} {p} is served but not in openapi.json"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            served.len(),
            "openapi.json documents routes the router does not serve"
        );
    }
}
