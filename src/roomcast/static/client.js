// roomcast browser client: one dependency-free ES module.
//
// Served by `roomcast serve` at /client.js; also usable from a bundler (copy or import this
// file). It speaks roomcast serve's JSON protocol and keeps a connection alive for the app:
//
//   import { RoomcastClient } from "/client.js";
//   const client = new RoomcastClient({ userId: "ann" });          // or { token: () => getJwt() }
//   client.on("message", (m) => console.log(m.room, m.sender, m.data));
//   client.on("presence", (p) => console.log(p.room, p.users));
//   client.on("close", (c) => console.log(c.code, c.kind, c.willReconnect));
//   await client.connect();
//   await client.join("lobby", { presence: true });
//   await client.publish("lobby", { text: "hi" });                  // resolves on the server's ack
//
// What it does for you: acks with timeouts (every request returns a Promise), an
// application-level ping when the line is quiet (browsers cannot see protocol pings), answers to
// a server's application pings (the FastAPI managers send them), reconnection with jittered
// exponential backoff, rejoining its rooms (and presence watches) after a reconnect, close codes
// surfaced with a kind ("slow_consumer", "auth", "shutdown", ...), and a fresh token when the
// server says the current one expired. In rooms with history it remembers the last position it
// saw, rejoins from there after a reconnect (the server replays what was missed), tells the app
// per room whether nothing was lost ("recovered" events), and drops a message it already had:
//
//   client.on("recovered", ({ room, recovered }) => { if (!recovered) reload(room); });

/** Close codes roomcast uses (RFC 6455 ones and roomcast's 4xxx). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TOKEN_EXPIRED: 4001,
  HEARTBEAT_TIMEOUT: 4002,
  SLOW_CONSUMER: 4008,
});

const KINDS = new Map([
  [1000, "normal"],
  [1001, "shutdown"],
  [1002, "protocol"],
  [1003, "protocol"],
  [1006, "abnormal"],
  [1007, "protocol"],
  [1008, "policy"],
  [1009, "too_big"],
  [4000, "heartbeat"],
  [4001, "auth"],
  [4002, "heartbeat"],
  [4008, "slow_consumer"],
]);

/** What a close code means for an app: "shutdown", "slow_consumer", "auth", "policy", ... */
export function closeKind(code) {
  return KINDS.get(code) ?? "other";
}

/** A request the server refused, that timed out, or that could not be sent. */
export class RoomcastError extends Error {
  constructor(message, { code = null, reason = "error", reply = null } = {}) {
    super(message);
    this.name = "RoomcastError";
    this.code = code; // the server's error code (1003, 1008, ...) when it answered
    this.reason = reason; // "refused" | "timeout" | "not_connected" | "closed"
    this.reply = reply; // the server's error message, when there was one
  }
}

const PRESENCE_PREFIX = "$presence:";
const STATS_ROOM = "$stats";
const LOCAL_HEARTBEAT_CLOSE = 4000; // our own close when the server went silent
const TOMBSTONE_MS = 30_000; // a member that left is not re-added by an older snapshot

function positionOf(value) {
  if (!value || typeof value.epoch !== "string" || !Number.isInteger(value.offset)) return null;
  return { epoch: value.epoch, offset: value.offset };
}

function messageEvent(message) {
  return {
    room: message.room,
    sender: message.sender,
    data: message.data,
    eventId: message.event_id,
    timestamp: message.timestamp,
    position: positionOf(message),
  };
}

// The server this module was loaded from: a page on another origin that imports
// https://chat.example/client.js talks to wss://chat.example/ws by default. (A copy bundled into
// an app has the app's URL here, which is the page's server again.)
const MODULE_URL = import.meta.url;

function defaultUrl() {
  const where = MODULE_URL.startsWith("http") ? new URL(MODULE_URL) : globalThis.location;
  if (!where?.host) throw new Error("RoomcastClient: give a url (no server to default to)");
  return `${where.protocol === "https:" ? "wss" : "ws"}://${where.host}/ws`;
}

/** The HTTP status a plain GET of the WebSocket URL gets (401 when the server wants a token),
 * or null when the browser cannot tell (the server is down, or another origin's answer). */
