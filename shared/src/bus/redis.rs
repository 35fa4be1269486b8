//! The Redis bus (fred): PUBLISH/SUBSCRIBE for events, Streams with a consumer group for
//! commands. One command client (auto-pipelined), one client for blocking reads, and one
//! subscriber client per subscription set, which re-subscribes by itself after a reconnect.
//!
//! The URL picks the topology (fred parses it): `redis://` one server,
//! `redis-sentinel://sentinel:26379?sentinelServiceName=mymaster&node=...` a master behind
//! Sentinel (fred asks the sentinels for the master again after every reconnect, so a
//! failover is followed), `redis-cluster://node:7000?node=...&node=...` a Redis Cluster.
//! In a cluster, events use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): a room's
//! channel lives on the shard that owns its slot instead of being broadcast to every node.
//! Every command here touches one key, so none crosses slots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::streams::XCap;
use tokio::sync::{broadcast, mpsc};

use super::lag::Dropped;
use super::{Bus, BusError, BusMessage, LeaseOp, ReadFrom, StreamEntry, Subscription};

/// Approximate bound of every command stream (XADD MAXLEN ~). Entries are deleted as they
/// are acknowledged, so this only bites when no worker consumes at all.
pub const STREAM_MAXLEN: i64 = 100_000;

/// Slots of the subscriber client's message channel (fred preallocates them).
const SUBSCRIBER_BUFFER: usize = 4096;

/// Blocking reads wait at most this long for Redis beyond their BLOCK time before they are
/// abandoned; an abandoned read's entries stay pending and are read again first.
const BLOCKING_SLACK: Duration = Duration::from_secs(30);

/// Acquire / renew / release a lease atomically (KEYS[1] = lease, ARGV = owner, ttl, op,
/// owner's instance prefix `<instance>#`: a lease of an earlier boot of the same instance
/// is taken over at once).
const LEASE_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == 'acquire' then
  if cur == false or cur == ARGV[1] or string.sub(cur, 1, #ARGV[4]) == ARGV[4] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
  end
  return 0
elseif ARGV[3] == 'renew' then
  if cur == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
  end
  return 0
else
  if cur == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
"#;

/// A worker's committed group in one command: its events published in order, then each
/// stream's entries acknowledged and deleted (deletion keeps streams short and drops join
/// passwords). KEYS = the streams; ARGV = group, number of events, (channel, payload) per
/// event, then per stream the number of its ids and the ids. One command is one write on
/// each side: fred flushes every command of a pipeline on its own, so a pipeline of the
/// same cost several writes and packets each way (docs/benchmarks.md).
const PUBLISH_ACK_SCRIPT: &str = r#"
local group = ARGV[1]
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  local from = i
  while from < i + n do
    local to = math.min(from + 499, i + n - 1)
    redis.call('XACK', KEYS[k], group, unpack(ARGV, from, to))
    redis.call('XDEL', KEYS[k], unpack(ARGV, from, to))
    from = to + 1
  end
  i = i + n
end
return 1
"#;

/// Count one event in a window that starts with the first (fixed-window rate limits).
const COUNT_SCRIPT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

/// The members of a registry whose expiry (server clock) is still ahead.
const LIVE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"#;

/// Register a member until now + ttl (server clock), forget earlier boots of the same
/// instance (ARGV[3] = `<instance>#`), and count the live ones.
const MEMBER_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= ARGV[1] and string.sub(m, 1, #ARGV[3]) == ARGV[3] then
    redis.call('ZREM', KEYS[1], m)
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"#;

fn err(e: fred::error::Error) -> BusError {
    metrics::counter!("jam_redis_errors_total").increment(1);
    BusError::Redis(e.to_string())
}

#[derive(Clone)]
pub struct RedisBus {
    builder: Builder,
    client: Client,
    /// Redis Cluster: sharded pub/sub.
    sharded: bool,
    /// One connection per stream set for blocking reads: Redis serves a connection's
    /// commands one after the other, so a shared one would queue every reader behind
    /// every other reader's BLOCK.
    blocking: Arc<std::sync::Mutex<HashMap<String, Client>>>,
}

impl RedisBus {
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let config = Config::from_url(url).map_err(err)?;
        let sharded = config.server.is_clustered();
        let topology = if sharded {
            "cluster"
        } else if config.server.is_sentinel() {
            "sentinel"
        } else {
            "single"
        };
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(5);
                // Small commands go out at once, not held by Nagle's algorithm until the
                // previous segment's ACK (fred leaves TCP_NODELAY off by default).
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(5);
                // Every client preallocates several event channels of this many slots;
                // only subscribers receive messages on them (see `subscription`).
                p.broadcast_channel_capacity = 32;
            })
            // Reconnect forever, backing off from 100 ms to 5 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        let client = builder.build().map_err(err)?;
        init(&client).await?;
        tracing::info!(topology, "redis bus connected");
        Ok(Self {
            builder,
            client,
            sharded,
            blocking: Default::default(),
        })
    }

    /// [`Bus::publish_and_ack`] on one server (single or behind Sentinel): one script.
    async fn publish_and_ack_script(
        &self,
        msgs: Vec<(String, Bytes)>,
        group: &str,
        by_stream: HashMap<&str, Vec<String>>,
    ) -> Result<(), BusError> {
        let ids: usize = by_stream.values().map(Vec::len).sum();
        let mut args: Vec<Value> = Vec::with_capacity(2 + 2 * msgs.len() + by_stream.len() + ids);
        args.push(group.into());
        args.push((msgs.len() as i64).into());
        for (channel, payload) in msgs {
            args.push(channel.into());
            args.push(Value::Bytes(payload));
        }
        let mut streams = Vec::with_capacity(by_stream.len());
        for (stream, ids) in by_stream {
            streams.push(stream.to_string());
            args.push((ids.len() as i64).into());
            args.extend(ids.into_iter().map(Value::from));
        }
        self.client
            .eval::<(), _, _, _>(PUBLISH_ACK_SCRIPT, streams, args)
            .await
            .map_err(err)
    }

    /// The blocking-read connection for `streams`, connected on first use.
    async fn reader(&self, streams: &[String]) -> Result<Client, BusError> {
        let key = streams.join(",");
        if let Some(c) = self.blocking.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let c = self.builder.build().map_err(err)?;
        init(&c).await?;
        let mut map = self.blocking.lock().unwrap();
        Ok(map.entry(key).or_insert(c).clone())
    }
}

