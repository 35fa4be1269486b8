//! Reads the engine has allowed (membership already checked), answered off the engine's
//! thread so a slow history query never delays a room's commands.

use std::sync::Arc;

use crate::model::SessionSummary;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use jam_shared::bus::Bus;
use jam_shared::protocol::event::{error, frame};
use jam_shared::protocol::Command;
use jam_shared::ErrorCode;
use serde_json::json;

use crate::engine::effects::reply_to;
use crate::engine::{Page, Query};

pub async fn answer(store: Arc<dyn Store>, bus: Arc<dyn Bus>, q: Query) {
    let store = &*store;
    let (cmd, reply) = match q {
        Query::History {
            cmd,
            session_id,
            since,
            before,
            limit,
        } => {
            let f = history(store, &cmd, &session_id, since, before, limit).await;
            (cmd, f)
        }
        Query::Direct { cmd, with, page } => {
            let f = direct(store, &cmd, &with, &page).await;
            (cmd, f)
        }
        Query::Sessions { cmd, page } => {
            let f = sessions(store, &cmd, &page).await;
            (cmd, f)
        }
        Query::Notifications {
            cmd,
            before,
            limit,
            unread_only,
            unread_count,
        } => {
            let f = notifications(store, &cmd, before, limit, unread_only, unread_count).await;
            (cmd, f)
        }
        Query::Presence { cmd, user_ids } => {
            let f = presence(store, &cmd, &user_ids).await;
            (cmd, f)
        }
        Query::Attendance {
            cmd,
            session_id,
            require_host,
            live,
            page,
        } => {
            let asked = Asked {
                session_id: &session_id,
                require_host: require_host.as_deref(),
                live,
            };
            let f = attendance(store, &cmd, asked, &page).await;
            (cmd, f)
        }
    };
    let (channel, payload) = reply_to(&cmd, &[reply]);
    if let Err(e) = bus.publish(&channel, payload).await {
        tracing::warn!(error = %e, "publishing a query answer failed");
    }
}

/// The error frame for a query the store could not answer (a retry may help).
fn unavailable(what: &str, e: &StoreError) -> Bytes {
    tracing::warn!(error = %e, "{what} query failed");
    error(
        ErrorCode::Unavailable,
        &format!("{what} unavailable, try again"),
    )
}

async fn history(
    store: &dyn Store,
    cmd: &Command,
    session_id: &str,
    since: i64,
    before: Option<i64>,
    limit: usize,
) -> Bytes {
    let r = store
        .history(&cmd.tenant, session_id, since, before, limit + 1)
        .await;
    page("history", r, limit, |msgs, more| {
        frame(
            "message_history",
            &json!({"sessionId": session_id, "messages": msgs, "hasMore": more}),
        )
    })
}

async fn direct(store: &dyn Store, cmd: &Command, with: &str, p: &Page) -> Bytes {
    let r = store
        .direct_history(&cmd.tenant, &cmd.user_id, with, p.cursor(), p.limit + 1)
        .await;
    page("direct messages", r, p.limit, |msgs, more| {
        frame(
            "direct_history",
            &json!({"with": with, "messages": msgs, "hasMore": more}),
        )
    })
}

/// A page of the public, active sessions, newest first.
async fn sessions(store: &dyn Store, cmd: &Command, p: &Page) -> Bytes {
    let mut rows = match store
        .list_sessions(&cmd.tenant, p.cursor(), p.limit + 1)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return unavailable("sessions", &e),
    };
    let more = drop_extra(&mut rows, p.limit, Extra::Last);
    let list: Vec<SessionSummary> = rows
        .iter()
        .map(|(s, n)| SessionSummary {
            participant_count: *n,
            ..s.summary()
        })
        .collect();
    frame(
        "sessions_list",
        &json!({ "sessions": list, "hasMore": more }),
    )
}

