// The seeds' Socket.IO clients, written as the seeds write them (socket.io-client 4,
// unchanged), against jam's /socket.io/ endpoint on the standalone binary started here:
// show-chat's join_show flow beside a native WebSocket member, dj-system's notifications
// and job acknowledgements answered by a stub backend, spotify-sync's auth payload,
// long-polling, and a refused token. Run: npm test (./scripts/test does).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { io } from "socket.io-client";
import { gentoken, startJam } from "../support/jam.mjs";

const SECRET = "socketio-test-secret";
const API_KEY = "socketio-backend-key";
const WAIT = 10_000;

let jam;
let base;
let backend;

const token = (sub, tenant, ttl) => gentoken(sub, { secret: SECRET, tenant, ttl });

/** The first `event` on `socket` matching `pred`, within the wait. */
function next(socket, event, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT} ms`)), WAIT);
    const on = (data) => {
      if (!pred(data)) return;
      clearTimeout(timer);
      socket.off(event, on);
      resolve(data);
    };
    socket.on(event, on);
  });
}

/** A native jam client over /ws (Node's WebSocket). */
function native(tok) {
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws?token=${tok}`);
  const frames = [];
  const waiters = [];
  ws.onmessage = (e) => {
    const f = JSON.parse(e.data);
    frames.push(f);
    for (const w of [...waiters]) if (w.pred(f)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(f); }
  };
  return {
    ws,
    send: (f) => ws.send(JSON.stringify(f)),
    next: (pred) =>
      new Promise((resolve, reject) => {
        const seen = frames.find(pred);
        if (seen) return resolve(seen);
        waiters.push({ pred, resolve });
        setTimeout(() => reject(new Error("native client: nothing within the wait")), WAIT);
      }),
    open: () => new Promise((r) => (ws.readyState === 1 ? r() : (ws.onopen = () => r()))),
  };
}

function connect(opts) {
  return io(base, { reconnection: false, timeout: WAIT, ...opts });
}

before(async () => {
  // The app's backend: answers job events, and pushes job:started with the publish API.
  backend = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", async () => {
      const call = JSON.parse(body);
      if (call.data.jobId === 999) {
        res.writeHead(404, { "content-type": "application/json" });
        return res.end(JSON.stringify({ error: "Job not found" }));
      }
      await fetch(`${base}/api/publish`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-api-key": API_KEY },
        body: JSON.stringify({ target: { userId: call.user.id }, event: "job:started", data: { jobId: call.data.jobId } }),
      });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ success: true, jobId: call.data.jobId, by: call.user.id }));
    });
  });
  await new Promise((r) => backend.listen(0, "127.0.0.1", r));
  jam = await startJam({
    JAM_JWT_SECRET: SECRET,
    JAM_API_KEY: API_KEY,
    JAM_RPC_URL: `http://127.0.0.1:${backend.address().port}/rpc`,
  });
  base = jam.base;
});

after(() => {
  jam?.proc.kill();
  backend?.close();
});

test("show-chat: join_show by the show's id, chat with a native member", async () => {
  const put = await fetch(`${base}/api/sessions/321`, {
    method: "PUT",
    headers: { "content-type": "application/json", "x-api-key": API_KEY },
    body: JSON.stringify({ name: "Saturday show" }),
  });
  assert.equal(put.status, 201);
  // The seed: io(url, { auth: { token } }), on 'connected' emit join_show.
  const socket = connect({ auth: { token: token("fan1") } });
  const connected = await next(socket, "connected");
  assert.equal(connected.userId, "fan1");
  const history = next(socket, "message_history");
  const active = next(socket, "active_users");
  socket.emit("join_show", { show_id: 321 });
  assert.deepEqual((await history).messages, []);
  assert.equal((await active).count, 1);

  const other = native(token("fan2"));
  await other.open();
  other.send({ type: "join_show", show_id: 321, ref: "j" });
  await other.next((f) => f.ref === "j" && f.type === "session_update");
  await next(socket, "user_joined", (d) => d.userId === "fan2");

  const fromNative = next(socket, "new_message", (m) => m.message === "hello from ws");
  other.send({ type: "send_message", show_id: 321, message: "hello from ws" });
  assert.equal((await fromNative).userId, "fan2");
  socket.emit("send_message", { show_id: 321, message: "hello from socket.io" });
  const seen = await other.next((f) => f.type === "new_message" && f.message === "hello from socket.io");
  assert.equal(seen.userId, "fan1");

  socket.emit("typing", { show_id: 321, is_typing: true });
  const typing = await other.next((f) => f.type === "user_typing");
  assert.equal(typing.userId, "fan1");

  const missing = next(socket, "error");
  socket.emit("join_show", { show_id: 999 });
  assert.equal((await missing).message, "Show not found");
  // Closing the Socket.IO connection is a disconnect like any other.
  socket.close();
  await other.next((f) => f.type === "user_offline" && f.userId === "fan1");
  other.ws.close();
});