async fn init(c: &Client) -> Result<(), BusError> {
    c.init().await.map_err(err)?;
    let mut reconnects = c.reconnect_rx();
    tokio::spawn(async move {
        while reconnects.recv().await.is_ok() {
            metrics::counter!("jam_redis_reconnects_total").increment(1);
            tracing::warn!("redis reconnected");
        }
    });
    Ok(())
}

/// Move pub/sub messages from fred's broadcast channel to the owner's, never waiting for
/// the owner: a message that finds the owner's channel full is dropped and its channel
/// named in the [`BUS_LAGGED`](crate::keys::BUS_LAGGED) notice sent as soon as there is
/// room again (messages that come meanwhile are dropped and named too, so that the notice
/// comes before anything published after the loss). Waiting instead would let fred's
/// buffer lap, and a lapped buffer cannot say whose messages it lost.
async fn forward(mut rx: broadcast::Receiver<fred::types::Message>, tx: mpsc::Sender<BusMessage>) {
    let mut dropped = Dropped::default();
    loop {
        let next = if dropped.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                biased;
                permit = tx.reserve() => {
                    let Ok(permit) = permit else { return };
                    permit.send(dropped.take_notice());
                    continue;
                }
                next = rx.recv() => next,
            }
        };
        match next {
            Ok(m) => {
                let channel: Arc<str> = Arc::from(&*m.channel);
                let Some(payload) = m.value.into_bytes() else {
                    continue;
                };
                if !dropped.offer(&tx, BusMessage { channel, payload }) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!("jam_bus_dropped_total").increment(n);
                tracing::warn!(lost = n, "subscriber lagged behind redis");
                dropped.mark_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

struct RedisSubscription {
    /// A plain client, not fred's `SubscriberClient`: that one keeps its own set of
    /// channel names (about 94 B per idle connection's user channel) to resubscribe after
    /// a reconnect. Owners resubscribe from their own tables on `BUS_RESET` instead.
    client: Client,
    sharded: bool,
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        if self.sharded {
            self.client.ssubscribe(channel).await.map_err(err)
        } else {
            self.client.subscribe(channel).await.map_err(err)
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        if self.sharded {
            self.client.sunsubscribe(channel).await.map_err(err)
        } else {
            self.client.unsubscribe(channel).await.map_err(err)
        }
    }

    async fn subscribe_many(&self, channels: Vec<String>) -> Result<(), BusError> {
        // Chunks keep each command (and Redis's reply to it) a bounded size. Sharded
        // channels are routed by slot, so they go one by one.
        if self.sharded {
            for c in channels {
                self.client.ssubscribe(c).await.map_err(err)?;
            }
            return Ok(());
        }
        let mut it = channels.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<String> = it.by_ref().take(SUBSCRIBE_CHUNK).collect();
            self.client.subscribe(chunk).await.map_err(err)?;
        }
        Ok(())
    }
}

/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 500;

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        let c = self.client.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = c.quit().await;
            });
        }
    }
}

