//! Socket.IO clients (Engine.IO v4, WebSocket and long-polling) on `/socket.io/`, through
//! socketioxide: the seeds' Socket.IO clients (show-chat, dj-system, spotify-sync) work
//! unchanged. A Socket.IO connection is a jam connection like a WebSocket one: the same
//! frame handling (`ws::frames::handle`: wire types, limits, commands to the workers), the
//! same routing table and user channel. Only the edges differ:
//!
//! - in: an event `name` with `data` is the frame `{"type": name, ...data}`; an
//!   acknowledgement callback gets the reply that carries the frame's `ref`;
//! - out: every frame is emitted as its `type` with the other fields (the `ref`
//!   stripped); `notification:new` carries the notification itself, as the seed does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jam_shared::auth::Identity;
use jam_shared::keys;
use serde_json::{json, Map, Value};
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use tokio::sync::mpsc;

use crate::fanout::ConnHandle;
use crate::state::AppState;
use crate::ws::frames::{self, ConnLimits, Outcome};
use crate::ws::framing::OutFrame;
use crate::ws::ratelimit::TokenBucket;
use crate::ws::token_life::{self, TokenEvent, TokenLife};

/// Acknowledgements waiting for their reply, per socket; older ones are dropped.
const PENDING_ACKS: usize = 256;
const ACK_TTL: Duration = Duration::from_secs(60);

/// The layer serving `/socket.io/` for `st`'s gateway.
pub fn layer(st: AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .max_payload(st.cfg.max_frame_bytes as u64)
        .build_layer();
    let auth_st = st.clone();
    // A refused token is the client's `connect_error` with the reason, as Socket.IO
    // servers refuse.
    let authenticate = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = auth_st.clone();
        async move { authenticate(&st, &s, auth.ok()).await }
    };
    let connected = move |s: SocketRef| {
        let st = st.clone();
        async move { connect(st, s).await }
    };
    io.ns("/", connected.with(authenticate));
    layer
}

/// The verified token of a connecting socket, from the middleware to the handler.
#[derive(Clone)]
struct Authenticated(Arc<crate::auth::Verified>);

/// The queue of a connecting socket's events, from the middleware to the handler.
#[derive(Clone)]
struct Events(Arc<Mutex<Option<mpsc::Receiver<Incoming>>>>);

async fn authenticate(st: &AppState, s: &SocketRef, auth: Option<Value>) -> Result<(), String> {
    if st.draining.is_cancelled() {
        return Err("UNAVAILABLE: draining".into());
    }
    let token = token_of(st, s, auth.as_ref()).ok_or("UNAUTHORIZED: missing token")?;
    let verified = st.auth.verify(&token).await.map_err(|e| {
        metrics::counter!("jam_auth_failures_total", "route" => "socket.io").increment(1);
        format!("UNAUTHORIZED: {e}")
    })?;
    s.extensions.insert(Authenticated(Arc::new(verified)));
    // Here, before socketioxide tells the client it is connected: a client that emits at
    // once (`on("connect", () => emit(...))`) finds its events queued, where a handler set
    // in the connect handler (a task of its own, which then registers the connection)
    // would come too late for them.
    let events = route_events(s);
    s.extensions
        .insert(Events(Arc::new(Mutex::new(Some(events)))));
    Ok(())
}

/// Client events queued per connection before it is told to slow down.
const INBOUND: usize = 64;

/// A client event: its name, its data and its acknowledgement.
type Incoming = (String, Value, AckSender);

/// One Socket.IO connection's jam side.
struct Conn {
    st: AppState,
    who: Identity,
    id: String,
    acks: Mutex<HashMap<String, (Instant, AckSender)>>,
    next_ref: AtomicU64,
    handle: ConnHandle,
}

/// The token: the handshake's `auth.token`, else `?token=`, a Bearer header or the cookie
/// (the cookie only from an allowed origin).
fn token_of(st: &AppState, s: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let parts = s.req_parts();
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let (t, source) = crate::auth::sources::token_from_request(&query, &parts.headers)?;
    if matches!(source, crate::auth::sources::Source::Cookie)
        && !crate::auth::origin::cookie_origin_allowed(&parts.headers, &st.cfg.auth.allowed_origins)
    {
        metrics::counter!("jam_origin_rejected_total", "route" => "socket.io").increment(1);
        return None;
    }
    Some(t)
}

