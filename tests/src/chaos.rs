//! The chaos harness: chat traffic from several users over two gateways, a fault in the
//! middle, and an audit afterwards. Every user behaves like a careful client: each message
//! carries an idempotency key; a message not acknowledged in time is sent again with the
//! same key (after reconnecting to any gateway and rejoining with `sinceSeq` when the
//! socket went away); room events are applied by seq ([`RoomView`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::{create, RoomView};
use crate::{token, Client};

/// How long a message may wait for its acknowledgement before it is sent again.
const ACK_WAIT: Duration = Duration::from_secs(3);

/// What one user saw and did.
#[derive(Debug, Default)]
pub struct UserLog {
    pub acked: Vec<String>,
    /// Rejoins that recovered the missed events / that had to start from a snapshot.
    pub recovered: usize,
    pub snapshots: usize,
    pub reconnects: usize,
    /// When the first acknowledgement after the fault came.
    pub first_ack_after_fault: Option<Instant>,
    pub view: RoomView,
}

/// The figures of one fault run.
#[derive(Debug)]
pub struct Report {
    pub fault: String,
    pub acked: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub seq_errors: usize,
    /// From the fault until every user had an acknowledgement again.
    pub recovery: Option<Duration>,
    pub reconnects: usize,
    pub recovered: usize,
    pub snapshots: usize,
    /// From the fault until every gateway showed every session's members as they were.
    pub presence: Option<Duration>,
}

impl Report {
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            self.fault,
            self.acked,
            self.lost,
            self.duplicates,
            self.seq_errors,
            self.recovery
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.reconnects,
            self.recovered,
            self.snapshots,
            self.presence
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        )
    }
}

/// Traffic: `sessions` rooms of `per_session` users, each sending every `every`.
pub struct Traffic {
    pub urls: Vec<String>,
    pub sessions: usize,
    pub per_session: usize,
    pub every: Duration,
}

struct Member {
    user: String,
    sid: String,
    urls: Vec<String>,
    url_idx: usize,
    client: Client,
    log: UserLog,
}

