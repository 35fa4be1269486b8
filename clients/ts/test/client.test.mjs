// The TypeScript client against the standalone binary started here (target/debug/jam):
// requests answered by ref, reconnect with recovery by seq, close codes that stop it,
// clock sync, and synced playback through the helper.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Jam, JamError, PlaybackSync } from "../dist/index.js";
import { gentoken, startJam } from "../../../tests/support/jam.mjs";

const SECRET = "ts-client-secret";
let jam;
let url;

const token = (sub) => gentoken(sub, { secret: SECRET });

const until = (fn, ms = 10_000) =>
  new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      const v = fn();
      if (v) return resolve(v);
      if (Date.now() - t0 > ms) return reject(new Error("condition not met in time"));
      setTimeout(tick, 20);
    };
    tick();
  });

before(async () => {
  jam = await startJam({ JAM_JWT_SECRET: SECRET, JAM_RATE_LIMIT_PER_SEC: "1000" });
  url = jam.ws;
});

after(() => jam?.proc.kill());

test("a message resolves with its committed seq; errors reject with their code", async () => {
  const a = new Jam({ url, token: token("ana") });
  const b = new Jam({ url, token: () => token("bo") });
  await a.connect();
  await b.connect();
  const s = await a.createSession({ name: "ts party" });
  await b.joinSession(s.id);
  const seen = new Promise((r) => b.on("new_message", (m) => m.message === "hi" && r(m)));
  const m = await a.sendMessage(s.id, "hi");
  assert.equal(m.message, "hi");
  assert.ok(m.seq > s.seq, `seq ${m.seq}`);
  assert.equal((await seen).seq, m.seq);
  await assert.rejects(b.joinSession("NOPE99"), (e) => e instanceof JamError && e.code === "SESSION_NOT_FOUND");
  a.close();
  b.close();
});

test("a dropped connection reconnects and recovers what it missed, once, in order", async () => {
  let tokens = 0;
  const a = new Jam({ url, token: () => (tokens++, token("cy")), reconnectMinMs: 50, reconnectMaxMs: 200 });
  const b = new Jam({ url, token: token("di") });
  await a.connect();
  await b.connect();
  const s = await b.createSession({ name: "drop" });
  await a.joinSession(s.id);
  const got = [];
  a.on("new_message", (m) => got.push(m.message));
  const back = new Promise((r) => a.on("reconnected", r));
  a.dropConnection();
  for (let i = 0; i < 5; i++) await b.sendMessage(s.id, `m${i}`);
  await back;
  await b.sendMessage(s.id, "after");
  await until(() => got.includes("after"));
  assert.deepEqual(got, ["m0", "m1", "m2", "m3", "m4", "after"]);
  assert.equal(tokens, 2, "a fresh token for the reconnect");
  a.close();
  b.close();
});

test("a direct conversation pages back from each page's first message, losing none", async () => {
  const a = new Jam({ url, token: token("dm-ana") });
  const b = new Jam({ url, token: token("dm-bo") });
  await a.connect();
  await b.connect();
  // Sent together: several share a millisecond, and so a page boundary.
  const sent = Array.from({ length: 9 }, (_, i) => `d${i}`);
  await Promise.all(sent.map((c) => a.directMessage("dm-bo", c)));
  const got = [];
  let page = await b.loadDirect("dm-ana", undefined, 2);
  for (;;) {
    got.unshift(...page.messages.map((m) => m.content));
    if (!page.hasMore) break;
    page = await b.loadDirect("dm-ana", page.messages[0], 2);
  }
  assert.deepEqual(got, sent);
  a.close();
  b.close();
});

test("1008 stops reconnecting and asks for a token", async () => {
  let good = true;
  const a = new Jam({ url, token: () => (good ? token("eve") : "not-a-token"), reconnectMinMs: 20, reconnectMaxMs: 50 });
  await a.connect();
  const asked = new Promise((r) => a.on("auth_required", r));
  good = false;
  a.dropConnection();
  const e = await asked;
  assert.equal(e.code, 1008);
  let reconnected = false;
  a.on("reconnected", () => (reconnected = true));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(reconnected, false);
  a.close();
});

test("time sync: the server's clock from the best sample", async () => {
  const a = new Jam({ url, token: token("fay") });
  await a.connect();
  const { offsetMs, rttMs } = await a.timeSync(5);
  assert.ok(Math.abs(offsetMs) < 50, `same machine: offset ${offsetMs}`);
  assert.ok(rttMs < 100, `loopback rtt ${rttMs}`);
  assert.ok(Math.abs(a.serverNow() - Date.now()) < 50);
  a.close();
});

/** A player that plays in real time: position = base + elapsed while playing. */
function fakePlayer(startMs, playing) {
  let base = startMs;
  let since = Date.now();
  let on = playing;
  return {
    getPosition: () => base + (on ? Date.now() - since : 0),
    isPlaying: () => on,
    seek(ms) { base = ms; since = Date.now(); },
    play() { if (!on) { base = this.getPosition(); since = Date.now(); on = true; } },
    pause() { base = this.getPosition(); on = false; },
    load() {},
  };
}

test("the playback helper: a joiner follows the host within 100 ms", async () => {
  const host = new Jam({ url, token: token("gus") });
  const guest = new Jam({ url, token: token("hal") });
  await host.connect();
  await guest.connect();
  await guest.timeSync(3);
  const s = await host.createSession({ name: "sync" });
  const hostPlayer = fakePlayer(42_000, true);
  const hostSync = new PlaybackSync(host, s.id, hostPlayer, { host: true, intervalMs: 500 });
  hostSync.start("tone:440");
  // Answered by the session's worker after the host's playback_state (same stream).
  await host.request({ type: "get_state", sessionId: s.id });
  const guestPlayer = fakePlayer(0, false);
  const guestSync = new PlaybackSync(guest, s.id, guestPlayer, { host: false, intervalMs: 500 });
  const switched = new Promise((r) => guest.on("sync_command", r));
  guestSync.start("");
  await guest.joinSession(s.id);
  await switched;
  await until(() => guestPlayer.isPlaying());
  const drift = guestPlayer.getPosition() - hostPlayer.getPosition();
  assert.ok(Math.abs(drift) < 100, `drift ${drift} ms`);
  assert.equal(guestSync.trackUri, "tone:440");
  hostSync.stop();
  guestSync.stop();
  host.close();
  guest.close();
});

