//! Configuration from `JAM_*` environment variables. Parsing is a function of a map so
//! tests feed it one; [`VARS`] documents every variable and its default (`--help`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// (name, default, meaning): the single source for parsing defaults and `--help`.
pub const VARS: &[(&str, &str, &str)] = &[
    (
        "JAM_LISTEN_ADDR",
        "127.0.0.1:8080",
        "gateway HTTP/WebSocket address",
    ),
    (
        "JAM_WORKER_LISTEN_ADDR",
        "127.0.0.1:9090",
        "worker health and metrics address",
    ),
    (
        "JAM_REDIS_URL",
        "",
        "Redis URL: redis://host:6379, redis-sentinel://sentinel:26379?sentinelServiceName=NAME[&node=host:port], redis-cluster://node:7000?node=host:port[&node=...] (sharded pub/sub); empty = in-memory bus (standalone only)",
    ),
    (
        "JAM_DATABASE_URL",
        "",
        "PostgreSQL URL; empty = in-memory store (standalone only)",
    ),
    (
        "JAM_DATABASE_POOL_SIZE",
        "16",
        "PostgreSQL connections a worker opens at most (opened as needed; a worker commits on one); workers × this must stay under the server's max_connections",
    ),
    (
        "JAM_JWT_SECRET",
        "",
        "HS256 secret for client tokens (required outside standalone)",
    ),
    (
        "JAM_JWT_PUBLIC_KEY",
        "",
        "RS256/ES256 public key for client tokens: a PEM, or the path of a PEM file",
    ),
    (
        "JAM_JWKS_URL",
        "",
        "JWKS URL for RS256/ES256 client tokens (keys picked by kid, cached, refetched on an unknown kid)",
    ),
    (
        "JAM_JWKS_REFRESH_SECS",
        "300",
        "how long a fetched JWKS is used before it is fetched again",
    ),
    ("JAM_JWT_AUDIENCE", "", "required `aud` of client tokens; empty = not checked"),
    ("JAM_JWT_ISSUER", "", "required `iss` of client tokens; empty = not checked"),
    (
        "JAM_INTROSPECTION_URL",
        "",
        "RFC 7662 introspection endpoint for opaque (non-JWT) bearer tokens; empty = JWTs only",
    ),
    (
        "JAM_INTROSPECTION_CACHE_SECS",
        "60",
        "how long an introspection answer is reused (never past the token's exp)",
    ),
    (
        "JAM_TOKEN_EXPIRY_WARNING_SECS",
        "60",
        "a live connection gets token_expiring this long before its token's exp",
    ),
    (
        "JAM_ALLOWED_ORIGINS",
        "",
        "origins (comma-separated) allowed to use cookie authentication and CORS; the gateway's own origin always is",
    ),
    (
        "JAM_MAX_CONNECTIONS_PER_USER",
        "20",
        "open WebSockets per user on one gateway",
    ),
    (
        "JAM_MAX_CONNECTIONS_PER_IP",
        "0",
        "open WebSockets per peer IP on one gateway; 0 = no limit (behind a load balancer every peer is the balancer)",
    ),
    (
        "JAM_MAX_SESSIONS_PER_HOUR",
        "100",
        "sessions one user may create per hour (all gateways)",
    ),
    (
        "JAM_MAX_ROOMS_PER_CONNECTION",
        "20",
        "sessions one connection may be joined to",
    ),
    (
        "JAM_REST_RATE_PER_SEC",
        "20",
        "REST requests per token per second (bursts of twice that)",
    ),
    ("JAM_MAX_BODY_BYTES", "65536", "largest REST request body"),
    (
        "JAM_DM_RATE_PER_SEC",
        "5",
        "direct messages per connection per second (bursts of twice that)",
    ),
    (
        "JAM_RATE_LIMIT_STRIKES",
        "200",
        "frames refused by the rate limit before the connection is closed (4029)",
    ),
    (
        "JAM_API_KEY",
        "",
        "key for POST /api/publish; empty disables server-side publish",
    ),
    (
        "JAM_RPC_URL",
        "",
        "the application backend's URL that custom events (JAM_RPC_EVENTS) are POSTed to, its JSON answer being the reply; empty: none are forwarded",
    ),
    (
        "JAM_RPC_EVENTS",
        "job:*",
        "comma-separated event names forwarded to JAM_RPC_URL; a trailing * matches a prefix",
    ),
    (
        "JAM_RPC_SECRET",
        "",
        "key forwarded calls are signed with (HMAC-SHA256 in X-Jam-Signature); empty: JAM_API_KEY",
    ),
    (
        "JAM_RPC_TIMEOUT_MS",
        "5000",
        "how long a forwarded call may take before the client gets UNAVAILABLE",
    ),
    (
        "JAM_RPC_CONCURRENCY",
        "64",
        "forwarded calls in flight per gateway; beyond, the client gets UNAVAILABLE at once",
    ),
    (
        "JAM_PARTITIONS",
        "16",
        "number of command-stream partitions",
    ),
    (
        "JAM_INSTANCE_ID",
        "<host>-<pid>-<random>",
        "this process's name on the bus",
    ),
    (
        "JAM_SESSION_ID_LENGTH",
        "6",
        "length of generated session codes",
    ),
    ("JAM_HISTORY_LIMIT", "50", "messages sent to a joiner"),
    (
        "JAM_LARGE_ROOM",
        "100",
        "participants above which a room gets coalesced presence counts instead of member lists",
    ),
    (
        "JAM_RECOVERY_EVENTS",
        "256",
        "room events kept per session for members that rejoin with sinceSeq",
    ),
    (
        "JAM_MAX_FRAME_BYTES",
        "65536",
        "largest accepted client frame",
    ),
    (
        "JAM_BUS_BUFFER",
        "65536",
        "bus messages a gateway buffers for its dispatcher; beyond, they are dropped and the rooms' members told to resync",
    ),
    (
        "JAM_OUTBOUND_QUEUE",
        "1024",
        "frames queued per connection before it is dropped as too slow",
    ),
    (
        "JAM_SOCKET_SEND_BUFFER",
        "0",
        "kernel send buffer per connection in bytes (SO_SNDBUF); 0 leaves it to the kernel's autotuning, which lets a client that stops reading hold megabytes before it is dropped as too slow",
    ),
    (
        "JAM_WEB_UI",
        "true",
        "serve the listening-party page at / (and, without JAM_JWT_SECRET, development tokens at /dev/token)",
    ),
    (
        "JAM_SOCKETIO",
        "true",
        "serve Socket.IO clients (Engine.IO v4, WebSocket and long-polling) on /socket.io/",
    ),
    (
        "JAM_MAX_CONNECTIONS",
        "100000",
        "connections one gateway accepts at once",
    ),
    (
        "JAM_AUTH_TIMEOUT_SECS",
        "10",
        "time a connection has to send its authenticate frame",
    ),
    (
        "JAM_DRAIN_GRACE_SECS",
        "20",
        "time SIGTERM gives connections to close",
    ),
    (
        "JAM_DRAIN_LINGER_MS",
        "2000",
        "after the drain, time the listener stays up answering not-ready",
    ),
    (
        "JAM_RATE_LIMIT_PER_SEC",
        "30",
        "frames a connection may send per second, sustained (bursts of twice that)",
    ),
    (
        "JAM_HTTP_HEAD_TIMEOUT_MS",
        "30000",
        "time an HTTP request head has to arrive in full (from a connection's start, and between requests on a kept-alive one) before the connection is closed",
    ),
    (
        "JAM_HTTP_REQUEST_TIMEOUT_MS",
        "30000",
        "time a REST request may take once its head has arrived (its body and the answer) before it is answered 408",
    ),
    (
        "JAM_REPLY_TIMEOUT_MS",
        "5000",
        "time a REST call waits for the worker's answer",
    ),
    ("JAM_HEARTBEAT_MS", "2000", "gateway heartbeat period"),
    (
        "JAM_GATEWAY_DEAD_AFTER_MS",
        "10000",
        "silence after which a gateway's connections are gone",
    ),
    (
        "JAM_SESSION_TIMEOUT_HOURS",
        "4",
        "session lifetime (fractions allowed)",
    ),
    (
        "JAM_HOST_GRACE_SECS",
        "30",
        "time a disconnected host has to come back",
    ),
    ("JAM_SYNC_INTERVAL_SECS", "120", "periodic sync check"),
    (
        "JAM_LEASE_TTL_MS",
        "5000",
        "worker partition lease lifetime; a dead worker's partitions move after at most this",
    ),
    (
        "JAM_CHAT_RETENTION_DAYS",
        "30",
        "chat and direct messages older than this are purged (0 = keep forever)",
    ),
    (
        "JAM_MEMORY_HISTORY",
        "5000",
        "without PostgreSQL: chat messages kept per session and direct messages per conversation, in memory; the oldest go first (0 = no bound)",
    ),
    (
        "JAM_SEEK_THRESHOLD_MS",
        "1000",
        "drift above which a participant is seeked",
    ),
    (
        "JAM_ADDR_FILE",
        "",
        "write the bound listen address to this file (for supervisors using port 0)",
    ),
    (
        "JAM_THREADS",
        "",
        "event-loop threads (1..=256); empty = 1 for `jam` (standalone: one loop, the least CPU per message), one per core for jam-gateway and jam-worker",
    ),
    ("JAM_LOG_FORMAT", "plain", "plain or json"),
    ("JAM_LOG", "info", "tracing filter (RUST_LOG syntax)"),
];

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

