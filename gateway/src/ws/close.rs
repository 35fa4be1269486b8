//! Every WebSocket close code the gateway sends, with the reason text and the metric label
//! that go with it (docs/protocol.md and docs/security.md list them for clients).

/// Normal end.
pub const NORMAL: u16 = 1000;
/// Authentication failed (bad, expired or foreign token): get a new token before retrying.
pub const POLICY: u16 = 1008;
/// The gateway is draining, or its bus reconnected: reconnect (anywhere) and rejoin.
pub const SERVICE_RESTART: u16 = 1012;
/// The token expired and was not refreshed (`refresh_token`) in time: get a new one.
pub const TOKEN_EXPIRED: u16 = 4001;
/// The client read too slowly and its outbound queue overflowed: reconnect and rejoin.
pub const SLOW_CONSUMER: u16 = 4008;
/// Too many connections for this user on this gateway: close another one first.
pub const TOO_MANY_CONNECTIONS: u16 = 4009;
/// The client kept sending faster than its frame rate after being told: back off.
pub const RATE_ABUSE: u16 = 4029;
/// Not sent (RFC 6455 §7.4.1: 1006 never goes on the wire): writing to the socket failed,
/// the peer is gone. Counted as the client's close.
pub const GONE: u16 = 1006;

/// (reason sent in the close frame, metric label) for a code.
pub fn describe(code: u16) -> (&'static str, &'static str) {
    match code {
        POLICY => ("unauthorized", "auth"),
        SERVICE_RESTART => ("service restart", "drain"),
        TOKEN_EXPIRED => ("token expired", "token_expired"),
        SLOW_CONSUMER => ("slow consumer", "slow_consumer"),
        TOO_MANY_CONNECTIONS => ("too many connections", "connection_limit"),
        RATE_ABUSE => ("rate limit", "rate_abuse"),
        GONE => ("connection lost", "client"),
        _ => ("bye", "server"),
    }
}
