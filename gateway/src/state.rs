//! What every handler shares: config, token verifier, bus, routing table, drain state.

use std::sync::Arc;

use jam_shared::auth::Identity;
use jam_shared::bus::{Bus, BusError};
use jam_shared::config::Config;
use jam_shared::keys;
use jam_shared::protocol::{Action, Command};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::Table;

/// One pointer to [`Services`]: every connection's task holds a copy (8 bytes, not the
/// 80 of the services' own handles).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub cfg: Arc<Config>,
    pub auth: Arc<crate::auth::Authenticator>,
    pub limits: Arc<crate::limits::Limiter>,
    /// Custom events answered by the application's backend.
    pub rpc: Arc<crate::rpc::Rpc>,
    pub bus: Arc<dyn Bus>,
    pub table: Arc<Table>,
    /// Cancelled on SIGTERM: not ready, no new connections.
    pub draining: CancellationToken,
    /// Every connection task, so a drain can wait for them.
    pub tracker: TaskTracker,
    pub conn_limit: Arc<Semaphore>,
}

impl Services {
    /// This gateway's node id for this boot (`<instance>#<boot>`): commands carry it so
    /// replies reach this gateway's inbox, and a restart is a new node to the workers.
    pub fn gateway_id(&self) -> &str {
        self.table.node()
    }

    /// Put a socket's command on its partition's stream.
    pub async fn send_command(
        &self,
        who: &Identity,
        conn: &str,
        r#ref: Option<serde_json::Value>,
        rtt_ms: Option<f64>,
        action: Action,
    ) -> Result<(), BusError> {
        self.send_keyed(who, conn, r#ref, rtt_ms, action, None)
            .await
    }

    /// [`send_command`](Self::send_command) with the client's idempotency key: the
    /// command's id is derived from it, so a retry is recognised as the same command.
    pub async fn send_keyed(
        &self,
        who: &Identity,
        conn: &str,
        r#ref: Option<serde_json::Value>,
        rtt_ms: Option<f64>,
        action: Action,
        key: Option<&str>,
    ) -> Result<(), BusError> {
        self.enqueue(who, conn, r#ref, rtt_ms, action, false, key)
            .await
    }

    /// Put a REST call's command on its partition's stream.
    pub async fn send_rest_command(
        &self,
        who: &Identity,
        conn: &str,
        action: Action,
    ) -> Result<(), BusError> {
        self.enqueue(who, conn, None, None, action, true, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        who: &Identity,
        conn: &str,
        r#ref: Option<serde_json::Value>,
        rtt_ms: Option<f64>,
        action: Action,
        ephemeral: bool,
        key: Option<&str>,
    ) -> Result<(), BusError> {
        let id = match key {
            // Unique per user (and tenant: every store key carries it).
            Some(k) => format!("k:{}:{k}", who.user_id),
            // Time-ordered: one connection's direct messages keep their order in history.
            None => jam_shared::ids::ordered(),
        };
        let cmd = Command {
            id,
            tenant: who.tenant.clone(),
            user_id: who.user_id.clone(),
            user_name: who.user_name.clone(),
            conn: conn.to_string(),
            gateway: self.gateway_id().to_string(),
            r#ref,
            received_at: jam_shared::clock::now_ms(),
            ephemeral,
            rtt_ms,
            action,
        };
        let partition = keys::partition_of(&cmd.partition_key(), self.cfg.partitions);
        self.bus
            .xadd_command(&keys::command_stream(partition), cmd)
            .await
            .map(|_| ())
    }
}
