// The listening-party page, on jam's TypeScript client (jam-client.js is its build, copied
// from clients/ts/dist): sign in, create or join by code, people with online and typing
// state, chat with history, a queue of generated tones, the host's controls followed by
// everyone, and a live drift read-out with a small chart.

import { Jam, PlaybackSync } from "/jam-client.js";

const $ = (id) => document.getElementById(id);
const show = (id, on = true) => ($(id).hidden = !on);

/** Bundled "tracks": tones made with WebAudio (no internet needed). */
const TONES = [
  { uri: "tone:220", name: "Low A", artist: "Oscillator", durationMs: 120000 },
  { uri: "tone:330", name: "E", artist: "Oscillator", durationMs: 120000 },
  { uri: "tone:440", name: "Concert A", artist: "Oscillator", durationMs: 120000 },
];

/** A player on its own clock (ms), sounding a tone while it plays. */
class TonePlayer {
  constructor() {
    this.base = 0;
    this.since = performance.now();
    this.playing = false;
    this.rate = 1;
    this.uri = "";
    this.audio = null;
    this.osc = null;
  }
  getPosition() {
    return this.base + (this.playing ? (performance.now() - this.since) * this.rate : 0);
  }
  isPlaying() { return this.playing; }
  rebase() { this.base = this.getPosition(); this.since = performance.now(); }
  seek(ms) { this.base = Math.max(0, ms); this.since = performance.now(); }
  play() { if (!this.playing) { this.rebase(); this.playing = true; this.sound(); } }
  pause() { if (this.playing) { this.rebase(); this.playing = false; this.sound(); } }
  setRate(r) { this.rebase(); this.rate = r; }
  load(uri) { this.uri = uri; this.sound(); }
  sound() {
    try {
      this.audio ??= new AudioContext();
      this.osc?.stop();
      this.osc = null;
      const freq = Number(this.uri.split(":")[1]);
      if (!this.playing || !freq) return;
      const gain = this.audio.createGain();
      gain.gain.value = 0.03;
      this.osc = this.audio.createOscillator();
      this.osc.frequency.value = freq;
      this.osc.connect(gain).connect(this.audio.destination);
      this.osc.start();
    } catch { /* no audio here: the clock still runs */ }
  }
}

const player = new TonePlayer();
const state = { jam: null, me: null, session: null, sync: null, people: new Map(), typing: new Map(), drift: [] };
window.jamPlayer = player;
window.jamState = state;

async function devToken(name) {
  const r = await fetch(`/dev/token?name=${encodeURIComponent(name)}`);
  return r.ok ? (await r.json()).token : null;
}

$("signin-btn").onclick = async () => {
  const name = $("name").value.trim() || "Guest";
  let token = $("token").value.trim() || (await devToken(name));
  if (!token) {
    show("token-row");
    $("status").textContent = "this deployment needs a token";
    return;
  }
  const jam = new Jam({ url: `${location.origin.replace(/^http/, "ws")}/ws`, token });
  state.jam = jam;
  state.me = await jam.connect();
  await jam.timeSync(5);
  wire(jam);
  $("who").textContent = state.me.userName;
  $("status").textContent = "online";
  show("signin", false);
  show("lobby");
};

$("create-btn").onclick = async () => {
  const s = await state.jam.createSession({ name: $("session-name").value.trim() || `${state.me.userName}'s party` });
  enter(s);
};

$("join-btn").onclick = async () => {
  const s = await state.jam.joinSession($("code").value.trim().toUpperCase(), { rate: true });
  enter(s);
};

function isHost() { return state.session && state.session.hostId === state.me.userId; }

function enter(s) {
  state.session = s;
  for (const p of s.participants) state.people.set(p.id, p);
  show("lobby", false);
  show("party");
  $("party-name").textContent = s.name;
  $("party-code").textContent = s.id;
  $("role").textContent = isHost() ? "(you host)" : "";
  show("host-controls", isHost());
  $("add-tracks").innerHTML = "";
  for (const t of TONES) {
    const b = document.createElement("button");
    b.textContent = `+ ${t.name}`;
    b.onclick = () => state.jam.request({ type: "add_track", sessionId: s.id, track: t });
    $("add-tracks").append(b, " ");
  }
  renderQueue(s.queue);
  renderPeople();
  state.sync = new PlaybackSync(state.jam, s.id, player, { host: isHost(), intervalMs: 1000 });
  state.sync.start(s.currentTrack?.uri ?? "");
}