impl Member {
    async fn reconnect(&mut self) {
        self.log.reconnects += 1;
        for attempt in 0..60u64 {
            self.url_idx = (self.url_idx + 1) % self.urls.len();
            let t = token(&self.user, &self.user, None);
            if let Some(c) = Client::try_connect(&self.urls[self.url_idx], &t).await {
                self.client = c;
                if self.rejoin().await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(5))).await;
        }
        panic!("{} could not reconnect", self.user);
    }

    /// Rejoin with the last seq applied; false when the reply did not come.
    async fn rejoin(&mut self) -> bool {
        let r = format!("{}-rejoin-{}", self.user, self.log.reconnects);
        let f = json!({"type": "join_session", "sessionId": self.sid, "sinceSeq": self.log.view.seq, "ref": r});
        if !self.client.try_send(f).await {
            return false;
        }
        let Some(reply) = self
            .client
            .try_recv_where(ACK_WAIT, |f| f["ref"] == r.as_str())
            .await
        else {
            return false;
        };
        if reply["type"] != "session_update" {
            return false;
        }
        if reply["recovered"] == true {
            self.log.recovered += 1;
        } else {
            self.log.snapshots += 1;
        }
        self.log.view.rejoined(&reply);
        true
    }

    /// Apply every room event read so far, in arrival order (`ack` arrived after the
    /// backlog, before whatever is still queued); rejoin on a gap.
    async fn drain(&mut self, ack: Option<Value>) {
        let mut frames = self.client.take_backlog();
        frames.extend(ack);
        frames.extend(self.client.take_pending());
        let mut gap = false;
        for f in &frames {
            if f["type"] == "resync_required" || !self.log.view.try_apply(f) {
                gap = true;
                break;
            }
        }
        if gap && !self.rejoin().await {
            self.reconnect().await;
        }
    }

    /// Send `text` until it is acknowledged.
    async fn say(&mut self, text: &str, fault_at: &Arc<Mutex<Option<Instant>>>) {
        loop {
            let f = json!({"type": "send_message", "sessionId": self.sid, "message": text,
                           "idempotencyKey": text, "ref": text});
            if self.client.try_send(f).await {
                let ack = self
                    .client
                    .try_recv_where(ACK_WAIT, |f| f["ref"] == text && f["type"] == "new_message")
                    .await;
                if let Some(ack) = ack {
                    self.log.acked.push(text.to_string());
                    let fault = *fault_at.lock().await;
                    if fault.is_some() && self.log.first_ack_after_fault.is_none() {
                        self.log.first_ack_after_fault = Some(Instant::now());
                    }
                    self.drain(Some(ack)).await;
                    return;
                }
            }
            // No acknowledgement: the socket went away, or the command waits for a worker.
            if self.client.close_code.is_some() || !self.alive().await {
                self.reconnect().await;
            }
        }
    }

    /// Playback traffic beside the chat: the host (`u0`) reports its player, the others
    /// theirs, every fifth message (no answer awaited: the server's `sync_command`s and
    /// `sync_status`es are just more room traffic to the audit).
    async fn sync_traffic(&mut self, i: usize) {
        if !i.is_multiple_of(5) {
            return;
        }
        let host = self.user.ends_with("-u0");
        let f = json!({
            "type": if host { "playback_state" } else { "playback_report" },
            "sessionId": self.sid, "trackUri": "chaos:track", "position": (i * 1000) as f64,
            "isPlaying": true,
        });
        // A socket that went away shows at the next message, which reconnects.
        let _ = self.client.try_send(f).await;
    }

    /// Stay connected, as a careful client does, until told to stop: keep applying room
    /// events and reconnect when the socket goes away.
    async fn hold(&mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.drain(None).await;
            if self.client.close_code.is_some() {
                self.reconnect().await;
            }
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), stop.changed()).await
            {
                return;
            }
        }
    }

    async fn alive(&mut self) -> bool {
        let r = format!("{}-ping", self.user);
        if !self
            .client
            .try_send(json!({"type": "ping", "ref": r}))
            .await
        {
            return false;
        }
        self.client
            .try_recv_where(Duration::from_secs(2), |f| f["ref"] == r.as_str())
            .await
            .is_some()
    }
}

/// Traffic under way: mark the fault with [`Running::fault_now`], measure
/// [`Running::presence`], then [`Running::finish`].
pub struct Running {
    pub sids: Vec<String>,
    fault_at: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<UserLog>>,
    stop: watch::Sender<bool>,
    /// The senders of each session (always online: they reconnect).
    senders: Vec<Vec<String>>,
    /// One member per session that never reconnects: online exactly while its socket lives.
    idle: Vec<Client>,
    /// The last difference [`Running::presence`] saw.
    mismatch: String,
    total: Duration,
}

impl Running {
    pub async fn fault_now(&self) {
        *self.fault_at.lock().await = Some(Instant::now());
    }