async fn notifications(
    store: &dyn Store,
    cmd: &Command,
    before: Option<i64>,
    limit: usize,
    unread_only: bool,
    unread_count: usize,
) -> Bytes {
    let r = store
        .notifications(&cmd.tenant, &cmd.user_id, before, limit + 1, unread_only)
        .await;
    match r {
        Ok(mut rows) => {
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            frame(
                "notifications",
                &json!({"notifications": rows, "hasMore": has_more, "unreadCount": unread_count}),
            )
        }
        Err(e) => unavailable("notifications", &e),
    }
}

/// Which of `user_ids` (the asker's contacts) are online.
async fn presence(store: &dyn Store, cmd: &Command, user_ids: &[String]) -> Bytes {
    match store
        .contacts_online(&cmd.tenant, &cmd.user_id, user_ids)
        .await
    {
        Ok(rows) => {
            let users: Vec<_> = rows
                .into_iter()
                .map(|(id, online)| json!({"userId": id, "online": online}))
                .collect();
            frame("presence", &json!({ "users": users }))
        }
        Err(e) => unavailable("presence", &e),
    }
}

/// Whose attendance list, for whom.
struct Asked<'a> {
    session_id: &'a str,
    /// Only for the session's host (who checked in as host).
    require_host: Option<&'a str>,
    /// The session is live: no rows is an answer, not "not found".
    live: bool,
}

/// A page of who attended a session, first check-in first.
async fn attendance(store: &dyn Store, cmd: &Command, asked: Asked<'_>, page: &Page) -> Bytes {
    let sid = asked.session_id;
    let after = page.cursor();
    let mut rows = match store
        .attendance(&cmd.tenant, sid, after, page.limit + 1)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return unavailable("attendance", &e),
    };
    if rows.is_empty() && !asked.live && after.is_none() {
        return error(ErrorCode::SessionNotFound, "Session not found");
    }
    if let Some(user) = asked.require_host {
        match store.hosted(&cmd.tenant, sid, user).await {
            Ok(true) => {}
            Ok(false) => return error(ErrorCode::Forbidden, "only the host can see who attended"),
            Err(e) => return unavailable("attendance", &e),
        }
    }
    let has_more = drop_extra(&mut rows, page.limit, Extra::Last);
    frame(
        "attendance",
        &json!({"sessionId": sid, "attendance": rows, "hasMore": has_more}),
    )
}

/// A page of `limit` from a query that asked for `limit + 1` rows (oldest first): the
/// extra row tells whether an older page exists. `what` names it in an error.
fn page<T>(
    what: &str,
    rows: Result<Vec<T>, StoreError>,
    limit: usize,
    build: impl FnOnce(Vec<T>, bool) -> Bytes,
) -> Bytes {
    match rows {
        Ok(mut rows) => {
            let has_more = drop_extra(&mut rows, limit, Extra::First);
            build(rows, has_more)
        }
        Err(e) => unavailable(what, &e),
    }
}

/// Where a query that asked for `limit + 1` rows finds the extra one: first in a page read
/// backwards and returned oldest first, last in a page read forwards.
enum Extra {
    First,
    Last,
}

/// Take the extra row off `rows`; whether there was one (another page exists).
fn drop_extra<T>(rows: &mut Vec<T>, limit: usize, at: Extra) -> bool {
    if rows.len() <= limit {
        return false;
    }
    match at {
        Extra::First => drop(rows.remove(0)),
        Extra::Last => rows.truncate(limit),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::page;
    use crate::store::StoreError;
    use bytes::Bytes;

    #[test]
    fn a_page_keeps_the_newest_and_a_failed_read_names_what_was_read() {
        let ok = page("history", Ok(vec![1, 2, 3]), 2, |rows, more| {
            Bytes::from(format!("{rows:?} {more}"))
        });
        assert_eq!(ok, "[2, 3] true");
        let failed = page::<i32>(
            "direct messages",
            Err(StoreError::Corrupt("gone".into())),
            2,
            |_, _| Bytes::new(),
        );
        let text = std::str::from_utf8(&failed).unwrap();
        assert!(text.contains("direct messages unavailable"), "{text}");
        assert!(text.contains("UNAVAILABLE"), "{text}");
    }
}
