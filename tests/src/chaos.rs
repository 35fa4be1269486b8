//! The chaos harness: chat traffic from several users over two gateways, a fault in the
//! middle, and an audit afterwards. Every user behaves like a careful client: each message
//! carries an idempotency key; a message not acknowledged in time is sent again with the
//! same key (after reconnecting to any gateway and rejoining with `sinceSeq` when the
//! socket went away); room events are applied by seq ([`RoomView`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

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
}

impl Report {
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} |",
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

/// Traffic under way: mark the fault with [`Running::fault_now`], then [`Running::finish`].
pub struct Running {
    pub sids: Vec<String>,
    fault_at: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<UserLog>>,
    total: Duration,
}

impl Running {
    pub async fn fault_now(&self) {
        *self.fault_at.lock().await = Some(Instant::now());
    }

    /// Wait for every user to finish (each ends once all its messages are acknowledged).
    pub async fn finish(self) -> (Vec<UserLog>, Option<Instant>) {
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

/// Seat the users and start sending for `total`.
pub async fn start(traffic: &Traffic, total: Duration) -> Running {
    let mut members = Vec::new();
    let mut sids = Vec::new();
    for s in 0..traffic.sessions {
        let mut sid = String::new();
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
            members.push(Member {
                user,
                sid: sid.clone(),
                urls: traffic.urls.clone(),
                url_idx,
                client,
                log,
            });
        }
    }
    let fault_at = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let every = traffic.every;
    let tasks = members
        .into_iter()
        .map(|mut m| {
            let fault_at = fault_at.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while start.elapsed() < total {
                    let text = format!("{}-m{i}", m.user);
                    m.say(&text, &fault_at).await;
                    i += 1;
                    tokio::time::sleep(every).await;
                }
                m.drain(None).await;
                m.log
            })
        })
        .collect();
    Running {
        sids,
        fault_at,
        tasks,
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
    }
}
