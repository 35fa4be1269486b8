//! The REST API (Bearer JWT): the same commands as the WebSocket, answered as JSON.
//! What REST changes is announced to the session's sockets exactly as if it came over WS.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rest::{rpc, ApiError, Caller};
use crate::state::AppState;

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
}

pub async fn version() -> Json<Value> {
    Json(json!({"name": "jam", "version": env!("CARGO_PKG_VERSION"), "protocol": 1}))
}

pub async fn list_sessions(
    State(st): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    let v = rpc(&st, &who, Action::GetSessions {}).await?;
    Ok(Json(json!({"sessions": v["sessions"]})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    name: String,
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
    let action = Action::CreateSession {
        name: b.name,
        description: b.description,
        is_private: b.is_private,
        password: b.password,
        max_participants: b.max_participants,
        password_hash: None,
        session_id: None,
    };
    let v = rpc(&st, &who, action).await?;
    Ok((StatusCode::CREATED, Json(json!({"session": v["session"]}))))
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
    b: Option<Json<JoinBody>>,
) -> Result<Json<Value>, ApiError> {
    let password = b.and_then(|Json(b)| b.password);
    let v = rpc(
        &st,
        &who,
        Action::JoinSession {
            session_id: id,
            password,
        },
    )
    .await?;
    Ok(Json(json!({"session": v["session"]})))
}

pub async fn end_session(
    State(st): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    rpc(&st, &who, Action::EndSession { session_id: id }).await?;
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
    Query(p): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let v = rpc(
        &st,
        &who,
        Action::LoadHistory {
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

#[derive(Deserialize)]
pub struct DirectPage {
    with: String,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

pub async fn direct_messages(
    State(st): State<AppState>,
    Caller(who): Caller,
    q: Result<Query<DirectPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let v = rpc(
        &st,
        &who,
        Action::LoadDirect {
            with: p.with,
            before: p.before,
            limit: p.limit,
        },
    )
    .await?;
    Ok(Json(
        json!({"with": v["with"], "messages": v["messages"], "hasMore": v["hasMore"]}),
    ))
}