async function upgradeStatus(url) {
  if (typeof globalThis.fetch !== "function") return null;
  const plain = new URL(url);
  plain.protocol = plain.protocol === "wss:" ? "https:" : "http:";
  try {
    const answer = await globalThis.fetch(plain, { cache: "no-store", credentials: "omit" });
    return answer.status;
  } catch {
    return null;
  }
}

export class RoomcastClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url] ws:// or wss:// URL of /ws (default: the host this module
   *   was loaded from)
   * @param {string} [options.userId] sent as ?user_id= (servers without authentication)
   * @param {string|(() => string|Promise<string>)} [options.token] a JWT, or a function that
   *   returns a fresh one (called at every (re)connect and when the server says it expired)
   * @param {number} [options.ackTimeout=5000] ms to wait for the answer to a request
   * @param {number} [options.heartbeatInterval=15000] ms of silence before the client pings
   * @param {number} [options.heartbeatTimeout=10000] ms to wait for any answer to that ping
   * @param {number} [options.connectTimeout=10000] ms a connection attempt may take
   * @param {object|false} [options.reconnect] {initialDelay=500, maxDelay=15000, factor=2,
   *   jitter=0.5, maxRetries=Infinity}; false: never reconnect
   * @param {(close: {code: number, kind: string}) => boolean} [options.shouldReconnect]
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (e.g. from "ws" in Node)
   */
  constructor(options = {}) {
    this.url = options.url ?? defaultUrl();
    this.userId = options.userId ?? null;
    this._token = options.token ?? null;
    this.ackTimeout = options.ackTimeout ?? 5000;
    this.heartbeatInterval = options.heartbeatInterval ?? 15000;
    this.heartbeatTimeout = options.heartbeatTimeout ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.reconnect =
      options.reconnect === false
        ? null
        : {
            initialDelay: 500,
            maxDelay: 15000,
            factor: 2,
            jitter: 0.5,
            maxRetries: Infinity,
            ...(options.reconnect ?? {}),
          };
    this._shouldReconnect = options.shouldReconnect ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.state = "idle"; // idle | connecting | open | reconnecting | closed
    this.attempt = 0; // failed attempts since the last open
    this.rooms = new Map(); // room -> {presence: bool}: what the app asked for
    this.members = new Map(); // room -> Map(connection_id -> user_id)
    this.positions = new Map(); // room -> {epoch, offset}: the last one seen (rooms with history)
    this.duplicates = 0; // room messages dropped: their offset was not above the last seen
    this._tombstones = new Map(); // room -> Map(connection_id -> time it left)
    this._joinedSince = new Map(); // room -> connection ids that joined since we asked
    this._listeners = new Map();
    this._pending = new Map(); // event_id -> {resolve, reject, timer}
    this._socket = null;
    this._sequence = 0;
    this._prefix = Math.random().toString(36).slice(2, 8);
    this._retryTimer = null;
    this._quietTimer = null;
    this._deadline = null;
    this._opened = null; // {resolve, reject, promise} shared by connect() callers until open
    this._wasOpen = false;
    this._generation = 0; // bumped by every attempt and by close(): stale attempts give up
  }

  // ------------------------------------------------------------------ events

  /** Subscribe to "open", "close", "state", "message", "direct", "presence", "stats",
   * "recovered", "error", "token_expiring", "reconnecting" or "raw"; returns a function that
   * unsubscribes. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  _emit(event, detail) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(detail);
      } catch (error) {
        // One listener's bug must not break the connection or the other listeners.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._emit("state", state);
    }
  }

  // ------------------------------------------------------------------ connection

  /** Connect; resolves once open (and rooms rejoined), rejects if the client is closed
   * before it ever opens. Reconnects by itself afterwards. */
  connect() {
    if (this.state === "open") return Promise.resolve();
    if (!this._opened) {
      // One promise for every caller until the connection opens (or is closed for good).
      let settle;
      const promise = new Promise((resolve, reject) => {
        settle = { resolve, reject };
      });
      this._opened = { ...settle, promise };
    }
    if (this.state === "idle" || this.state === "closed") {
      this.attempt = 0;
      this._open();
    }
    return this._opened.promise;
  }

  /** Close for good (no reconnect); pending requests are rejected. */
  close(code = 1000, reason = "") {
    this._generation += 1;
    this._setState("closed");
    clearTimeout(this._retryTimer);
    this._stopHeartbeat();
    const socket = this._socket;
    this._socket = null;
    this._failPending("closed", "the client was closed");
    if (socket && socket.readyState <= 1) socket.close(code, reason);
    if (this._opened) {
      this._opened.reject(new RoomcastError("closed before it opened", { reason: "closed" }));
      this._opened = null;
    }
  }

  async _open() {
    const generation = ++this._generation;
    this._setState(this._wasOpen || this.attempt > 0 ? "reconnecting" : "connecting");
    let token = null;
    try {
      token = typeof this._token === "function" ? await this._token() : this._token;
    } catch (error) {
      if (generation !== this._generation) return;
      this._emit("error", { error: `could not get a token: ${error}`, code: null });
      this._scheduleRetry({ code: CloseCode.TOKEN_EXPIRED, reason: "no token" });
      return;
    }
    // close() (and maybe connect() again) happened while we waited: that attempt wins.
    if (generation !== this._generation || this.state === "closed") return;
    let socket;
    try {
      const url = new URL(this.url, globalThis.location?.href);
      if (this.userId !== null) url.searchParams.set("user_id", this.userId);
      socket = token ? new this._WebSocket(url, ["bearer", token]) : new this._WebSocket(url);
    } catch (error) {
      this._emit("error", { error: String(error), code: null });
      this._scheduleRetry({ code: CloseCode.ABNORMAL, reason: String(error) });
      return;
    }
    this._socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this._opening(socket);
    };
    socket.onmessage = (event) => this._received(socket, event.data);
    socket.onclose = (event) => this._closed(socket, event.code, event.reason, !opened);
    socket.onerror = () => {}; // the close event that follows says what happened
    // A handshake that never completes (a stalled proxy) counts as a failed attempt.
    this._deadline = setTimeout(() => {
      if (socket === this._socket && socket.readyState === 0) {
        socket.close();
        this._closed(socket, CloseCode.ABNORMAL, "connection attempt timed out");
      }
    }, this.connectTimeout);
  }

  async _opening(socket) {
    if (socket !== this._socket) return;
    this._touch(); // (also clears the connect deadline)
    // Rejoin before telling the app, so that "open" means "back in every room". A room with
    // history is rejoined from the last position seen: the server replays what was missed
    // before its ack, and the ack says whether that was everything ("recovered").
    const members = [...this.rooms.entries()];
    const joins = [];
    const reconnected = this._wasOpen;
    for (const [room, { presence }] of members) {
      this.members.delete(room);
      const since = this.positions.get(room);
      const join = since ? { type: "join", room, since } : { type: "join", room };
      joins.push(
        this._request(join, socket).then(
          (ack) => {
            if (reconnected) this._emit("recovered", this._recovery(room, ack));
            // The watch waits for the join's ack: a server may answer a join later than the
            // commands behind it (while it reads the room's history), and refuses to watch a
            // room the client is not in yet.
            if (presence) return this._watch(room, socket).catch(() => {});
          },
          (e) => this._lostRoom(room, e),
        ),
      );
    }
    await Promise.all(joins);
    if (socket !== this._socket) return;
    this._wasOpen = true;
    this.attempt = 0;
    this._setState("open");
    this._emit("open", { reconnected });
    if (this._opened) {
      this._opened.resolve();
      this._opened = null;
    }
  }

  _lostRoom(room, error) {
    // A refusal is final; a timeout or a closed connection is retried at the next open.
    if (error.reason === "refused") {
      this.rooms.delete(room);
      this.members.delete(room);
      this.positions.delete(room);
    }
    this._emit("error", { error: `could not rejoin ${room}: ${error.message}`, code: error.code, room });
  }

  _closed(socket, code, reason, refused = false) {
    if (socket !== this._socket) return;
    this._socket = null;
    this._stopHeartbeat();
    this._failPending("closed", `connection closed (${code})`);
    if (this.state === "closed") return;
    if (refused && code === CloseCode.ABNORMAL && this._token === null) {
      // A browser does not say why an upgrade was refused (only 1006). Without a token, a
      // plain GET tells: 401 means this server wants one, and retrying without cannot help.
      const generation = this._generation;
      upgradeStatus(socket.url).then((status) => {
        if (generation !== this._generation || this.state === "closed") return;
        if (status === 401) this._scheduleRetry({ code, reason: "the server wants a token", status });
        else this._scheduleRetry({ code, reason });
      });
      return;
    }
    this._scheduleRetry({ code, reason });
  }

  _scheduleRetry({ code, reason, status = null }) {
    const kind = status === 401 ? "auth" : closeKind(code);
    const policy = this.reconnect;
    let willReconnect = policy !== null && this.attempt < policy.maxRetries;
    // An expired token is only worth retrying if we can get a fresh one.
    if (kind === "auth" && typeof this._token !== "function") willReconnect = false;
    if (this._shouldReconnect) willReconnect = willReconnect && this._shouldReconnect({ code, kind });
    let delay = null;
    if (willReconnect) {
      const base = Math.min(policy.maxDelay, policy.initialDelay * policy.factor ** this.attempt);
      delay = Math.round(base * (1 - policy.jitter * Math.random()));
    }
    this._emit("close", { code, reason, kind, willReconnect, delay, ...(status ? { status } : {}) });
    if (!willReconnect) {
      this._setState("closed");
      if (this._opened) {
        this._opened.reject(new RoomcastError(`connection closed (${code} ${kind})`, { reason: "closed" }));
        this._opened = null;
      }
      return;
    }
    this.attempt += 1;
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this.attempt, delay, code, kind });
    this._retryTimer = setTimeout(() => {
      if (this.state !== "closed") this._open();
    }, delay);
  }

  // ------------------------------------------------------------------ heartbeat

  _touch() {
    // Any frame from the server is a sign of life: push the next ping back.
    clearTimeout(this._quietTimer);
    clearTimeout(this._deadline);
    this._deadline = null;
    if (this.heartbeatInterval > 0) {
      this._quietTimer = setTimeout(() => this._quiet(), this.heartbeatInterval);
    }
  }

  _quiet() {
    const socket = this._socket;
    if (!socket || socket.readyState !== 1) return;
    this._send({ type: "ping", event_id: this._nextId() });
    this._deadline = setTimeout(() => {
      if (socket === this._socket) {
        socket.close(LOCAL_HEARTBEAT_CLOSE, "server did not answer");
        this._closed(socket, LOCAL_HEARTBEAT_CLOSE, "server did not answer");
      }
    }, this.heartbeatTimeout);
  }

  _stopHeartbeat() {
    clearTimeout(this._quietTimer);
    clearTimeout(this._deadline);
    this._deadline = null;
  }

  // ------------------------------------------------------------------ requests

  /** Join `room` (and watch its presence with {presence: true}). Remembered: after a
   * reconnect the client joins it again, from the last position seen. `since` ({epoch,
   * offset}, saved earlier) asks the server to replay what followed it first. While
   * disconnected it resolves {pending: true}; otherwise {pending: false, position, recovered,
   * replayed}. */
  async join(room, { presence = false, since = null } = {}) {
    this.rooms.set(room, { presence });
    if (since) this.positions.set(room, since);
    // While (re)connecting, the rooms are (re)joined once the socket opens; once it is open
    // (even before "open", while rejoining), joins go out at once, after the rejoins.
    if (this._socket?.readyState !== 1) return { pending: true };
    let ack;
    try {
      ack = await this._request(since ? { type: "join", room, since } : { type: "join", room });
    } catch (error) {
      if (error.reason === "refused") {
        this.rooms.delete(room);
        this.positions.delete(room);
      }
      throw error;
    }
    if (presence) await this._watch(room);
    return { pending: false, ...this._recovery(room, ack) };
  }

  /** The last position seen in `room` ({epoch, offset}), or null (no history, or none yet). */
  position(room) {
    return this.positions.get(room) ?? null;
  }

  /** Read `room`'s history without joining: the latest `limit` messages, or those after
   * `since`; resolves with {room, position, recovered, messages}. */
  async history(room, { since = null, limit = null } = {}) {
    const request = { type: "history", room };
    if (since) request.since = since;
    if (limit !== null) request.limit = limit;
    const answer = await this._request(request);
    return {
      room,
      position: positionOf(answer.position),
      recovered: answer.recovered !== false,
      messages: (answer.messages ?? []).map(messageEvent),
    };
  }

  _recovery(room, ack) {
    return {
      room,
      recovered: ack?.recovered === true,
      replayed: ack?.replayed ?? 0,
      position: this.positions.get(room) ?? null,
    };
  }

  /** Ask for a fresh snapshot of a watched room (replaces what the client believes). */
  refreshPresence(room) {
    return this._watch(room);
  }

  async _watch(room, socket = this._socket) {
    // Members who join from now on may be missing from the snapshot this request brings;
    // everyone else the snapshot does not list is gone (a "left" we never heard).
    this._joinedSince.set(room, new Set());
    try {
      await this._request({ type: "join", room: PRESENCE_PREFIX + room }, socket);
    } catch (error) {
      // Refused: this server has no presence (e.g. roomcast serve with Redis and without
      // --presence). The room itself stays joined; stop asking after reconnects.
      if (error.reason === "refused" && this.rooms.has(room)) this.rooms.set(room, { presence: false });
      this._emit("error", { error: `presence of ${room}: ${error.message}`, code: error.code, room });
      throw error;
    }
  }

  /** Leave `room` (and stop watching its presence). */
  async leave(room) {
    const had = this.rooms.delete(room);
    this.members.delete(room);
    this.positions.delete(room);
    this._tombstones.delete(room);
    this._joinedSince.delete(room);
    if (this._socket?.readyState !== 1 || !had) return;
    await this._request({ type: "leave", room });
  }

  /** Publish `data` to the other members of `room`; resolves with the server's ack (whose
   * `position`, in a room with history, becomes the client's position in the room). */
  publish(room, data) {
    return this._request({ type: "publish", room, data });
  }

  /** Receive every instance's figures once a second ("stats" events). */
  watchStats() {
    return this.join(STATS_ROOM);
  }

  /** Round trip to the server; resolves with the time it took in ms. */
  async ping() {
    const started = performance.now();
    await this._request({ type: "ping" });
    return performance.now() - started;
  }

  /** Send a fresh token now (the client also does this when the server asks). */
  async refreshToken() {
    if (typeof this._token !== "function") throw new RoomcastError("no token function", { reason: "refused" });
    const token = await this._token();
    await this._request({ type: "auth", token });
  }

  /** Who is in `room` (watched with presence): [{userId, connections}], sorted by user. */
  presence(room) {
    const counts = new Map();
    for (const user of this.members.get(room)?.values() ?? []) {
      counts.set(user, (counts.get(user) ?? 0) + 1);
    }
    return [...counts.entries()]
      .map(([userId, connections]) => ({ userId, connections }))
      .sort((a, b) => String(a.userId).localeCompare(String(b.userId)));
  }

  _nextId() {
    this._sequence += 1;
    return `${this._prefix}-${this._sequence}`;
  }

  _request(message, socket = this._socket) {
    if (!socket || socket.readyState !== 1) {
      return Promise.reject(new RoomcastError("not connected", { reason: "not_connected" }));
    }
    const eventId = this._nextId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(eventId);
        reject(new RoomcastError(`no answer to ${message.type} within ${this.ackTimeout} ms`, { reason: "timeout" }));
      }, this.ackTimeout);
      this._pending.set(eventId, { resolve, reject, timer, message });
      socket.send(JSON.stringify({ ...message, event_id: eventId }));
    });
  }

  _send(message) {
    const socket = this._socket;
    if (socket && socket.readyState === 1) socket.send(JSON.stringify(message));
  }

  _settle(eventId, outcome) {
    const pending = this._pending.get(eventId);
    if (!pending) return false; // a late answer to a request that timed out
    this._pending.delete(eventId);
    clearTimeout(pending.timer);
    if (outcome instanceof Error) pending.reject(outcome);
    else pending.resolve(outcome);
    return true;
  }

  _failPending(reason, text) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject, timer } of pending) {
      clearTimeout(timer);
      reject(new RoomcastError(text, { reason }));
    }
  }

  // ------------------------------------------------------------------ incoming

  _received(socket, raw) {
    if (socket !== this._socket) return;
    this._touch();
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      this._emit("error", { error: "the server sent a frame that is not JSON", code: null });
      return;
    }
    if (message === null || typeof message !== "object") return;
    this._emit("raw", message);
    switch (message.type) {
      case "ack":
        this._acknowledged(message);
        this._settle(message.ack_event_id, message);
        break;
      case "history":
        this._settle(message.ref_event_id, message);
        break;
      case "pong":
        this._settle(message.ping_event_id, message);
        break;
      case "ping": // an application-level heartbeat (FastAPI managers): answer it
        this._send({ type: "pong", ping_event_id: message.event_id });
        break;
      case "error":
        this._serverError(message);
        break;
      case "room_message":
        if (this._fresh(message)) this._emit("message", messageEvent(message));
        break;
      case "presence":
        this._presence(message);
        break;
      case "stats":
        this._emit("stats", { instance: message.instance, timestamp: message.timestamp, ...message.data });
        break;
      default: // "message" and anything an app's own server sends
        this._emit("direct", message);
    }
  }

  _acknowledged(ack) {
    // A join's ack gives the room's position; a publish's ack the position of the client's own
    // message (sent after every older one, so the client is there now).
    const request = this._pending.get(ack.ack_event_id)?.message;
    const position = positionOf(ack.position);
    if (!request || !position || !this.rooms.has(request.room)) return;
    const last = this.positions.get(request.room);
    if (request.type === "join" || !last || last.epoch !== position.epoch || position.offset > last.offset) {
      this.positions.set(request.room, position);
    }
  }

  _fresh(message) {
    // A message at or below the last offset seen in the same epoch was delivered already: the
    // server should never send one, and the client drops it if it does.
    const position = positionOf(message);
    if (!position || !this.rooms.has(message.room)) return true;
    const last = this.positions.get(message.room);
    if (last && last.epoch === position.epoch && position.offset <= last.offset) {
      this.duplicates += 1;
      return false;
    }
    this.positions.set(message.room, position);
    return true;
  }

  _serverError(message) {
    const ref = message.ref_event_id;
    if (ref && this._settle(ref, new RoomcastError(message.error, { code: message.code, reason: "refused", reply: message }))) {
      return;
    }
    if (message.code === CloseCode.TOKEN_EXPIRED) {
      this._emit("token_expiring", { message: message.error });
      if (typeof this._token === "function") {
        this.refreshToken().catch((error) =>
          this._emit("error", { error: `token refresh failed: ${error.message}`, code: error.code }),
        );
      }
      return;
    }
    this._emit("error", { error: message.error, code: message.code });
  }

  _presence(message) {
    const room = message.room;
    if (!this.rooms.has(room)) return;
    let members = this.members.get(room);
    if (!members) {
      members = new Map();
      this.members.set(room, members);
    }
    let graves = this._tombstones.get(room);
    if (!graves) {
      graves = new Map();
      this._tombstones.set(room, graves);
    }
    const now = Date.now();
    for (const [id, when] of graves) if (now - when > TOMBSTONE_MS) graves.delete(id);
    let change = null;
    if (Array.isArray(message.members)) {
      // The snapshot replaces what we had, except members who joined after we asked (it may
      // be older than their "joined") and members whose "left" we already heard.
      const since = this._joinedSince.get(room);
      this._joinedSince.delete(room);
      const fresh = new Map();
      if (since) {
        for (const id of since) if (members.has(id)) fresh.set(id, members.get(id));
      } else {
        for (const [id, user] of members) fresh.set(id, user); // an unasked snapshot: merge
      }
      for (const { connection_id: id, user_id: user } of message.members) {
        if (!graves.has(id)) fresh.set(id, user);
      }
      members = fresh;
      this.members.set(room, members);
      change = { snapshot: true };
    } else if (message.joined) {
      graves.delete(message.joined.connection_id);
      this._joinedSince.get(room)?.add(message.joined.connection_id);
      members.set(message.joined.connection_id, message.joined.user_id);
      change = { joined: message.joined.user_id };
    } else if (message.left) {
      members.delete(message.left.connection_id);
      graves.set(message.left.connection_id, now);
      change = { left: message.left.user_id };
    }
    this._emit("presence", { room, users: this.presence(room), ...change });
  }
}