    /// Poll every gateway until each shows every session's members as they are (the
    /// senders online, the idle member online exactly while its socket lives); the time
    /// from the fault, or `None` when that did not happen within `within`.
    pub async fn presence(&mut self, urls: &[String], within: Duration) -> Option<Duration> {
        let fault = (*self.fault_at.lock().await)?;
        let deadline = Instant::now() + within;
        let mut probes: Vec<Option<Client>> = urls.iter().map(|_| None).collect();
        while Instant::now() < deadline {
            if self.presence_right(urls, &mut probes).await {
                return Some(fault.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("presence still wrong: {}", self.mismatch);
        None
    }

    async fn presence_right(&mut self, urls: &[String], probes: &mut [Option<Client>]) -> bool {
        for (i, url) in urls.iter().enumerate() {
            let probe = match &mut probes[i] {
                Some(c) if c.close_code.is_none() => c,
                slot => {
                    let user = format!("chaos-probe-{i}");
                    let Some(c) = Client::try_connect(url, &token(&user, &user, None)).await else {
                        self.mismatch = format!("{url}: cannot connect");
                        return false;
                    };
                    slot.insert(c)
                }
            };
            for (s, sid) in self.sids.iter().enumerate() {
                let idle = &mut self.idle[s];
                idle.take_pending();
                let idle_online = idle.close_code.is_none();
                let Some(online) = online_members(probe, sid).await else {
                    self.mismatch = format!("{url} {sid}: no snapshot");
                    probe.close_code.get_or_insert(1006);
                    return false;
                };
                let mut want: Vec<&str> = self.senders[s].iter().map(String::as_str).collect();
                if idle_online {
                    want.push(&idle.user);
                }
                want.sort();
                if online != want {
                    self.mismatch = format!("{url} {sid}: shown {online:?}, connected {want:?}");
                    return false;
                }
            }
        }
        true
    }

    /// Stop the users (each first gets all its messages acknowledged) and collect what
    /// they saw.
    pub async fn finish(self) -> (Vec<UserLog>, Option<Instant>) {
        let _ = self.stop.send(true);
        let mut logs = Vec::new();
        for t in self.tasks {
            let log = tokio::time::timeout(self.total * 6, t)
                .await
                .expect("users finish")
                .unwrap();
            logs.push(log);
        }
        let at = *self.fault_at.lock().await;
        (logs, at)
    }
}

/// The online members of `sid` as `probe` is shown them (a join is a snapshot), probes
/// left out, sorted; `None` when no answer came.
async fn online_members(probe: &mut Client, sid: &str) -> Option<Vec<String>> {
    let r = format!("probe-{sid}-{}", jam_shared::clock::now_us());
    let f = json!({"type": "join_session", "sessionId": sid, "ref": r});
    if !probe.try_send(f).await {
        return None;
    }
    let reply = probe
        .try_recv_where(Duration::from_secs(2), |f| f["ref"] == r.as_str())
        .await?;
    probe.clear();
    let mut online: Vec<String> = reply["session"]["participants"]
        .as_array()?
        .iter()
        .filter(|p| p["isOnline"] == true)
        .filter_map(|p| p["id"].as_str())
        .filter(|id| !id.starts_with("chaos-probe"))
        .map(str::to_string)
        .collect();
    online.sort();
    Some(online)
}

/// Seat the users and start sending for `total`.
pub async fn start(traffic: &Traffic, total: Duration) -> Running {
    let mut members = Vec::new();
    let mut sids = Vec::new();
    let mut senders = Vec::new();
    let mut idle = Vec::new();
    for s in 0..traffic.sessions {
        let mut sid = String::new();
        let mut names = Vec::new();
        for u in 0..traffic.per_session {
            let user = format!("chaos-s{s}-u{u}");
            let url_idx = (s + u) % traffic.urls.len();
            let mut client =
                Client::connect(&traffic.urls[url_idx], &token(&user, &user, None)).await;
            let mut log = UserLog::default();
            if u == 0 {
                sid = create(&mut client, json!({"name": format!("chaos {s}")})).await;
                sids.push(sid.clone());
            } else {
                let reply = client
                    .request(json!({"type": "join_session", "sessionId": sid}))
                    .await;
                log.view.rejoined(&reply);
            }
            names.push(user.clone());
            members.push(Member {
                user,
                sid: sid.clone(),
                urls: traffic.urls.clone(),
                url_idx,
                client,
                log,
            });
        }
        names.sort();
        senders.push(names);
        let user = format!("chaos-s{s}-idle");
        let mut c = Client::connect(&traffic.urls[0], &token(&user, &user, None)).await;
        let reply = c
            .request(json!({"type": "join_session", "sessionId": sid}))
            .await;
        assert_eq!(reply["type"], "session_update", "{reply}");
        idle.push(c);
    }
    let fault_at = Arc::new(Mutex::new(None));
    let (stop, stopped) = watch::channel(false);
    let start = Instant::now();
    let every = traffic.every;
    let tasks = members
        .into_iter()
        .map(|mut m| {
            let fault_at = fault_at.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while start.elapsed() < total {
                    let text = format!("{}-m{i}", m.user);
                    m.say(&text, &fault_at).await;
                    m.sync_traffic(i).await;
                    i += 1;
                    tokio::time::sleep(every).await;
                }
                m.hold(stopped).await;
                m.drain(None).await;
                m.log
            })
        })
        .collect();
    Running {
        sids,
        fault_at,
        tasks,
        stop,
        senders,
        idle,
        mismatch: String::new(),
        total,
    }
}

/// Every message of `sid`, oldest first, read through `url`.
pub async fn history(url: &str, sid: &str) -> Vec<(i64, String)> {
    let mut c = Client::connect(url, &token("chaos-auditor", "Auditor", None)).await;
    let r = c
        .request(json!({"type": "join_session", "sessionId": sid}))
        .await;
    assert_eq!(r["type"], "session_update", "{r}");
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut f = json!({"type": "load_history", "sessionId": sid, "limit": 100});
        if let Some(b) = before {
            f["before"] = json!(b);
        }
        let page = c.request(f).await;
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        let mut batch: Vec<(i64, String)> = msgs
            .iter()
            .map(|m| {
                (
                    m["seq"].as_i64().unwrap(),
                    m["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        before = batch.first().map(|m| m.0);
        batch.append(&mut out);
        out = batch;
        if page["hasMore"] != true {
            break;
        }
    }
    out
}

/// Audit a run: every acknowledged message stored exactly once, seqs strictly increasing.
pub async fn audit(
    fault: &str,
    url: &str,
    logs: &[UserLog],
    sids: &[String],
    fault_at: Option<Instant>,
) -> Report {
    let mut stored = Vec::new();
    let mut seq_errors = 0;
    for sid in sids {
        let h = history(url, sid).await;
        seq_errors += h.windows(2).filter(|w| w[1].0 <= w[0].0).count();
        stored.extend(h.into_iter().map(|(_, t)| t));
    }
    let mut sorted = stored.clone();
    sorted.sort();
    let before = sorted.len();
    sorted.dedup();
    let duplicates = before - sorted.len();
    let acked: Vec<&String> = logs.iter().flat_map(|l| &l.acked).collect();
    let lost = acked
        .iter()
        .filter(|t| sorted.binary_search(t).is_err())
        .count();
    // Until every user had an acknowledgement again: the worst-hit user's wait.
    let recovery = fault_at.and_then(|f| {
        logs.iter()
            .filter_map(|l| l.first_ack_after_fault)
            .max()
            .map(|t| t.saturating_duration_since(f))
    });
    Report {
        fault: fault.to_string(),
        acked: acked.len(),
        lost,
        duplicates,
        seq_errors,
        recovery,
        reconnects: logs.iter().map(|l| l.reconnects).sum(),
        recovered: logs.iter().map(|l| l.recovered).sum(),
        snapshots: logs.iter().map(|l| l.snapshots).sum(),
        presence: None,
    }
}

/// A member that stops reading: a socket with a small receive buffer, read only when told.
pub struct SlowReader {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    /// The room seq it joined at, and what it applied since.
    pub joined_at: i64,
    pub view: RoomView,
}

impl SlowReader {
    /// Connect to `url` (`ws://host:port/path`) as `user`, join `sid`, and read no more.
    pub async fn join(url: &str, user: &str, sid: &str) -> Self {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let full = format!("{url}?token={}", token(user, user, None));
        let (ws, _) = tokio_tungstenite::client_async(full, stream).await.unwrap();
        let mut me = Self {
            ws,
            joined_at: 0,
            view: RoomView::default(),
        };
        assert_eq!(me.next().await.unwrap()["type"], "authenticated");
        let f = json!({"type": "join_session", "sessionId": sid, "ref": "slow-join"});
        me.ws
            .send(Message::Text(f.to_string().into()))
            .await
            .unwrap();
        loop {
            let f = me.next().await.expect("the join is answered");
            if f["ref"] == "slow-join" {
                me.view.rejoined(&f);
                me.joined_at = me.view.seq;
                return me;
            }
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(crate::client::WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Read again: apply what the server managed to send before it gave up on us; the
    /// number of frames read.
    pub async fn read_to_end(&mut self) -> usize {
        let mut n = 0;
        while let Some(f) = self.next().await {
            n += 1;
            if !self.view.try_apply(&f) {
                break;
            }
        }
        n
    }
}
