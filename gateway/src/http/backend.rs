//! REST calls for the application's backend beside publish: notifications
//! (dj-system-socketio.md: the backend creates them with the API key, a user pages through
//! their own with a Bearer token) and the contacts a user watches (ws-chat-server.md).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{body, Body};
use super::publish::{backend_key, backend_tenant};
use super::rest::{rpc, rpc_action, ApiError, Caller};
use crate::state::AppState;
use crate::ws::wire::ClientFrame;

/// Most users one `POST /api/notifications` may address.
pub const MAX_RECIPIENTS: usize = 1000;
/// Calls to the workers in flight for one request.
const FAN_OUT: usize = 32;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_ids: Option<Vec<String>>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    priority: Option<String>,
    title: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Map<String, Value>>,
}

/// The users a create call addresses: `userId` or `userIds`, 1 to 1000 distinct ids.
fn recipients(b: &CreateBody) -> Result<Vec<String>, ApiError> {
    let mut users: Vec<String> = match (&b.user_id, &b.user_ids) {
        (Some(u), None) => vec![u.clone()],
        (None, Some(us)) => us.clone(),
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give userId or userIds",
            ))
        }
    };
    users.sort();
    users.dedup();
    if users.is_empty() || users.len() > MAX_RECIPIENTS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("1 to {MAX_RECIPIENTS} users"),
        ));
    }
    if users.iter().any(|u| u.is_empty() || u.len() > 256) {
        return Err(ApiError::new(ErrorCode::BadRequest, "bad userId"));
    }
    // Checked for every user before any is notified (`rpc_action` checks each call).
    if users.iter().any(|u| u.contains('\0')) {
        let refused = jam_shared::protocol::nul::REFUSED;
        return Err(ApiError::new(ErrorCode::BadRequest, refused));
    }
    Ok(users)
}

/// `POST /api/notifications` (API key): one notification in each user's inbox; every
/// connection of the user gets `notification:new` and `notification:unread-count`.
/// All or an error: after a 503 some may have been created.
pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    b: Body<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    backend_key(&st, &headers)?;
    let b = body(b)?;
    let users = recipients(&b)?;
    let tenant = backend_tenant(b.tenant.clone())?;
    let action = Action::Notify {
        kind: b.kind,
        priority: b.priority.unwrap_or_else(|| "NORMAL".into()),
        title: b.title,
        message: b.message.unwrap_or_default(),
        data: Value::Object(b.data.unwrap_or_default()),
    };
    action.validate().map_err(|(c, m)| ApiError::new(c, m))?;
    let mut created = Vec::with_capacity(users.len());
    for chunk in users.chunks(FAN_OUT) {
        let calls = chunk.iter().map(|u| {
            let who = jam_shared::auth::Identity {
                user_id: u.clone(),
                user_name: String::new(),
                tenant: tenant.clone(),
            };
            let action = action.clone();
            let st = st.clone();
            async move { rpc_action(&st, &who, action).await }
        });
        for r in futures_util::future::join_all(calls).await {
            let v = r?;
            created.push(json!({"userId": v["userId"], "id": v["id"]}));
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"count": created.len(), "notifications": created})),
    ))
}

#[derive(Deserialize)]
pub struct Page {
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    unread: Option<bool>,
}

/// `GET /api/notifications?before=&limit=&unread=`: the caller's inbox, newest first.
pub async fn list(
    State(st): State<AppState>,
    Caller(who): Caller,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q?;
    let v = rpc(
        &st,
        &who,
        ClientFrame::LoadNotifications {
            before: p.before,
            limit: p.limit,
            unread: p.unread,
        },
    )
    .await?;
    Ok(Json(json!({
        "notifications": v["notifications"], "hasMore": v["hasMore"], "unreadCount": v["unreadCount"],
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsBody {
    #[serde(default)]
    tenant: Option<String>,
    contacts: Vec<String>,
}

/// `PUT /api/users/{id}/contacts` (API key): the people user `id` watches (replacing the
/// earlier list; direct-message partners are contacts anyway). They are told `user_online`
/// / `user_offline` about them from their next change on.
pub async fn set_contacts(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    b: Body<ContactsBody>,
) -> Result<Json<Value>, ApiError> {
    backend_key(&st, &headers)?;
    let b = body(b)?;
    if id.is_empty() || id.len() > 256 {
        return Err(ApiError::new(ErrorCode::BadRequest, "bad user id"));
    }
    let who = jam_shared::auth::Identity {
        user_id: id,
        user_name: String::new(),
        tenant: backend_tenant(b.tenant)?,
    };
    let v = rpc_action(
        &st,
        &who,
        Action::SetContacts {
            contacts: b.contacts,
        },
    )
    .await?;
    Ok(Json(
        json!({"userId": v["userId"], "contacts": v["contacts"]}),
    ))
}