#[derive(Clone)]
pub struct Config {
    pub listen_addr: String,
    pub worker_listen_addr: String,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub database_pool_size: usize,
    pub jwt_secret: Option<String>,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub api_key: Option<String>,
    pub rpc: RpcSettings,
    pub partitions: u32,
    pub instance_id: String,
    pub session_id_len: usize,
    pub history_limit: usize,
    pub large_room: usize,
    pub recovery_events: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    /// Socket.IO on /socket.io/.
    pub socketio: bool,
    /// The listening-party page at /.
    pub web_ui: bool,
    /// SO_SNDBUF of accepted sockets; 0: the kernel's autotuning.
    pub socket_send_buffer: usize,
    pub bus_buffer: usize,
    pub max_connections: usize,
    pub auth_timeout: Duration,
    pub drain_grace: Duration,
    pub drain_linger: Duration,
    pub rate_limit_per_sec: f64,
    pub reply_timeout: Duration,
    /// Time an HTTP request head has to arrive (slowloris).
    pub http_head_timeout: Duration,
    /// Time a REST request may take after its head (a body sent slowly, above all).
    pub http_request_timeout: Duration,
    pub heartbeat: Duration,
    pub gateway_dead_after: Duration,
    pub session_timeout: Duration,
    pub host_grace: Duration,
    pub sync_interval: Duration,
    pub seek_threshold_ms: f64,
    pub lease_ttl: Duration,
    /// `None`: keep messages forever.
    pub chat_retention: Option<Duration>,
    /// The in-memory store's messages per session and per conversation (`None`: no bound).
    pub memory_history: Option<usize>,
    /// Random per process start: a restarted process under the same name is a new node.
    pub boot_id: String,
    pub log_json: bool,
    pub log_filter: String,
}