/** A socket the test speaks for: what the client sends is kept, frames are pushed in. */
class FakeSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.sent = [];
    FakeSocket.last = this;
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  push(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
}

/** A client on a fake socket, authenticated and in session "S" at seq 3. */
async function inSessionS(opts, WebSocket = FakeSocket) {
  const c = new Jam({ url: "ws://fake", token: "t", WebSocket, ...opts });
  const connecting = c.connect();
  const ws = FakeSocket.last;
  ws.push({ type: "authenticated", userId: "u", userName: "U" });
  await connecting;
  const joining = c.joinSession("S");
  ws.push({ type: "session_update", ref: ws.sent.at(-1).ref, session: { id: "S", seq: 3 } });
  await joining;
  return { c, ws };
}

const msg = (seq) => ({ type: "new_message", sessionId: "S", message: `m${seq}`, seq });
const RESYNC = { type: "resync_required", sessionId: "S", reason: "events_dropped" };

test("a jump in a room's seq, or resync_required with no next event, rejoins from the last seq applied", async () => {
  const { c, ws } = await inSessionS({ resyncWaitMs: 50 });
  const got = [];
  c.on("new_message", (m) => got.push(m.seq));
  ws.push(msg(4));
  ws.push(msg(6)); // 5 was dropped on its way
  const rejoin = ws.sent.at(-1);
  assert.equal(rejoin.type, "join_session");
  assert.equal(rejoin.sinceSeq, 4);
  ws.push(msg(7)); // left to the answer, which holds it
  ws.push({ type: "session_update", ref: rejoin.ref, recovered: true, session: { id: "S", seq: 7 }, missed: [msg(5), msg(6), msg(7)] });
  await until(() => got.length >= 4);
  ws.push(msg(8));
  assert.deepEqual(got, [4, 5, 6, 7, 8], "each once, in order");

  // Told to resync, then the room's next event in order: nothing of this room was dropped.
  const sent = ws.sent.length;
  ws.push(RESYNC);
  ws.push(msg(9));
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(ws.sent.length, sent, "no rejoin");

  // Told to resync, then silence: the dropped events may have been the room's last.
  ws.push(RESYNC);
  await until(() => ws.sent.length > sent);
  assert.equal(ws.sent.at(-1).type, "join_session");
  assert.equal(ws.sent.at(-1).sinceSeq, 9);
  c.close();
});

test("a rejoin whose answer was dropped is asked for again; what was applied is not emitted twice", async () => {
  const { c, ws } = await inSessionS({ resyncWaitMs: 50, resyncTimeoutMs: 300 });
  const got = [];
  c.on("new_message", (m) => got.push(m.seq));
  const snapshots = [];
  c.on("session_update", (e) => snapshots.push(e.session.seq));
  const rejoins = () => ws.sent.filter((f) => f.type === "join_session" && f.sinceSeq !== undefined);

  ws.push(msg(5)); // 4 was dropped
  const first = rejoins().at(-1);
  assert.equal(first.sinceSeq, 3);
  // Told to resync while the answer is on its way: it is given its time.
  ws.push(RESYNC);
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(rejoins().length, 1);
  // The answer was dropped: once resyncTimeoutMs is over, the rejoin is sent again.
  await until(() => rejoins().length === 2, 2000);
  const second = rejoins().at(-1);
  assert.equal(second.sinceSeq, 3, "from the same seq");
  assert.notEqual(second.ref, first.ref);
  ws.push({ type: "session_update", ref: second.ref, recovered: true, session: { id: "S", seq: 6 }, missed: [msg(4), msg(5), msg(6)] });
  await until(() => got.length >= 3);
  // The first answer, late, and a room event applied already: neither is emitted again.
  ws.push({ type: "session_update", ref: first.ref, recovered: true, session: { id: "S", seq: 5 }, missed: [msg(4), msg(5)] });
  ws.push(msg(6));
  ws.push(msg(7));
  assert.deepEqual(got, [4, 5, 6, 7], "each once, in order");
  assert.deepEqual(snapshots, [6], "the late answer's older snapshot is not emitted");
  c.close();
});

test("after a reconnect, a rejoin not answered is asked again on the same connection", async () => {
  let sockets = 0;
  class Counted extends FakeSocket {
    constructor(url) {
      super(url);
      sockets++;
    }
  }
  const opts = { resyncWaitMs: 50, resyncTimeoutMs: 200, reconnectMinMs: 1, reconnectMaxMs: 1 };
  const { c, ws: first } = await inSessionS(opts, Counted);
  first.close(4000, "dropped");
  await until(() => FakeSocket.last !== first);
  const second = FakeSocket.last;
  second.push({ type: "authenticated", userId: "u", userName: "U" });
  const rejoins = () => second.sent.filter((f) => f.type === "join_session");
  await until(() => rejoins().length === 1);
  // No answer: asked again after resyncTimeoutMs, on this socket, not on a new one.
  await until(() => rejoins().length === 2, 2000);
  assert.equal(rejoins()[1].sinceSeq, 3);
  assert.equal(sockets, 2);
  assert.equal(FakeSocket.last, second);
  c.close();
});

