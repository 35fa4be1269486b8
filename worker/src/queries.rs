//! Reads the engine has allowed (membership already checked), answered off the engine's
//! thread so a slow history query never delays a room's commands.

use std::sync::Arc;

use jam_shared::bus::Bus;
use jam_shared::protocol::event::{error, frame};
use jam_shared::store::Store;
use jam_shared::ErrorCode;
use serde_json::json;

use crate::engine::effects::reply_to;
use crate::engine::Query;

pub async fn answer(store: Arc<dyn Store>, bus: Arc<dyn Bus>, q: Query) {
    let (cmd, reply) = match q {
        Query::History {
            cmd,
            session_id,
            before,
            limit,
        } => {
            // One extra row tells whether an older page exists.
            let r = store
                .history(&cmd.tenant, &session_id, before, limit + 1)
                .await;
            let f = match r {
                Ok(mut msgs) => {
                    let has_more = msgs.len() > limit;
                    if has_more {
                        msgs.remove(0);
                    }
                    frame(
                        "message_history",
                        &json!({"sessionId": session_id, "messages": msgs, "hasMore": has_more}),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history query failed");
                    error(ErrorCode::Unavailable, "history unavailable, try again")
                }
            };
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
            let f = match r {
                Ok(mut msgs) => {
                    let has_more = msgs.len() > limit;
                    if has_more {
                        msgs.remove(0);
                    }
                    frame(
                        "direct_history",
                        &json!({"with": with, "messages": msgs, "hasMore": has_more}),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "direct history query failed");
                    error(ErrorCode::Unavailable, "history unavailable, try again")
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