fn parse_entries(stream: &str, entries: Vec<(String, HashMap<String, Bytes>)>) -> Vec<StreamEntry> {
    entries
        .into_iter()
        .filter_map(|(id, mut fields)| {
            fields
                .remove("c")
                .map(|payload| StreamEntry::encoded(stream.to_string(), id, payload))
        })
        .collect()
}

/// XAUTOCLAIM's reply: [next, [[id, [field, value, ...]], ...], deleted...].
fn parse_autoclaim(stream: &str, v: Value) -> Vec<StreamEntry> {
    let Value::Array(parts) = v else {
        return Vec::new();
    };
    let Some(Value::Array(entries)) = parts.into_iter().nth(1) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut pair) = e else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = pair.pop()?.as_string()?;
            let Value::Array(fields) = fields else {
                return None;
            };
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if k.as_str().as_deref() == Some("c") {
                    return Some(StreamEntry::encoded(
                        stream.to_string(),
                        id,
                        v.into_bytes()?,
                    ));
                }
            }
            None
        })
        .collect()
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        publish_on(&self.client, self.sharded, channel.to_string(), payload)
            .await
            .map_err(err)
    }

    async fn publish_many(&self, msgs: Vec<(String, Bytes)>) -> Result<(), BusError> {
        // One pipeline: one hand-over to fred's router and one round trip for them all
        // (each still routed by its channel's slot in a cluster).
        self.publish_and_ack(msgs, "", &[]).await
    }

    async fn subscription(
        &self,
        capacity: usize,
    ) -> Result<(Arc<dyn Subscription>, mpsc::Receiver<BusMessage>), BusError> {
        // Pub/sub messages pass through fred's broadcast channel before ours: big enough
        // for bursts, small enough not to preallocate megabytes (a lag is reported).
        let mut builder = self.builder.clone();
        builder.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let client = builder.build().map_err(err)?;
        client.init().await.map_err(err)?;
        let rx = client.message_rx();
        let (tx, out) = mpsc::channel(capacity);
        // Pub/sub is at-most-once: after a reconnect the receiver must assume it missed
        // messages and resynchronise.
        let mut reconnects = client.reconnect_rx();
        let reset_tx = tx.clone();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                let reset = BusMessage {
                    channel: Arc::from(crate::keys::BUS_RESET),
                    payload: Bytes::new(),
                };
                if reset_tx.send(reset).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(forward(rx, tx));
        Ok((
            Arc::new(RedisSubscription {
                client,
                sharded: self.sharded,
            }),
            out,
        ))
    }

    async fn xadd(&self, stream: &str, payload: Bytes) -> Result<String, BusError> {
        let cap = XCap::try_from(("MAXLEN", "~", STREAM_MAXLEN)).map_err(err)?;
        self.client
            .xadd::<String, _, _, _, _>(stream, false, cap, "*", vec![("c", payload)])
            .await
            .map_err(err)
    }

    async fn ensure_group(&self, streams: &[String], group: &str) -> Result<(), BusError> {
        for s in streams {
            // "0": commands queued before the first worker started are not skipped.
            match self
                .client
                .xgroup_create::<(), _, _, _>(s.as_str(), group, "0", true)
                .await
            {
                Ok(()) => {}
                Err(e) if e.details().contains("BUSYGROUP") => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    async fn read_group(
        &self,
        streams: &[String],
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
        from: ReadFrom,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let (start, block) = match &from {
            ReadFrom::Pending { after } => (after.as_str(), None),
            ReadFrom::New => (">", Some(block_ms)),
        };
        let ids: Vec<&str> = streams.iter().map(|_| start).collect();
        // The command timeout must not cut a blocking read: its own bound is BLOCK plus slack.
        let timeout = Duration::from_millis(block_ms) + BLOCKING_SLACK;
        let raw: Value = self
            .reader(streams)
            .await?
            .with_options(&Options {
                timeout: Some(timeout),
                ..Default::default()
            })
            .xreadgroup(
                group,
                consumer,
                Some(count as u64),
                block,
                false,
                streams.to_vec(),
                ids,
            )
            .await
            .map_err(err)?;
        // A block that times out answers nil, not an empty map.
        if raw.is_null() {
            return Ok(Vec::new());
        }
        let resp: HashMap<String, Vec<(String, HashMap<String, Bytes>)>> =
            raw.into_xread_response().map_err(err)?;
        let mut out: Vec<StreamEntry> = resp
            .into_iter()
            .flat_map(|(s, e)| parse_entries(&s, e))
            .collect();
        // Oldest first across partitions (ids are time-based).
        out.sort_by_key(|e| id_key(&e.id));
        Ok(out)
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let v: Value = self
            .client
            .xautoclaim(
                stream,
                group,
                consumer,
                min_idle_ms,
                "0-0",
                Some(count as u64),
                false,
            )
            .await
            .map_err(err)?;
        Ok(parse_autoclaim(stream, v))
    }

    async fn ack(&self, group: &str, entries: &[(String, String)]) -> Result<(), BusError> {
        self.publish_and_ack(Vec::new(), group, entries).await
    }

    async fn publish_and_ack(
        &self,
        msgs: Vec<(String, Bytes)>,
        group: &str,
        entries: &[(String, String)],
    ) -> Result<(), BusError> {
        if msgs.is_empty() && entries.is_empty() {
            return Ok(());
        }
        let mut by_stream: HashMap<&str, Vec<String>> = HashMap::new();
        for (s, id) in entries {
            by_stream.entry(s.as_str()).or_default().push(id.clone());
        }
        if !self.sharded {
            return self.publish_and_ack_script(msgs, group, by_stream).await;
        }
        // In a cluster the streams and channels live on different shards, so no script:
        // one pipeline (one hand-over to fred's router, one round trip) of the publishes,
        // then every stream's acknowledgement, then its deletion (which keeps streams
        // short and drops join passwords). Redis runs them in that order.
        let p = self.client.pipeline();
        for (c, payload) in msgs {
            publish_on(&p, self.sharded, c, payload)
                .await
                .map_err(err)?;
        }
        for (s, ids) in &by_stream {
            p.xack::<(), _, _, _>(*s, group, ids.clone())
                .await
                .map_err(err)?;
        }
        for (s, ids) in by_stream {
            p.xdel::<(), _, _>(s, ids).await.map_err(err)?;
        }
        check_all(p.try_all::<Value>().await)
    }

    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        op: LeaseOp,
    ) -> Result<bool, BusError> {
        let op = match op {
            LeaseOp::Acquire => "acquire",
            LeaseOp::Renew => "renew",
            LeaseOp::Release => "release",
        };
        let held: i64 = self
            .client
            .eval(
                LEASE_SCRIPT,
                vec![key.to_string()],
                vec![
                    owner.to_string(),
                    ttl_ms.to_string(),
                    op.to_string(),
                    format!("{}#", crate::keys::node_instance(owner)),
                ],
            )
            .await
            .map_err(err)?;
        Ok(held == 1)
    }

    async fn register_member(
        &self,
        set: &str,
        member: &str,
        ttl_ms: u64,
    ) -> Result<usize, BusError> {
        let n: i64 = self
            .client
            .eval(
                MEMBER_SCRIPT,
                vec![set.to_string()],
                vec![
                    member.to_string(),
                    ttl_ms.to_string(),
                    format!("{}#", crate::keys::node_instance(member)),
                ],
            )
            .await
            .map_err(err)?;
        Ok(n.max(0) as usize)
    }

    async fn live_members(&self, set: &str) -> Result<usize, BusError> {
        let n: i64 = self
            .client
            .eval(LIVE_SCRIPT, vec![set.to_string()], Vec::<String>::new())
            .await
            .map_err(err)?;
        Ok(n.max(0) as usize)
    }

    async fn leave_member(&self, set: &str, member: &str) -> Result<(), BusError> {
        self.client
            .zrem::<i64, _, _>(set, member)
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn count_in_window(&self, key: &str, window_ms: u64) -> Result<u64, BusError> {
        let n: i64 = self
            .client
            .eval(
                COUNT_SCRIPT,
                vec![key.to_string()],
                vec![window_ms.to_string()],
            )
            .await
            .map_err(err)?;
        Ok(n.max(0) as u64)
    }

    async fn ping(&self) -> Result<(), BusError> {
        tokio::time::timeout(Duration::from_secs(2), self.client.ping::<String>(None))
            .await
            .map_err(|_| BusError::Redis("ping timed out".into()))?
            .map(|_| ())
            .map_err(err)
    }
}

/// PUBLISH or SPUBLISH (sharded pub/sub in a cluster), on a client or queued in a pipeline.
async fn publish_on<C: PubsubInterface + Sync>(
    c: &C,
    sharded: bool,
    channel: String,
    payload: Bytes,
) -> Result<(), fred::error::Error> {
    if sharded {
        c.spublish::<(), _, _>(channel, payload).await
    } else {
        c.publish::<(), _, _>(channel, payload).await
    }
}

/// A pipeline's answers: the first error, if any.
fn check_all(answers: Vec<Result<Value, fred::error::Error>>) -> Result<(), BusError> {
    answers
        .into_iter()
        .try_for_each(|a| a.map(drop))
        .map_err(err)
}

fn id_key(id: &str) -> (u64, u64) {
    let mut it = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}
