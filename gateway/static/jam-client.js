// jam's TypeScript client: one WebSocket to /ws, requests answered by `ref`, typed events
// for the server's frames (docs/protocol.md), reconnects that respect close codes and
// recover missed room events by sequence number, clock sync, and a playback helper.
// No framework; browsers and Node >= 18 (the global WebSocket).
export class JamError extends Error {
    code;
    constructor(code, message) {
        super(message);
        this.code = code;
        this.name = "JamError";
    }
}
/** Close codes after which reconnecting with the same token cannot help. */
const STOP_CODES = new Set([1008, 4001]);
/** A room event's `seq`: its own, or a room-wide snapshot's (a host hand-over). Answers to
 * a join carry the room's seq too, but they are not events of the room. */
function seqOf(f) {
    if (typeof f.seq === "number")
        return f.seq;
    const session = f.session;
    if (f.type === "session_update" && f.ref === undefined && typeof session?.seq === "number")
        return session.seq;
    return undefined;
}
export class Jam {
    opts;
    ws = null;
    handlers = new Map();
    pending = new Map();
    nextRef = 0;
    /** Sessions this client is in, and the last room seq it applied in each. */
    sessions = new Map();
    /** Sessions being rejoined after a gap: their room events come in the rejoin's answer. */
    resyncing = new Set();
    /** Sessions told `resync_required` and not yet shown in order: the rejoin timer. */
    suspects = new Map();
    closedByUser = false;
    reconnecting = false;
    lastClose = 0;
    attempt = 0;
    clock = { offset: 0, rtt: Infinity };
    /** The authenticated user (after connect). */
    user = null;
    constructor(opts) {
        this.opts = opts;
    }
    /** Open the connection; resolves once authenticated. */
    async connect() {
        this.closedByUser = false;
        const token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
        const WS = this.opts.WebSocket ?? globalThis.WebSocket;
        const ws = new WS(`${this.opts.url}?token=${encodeURIComponent(token)}`);
        this.ws = ws;
        return new Promise((resolve, reject) => {
            let authenticated = false;
            ws.onmessage = (m) => {
                const f = JSON.parse(String(m.data));
                if (!authenticated && f.type === "authenticated") {
                    authenticated = true;
                    this.user = f;
                    resolve(this.user);
                }
                this.dispatch(f);
            };
            ws.onclose = (e) => {
                if (!authenticated)
                    reject(new JamError("UNAUTHORIZED", `closed ${e.code} ${e.reason}`));
                this.onClose(ws, e.code, e.reason);
            };
            ws.onerror = () => {
                if (!authenticated)
                    reject(new JamError("UNAVAILABLE", "connection failed"));
            };
        });
    }
    /** Close for good (no reconnect). */
    close() {
        this.closedByUser = true;
        for (const t of this.suspects.values())
            clearTimeout(t);
        this.suspects.clear();
        this.ws?.close(1000);
    }
    /** Drop the socket as a network failure would (reconnects): for tests and demos. */
    dropConnection() {
        this.ws?.close(4000, "dropped");
    }
    on(type, fn) {
        let set = this.handlers.get(type);
        if (!set)
            this.handlers.set(type, (set = new Set()));
        set.add(fn);
        return () => set.delete(fn);
    }
    emit(type, e) {
        for (const fn of this.handlers.get(type) ?? [])
            fn(e);
        for (const fn of this.handlers.get("*") ?? [])
            fn(e);
    }
    /** Send a frame and wait for the answer carrying its `ref` (an `error` rejects). */
    request(frame, timeoutMs = this.opts.requestTimeoutMs ?? 10_000) {
        const ref = `c${++this.nextRef}`;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.pending.delete(ref);
                reject(new JamError("TIMEOUT", `no answer to ${frame.type} within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(ref, { resolve: resolve, reject, timer });
            if (!this.send({ ...frame, ref })) {
                clearTimeout(timer);
                this.pending.delete(ref);
                reject(new JamError("UNAVAILABLE", "not connected"));
            }
        });
    }
    /** Send a frame that has no answer. */
    send(frame) {
        if (this.ws?.readyState !== 1)
            return false;
        this.ws.send(JSON.stringify(frame));
        return true;
    }
    // --- Sessions and chat -------------------------------------------------------------
    async createSession(opts) {
        const f = await this.request({ type: "create_session", ...opts });
        this.sessions.set(f.session.id, f.session.seq);
        return f.session;
    }
    async joinSession(sessionId, opts = {}) {
        const f = await this.request({
            type: "join_session",
            sessionId,
            password: opts.password,
            capabilities: opts.rate ? { rate: true } : undefined,
        });
        this.sessions.set(sessionId, f.session.seq);
        return f.session;
    }
    async leaveSession(sessionId) {
        await this.request({ type: "leave_session", sessionId });
        this.forget(sessionId);
    }
    /** Resolves with the committed message (its `seq`), once it is stored. */
    sendMessage(sessionId, message, idempotencyKey) {
        return this.request({ type: "send_message", sessionId, message, idempotencyKey });
    }
    typing(sessionId, isTyping) {
        this.send({ type: "typing", sessionId, isTyping });
    }
    loadHistory(sessionId, before, limit) {
        return this.request({ type: "load_history", sessionId, before, limit });
    }
    directMessage(receiverId, content) {
        return this.request({ type: "direct_message", receiverId, content });
    }
    /** A page of the conversation with `withUser`, oldest first; the next older page starts
     * from this page's first message (`before`: its `createdAt` and `id`). */
    loadDirect(withUser, before, limit) {
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
    async timeSync(samples = 5) {
        for (let i = 0; i < samples; i++) {
            const sent = Date.now();
            const f = await this.request({ type: "time_sync", clientTime: sent });
            const got = Date.now();
            const rtt = got - sent;
            if (rtt <= this.clock.rtt)
                this.clock = { rtt, offset: f.serverTime - (sent + got) / 2 };
        }
        return { offsetMs: this.clock.offset, rttMs: this.clock.rtt };
    }
    /** The server's clock now (ms), per the best `timeSync` sample. */
    serverNow() {
        return Date.now() + this.clock.offset;
    }
    // --- Frames in -----------------------------------------------------------------------
    dispatch(f) {
        if (f.ref !== undefined && typeof f.ref === "string" && this.pending.has(f.ref)) {
            const p = this.pending.get(f.ref);
            this.pending.delete(f.ref);
            clearTimeout(p.timer);
            if (f.type === "error")
                p.reject(new JamError(String(f.code), String(f.message)));
            else
                p.resolve(f);
        }
        else if (f.type === "session_update" && this.gaveUpOn(f.ref)) {
            // The answer to a join given up on (a rejoin asked again): a snapshot older than
            // the session this client holds, and its `missed` were never applied.
            return;
        }
        if (this.track(f))
            this.emit(f.type, f);
    }
    /** Whether `ref` is one of this client's requests that is no longer waited for. */
    gaveUpOn(ref) {
        const m = typeof ref === "string" ? /^c(\d+)$/.exec(ref) : null;
        return m !== null && Number(m[1]) <= this.nextRef;
    }
    /** Keep each session's last applied room seq (what a rejoin recovers from) and see that
     * room events come in order: on a jump in `seq`, or when a `resync_required` is not
     * followed in time by the room's next event, rejoin with `sinceSeq` and replay what the
     * answer brings. Whether to emit the frame now (not when its rejoin will bring it). */
    track(f) {
        const sid = typeof f.sessionId === "string" ? f.sessionId : undefined;
        if (!sid || !this.sessions.has(sid))
            return true;
        if (f.type === "session_ended") {
            this.forget(sid);
            return true;
        }
        if (f.type === "resync_required") {
            this.suspect(sid);
            return true;
        }
        const seq = seqOf(f);
        if (seq === undefined)
            return true;
        if (this.resyncing.has(sid))
            return false;
        const last = this.sessions.get(sid);
        // Applied already (each seq once).
        if (seq <= last)
            return false;
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
    suspect(sessionId) {
        if (this.suspects.has(sessionId) || this.resyncing.has(sessionId))
            return;
        const wait = Math.random() * (this.opts.resyncWaitMs ?? 1000);
        this.suspects.set(sessionId, setTimeout(() => void this.resync(sessionId), wait));
    }
    unsuspect(sessionId) {
        clearTimeout(this.suspects.get(sessionId));
        this.suspects.delete(sessionId);
    }
    forget(sessionId) {
        this.unsuspect(sessionId);
        this.sessions.delete(sessionId);
    }
    /** Rejoin after a gap until an answer comes: one that does not come in time was dropped
     * or is late, and is asked for again, backing off. Not connected: the reconnect rejoins
     * every session anyway. */
    async resync(sessionId) {
        if (this.resyncing.has(sessionId) || !this.sessions.has(sessionId))
            return;
        this.resyncing.add(sessionId);
        try {
            for (let attempt = 0; attempt < 6; attempt++) {
                try {
                    await this.rejoin(sessionId);
                    return;
                }
                catch (e) {
                    const unanswered = e instanceof JamError && e.code === "TIMEOUT";
                    if (!unanswered || this.ws?.readyState !== 1 || !this.sessions.has(sessionId))
                        return;
                }
                const cap = (this.opts.resyncWaitMs ?? 1000) * 2 ** attempt;
                await new Promise((r) => setTimeout(r, Math.random() * cap));
            }
        }
        finally {
            this.resyncing.delete(sessionId);
        }
    }
    // --- Reconnect -----------------------------------------------------------------------
    onClose(ws, code, reason) {
        if (ws !== this.ws)
            return;
        for (const [ref, p] of this.pending) {
            clearTimeout(p.timer);
            p.reject(new JamError("UNAVAILABLE", "connection closed"));
            this.pending.delete(ref);
        }
        this.lastClose = code;
        const stop = this.closedByUser || STOP_CODES.has(code);
        this.emit("disconnected", { code, reason, willReconnect: !stop });
        if (STOP_CODES.has(code) && !this.closedByUser)
            this.emit("auth_required", { code, reason });
        if (!stop && !this.reconnecting)
            void this.reconnect();
    }
    async reconnect() {
        const min = this.opts.reconnectMinMs ?? 250;
        const max = this.opts.reconnectMaxMs ?? 10_000;
        this.reconnecting = true;
        try {
            await this.reconnectLoop(min, max);
        }
        finally {
            this.reconnecting = false;
        }
    }
    async reconnectLoop(min, max) {
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
            }
            catch {
                // try again
            }
        }
    }
    /** Rejoin every session with its last seq: the missed room events come inside the
     * answer and are replayed as events, in order; when they cannot be, a fresh snapshot.
     * A rejoin not answered is asked again, backing off, on this connection (throwing here
     * would open another one beside it). */
    async rejoinAll() {
        for (const sessionId of [...this.sessions.keys()]) {
            try {
                await this.rejoin(sessionId);
            }
            catch {
                void this.resync(sessionId);
            }
        }
    }
    /** Rejoin one session from its last seq and replay what it missed, in order (a pending
     * resync timer has nothing left to do: this is its rejoin, or the reconnect's). */
    async rejoin(sessionId) {
        this.unsuspect(sessionId);
        const sinceSeq = this.sessions.get(sessionId);
        if (sinceSeq === undefined)
            return;
        let f;
        try {
            f = await this.request({ type: "join_session", sessionId, sinceSeq }, this.opts.resyncTimeoutMs ?? 5000);
        }
        catch (e) {
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
            for (const missed of f.missed ?? [])
                this.dispatch(missed);
        }
        else {
            this.emit("resynced", { sessionId, session: f.session });
        }
        this.sessions.set(sessionId, f.session.seq);
    }
}
/**
 * Synced playback in a few lines: the host's helper sends `playback_state` on every change
 * and every `intervalMs`; a participant's sends `playback_report`s and applies the
 * server's `sync_command`s, reading their timestamps on the server's clock.
 */
export class PlaybackSync {
    jam;
    sessionId;
    player;
    opts;
    timer = null;
    off = () => { };
    trackUri = "";
    constructor(jam, sessionId, player, opts = { host: false }) {
        this.jam = jam;
        this.sessionId = sessionId;
        this.player = player;
        this.opts = opts;
    }
    start(trackUri) {
        this.trackUri = trackUri;
        this.off = this.jam.on("sync_command", (c) => c.sessionId === this.sessionId && this.apply(c));
        this.timer = setInterval(() => this.report(), this.opts.intervalMs ?? 1000);
        this.report();
    }
    stop() {
        if (this.timer)
            clearInterval(this.timer);
        this.off();
    }
    /** The host changed something (play, pause, seek, track): tell the session now. */
    changed(trackUri = this.trackUri) {
        this.trackUri = trackUri;
        this.report();
    }
    report() {
        const f = {
            sessionId: this.sessionId,
            trackUri: this.trackUri,
            position: this.player.getPosition(),
            isPlaying: this.player.isPlaying(),
        };
        this.jam.send({ type: this.opts.host ? "playback_state" : "playback_report", ...f });
    }
    /** Where a command says to be now: its position moved on by the time since its stamp. */
    apply(c) {
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
