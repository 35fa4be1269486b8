//! A command as it travels gateway → worker on the command stream: the action plus
//! the identity the gateway authenticated (never taken from the frame).

use serde::{Deserialize, Serialize};

use super::Action;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// Unique; the worker applies a command id once.
    pub id: String,
    pub tenant: String,
    pub user_id: String,
    pub user_name: String,
    /// The connection (or REST call) the reply goes to.
    pub conn: String,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<serde_json::Value>,
    /// Server clock (ms) when the gateway received the frame.
    pub received_at: i64,
    /// A REST call, not a socket: replies go to `conn` on the user channel and the
    /// caller never counts as a live connection of the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// Best recent round-trip time (ms) of the sending connection, for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    pub action: Action,
}

impl Command {
    /// The key deciding the command's partition: the session, else the user.
    pub fn partition_key(&self) -> String {
        match self.action.session_id() {
            Some(id) => id.to_string(),
            None => format!("{}:{}", self.tenant, self.user_id),
        }
    }
}
