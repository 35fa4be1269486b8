//! A WebSocket test client that speaks jam's JSON frames.

use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the background reader saw: a text frame, or the end (with the close code).
enum Incoming {
    Text(Value),
    Closed(Option<u16>),
}

pub struct Client {
    ws: SplitSink<Ws, Message>,
    /// Frames read by a background task, so pings are answered at once, as a real
    /// client does (the server measures round trips with them).
    rx: mpsc::UnboundedReceiver<Incoming>,
    reader: tokio::task::JoinHandle<()>,
    pub user: String,
    next_ref: u64,
    /// Frames read while waiting for something else.
    backlog: Vec<Value>,
    pub close_code: Option<u16>,
}

impl Client {
    /// Connect with `?token=` and read the `authenticated` frame.
    pub async fn connect(url: &str, token: &str) -> Self {
        let mut c = Self::raw(&format!("{url}?token={token}")).await;
        let auth = c.recv().await;
        assert_eq!(auth["type"], "authenticated", "{auth}");
        c.user = auth["userId"].as_str().unwrap().to_string();
        c
    }

    /// [`connect`](Self::connect), or `None` when the server is not there (yet).
    pub async fn try_connect(url: &str, token: &str) -> Option<Self> {
        let url = format!("{url}?token={token}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .ok()?
            .ok()?;
        let mut c = Self::from_ws(ws);
        let auth = c.recv_wire(WAIT).await?;
        if auth["type"] != "authenticated" {
            return None;
        }
        c.user = auth["userId"].as_str()?.to_string();
        Some(c)
    }

    /// The frames read while waiting for something else, in order.
    pub fn take_backlog(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.backlog)
    }

    /// Every frame read so far, in order: the backlog and whatever has arrived since.
    pub fn take_pending(&mut self) -> Vec<Value> {
        let mut out = std::mem::take(&mut self.backlog);
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Incoming::Text(v) => out.push(v),
                Incoming::Closed(code) => {
                    self.close_code = self.close_code.or(code).or(Some(1006));
                }
            }
        }
        out
    }

    pub async fn raw(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket handshake within the wait")
            .expect("websocket connects");
        Self::from_ws(ws)
    }

    fn from_ws(ws: Ws) -> Self {
        let (ws, mut stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let m = match stream.next().await {
                    None | Some(Err(_)) => Incoming::Closed(None),
                    Some(Ok(Message::Text(t))) => Incoming::Text(serde_json::from_str(&t).unwrap()),
                    Some(Ok(Message::Close(f))) => Incoming::Closed(f.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                };
                let end = matches!(m, Incoming::Closed(_));
                if tx.send(m).is_err() || end {
                    return;
                }
            }
        });
        Self {
            ws,
            rx,
            reader,
            user: String::new(),
            next_ref: 0,
            backlog: Vec::new(),
            close_code: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Send, or false when the connection is gone (a server that closed on us).
    pub async fn try_send(&mut self, v: Value) -> bool {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .is_ok()
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws.send(Message::Text(t.into())).await.unwrap();
    }

    /// The next frame (backlog first). Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        self.recv_wire(WAIT).await.expect("a frame within the wait")
    }

    async fn recv_wire(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_) | Ok(None) => None,
            Ok(Some(Incoming::Text(v))) => Some(v),
            Ok(Some(Incoming::Closed(code))) => {
                self.close_code = self.close_code.or(code);
                None
            }
        }
    }

    /// The first frame matching `pred`, keeping the others for later.
    pub async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_where_within(what, WAIT, pred).await
    }

    /// [`recv_where`](Self::recv_where) with its own deadline.
    pub async fn recv_where_within(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.recv_wire(left).await else {
                panic!(
                    "{}: no {what} within {WAIT:?}; backlog: {:?}",
                    self.user, self.backlog
                )
            };
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// The first frame matching `pred` within `wait`, or `None` (the others are kept).
    pub async fn try_recv_where(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv_wire(left).await?;
            if pred(&v) {
                return Some(v);
            }
            self.backlog.push(v);
        }
    }

    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let t = ty.to_string();
        self.recv_where(ty, move |v| v["type"] == t.as_str()).await
    }

    /// Send with a fresh `ref`; return the reply carrying that ref (result or error).
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_ref += 1;
        let r = format!("{}-{}", self.user, self.next_ref);
        v["ref"] = json!(r);
        self.send(v).await;
        self.recv_where(&format!("reply to {r}"), move |f| f["ref"] == r.as_str())
            .await
    }

    /// Whether no frame of type `ty` arrives within `wait`.
    pub async fn none_of_type(&mut self, ty: &str, wait: Duration) -> bool {
        if self.backlog.iter().any(|v| v["type"] == ty) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.recv_wire(left).await {
                None => return true,
                Some(v) if v["type"] == ty => {
                    self.backlog.push(v);
                    return false;
                }
                Some(v) => self.backlog.push(v),
            }
        }
    }

    /// Read until the server closes; returns the close code.
    pub async fn closed(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_wire(left).await {
                Some(v) => self.backlog.push(v),
                None => return self.close_code,
            }
        }
        None
    }

    /// Whether a frame matching `pred` was read and kept for later.
    pub fn backlog_has(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.backlog.iter().any(pred)
    }

    pub fn clear(&mut self) {
        self.backlog.clear();
    }
}

/// Dropping a client drops its connection (the reader holds half of it).
impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