function wire(jam) {
  jam.on("message_history", (h) => { $("messages").innerHTML = ""; h.messages.forEach(addMessage); });
  jam.on("new_message", addMessage);
  jam.on("user_joined", (e) => { state.people.set(e.userId, { id: e.userId, name: e.userName, isOnline: true }); renderPeople(); });
  jam.on("user_left", (e) => { state.people.delete(e.userId); renderPeople(); });
  jam.on("user_online", (e) => e.sessionId && setOnline(e.userId, true));
  jam.on("user_offline", (e) => e.sessionId && setOnline(e.userId, false));
  jam.on("user_typing", (e) => {
    if (e.isTyping) state.typing.set(e.userId, e.userName); else state.typing.delete(e.userId);
    const names = [...state.typing.values()];
    $("typing").textContent = names.length ? `${names.join(", ")} typing…` : "";
  });
  jam.on("session_update", (e) => { if (state.session && e.session.id === state.session.id) { state.session = e.session; renderQueue(e.session.queue); } });
  jam.on("track_added", (e) => { state.session.queue.push(e.track); renderQueue(state.session.queue); });
  jam.on("track_removed", (e) => { state.session.queue = state.session.queue.filter((t) => t.id !== e.trackId); renderQueue(state.session.queue); });
  jam.on("track_change", (e) => { state.session.queue = state.session.queue.filter((t) => t.uri !== e.track?.uri); renderQueue(state.session.queue); });
  jam.on("sync_status", (e) => {
    if (e.drift === null || e.drift === undefined) return;
    $("drift").textContent = `${Math.round(e.drift)} ms`;
    $("quality").textContent = e.quality;
    state.drift.push(e.drift);
    if (state.drift.length > 60) state.drift.shift();
    drawDrift();
  });
  jam.on("disconnected", (e) => ($("status").textContent = e.willReconnect ? "reconnecting…" : "offline"));
  jam.on("reconnected", () => ($("status").textContent = "online"));
}

function setOnline(id, on) {
  const p = state.people.get(id);
  if (p) { p.isOnline = on; renderPeople(); }
}

function renderPeople() {
  const ul = $("people");
  ul.innerHTML = "";
  for (const p of state.people.values()) {
    const li = document.createElement("li");
    li.textContent = p.name;
    li.dataset.user = p.id;
    if (!p.isOnline) li.classList.add("offline");
    if (state.session && p.id === state.session.hostId) li.classList.add("host");
    ul.append(li);
  }
}

function renderQueue(queue) {
  $("queue").innerHTML = "";
  for (const t of queue ?? []) {
    const li = document.createElement("li");
    li.textContent = `${t.name ?? t.uri}`;
    $("queue").append(li);
  }
}

function addMessage(m) {
  const p = document.createElement("p");
  const who = document.createElement("strong");
  who.textContent = `${m.userName}: `;
  p.append(who, document.createTextNode(m.message));
  $("messages").append(p);
  $("messages").scrollTop = $("messages").scrollHeight;
}

let typingSent = 0;
$("chat-input").oninput = () => {
  if (!state.session) return;
  if (Date.now() - typingSent > 2000) {
    typingSent = Date.now();
    state.jam.typing(state.session.id, true);
  }
};
$("chat-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  typingSent = 0;
  state.jam.typing(state.session.id, false);
  await state.jam.sendMessage(state.session.id, text);
};

// The host's controls: change the player, then tell the session (playback_state).
$("play-btn").onclick = () => {
  if (!state.sync.trackUri) return next();
  player.play();
  state.sync.changed();
};
$("pause-btn").onclick = () => { player.pause(); state.sync.changed(); };
$("seek-btn").onclick = () => { player.seek(player.getPosition() + 10_000); state.sync.changed(); };
$("next-btn").onclick = () => next();

async function next() {
  const t = state.session.queue[0];
  if (!t) return;
  await state.jam.request({ type: "track_change", sessionId: state.session.id, trackUri: t.uri, position: 0 });
  player.load(t.uri);
  player.seek(0);
  player.play();
  state.sync.changed(t.uri);
}

function drawDrift() {
  const c = $("drift-chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.strokeStyle = "#3a3f48";
  g.beginPath(); g.moveTo(0, c.height / 2); g.lineTo(c.width, c.height / 2); g.stroke();
  g.strokeStyle = "#ffb347";
  g.beginPath();
  state.drift.forEach((d, i) => {
    const x = (i / 59) * c.width;
    const y = c.height / 2 - Math.max(-1, Math.min(1, d / 500)) * (c.height / 2 - 2);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

setInterval(() => {
  const s = Math.floor(player.getPosition() / 1000);
  $("position").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  $("playing-state").textContent = player.isPlaying() ? "▶" : "❚❚";
  $("now-playing").textContent = player.uri ? (TONES.find((t) => t.uri === player.uri)?.name ?? player.uri) : "nothing yet";
}, 250);