async fn connect(st: AppState, s: SocketRef) {
    let (Some(Authenticated(verified)), Some(Events(events))) = (
        s.extensions.get::<Authenticated>(),
        s.extensions.get::<Events>(),
    ) else {
        refuse(&s, "UNAUTHORIZED", "Unauthorized");
        return;
    };
    let Some(in_rx) = events.lock().unwrap().take() else {
        return;
    };
    let slots = match admit(&st, &s, &verified.identity) {
        Ok(slots) => slots,
        Err((code, message)) => {
            refuse(&s, code, &message);
            return;
        }
    };
    let who = verified.identity.clone();
    let id = format!("sio-{}", jam_shared::ids::unique());
    let (tx, rx) = mpsc::channel::<OutFrame>(st.cfg.outbound_queue);
    let handle = ConnHandle::new(&id, &who.user_id, tx);
    watch_disconnect(&s, &handle);
    let user_channel = keys::user_channel(&who.tenant, &who.user_id);
    if st
        .table
        .register(handle.clone(), user_channel)
        .await
        .is_err()
    {
        refuse(&s, "UNAVAILABLE", "bus unavailable, try again");
        return;
    }
    metrics::gauge!("jam_connections_open").increment(1.0);
    metrics::counter!("jam_connections_opened_total").increment(1);
    let conn = Arc::new(Conn {
        acks: Mutex::new(HashMap::new()),
        next_ref: AtomicU64::new(0),
        st: st.clone(),
        who: who.clone(),
        id: id.clone(),
        handle: handle.clone(),
    });
    crate::ws::connection::report_connect(&st, &who, &id).await;
    greet(&s, &who, &id, verified.expires_at);
    let reader = conn.clone();
    let expires_at = verified.expires_at;
    st.tracker
        .spawn(async move { reader.read(in_rx, expires_at).await });
    st.tracker.spawn(async move {
        let _held = slots;
        conn.pump(s, rx).await;
    });
}

/// A connection's places under the gateway's, the user's and the address's limits, held
/// until it ends.
type Slots = (
    tokio::sync::OwnedSemaphorePermit,
    crate::limits::Slot,
    Option<crate::limits::Slot>,
);

/// The same limits as a WebSocket's (one count per gateway for both kinds), or the code
/// and message to refuse with.
fn admit(st: &AppState, s: &SocketRef, who: &Identity) -> Result<Slots, (&'static str, String)> {
    let Ok(permit) = st.conn_limit.clone().try_acquire_owned() else {
        return Err(("UNAVAILABLE", "too many connections".into()));
    };
    let ip = s
        .req_parts()
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let refused = |r: crate::limits::Refused| (r.code.as_str(), r.message);
    let ip_slot = st.limits.ip_slot(ip).map_err(refused)?;
    let user_slot = st.limits.user_slot(who).map_err(refused)?;
    Ok((permit, user_slot, ip_slot))
}

/// `authenticated` (jam's clients), then show-chat-socketio.md's `connected`.
fn greet(s: &SocketRef, who: &Identity, id: &str, expires_at: Option<i64>) {
    let hello = json!({
        "userId": who.user_id, "userName": who.user_name, "username": who.user_name,
        "connectionId": id, "expiresAt": expires_at,
    });
    let _ = s.emit("authenticated", &hello);
    let mut connected = hello;
    connected["message"] = json!("Connected");
    let _ = s.emit("connected", &connected);
}

/// The connection's events into one bounded queue (a full one answers `RATE_LIMITED`),
/// read once the connection is registered (set up by the middleware: see `authenticate`).
fn route_events(s: &SocketRef) -> mpsc::Receiver<Incoming> {
    // socketioxide calls a handler in arrival order and spawns the future it returns: the
    // event is queued before that, so one task handles a connection's events in order.
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(INBOUND);
    s.on_fallback(
        move |Event(ev): Event, TryData(data): TryData<Value>, ack: AckSender| {
            if let Err(mpsc::error::TrySendError::Full((_, _, ack))) =
                in_tx.try_send((ev, data.unwrap_or(Value::Null), ack))
            {
                metrics::counter!("jam_rate_limited_total", "limit" => "socket.io").increment(1);
                let _ = ack.send(
                    &json!({"code": "RATE_LIMITED", "message": "Too many frames, slow down"}),
                );
            }
            std::future::ready(())
        },
    );
    in_rx
}

/// The socket's end cancels the connection's kill switch, which ends its tasks and gives
/// its slots back. Watched before the connect handler's first await: socketioxide calls
/// no disconnect handler set after the socket closed (a client that hangs up while it is
/// registered), so a socket found closed once the handler is set is ended here.
fn watch_disconnect(s: &SocketRef, handle: &ConnHandle) {
    let h = handle.clone();
    s.on_disconnect(move || {
        let h = h.clone();
        async move { h.kill.cancel() }
    });
    if !s.connected() {
        handle.kill.cancel();
    }
}

fn refuse(s: &SocketRef, code: &str, message: &str) {
    let _ = s.emit("error", &json!({"code": code, "message": message}));
    let _ = s.clone().disconnect();
}

