// jam's TypeScript client: one WebSocket to /ws, requests answered by `ref`, typed events
// for the server's frames (docs/protocol.md), reconnects that respect close codes and
// recover missed room events by sequence number, clock sync, and a playback helper.
// No framework; browsers and Node >= 18 (the global WebSocket).

export type TokenSource = string | (() => string | Promise<string>);

export interface JamOptions {
  /** The gateway's WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`. */
  url: string;
  /** A token, or a function that returns a fresh one (called at every (re)connect). */
  token: TokenSource;
  /** How long a request waits for its answer (default 10 s). */
  requestTimeoutMs?: number;
  /** Reconnect back-off bounds (default 250 ms to 10 s, jittered). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** After `resync_required`, how long at most to wait for the room's next event before
   * rejoining (default 1 s; each client waits a random part of it). */
  resyncWaitMs?: number;
  /** How long a rejoin's answer is awaited before it is asked for again, backing off
   * (default 5 s; the answer crosses the same bus as the events and can be dropped too). */
  resyncTimeoutMs?: number;
  /** A WebSocket implementation when there is no global one. */
  WebSocket?: typeof WebSocket;
}

export interface Participant {
  id: string;
  name: string;
  role: "host" | "participant";
  joinedAt: number;
  isOnline: boolean;
}

export interface Track {
  id?: string;
  uri: string;
  name?: string;
  artist?: string;
  durationMs?: number;
}

export interface Session {
  id: string;
  name: string;
  description: string;
  hostId: string;
  isPrivate: boolean;
  maxParticipants: number;
  participants: Participant[];
  participantCount: number;
  status: string;
  createdAt: number;
  expiresAt: number | null;
  seq: number;
  currentTrack: Track | null;
  queue: Track[];
  playback: { trackUri: string; position: number; isPlaying: boolean; reportedAt: number } | null;
}

export interface ChatMessage {
  id: string;
  sessionId: string;
  userId: string;
  userName: string;
  message: string;
  createdAt: number;
  seq: number;
}

export interface SyncCommand {
  sessionId: string;
  action: "play" | "pause" | "seek" | "switch_track" | "rate";
  trackUri: string;
  position: number;
  isPlaying: boolean;
  playbackRate: number;
  timestamp: number;
}

/** The server's frames by type (the fields a client reads; every frame has more). */
export interface Events {
  authenticated: { userId: string; userName: string; connectionId: string; expiresAt?: number };
  session_created: { session: Session };
  session_update: { session: Session; recovered?: boolean; missed?: Frame[] };
  session_ended: { sessionId: string; reason: string };
  message_history: { sessionId: string; messages: ChatMessage[]; hasMore: boolean };
  new_message: ChatMessage;
  active_users: { sessionId: string; activeUsers: { userId: string; userName: string }[]; count: number };
  user_joined: { sessionId: string; userId: string; userName: string; count: number; seq: number };
  user_left: { sessionId: string; userId: string; userName: string; count: number; seq: number };
  user_online: { sessionId?: string; userId: string; count?: number };
  user_offline: { sessionId?: string; userId: string; count?: number };
  user_typing: { sessionId: string; userId: string; userName: string; isTyping: boolean };
  typing: { userId: string; isTyping: boolean };
  direct_message: { id: string; senderId: string; senderName: string; receiverId: string; content: string; createdAt: number };
  sync_command: SyncCommand;
  sync_status: { sessionId: string; drift: number | null; lastSync: number; quality: string; lagging: boolean };
  track_added: { sessionId: string; track: Track };
  track_removed: { sessionId: string; trackId: string };
  /** With `sessionId`: that room's events were dropped (the client rejoins by itself).
   * With `scope: "user"` instead: direct messages, notifications or contacts' presence
   * addressed to this user were; load them again (`loadDirect`, `notification:list`,
   * `get_presence`). */
  resync_required: { sessionId?: string; scope?: "user"; reason: string };
  token_expiring: { expiresAt: number };
  "notification:new": { notification: Record<string, unknown> };
  "notification:unread-count": { count: number };
  error: { code: string; message: string };
  left_session: { sessionId: string };
  sessions_list: { sessions: Pick<Session, "id" | "name" | "description" | "hostId" | "isPrivate" | "maxParticipants" | "participantCount" | "createdAt">[]; hasMore: boolean };
  presence_diff: { sessionId: string; joined: number; left: number; count: number; participantCount: number; seq: number };
  direct_history: { with: string; messages: Events["direct_message"][]; hasMore: boolean };
  offset_updated: { sessionId: string; offsetMs: number; updatedAt: number };
  track_change: { sessionId: string; track: Track; seq: number };
  sync_request: { sessionId: string; userId: string; userName: string; [k: string]: unknown };
  sync_response: { sessionId: string; userId: string; userName: string; toUserId?: string; [k: string]: unknown };
  token_refreshed: { expiresAt?: number };
  pong: { serverTime: number };
  time_sync: { clientTime: number; serverTime: number };
  presence: { users: { userId: string; online: boolean }[] };
  "notification:marked-read": { notificationId?: number; all?: boolean; marked?: number; unreadCount: number };
  "notification:deleted": { notificationId: number; unreadCount: number };
  notifications: { notifications: Record<string, unknown>[]; hasMore: boolean; unreadCount: number };
  /** Client-side: the connection is up again and its sessions were rejoined. */
  reconnected: { attempt: number };
  /** Client-side: a rejoin could not recover the missed events; `session` is fresh. */
  resynced: { sessionId: string; session: Session };
  /** Client-side: the server refused the token (1008/4001): give a new one, then connect(). */
  auth_required: { code: number; reason: string };
  /** Client-side: the connection closed; `willReconnect` says whether it comes back. */
  disconnected: { code: number; reason: string; willReconnect: boolean };
}