// Secrets never reach logs, even through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("worker_listen_addr", &self.worker_listen_addr)
            .field("redis", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("database", &self.database_url.as_ref().map(|_| "<set>"))
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("partitions", &self.partitions)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// Custom events forwarded to the application's backend (`JAM_RPC_*`).
#[derive(Clone, Default)]
pub struct RpcSettings {
    pub url: Option<String>,
    /// Exact names, or prefixes (`job:` from `job:*`).
    pub events: Vec<String>,
    pub secret: Option<String>,
    pub timeout: Duration,
    pub concurrency: usize,
}

impl RpcSettings {
    /// Whether frames of type `ty` go to the backend.
    pub fn forwards(&self, ty: &str) -> bool {
        self.url.is_some()
            && self.events.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => ty.starts_with(prefix),
                None => ty == e,
            })
    }
}

/// How client tokens are checked, beyond the HS256 secret.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub public_key: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub introspection_url: Option<String>,
    pub introspection_cache: Duration,
    pub expiry_warning: Duration,
    pub allowed_origins: Vec<String>,
}

/// What one client may use (docs/security.md lists them).
#[derive(Debug, Clone)]
pub struct Limits {
    pub connections_per_user: usize,
    pub connections_per_ip: usize,
    pub sessions_per_hour: u64,
    pub rooms_per_connection: usize,
    pub rest_per_sec: f64,
    pub body_bytes: usize,
    pub dm_per_sec: f64,
    pub rate_strikes: u32,
}

/// The development secret standalone mode falls back to. Never valid elsewhere.
pub const DEV_JWT_SECRET: &str = "jam-dev-secret-do-not-use-in-production";

struct Src<'a>(&'a HashMap<String, String>);