impl Conn {
    /// The connection's events, in order, until it closes: each is the jam frame
    /// `{"type": ev, ...data, "ref"}`, handled as a WebSocket frame is; replies go out
    /// through the connection's queue like every other frame.
    async fn read(&self, mut rx: mpsc::Receiver<Incoming>, expires_at: Option<i64>) {
        let mut bucket = TokenBucket::with_burst(self.st.cfg.rate_limit_per_sec);
        let mut limits = ConnLimits::new(&self.st);
        let mut token = TokenLife::new(expires_at, self.st.cfg.auth.expiry_warning);
        let kill = &self.handle.kill;
        loop {
            let deadline = token.deadline();
            let (ev, data, ack) = tokio::select! {
                _ = kill.cancelled() => return,
                _ = token_life::until(deadline) => match token.fire() {
                    TokenEvent::Expired => {
                        let f = frames::FrameError::new(jam_shared::ErrorCode::Unauthorized, "token expired", None);
                        self.handle.push_json(&f.to_frame());
                        self.handle.close(crate::ws::close::TOKEN_EXPIRED);
                        return;
                    }
                    TokenEvent::Expiring(f) => {
                        self.handle.push_json(&f);
                        continue;
                    }
                },
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
            };
            let text = self.frame_of(ev, data, ack);
            let out = if bucket.take() {
                frames::handle(&self.st, &self.who, &self.id, None, &mut limits, &text).await
            } else {
                Err(frames::FrameError::new(
                    jam_shared::ErrorCode::RateLimited,
                    "Too many frames, slow down",
                    frames::ref_of(&text),
                ))
            };
            match out {
                Ok(Outcome::Reply(b)) => {
                    self.handle.push_json(&b);
                }
                Ok(Outcome::Refreshed { expires_at, reply }) => {
                    token.refreshed(expires_at);
                    self.handle.push_json(&reply);
                }
                Ok(Outcome::Forwarded) => {}
                Err(e) => {
                    self.handle.push_json(&e.to_frame());
                }
            }
        }
    }

    /// The jam frame for an event, with a `ref` of ours that its acknowledgement waits on.
    fn frame_of(&self, ev: String, data: Value, ack: AckSender) -> String {
        let mut f = match data {
            Value::Object(o) => o,
            Value::Null => Map::new(),
            other => Map::from_iter([("data".to_string(), other)]),
        };
        f.insert("type".into(), Value::String(ev));
        let r = format!("sio-{}", self.next_ref.fetch_add(1, Ordering::Relaxed));
        f.insert("ref".into(), Value::String(r.clone()));
        self.remember(r, ack);
        Value::Object(f).to_string()
    }

    fn remember(&self, r: String, ack: AckSender) {
        let mut acks = self.acks.lock().unwrap();
        if acks.len() >= PENDING_ACKS {
            acks.retain(|_, (at, _)| at.elapsed() < ACK_TTL);
        }
        if acks.len() < PENDING_ACKS {
            acks.insert(r, (Instant::now(), ack));
        }
    }

    /// Frames for this connection, until it closes or jam closes it.
    async fn pump(&self, s: SocketRef, mut rx: mpsc::Receiver<OutFrame>) {
        let kill = &self.handle.kill;
        loop {
            tokio::select! {
                _ = kill.cancelled() => break,
                f = rx.recv() => match f {
                    Some(f) => self.deliver(&s, f.payload()),
                    None => break,
                },
            }
        }
        // What was queued before the end (the reason for it, say) still goes out.
        while let Ok(f) = rx.try_recv() {
            self.deliver(&s, f.payload());
        }
        let _ = s.disconnect();
        self.closed().await;
    }

    /// Emit one jam frame: as its `type`, and to the acknowledgement of its `ref`.
    fn deliver(&self, s: &SocketRef, json: &[u8]) {
        let Ok(Value::Object(mut f)) = serde_json::from_slice::<Value>(json) else {
            return;
        };
        let ty = match f.remove("type") {
            Some(Value::String(t)) => t,
            _ => return,
        };
        let r = f.remove("ref");
        // The seed's handler gets the notification itself.
        let body = match f.remove("notification") {
            Some(n) if ty == "notification:new" => n,
            Some(n) => {
                f.insert("notification".into(), n);
                Value::Object(f)
            }
            None => Value::Object(f),
        };
        if let Some(Value::String(r)) = r {
            let ack = self.acks.lock().unwrap().remove(&r);
            if let Some((_, ack)) = ack {
                // A forwarded call's ack gets the backend's answer itself.
                let answer = match &body {
                    Value::Object(o) if o.len() == 1 && o.contains_key("result") => {
                        o["result"].clone()
                    }
                    b => b.clone(),
                };
                let _ = ack.send(&answer);
            }
        }
        let _ = s.emit(ty, &body);
    }

    async fn closed(&self) {
        crate::ws::connection::report_disconnects(&self.st, &self.who, &self.id).await;
        metrics::gauge!("jam_connections_open").decrement(1.0);
        metrics::counter!("jam_connections_closed_total", "reason" => "socket.io").increment(1);
    }
}