export type Frame = { type: string; ref?: unknown; [k: string]: unknown };

export class JamError extends Error {
  constructor(
    public code: string,
    message: string,
  ) {
    super(message);
    this.name = "JamError";
  }
}

/** Close codes after which reconnecting with the same token cannot help. */
const STOP_CODES = new Set([1008, 4001]);

/** A room event's `seq`: its own, or a room-wide snapshot's (a host hand-over). Answers to
 * a join carry the room's seq too, but they are not events of the room. */
function seqOf(f: Frame): number | undefined {
  if (typeof f.seq === "number") return f.seq;
  const session = (f as { session?: { seq?: unknown } }).session;
  if (f.type === "session_update" && f.ref === undefined && typeof session?.seq === "number") return session.seq;
  return undefined;
}

type Pending = { resolve: (f: Frame) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> };

export class Jam {
  private ws: WebSocket | null = null;
  private readonly handlers = new Map<string, Set<(e: any) => void>>();
  private readonly pending = new Map<string, Pending>();
  private nextRef = 0;
  /** Sessions this client is in, and the last room seq it applied in each. */
  private readonly sessions = new Map<string, number>();
  /** Sessions being rejoined after a gap: their room events come in the rejoin's answer. */
  private readonly resyncing = new Set<string>();
  /** Sessions told `resync_required` and not yet shown in order: the rejoin timer. */
  private readonly suspects = new Map<string, ReturnType<typeof setTimeout>>();
  private closedByUser = false;
  private reconnecting = false;
  private lastClose = 0;
  private attempt = 0;
  private clock = { offset: 0, rtt: Infinity };
  /** The authenticated user (after connect). */
  user: Events["authenticated"] | null = null;

  constructor(private readonly opts: JamOptions) {}