impl Src<'_> {
    fn raw(&self, var: &'static str) -> Option<&str> {
        self.0.get(var).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
    fn default(var: &'static str) -> &'static str {
        VARS.iter().find(|v| v.0 == var).map(|v| v.1).unwrap_or("")
    }
    fn string(&self, var: &'static str) -> String {
        self.raw(var).unwrap_or(Self::default(var)).to_string()
    }
    fn opt(&self, var: &'static str) -> Option<String> {
        self.raw(var).map(str::to_string)
    }
    fn num<T: std::str::FromStr>(&self, var: &'static str) -> Result<T, ConfigError> {
        let s = self.raw(var).unwrap_or(Self::default(var));
        s.parse().map_err(|_| ConfigError {
            var,
            reason: format!("not a number: {s:?}"),
        })
    }
    /// A number that must lie in `range`.
    fn num_in<T>(
        &self,
        var: &'static str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
    {
        let n = self.num(var)?;
        if !range.contains(&n) {
            return Err(ConfigError {
                var,
                reason: format!("must be {}..={}", range.start(), range.end()),
            });
        }
        Ok(n)
    }
    fn flag(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.raw(var).unwrap_or(Self::default(var)) {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            s => Err(ConfigError {
                var,
                reason: format!("not true or false: {s:?}"),
            }),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let s = Src(map);
        // Used by `telemetry::run_main` before this runs; checked here, so that a bad value
        // stops the process with the other configuration errors.
        Self::threads_from_map(map)?;
        let partitions: u32 = s.num_in("JAM_PARTITIONS", 1..=4096)?;
        let session_id_len: usize = s.num_in("JAM_SESSION_ID_LENGTH", 4..=16)?;
        let database_pool_size: usize = s.num_in("JAM_DATABASE_POOL_SIZE", 1..=1000)?;
        let log_format = s.string("JAM_LOG_FORMAT");
        if log_format != "plain" && log_format != "json" {
            return Err(ConfigError {
                var: "JAM_LOG_FORMAT",
                reason: "plain or json".into(),
            });
        }
        let hours: f64 = s.num("JAM_SESSION_TIMEOUT_HOURS")?;
        if hours <= 0.0 || !hours.is_finite() {
            return Err(ConfigError {
                var: "JAM_SESSION_TIMEOUT_HOURS",
                reason: "must be positive".into(),
            });
        }
        let secs = |v: &'static str| s.num::<f64>(v).map(Duration::from_secs_f64);
        let ms = |v: &'static str| s.num::<u64>(v).map(Duration::from_millis);
        Ok(Config {
            listen_addr: s.string("JAM_LISTEN_ADDR"),
            worker_listen_addr: s.string("JAM_WORKER_LISTEN_ADDR"),
            redis_url: s.opt("JAM_REDIS_URL"),
            database_url: s.opt("JAM_DATABASE_URL"),
            database_pool_size,
            jwt_secret: s.opt("JAM_JWT_SECRET"),
            auth: AuthSettings {
                public_key: s.opt("JAM_JWT_PUBLIC_KEY"),
                jwks_url: s.opt("JAM_JWKS_URL"),
                jwks_refresh: secs("JAM_JWKS_REFRESH_SECS")?,
                audience: s.opt("JAM_JWT_AUDIENCE"),
                issuer: s.opt("JAM_JWT_ISSUER"),
                introspection_url: s.opt("JAM_INTROSPECTION_URL"),
                introspection_cache: secs("JAM_INTROSPECTION_CACHE_SECS")?,
                expiry_warning: secs("JAM_TOKEN_EXPIRY_WARNING_SECS")?,
                allowed_origins: s
                    .string("JAM_ALLOWED_ORIGINS")
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
            },
            limits: Limits {
                connections_per_user: s.num("JAM_MAX_CONNECTIONS_PER_USER")?,
                connections_per_ip: s.num("JAM_MAX_CONNECTIONS_PER_IP")?,
                sessions_per_hour: s.num("JAM_MAX_SESSIONS_PER_HOUR")?,
                rooms_per_connection: s.num("JAM_MAX_ROOMS_PER_CONNECTION")?,
                rest_per_sec: s.num("JAM_REST_RATE_PER_SEC")?,
                body_bytes: s.num("JAM_MAX_BODY_BYTES")?,
                dm_per_sec: s.num("JAM_DM_RATE_PER_SEC")?,
                rate_strikes: s.num("JAM_RATE_LIMIT_STRIKES")?,
            },
            api_key: s.opt("JAM_API_KEY"),
            rpc: RpcSettings {
                url: s.opt("JAM_RPC_URL"),
                events: s
                    .string("JAM_RPC_EVENTS")
                    .split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty() && e != "*")
                    .collect(),
                secret: s.opt("JAM_RPC_SECRET").or_else(|| s.opt("JAM_API_KEY")),
                timeout: ms("JAM_RPC_TIMEOUT_MS")?,
                concurrency: s.num::<usize>("JAM_RPC_CONCURRENCY")?.max(1),
            },
            partitions,
            instance_id: s.opt("JAM_INSTANCE_ID").unwrap_or_else(default_instance_id),
            session_id_len,
            history_limit: s.num("JAM_HISTORY_LIMIT")?,
            large_room: s.num("JAM_LARGE_ROOM")?,
            recovery_events: s.num("JAM_RECOVERY_EVENTS")?,
            max_frame_bytes: s.num("JAM_MAX_FRAME_BYTES")?,
            outbound_queue: s.num::<usize>("JAM_OUTBOUND_QUEUE")?.max(8),
            socket_send_buffer: s.num("JAM_SOCKET_SEND_BUFFER")?,
            socketio: s.flag("JAM_SOCKETIO")?,
            web_ui: s.flag("JAM_WEB_UI")?,
            bus_buffer: s.num::<usize>("JAM_BUS_BUFFER")?.max(1),
            max_connections: s.num("JAM_MAX_CONNECTIONS")?,
            auth_timeout: secs("JAM_AUTH_TIMEOUT_SECS")?,
            drain_grace: secs("JAM_DRAIN_GRACE_SECS")?,
            drain_linger: ms("JAM_DRAIN_LINGER_MS")?,
            rate_limit_per_sec: s.num("JAM_RATE_LIMIT_PER_SEC")?,
            reply_timeout: ms("JAM_REPLY_TIMEOUT_MS")?,
            http_head_timeout: ms("JAM_HTTP_HEAD_TIMEOUT_MS")?.max(Duration::from_millis(100)),
            http_request_timeout: ms("JAM_HTTP_REQUEST_TIMEOUT_MS")?
                .max(Duration::from_millis(100)),
            heartbeat: ms("JAM_HEARTBEAT_MS")?,
            gateway_dead_after: ms("JAM_GATEWAY_DEAD_AFTER_MS")?,
            session_timeout: Duration::from_secs_f64(hours * 3600.0),
            host_grace: secs("JAM_HOST_GRACE_SECS")?,
            sync_interval: secs("JAM_SYNC_INTERVAL_SECS")?,
            seek_threshold_ms: s.num("JAM_SEEK_THRESHOLD_MS")?,
            lease_ttl: ms("JAM_LEASE_TTL_MS")?.max(Duration::from_millis(500)),
            chat_retention: Some(s.num::<f64>("JAM_CHAT_RETENTION_DAYS")?)
                .filter(|d| *d > 0.0 && d.is_finite())
                .map(|d| Duration::from_secs_f64(d * 86_400.0)),
            memory_history: Some(s.num::<usize>("JAM_MEMORY_HISTORY")?).filter(|n| *n > 0),
            boot_id: crate::ids::unique()[..8].to_string(),
            log_json: log_format == "json",
            log_filter: s.string("JAM_LOG"),
        })
    }

    /// `JAM_THREADS`, read on its own: the runtime is built before the rest is parsed.
    pub fn threads_from_map(map: &HashMap<String, String>) -> Result<Option<usize>, ConfigError> {
        let s = Src(map);
        if s.raw("JAM_THREADS").is_none() {
            return Ok(None);
        }
        s.num_in("JAM_THREADS", 1..=256).map(Some)
    }

    /// This process's name on the bus for this boot: `<instance>#<boot>`. Connections and
    /// leases carry it, so a process restarted under the same name is told apart at once.
    pub fn node_id(&self) -> String {
        format!("{}#{}", self.instance_id, self.boot_id)
    }

    /// The JWT secret, or the development one in standalone mode (with a loud warning).
    pub fn jwt_secret_or_dev(&self) -> String {
        match &self.jwt_secret {
            Some(s) => s.clone(),
            None => {
                tracing::warn!(
                    "JAM_JWT_SECRET is not set: using the DEVELOPMENT secret. Anyone can mint tokens. \
                     Never expose this instance."
                );
                DEV_JWT_SECRET.to_string()
            }
        }
    }

    /// Multi-process mode refuses to run without a way to check tokens: an HS256 secret,
    /// a public key, a JWKS URL or an introspection endpoint.
    pub fn token_check_required(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if self.jwt_secret.is_some()
            || a.public_key.is_some()
            || a.jwks_url.is_some()
            || a.introspection_url.is_some()
        {
            return Ok(());
        }
        Err(ConfigError {
            var: "JAM_JWT_SECRET",
            reason: "required (or JAM_JWT_PUBLIC_KEY, JAM_JWKS_URL, JAM_INTROSPECTION_URL) when running as separate gateway/worker processes".into(),
        })
    }

    /// The `--help` text listing every variable and its default.
    pub fn help() -> String {
        let mut out = String::from("Environment variables:\n");
        for (name, default, what) in VARS {
            out.push_str(&format!(
                "  {name:<28} {what} (default: {})\n",
                if default.is_empty() { "unset" } else { default }
            ));
        }
        out
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "jam".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &crate::ids::unique()[..6]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_map(&map(&[])).unwrap();
        assert_eq!(c.partitions, 16);
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        assert!(c.redis_url.is_none());
        assert_eq!(c.session_timeout, Duration::from_secs(4 * 3600));
        assert_eq!(c.drain_grace, Duration::from_secs(20));
        assert!(c.token_check_required().is_err());
        assert!(c.auth.allowed_origins.is_empty());
        assert_eq!(c.limits.connections_per_user, 20);
        assert_eq!(c.memory_history, Some(5000));
        let c = Config::from_map(&map(&[
            ("JAM_JWKS_URL", "http://127.0.0.1:1/jwks"),
            (
                "JAM_ALLOWED_ORIGINS",
                " https://a.example/, https://b.example ",
            ),
        ]))
        .unwrap();
        assert!(c.token_check_required().is_ok());
        assert_eq!(
            c.auth.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn overrides_and_errors() {
        let c = Config::from_map(&map(&[
            ("JAM_PARTITIONS", "4"),
            ("JAM_JWT_SECRET", "x"),
            ("JAM_INSTANCE_ID", "gw-a"),
        ]))
        .unwrap();
        assert_eq!(c.partitions, 4);
        assert_eq!(c.instance_id, "gw-a");
        assert!(c.token_check_required().is_ok());
        let e = Config::from_map(&map(&[("JAM_PARTITIONS", "lots")])).unwrap_err();
        assert_eq!(e.var, "JAM_PARTITIONS");
        assert!(Config::from_map(&map(&[("JAM_PARTITIONS", "0")])).is_err());
        assert!(Config::from_map(&map(&[("JAM_LOG_FORMAT", "xml")])).is_err());
        let pool = |v| Config::from_map(&map(&[("JAM_DATABASE_POOL_SIZE", v)]));
        assert_eq!(pool("4").unwrap().database_pool_size, 4);
        for bad in ["0", "1001", "some"] {
            assert_eq!(pool(bad).unwrap_err().var, "JAM_DATABASE_POOL_SIZE");
        }
        let history = |v| Config::from_map(&map(&[("JAM_MEMORY_HISTORY", v)]));
        assert_eq!(history("20").unwrap().memory_history, Some(20));
        assert_eq!(history("0").unwrap().memory_history, None, "no bound");
        assert_eq!(history("-1").unwrap_err().var, "JAM_MEMORY_HISTORY");
        assert_eq!(Config::threads_from_map(&map(&[])).unwrap(), None);
        let three = map(&[("JAM_THREADS", "3")]);
        assert!(Config::from_map(&three).is_ok());
        assert_eq!(Config::threads_from_map(&three).unwrap(), Some(3));
        for bad in ["0", "257", "many"] {
            let e = Config::from_map(&map(&[("JAM_THREADS", bad)])).unwrap_err();
            assert_eq!(e.var, "JAM_THREADS");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::from_map(&map(&[
            ("JAM_JWT_SECRET", "topsecret"),
            ("JAM_API_KEY", "k3y"),
        ]))
        .unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("topsecret") && !s.contains("k3y"));
    }

    #[test]
    fn help_lists_every_var() {
        let h = Config::help();
        for (name, _, _) in VARS {
            assert!(h.contains(name));
        }
    }
}
