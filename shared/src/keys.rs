//! Names of every Redis channel and stream, in one place so tenants stay apart:
//! each name carries the tenant, so two tenants never share a channel.

/// The tenant of tokens without a `tenant` claim.
pub const DEFAULT_TENANT: &str = "_";

/// The channel a room's events travel on. No `{hash tag}`: in a Redis Cluster each room's
/// channel hashes to its own slot, so rooms spread over the shards (sharded pub/sub).
pub fn room_channel(tenant: &str, session_id: &str) -> String {
    ["jam:", tenant, ":room:", session_id].concat()
}

/// The channel every connection of one user listens on.
pub fn user_channel(tenant: &str, user_id: &str) -> String {
    ["jam:", tenant, ":user:", user_id].concat()
}

/// The inbox of one gateway node: replies and frames for one of its connections.
pub fn gateway_inbox(node: &str) -> String {
    ["jam:gw:", node].concat()
}

/// The lease a worker holds to own a partition.
pub fn partition_lease(partition: u32) -> String {
    format!("jam:lease:{partition}")
}

/// The registry of live workers (a sorted set of expiry times).
pub const WORKER_REGISTRY: &str = "jam:workers";

/// The workers that are applying commands (their store answers): a gateway is ready only
/// while one is.
pub const WORKERS_APPLYING: &str = "jam:workers:applying";

/// Workers say here when partitions change hands on purpose: a worker that starts, gives
/// back its surplus or stops. Every worker balances at once instead of at its next round,
/// so a planned hand-over takes the time of a partition's stop, not of a lease round.
pub const WORKER_HANDOVER_CHANNEL: &str = "jam:workers:handover";

/// The instance name of a node id (`<instance>#<boot>`).
pub fn node_instance(node: &str) -> &str {
    node.rsplit_once('#').map_or(node, |(i, _)| i)
}

/// Gateways announce themselves here; the worker notices the ones that go quiet.
pub const GATEWAY_HEARTBEAT_CHANNEL: &str = "jam:gateways";

/// Not a Redis channel: a subscription reports on it that its bus connection was lost and
/// re-established, so messages may have been missed in between.
pub const BUS_RESET: &str = "jam:bus-reset";

/// Not a Redis channel: a subscription reports on it that it dropped messages because its
/// receiver fell behind. The payload names the channels that lost some, one per line; none
/// when any channel may have ([`crate::bus::lag`]). Members of those rooms, and the owners of
/// those user channels, must resynchronise.
pub const BUS_LAGGED: &str = "jam:bus-lagged";

/// The session id of a room channel (see [`room_channel`]).
pub fn room_of(channel: &str) -> Option<&str> {
    channel.rsplit_once(":room:").map(|(_, sid)| sid)
}

/// The user id of a user channel (see [`user_channel`]); `None` for any other channel.
/// Tenants and user ids hold no `:`, so the name splits unambiguously.
pub fn user_of(channel: &str) -> Option<&str> {
    let (_tenant, rest) = channel.strip_prefix("jam:")?.split_once(':')?;
    rest.strip_prefix("user:")
}

/// The command stream of one partition.
pub fn command_stream(partition: u32) -> String {
    ["jam:cmd:", itoa::Buffer::new().format(partition)].concat()
}

/// The consumer group the workers read commands with.
pub const WORKER_GROUP: &str = "jam-workers";

/// The partition a key (a session id, or a user for user-scoped commands) belongs to.
/// FNV-1a: stable across processes and releases, unlike std's hasher.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in key.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_tenant() {
        assert_ne!(room_channel("a", "X"), room_channel("b", "X"));
        assert_ne!(user_channel("a", "u"), user_channel("b", "u"));
    }

    /// The names are shared with every running gateway and worker (and with Redis's
    /// retained streams): a rolling upgrade must find them unchanged.
    #[test]
    fn names_are_spelled_as_deployed() {
        assert_eq!(room_channel("t", "S1"), "jam:t:room:S1");
        assert_eq!(user_channel("t", "u"), "jam:t:user:u");
        assert_eq!(gateway_inbox("gw-1#7"), "jam:gw:gw-1#7");
        assert_eq!(command_stream(0), "jam:cmd:0");
        assert_eq!(command_stream(4_000_000_000), "jam:cmd:4000000000");
        assert_eq!(room_of(&room_channel("t", "S1")), Some("S1"));
        assert_eq!(user_of(&user_channel("t", "u")), Some("u"));
        assert_eq!(user_of(&room_channel("t", "S1")), None);
        assert_eq!(user_of(&gateway_inbox("gw-1#7")), None);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("ABC123", 16), partition_of("ABC123", 16));
        for k in ["a", "b", "ABCDEF", ""] {
            assert!(partition_of(k, 16) < 16);
        }
        assert_eq!(partition_of("x", 0), 0);
    }
}
