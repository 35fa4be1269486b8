//! Reads the engine has allowed (membership already checked), answered off the engine's
//! thread so a slow history query never delays a room's commands.

use std::sync::Arc;

use crate::model::{SessionStatus, SessionSummary};
use crate::store::{Store, StoreError};
use jam_shared::bus::Bus;
use jam_shared::protocol::event::{error, frame};
use jam_shared::ErrorCode;
use serde_json::json;

use crate::engine::effects::reply_to;
use crate::engine::Query;

pub async fn answer(store: Arc<dyn Store>, bus: Arc<dyn Bus>, q: Query) {
    // One extra row tells whether an older page exists.
    let (cmd, reply) = match q {
        Query::History {
            cmd,
            session_id,
            since,
            before,
            limit,
        } => {
            let r = store
                .history(&cmd.tenant, &session_id, since, before, limit + 1)
                .await;
            let f = page(r, limit, |msgs, more| {
                frame(
                    "message_history",
                    &json!({"sessionId": session_id, "messages": msgs, "hasMore": more}),
                )
            });
            (cmd, f)
        }
        Query::Direct {
            cmd,
            with,
            before,
            limit,
        } => {
            let r = store
                .direct_history(&cmd.tenant, &cmd.user_id, &with, before, limit + 1)
                .await;
            let f = page(r, limit, |msgs, more| {
                frame(
                    "direct_history",
                    &json!({"with": with, "messages": msgs, "hasMore": more}),
                )
            });
            (cmd, f)
        }
        Query::Sessions { cmd } => {
            let f = match store.list_sessions(&cmd.tenant).await {
                Ok(all) => {
                    let mut list: Vec<_> = all
                        .iter()
                        .filter(|(s, _)| !s.is_private && s.status == SessionStatus::Active)
                        .map(|(s, n)| SessionSummary {
                            participant_count: *n,
                            ..s.summary()
                        })
                        .collect();
                    list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
                    frame("sessions_list", &json!({ "sessions": list }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing sessions failed");
                    error(ErrorCode::Unavailable, "sessions unavailable, try again")
                }
            };
            (cmd, f)
        }
        Query::Notifications {
            cmd,
            before,
            limit,
            unread_only,
            unread_count,
        } => {
            let r = store
                .notifications(&cmd.tenant, &cmd.user_id, before, limit + 1, unread_only)
                .await;
            let f = match r {
                Ok(mut rows) => {
                    let has_more = rows.len() > limit;
                    rows.truncate(limit);
                    frame(
                        "notifications",
                        &json!({"notifications": rows, "hasMore": has_more, "unreadCount": unread_count}),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notifications query failed");
                    error(
                        ErrorCode::Unavailable,
                        "notifications unavailable, try again",
                    )
                }
            };
            (cmd, f)
        }
        Query::Presence { cmd, user_ids } => {
            let f = match store
                .contacts_online(&cmd.tenant, &cmd.user_id, &user_ids)
                .await
            {
                Ok(rows) => {
                    let users: Vec<_> = rows
                        .into_iter()
                        .map(|(id, online)| json!({"userId": id, "online": online}))
                        .collect();
                    frame("presence", &json!({ "users": users }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence query failed");
                    error(ErrorCode::Unavailable, "presence unavailable, try again")
                }
            };
            (cmd, f)
        }
        Query::Attendance {
            cmd,
            session_id,
            require_host,
            live,
        } => {
            let f = match store.attendance(&cmd.tenant, &session_id).await {
                Ok(rows) if rows.is_empty() && !live => {
                    error(ErrorCode::SessionNotFound, "Session not found")
                }
                Ok(rows)
                    if require_host
                        .as_ref()
                        .is_some_and(|u| !rows.iter().any(|r| &r.user_id == u && r.host)) =>
                {
                    error(ErrorCode::Forbidden, "only the host can see who attended")
                }
                Ok(rows) => frame(
                    "attendance",
                    &json!({"sessionId": session_id, "attendance": rows}),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "attendance query failed");
                    error(ErrorCode::Unavailable, "attendance unavailable, try again")
                }
            };
            (cmd, f)
        }
    };
    let (channel, payload) = reply_to(&cmd, &[reply]);
    if let Err(e) = bus.publish(&channel, payload).await {
        tracing::warn!(error = %e, "publishing a query answer failed");
    }
}

/// A page of `limit` from a query that asked for `limit + 1` rows (oldest first).
fn page<T>(
    rows: Result<Vec<T>, StoreError>,
    limit: usize,
    build: impl FnOnce(Vec<T>, bool) -> bytes::Bytes,
) -> bytes::Bytes {
    match rows {
        Ok(mut rows) => {
            let has_more = rows.len() > limit;
            if has_more {
                rows.remove(0);
            }
            build(rows, has_more)
        }
        Err(e) => {
            tracing::warn!(error = %e, "history query failed");
            error(ErrorCode::Unavailable, "history unavailable, try again")
        }
    }
}