  /** Open the connection; resolves once authenticated. */
  async connect(): Promise<Events["authenticated"]> {
    this.closedByUser = false;
    const token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
    const WS = this.opts.WebSocket ?? globalThis.WebSocket;
    const ws = new WS(`${this.opts.url}?token=${encodeURIComponent(token)}`);
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let authenticated = false;
      ws.onmessage = (m) => {
        const f = JSON.parse(String(m.data)) as Frame;
        if (!authenticated && f.type === "authenticated") {
          authenticated = true;
          this.user = f as unknown as Events["authenticated"];
          resolve(this.user);
        }
        this.dispatch(f);
      };
      ws.onclose = (e) => {
        if (!authenticated) reject(new JamError("UNAUTHORIZED", `closed ${e.code} ${e.reason}`));
        this.onClose(ws, e.code, e.reason);
      };
      ws.onerror = () => {
        if (!authenticated) reject(new JamError("UNAVAILABLE", "connection failed"));
      };
    });
  }

  /** Close for good (no reconnect). */
  close(): void {
    this.closedByUser = true;
    for (const t of this.suspects.values()) clearTimeout(t);
    this.suspects.clear();
    this.ws?.close(1000);
  }

  /** Drop the socket as a network failure would (reconnects): for tests and demos. */
  dropConnection(): void {
    this.ws?.close(4000, "dropped");
  }

  on<K extends keyof Events>(type: K, fn: (e: Events[K]) => void): () => void;
  on(type: string, fn: (e: Frame) => void): () => void;
  on(type: string, fn: (e: any) => void): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(fn);
    return () => set!.delete(fn);
  }

  private emit(type: string, e: unknown): void {
    for (const fn of this.handlers.get(type) ?? []) fn(e);
    for (const fn of this.handlers.get("*") ?? []) fn(e);
  }

  /** Send a frame and wait for the answer carrying its `ref` (an `error` rejects). */
  request<T = Frame>(frame: Frame, timeoutMs = this.opts.requestTimeoutMs ?? 10_000): Promise<T> {
    const ref = `c${++this.nextRef}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new JamError("TIMEOUT", `no answer to ${frame.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(ref, { resolve: resolve as (f: Frame) => void, reject, timer });
      if (!this.send({ ...frame, ref })) {
        clearTimeout(timer);
        this.pending.delete(ref);
        reject(new JamError("UNAVAILABLE", "not connected"));
      }
    });
  }

  /** Send a frame that has no answer. */
  send(frame: Frame): boolean {
    if (this.ws?.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // --- Sessions and chat -------------------------------------------------------------

  async createSession(opts: { name: string; description?: string; isPrivate?: boolean; password?: string; maxParticipants?: number }): Promise<Session> {
    const f = await this.request<Events["session_created"]>({ type: "create_session", ...opts });
    this.sessions.set(f.session.id, f.session.seq);
    return f.session;
  }

  async joinSession(sessionId: string, opts: { password?: string; rate?: boolean } = {}): Promise<Session> {
    const f = await this.request<Events["session_update"]>({
      type: "join_session",
      sessionId,
      password: opts.password,
      capabilities: opts.rate ? { rate: true } : undefined,
    });
    this.sessions.set(sessionId, f.session.seq);
    return f.session;
  }

  async leaveSession(sessionId: string): Promise<void> {
    await this.request({ type: "leave_session", sessionId });
    this.forget(sessionId);
  }

  /** Resolves with the committed message (its `seq`), once it is stored. */
  sendMessage(sessionId: string, message: string, idempotencyKey?: string): Promise<ChatMessage> {
    return this.request<ChatMessage>({ type: "send_message", sessionId, message, idempotencyKey });
  }

  typing(sessionId: string, isTyping: boolean): void {
    this.send({ type: "typing", sessionId, isTyping });
  }

  loadHistory(sessionId: string, before?: number, limit?: number): Promise<Events["message_history"]> {
    return this.request({ type: "load_history", sessionId, before, limit });
  }

  directMessage(receiverId: string, content: string): Promise<Events["direct_message"]> {
    return this.request({ type: "direct_message", receiverId, content });
  }

  /** A page of the conversation with `withUser`, oldest first; the next older page starts
   * from this page's first message (`before`: its `createdAt` and `id`). */
  loadDirect(
    withUser: string,
    before?: { createdAt: number; id: string },
    limit?: number,
  ): Promise<Events["direct_history"]> {
    return this.request({
      type: "load_direct",
      with: withUser,
      before: before?.createdAt,
      beforeId: before?.id,
      limit,
    });
  }

  // --- Clock ---------------------------------------------------------------------------

  /** Sample the server clock `samples` times; keeps the smallest round trip's offset. */
  async timeSync(samples = 5): Promise<{ offsetMs: number; rttMs: number }> {
    for (let i = 0; i < samples; i++) {
      const sent = Date.now();
      const f = await this.request<{ serverTime: number }>({ type: "time_sync", clientTime: sent });
      const got = Date.now();
      const rtt = got - sent;
      if (rtt <= this.clock.rtt) this.clock = { rtt, offset: f.serverTime - (sent + got) / 2 };
    }
    return { offsetMs: this.clock.offset, rttMs: this.clock.rtt };
  }

  /** The server's clock now (ms), per the best `timeSync` sample. */
  serverNow(): number {
    return Date.now() + this.clock.offset;
  }

  // --- Frames in -----------------------------------------------------------------------

  private dispatch(f: Frame): void {
    if (f.ref !== undefined && typeof f.ref === "string" && this.pending.has(f.ref)) {
      const p = this.pending.get(f.ref)!;
      this.pending.delete(f.ref);
      clearTimeout(p.timer);
      if (f.type === "error") p.reject(new JamError(String(f.code), String(f.message)));
      else p.resolve(f);
    } else if (f.type === "session_update" && this.gaveUpOn(f.ref)) {
      // The answer to a join given up on (a rejoin asked again): a snapshot older than
      // the session this client holds, and its `missed` were never applied.
      return;
    }
    if (this.track(f)) this.emit(f.type, f);
  }

  /** Whether `ref` is one of this client's requests that is no longer waited for. */
  private gaveUpOn(ref: unknown): boolean {
    const m = typeof ref === "string" ? /^c(\d+)$/.exec(ref) : null;
    return m !== null && Number(m[1]) <= this.nextRef;
  }

  /** Keep each session's last applied room seq (what a rejoin recovers from) and see that
   * room events come in order: on a jump in `seq`, or when a `resync_required` is not
   * followed in time by the room's next event, rejoin with `sinceSeq` and replay what the
   * answer brings. Whether to emit the frame now (not when its rejoin will bring it). */
  private track(f: Frame): boolean {
    const sid = typeof f.sessionId === "string" ? f.sessionId : undefined;
    if (!sid || !this.sessions.has(sid)) return true;
    if (f.type === "session_ended") {
      this.forget(sid);
      return true;
    }
    if (f.type === "resync_required") {
      this.suspect(sid);
      return true;
    }
    const seq = seqOf(f);
    if (seq === undefined) return true;
    if (this.resyncing.has(sid)) return false;
    const last = this.sessions.get(sid)!;
    // Applied already (each seq once).
    if (seq <= last) return false;
    if (seq > last + 1) {
      void this.resync(sid);
      return false;
    }
    this.sessions.set(sid, seq);
    this.unsuspect(sid);
    return true;
  }

  /** The gateway dropped events, not necessarily this room's: the room's next event shows
   * it (in order: none were), or a rejoin after a random part of `resyncWaitMs`. (A rejoin
   * in flight is left to its timeout: under load its answer is more often slow than lost.) */
  private suspect(sessionId: string): void {
    if (this.suspects.has(sessionId) || this.resyncing.has(sessionId)) return;
    const wait = Math.random() * (this.opts.resyncWaitMs ?? 1000);
    this.suspects.set(sessionId, setTimeout(() => void this.resync(sessionId), wait));
  }

  private unsuspect(sessionId: string): void {
    clearTimeout(this.suspects.get(sessionId));
    this.suspects.delete(sessionId);
  }

  private forget(sessionId: string): void {
    this.unsuspect(sessionId);
    this.sessions.delete(sessionId);
  }

  /** Rejoin after a gap until an answer comes: one that does not come in time was dropped
   * or is late, and is asked for again, backing off. Not connected: the reconnect rejoins
   * every session anyway. */
  private async resync(sessionId: string): Promise<void> {
    if (this.resyncing.has(sessionId) || !this.sessions.has(sessionId)) return;
    this.resyncing.add(sessionId);
    try {
      for (let attempt = 0; attempt < 6; attempt++) {
        try {
          await this.rejoin(sessionId);
          return;
        } catch (e) {
          const unanswered = e instanceof JamError && e.code === "TIMEOUT";
          if (!unanswered || this.ws?.readyState !== 1 || !this.sessions.has(sessionId)) return;
        }
        const cap = (this.opts.resyncWaitMs ?? 1000) * 2 ** attempt;
        await new Promise((r) => setTimeout(r, Math.random() * cap));
      }
    } finally {
      this.resyncing.delete(sessionId);
    }
  }

  // --- Reconnect -----------------------------------------------------------------------

  private onClose(ws: WebSocket, code: number, reason: string): void {
    if (ws !== this.ws) return;
    for (const [ref, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new JamError("UNAVAILABLE", "connection closed"));
      this.pending.delete(ref);
    }
    this.lastClose = code;
    const stop = this.closedByUser || STOP_CODES.has(code);
    this.emit("disconnected", { code, reason, willReconnect: !stop });
    if (STOP_CODES.has(code) && !this.closedByUser) this.emit("auth_required", { code, reason });
    if (!stop && !this.reconnecting) void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    const min = this.opts.reconnectMinMs ?? 250;
    const max = this.opts.reconnectMaxMs ?? 10_000;
    this.reconnecting = true;
    try {
      await this.reconnectLoop(min, max);
    } finally {
      this.reconnecting = false;
    }
  }

  private async reconnectLoop(min: number, max: number): Promise<void> {
    while (!this.closedByUser && !STOP_CODES.has(this.lastClose)) {
      this.attempt++;
      // Full jitter: a gateway restart does not bring every client back at once.
      const cap = Math.min(max, min * 2 ** Math.min(this.attempt - 1, 10));
      await new Promise((r) => setTimeout(r, Math.random() * cap));
      try {
        await this.connect();
        await this.rejoinAll();
        this.emit("reconnected", { attempt: this.attempt });
        this.attempt = 0;
        return;
      } catch {
        // try again
      }
    }
  }

  /** Rejoin every session with its last seq: the missed room events come inside the
   * answer and are replayed as events, in order; when they cannot be, a fresh snapshot.
   * A rejoin not answered is asked again, backing off, on this connection (throwing here
   * would open another one beside it). */
  private async rejoinAll(): Promise<void> {
    for (const sessionId of [...this.sessions.keys()]) {
      try {
        await this.rejoin(sessionId);
      } catch {
        void this.resync(sessionId);
      }
    }
  }

  /** Rejoin one session from its last seq and replay what it missed, in order (a pending
   * resync timer has nothing left to do: this is its rejoin, or the reconnect's). */
  private async rejoin(sessionId: string): Promise<void> {
    this.unsuspect(sessionId);
    const sinceSeq = this.sessions.get(sessionId);
    if (sinceSeq === undefined) return;
    let f: Events["session_update"];
    try {
      f = await this.request<Events["session_update"]>(
        { type: "join_session", sessionId, sinceSeq },
        this.opts.resyncTimeoutMs ?? 5000,
      );
    } catch (e) {
      if (e instanceof JamError && e.code === "SESSION_NOT_FOUND") {
        this.forget(sessionId);
        this.emit("session_ended", { sessionId, reason: "not_found" });
        return;
      }
      throw e;
    }
    // Replayed below through `dispatch`, which holds back a resyncing session's events.
    this.resyncing.delete(sessionId);
    if (f.recovered) {
      for (const missed of f.missed ?? []) this.dispatch(missed as Frame);
    } else {
      this.emit("resynced", { sessionId, session: f.session });
    }
    this.sessions.set(sessionId, f.session.seq);
  }
}

// --- Synced playback -------------------------------------------------------------------

/** What the helper needs from a player (positions in ms). */
export interface PlayerAdapter {
  getPosition(): number;
  isPlaying(): boolean;
  seek(ms: number): void;
  play(): void;
  pause(): void;
  setRate?(rate: number): void;
  /** Load another track (the host switched). */
  load?(trackUri: string): void;
}

/**
 * Synced playback in a few lines: the host's helper sends `playback_state` on every change
 * and every `intervalMs`; a participant's sends `playback_report`s and applies the
 * server's `sync_command`s, reading their timestamps on the server's clock.
 */
export class PlaybackSync {
  private timer: ReturnType<typeof setInterval> | null = null;
  private off: () => void = () => {};
  trackUri = "";

  constructor(
    private readonly jam: Jam,
    private readonly sessionId: string,
    private readonly player: PlayerAdapter,
    private readonly opts: { host: boolean; intervalMs?: number } = { host: false },
  ) {}

  start(trackUri: string): void {
    this.trackUri = trackUri;
    this.off = this.jam.on("sync_command", (c) => c.sessionId === this.sessionId && this.apply(c));
    this.timer = setInterval(() => this.report(), this.opts.intervalMs ?? 1000);
    this.report();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.off();
  }

  /** The host changed something (play, pause, seek, track): tell the session now. */
  changed(trackUri = this.trackUri): void {
    this.trackUri = trackUri;
    this.report();
  }

  private report(): void {
    const f = {
      sessionId: this.sessionId,
      trackUri: this.trackUri,
      position: this.player.getPosition(),
      isPlaying: this.player.isPlaying(),
    };
    this.jam.send({ type: this.opts.host ? "playback_state" : "playback_report", ...f });
  }

  /** Where a command says to be now: its position moved on by the time since its stamp. */
  private apply(c: SyncCommand): void {
    const elapsed = c.isPlaying ? (this.jam.serverNow() - c.timestamp) * (c.playbackRate || 1) : 0;
    const at = c.position + Math.max(0, elapsed);
    switch (c.action) {
      case "switch_track":
        this.trackUri = c.trackUri;
        this.player.load?.(c.trackUri);
        this.player.seek(at);
        c.isPlaying ? this.player.play() : this.player.pause();
        break;
      case "seek":
        this.player.seek(at);
        break;
      case "play":
        this.player.seek(at);
        this.player.play();
        break;
      case "pause":
        this.player.pause();
        this.player.seek(c.position);
        break;
      case "rate":
        this.player.setRate?.(c.playbackRate);
        break;
    }
  }
}