test("dj-system: notifications with their counts, job events acknowledged by the backend", async () => {
  // The seed: auth { token, tenantId } (the tenant comes from the token, not the client).
  const socket = connect({ auth: { token: token("dj1"), tenantId: 7 } });
  await next(socket, "connected");
  const created = next(socket, "notification:new");
  const count = next(socket, "notification:unread-count");
  const r = await fetch(`${base}/api/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": API_KEY },
    body: JSON.stringify({ userId: "dj1", type: "job_assigned", priority: "HIGH", title: "Job 5", data: { jobId: 5 } }),
  });
  assert.equal(r.status, 201);
  const n = await created;
  assert.equal(n.type, "job_assigned", "the notification itself, as the seed's handler gets it");
  assert.equal(n.data.jobId, 5);
  assert.equal((await count).count, 1);
  const marked = next(socket, "notification:marked-read");
  socket.emit("notification:read", { notificationId: n.id });
  assert.equal((await marked).notificationId, n.id);

  // emit with an acknowledgement callback: answered by the app's backend.
  const started = next(socket, "job:started");
  const response = await socket.timeout(WAIT).emitWithAck("job:start", { jobId: 1 });
  assert.deepEqual(response, { success: true, jobId: 1, by: "dj1" });
  assert.equal((await started).jobId, 1);
  const refused = await socket.timeout(WAIT).emitWithAck("job:complete", { jobId: 999, note: "x" });
  assert.equal(refused.code, "BAD_REQUEST");
  assert.equal(refused.message, "Job not found");
  socket.close();
});

test("spotify-sync: auth payload, join_session, session_update; long-polling only", async () => {
  const host = connect({ auth: { token: token("host1") }, transports: ["polling"] });
  await next(host, "connected");
  const created = await host.timeout(WAIT).emitWithAck("create_session", { name: "polling party" });
  const sid = created.session.id;
  assert.ok(sid, JSON.stringify(created));
  const guest = connect({ auth: { token: token("guest1") } });
  await next(guest, "connected");
  // Both listen before the join: the host's user_joined may come before the guest's answer.
  const update = next(guest, "session_update");
  const joined = next(host, "user_joined", (d) => d.userId === "guest1");
  guest.emit("join_session", { sessionId: sid, role: "client" });
  assert.equal((await update).session.id, sid);
  await joined;
  host.close();
  guest.close();
});

test("a token in the query works; a bad one is refused", async () => {
  const ok = connect({ query: { token: token("q1") } });
  assert.equal((await next(ok, "connected")).userId, "q1");
  ok.close();
  // Refused in the handshake: the client's connect_error, and no connection.
  const bad = connect({ auth: { token: "not-a-token" } });
  const err = await next(bad, "connect_error");
  assert.match(err.message, /^UNAUTHORIZED/);
  assert.equal(bad.connected, false);
  bad.close();
});

test("connections per IP count Socket.IO and WebSocket connections together", async () => {
  const limited = await startJam({ JAM_JWT_SECRET: SECRET, JAM_MAX_CONNECTIONS_PER_IP: "2" });
  try {
    const dial = (sub) => io(limited.base, { reconnection: false, timeout: WAIT, auth: { token: token(sub) } });
    const a = dial("ip1");
    assert.equal((await next(a, "connected")).userId, "ip1");
    const ws = new WebSocket(`${limited.ws}?token=${token("ip2")}`);
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    // The third from the same address: an error naming the limit, then the end.
    const c = dial("ip3");
    const gone = next(c, "disconnect");
    const err = await next(c, "error");
    assert.equal(err.code, "LIMIT_EXCEEDED");
    await gone;
    c.close();
    // A slot given back is a slot again.
    a.close();
    await new Promise((r) => setTimeout(r, 300));
    const d = dial("ip4");
    assert.equal((await next(d, "connected")).userId, "ip4");
    d.close();
    ws.close();
  } finally {
    limited.proc.kill();
  }
});

test("a client that hangs up while it is being registered gives its slot back", async () => {
  const limited = await startJam({ JAM_JWT_SECRET: SECRET, JAM_MAX_CONNECTIONS_PER_USER: "1" });
  try {
    const dial = () => io(limited.base, { reconnection: false, timeout: WAIT, transports: ["websocket"], auth: { token: token("flap") } });
    // Each transport closes as soon as it opens: the server's connect handler is still
    // registering the connection when the close arrives (a flaky mobile network).
    for (let i = 0; i < 50; i++) {
      const s = dial();
      await new Promise((resolve) => {
        s.io.on("open", () => setTimeout(() => s.io.engine.close(), i % 3));
        s.io.on("close", resolve);
      });
    }
    // One place per user: it is free again once the server has seen every one of them go
    // (asked until then, for at most the wait; a slot kept by a hang-up never frees).
    const until = Date.now() + WAIT;
    let outcome;
    do {
      const last = dial();
      outcome = await new Promise((resolve) => {
        last.on("connected", (c) => resolve(c.userId));
        last.on("error", (e) => resolve(`error ${JSON.stringify(e)}`));
        last.on("connect_error", (e) => resolve(`connect_error ${e.message}`));
      });
      last.close();
    } while (outcome !== "flap" && Date.now() < until);
    assert.equal(outcome, "flap");
  } finally {
    limited.proc.kill();
  }
});

test("a token's end: token_expiring, refresh_token with an ack, then the end of an unrefreshed one", async () => {
  const socket = connect({ auth: { token: token("exp1", undefined, 3) } });
  // Listening before the connection: the warning may come in the same packet batch.
  const expiring = next(socket, "token_expiring");
  await next(socket, "connected");
  await expiring;
  const refreshed = await socket.timeout(WAIT).emitWithAck("refresh_token", { token: token("exp1", undefined, 2) });
  assert.ok(refreshed.expiresAt, JSON.stringify(refreshed));
  const ended = next(socket, "error", (e) => e.message === "token expired");
  const gone = next(socket, "disconnect");
  await ended;
  await gone;
  assert.equal(socket.connected, false);
});
